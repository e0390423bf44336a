import Foundation
import MeshControl
import Testing

/// A submission read in one pass says what the Codable decoder said of it: the same fields, the same refusals.
@Suite struct SubmitRequestTests {
    static func parse(_ text: String) -> ControlAPI.SubmitRequest? {
        try? ControlAPI.SubmitRequest(parsing: Array(text.utf8))
    }

    @Test func aFullRequestAndItsDefaults() throws {
        let full = try #require(Self.parse(#"{"capability":"echo","input":{"b":[1,2.5,"x"],"a":null},"timeout_seconds":2.5,"max_attempts":3}"#))
        #expect(full.capability == "echo" && full.timeoutSeconds == 2.5 && full.maxAttempts == 3)
        #expect(full.input == ControlAPI.JSONValue(["a": NSNull(), "b": [1, 2.5, "x"]] as [String: Any]))
        let short = try #require(Self.parse(#"{"capability":"echo","input":"text","timeout_seconds":null}"#))
        #expect(short.timeoutSeconds == nil && short.maxAttempts == nil && short.input == ControlAPI.JSONValue("text"))
        #expect(Self.parse(#"{"capability":"echo","input":null}"#)?.input == ControlAPI.JSONValue(NSNull()))
        #expect(Self.parse(#"{"capability":"echo","input":1,"timeout_seconds":60}"#)?.timeoutSeconds == 60)
    }

    @Test(arguments: [
        "", "{", "[]", "\"echo\"", #"{"input":{}}"#, #"{"capability":"echo"}"#, #"{"capability":5,"input":{}}"#,
        #"{"capability":"echo","input":{},"timeout_seconds":"5"}"#, #"{"capability":"echo","input":{},"timeout_seconds":true}"#,
        #"{"capability":"echo","input":{},"max_attempts":2.5}"#, #"{"capability":"echo","input":{},"max_attempts":false}"#,
        #"{"capability":"echo","input":{}} trailing"#,
    ])
    func whatTheDecoderRefusedIsRefused(_ text: String) {
        #expect(Self.parse(text) == nil, "\(text)")
        let decoded = try? ControlAPI.decoder().decode(ControlAPI.SubmitRequest.self, from: Data(text.utf8))
        #expect(decoded == nil, "the Codable decoder refuses it too: \(text)")
    }

    /// A field the node does not know was dropped without a word (a typo such as `timeout_second` left the default
    /// timeout); it is refused by name now, and every refusal names what is wrong.
    @Test func refusalsNameTheFieldAndUnknownFieldsAreRefused() {
        func refusal(_ text: String) -> String {
            do {
                _ = try ControlAPI.SubmitRequest(parsing: Array(text.utf8))
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(refusal(#"{"capability":"echo","input":1,"timeout_second":5}"#).hasPrefix("unknown field 'timeout_second' (known: "))
        #expect(refusal(#"{"capability":"echo","input":1,"max_attempts":1.5}"#) == "max_attempts must be a whole number")
        #expect(refusal(#"{"capability":"echo","input":1,"wait_for_capability":"yes"}"#) == "wait_for_capability must be true or false")
        #expect(refusal(#"{"capability":"echo","input":1,"input_timeout_seconds":"x"}"#) == "input_timeout_seconds must be a number")
        #expect(refusal(#"{"capability":"echo"}"#).hasPrefix("input is missing"))
        #expect(refusal("[1]") == "the body is not a JSON object")
        #expect(refusal(#"{"capability":"echo","input":1,"callback":"http://h/x","callback_events":"all","context":"c","traceparent":null,"artifacts":[]}"#) == "accepted")
    }
}

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
}

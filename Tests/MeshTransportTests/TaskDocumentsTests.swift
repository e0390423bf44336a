import Foundation
import MeshControl
import MeshCore
import Testing

@testable import MeshTransport

/// The hand-written task documents say exactly what Foundation's encoder says of the same task, so clients that
/// decode `ControlAPI.TaskInfo` cannot tell the difference.
@Suite struct TaskDocumentsTests {
    static let origin = Date(timeIntervalSince1970: 1_800_000_000.75)
    static let peer = NodeID(high: 9, low: 9)
    static var documents: TaskDocuments {
        TaskDocuments(date: { origin + $0.seconds }, name: { $0 == peer ? "worker \"b\"" : $0.short }, waiting: { _ in "why \"not\"" })
    }

    static func task(state: TaskState, outcome: TaskOutcome?, error: String? = nil) -> TaskSubmitter.SubmittedTask {
        TaskSubmitter.SubmittedTask(
            id: TaskID(high: 1, low: 2), capability: "summarize", input: Array("{}".utf8),
            submittedAt: .milliseconds(1_500), deadline: .milliseconds(61_500), maximumAttempts: 4, state: state,
            attempts: [
                .init(epoch: 1, peer: peer, offeredAt: .milliseconds(1_600), endedAt: .milliseconds(1_700), outcome: .declined(.busy)),
                .init(epoch: 2, peer: peer, offeredAt: .milliseconds(1_800), acceptedAt: .milliseconds(1_810),
                      endedAt: .milliseconds(2_000), outcome: .completed),
            ],
            outcome: outcome, error: error, finishedAt: state.isTerminal ? .milliseconds(2_000) : nil, nextOfferAt: nil,
            failures: 0)
    }

    /// What the encoder writes for the same task (the path the node took before).
    static func encoded(_ task: TaskSubmitter.SubmittedTask, result: ControlAPI.JSONValue?) throws -> [UInt8] {
        let info = ControlAPI.TaskInfo(
            id: task.id.description, capability: task.capability, state: task.state.rawValue,
            submittedAt: origin + task.submittedAt.seconds, deadline: origin + task.deadline.seconds,
            attempts: task.attempts.map { attempt in
                ControlAPI.AttemptInfo(
                    epoch: Int(attempt.epoch), peer: attempt.peer.description, peerName: "worker \"b\"",
                    offeredAt: origin + attempt.offeredAt.seconds, acceptedAt: attempt.acceptedAt.map { origin + $0.seconds },
                    endedAt: attempt.endedAt.map { origin + $0.seconds }, outcome: attempt.outcome.map(TaskDocuments.describe))
            },
            executedBy: "worker \"b\"", finishedAt: task.finishedAt.map { origin + $0.seconds }, result: result,
            error: task.error, waiting: "why \"not\"")
        return Array(try ControlAPI.encoder().encode(info)) + [0x0A]
    }

    @Test func aFailedTaskIsWrittenByteForByteAsTheEncoderWritesIt() throws {
        let task = Self.task(state: .failed, outcome: nil, error: "exit 3: \u{1}bad\ninput \\ \"quoted\" é")
        #expect(Self.documents.task(task).body == (try Self.encoded(task, result: nil)))
    }

    @Test func aCompletedTaskCarriesItsResultCompacted() throws {
        let output = Array("  { \"b\" : [1, 2.5e3, -0.5, true, null, \"x\\n\\u00e9\"] , \"a\": {} }\n".utf8)
        let task = Self.task(state: .completed, outcome: .success(output))
        let written = Self.documents.task(task).body
        let decoded = try ControlAPI.decoder().decode(ControlAPI.TaskInfo.self, from: Data(written))
        let expected = try ControlAPI.decoder().decode(
            ControlAPI.TaskInfo.self,
            from: Data(try Self.encoded(task, result: ControlAPI.JSONValue(
                try JSONSerialization.jsonObject(with: Data(output), options: [.fragmentsAllowed])))))
        #expect(decoded == expected)
        #expect(!written.dropLast().contains(0x0A), "one line")
        #expect(String(decoding: written, as: UTF8.self).contains("\"result\":{\"b\":[1,2.5e3,-0.5,true,null,\"x\\n\\u00e9\"],\"a\":{}}"))
    }

    @Test func aResultThatIsNotJSONIsShownAsText() throws {
        let task = Self.task(state: .completed, outcome: .success(Array("plain words\n".utf8)))
        let decoded = try ControlAPI.decoder().decode(ControlAPI.TaskInfo.self, from: Data(Self.documents.task(task).body))
        #expect(decoded.result == ControlAPI.JSONValue("plain words\n"))
    }

    @Test func aListOfTasksDecodes() throws {
        let tasks = [Self.task(state: .failed, outcome: nil, error: "x"), Self.task(state: .completed, outcome: .success([0x31]))]
        let list = try ControlAPI.decoder().decode(ControlAPI.TaskList.self, from: Data(Self.documents.list(tasks).body))
        #expect(list.tasks.map(\.state) == ["failed", "completed"])
        #expect(list.tasks[1].result == ControlAPI.JSONValue(1))
        let empty = try ControlAPI.decoder().decode(ControlAPI.TaskList.self, from: Data(Self.documents.list([]).body))
        #expect(empty.tasks.isEmpty)
    }

    @Test(arguments: [
        "", " ", "{", "}", "[1,]", "{\"a\":}", "{\"a\" 1}", "01", "1.", "-", "1e", "tru", "nul", "\"open",
        "\"bad \\q escape\"", "\"\\u12g4\"", "[1] [2]", "{\"a\":1,}", "\"tab\tinside\"",
        String(repeating: "[", count: 300) + String(repeating: "]", count: 300),
    ])
    func textThatIsNotOneJSONValueIsRefused(_ text: String) {
        #expect(JSONText.compacted(Array(text.utf8)) == nil, "\(text.prefix(20))")
    }

    @Test func invalidUTF8IsRefused() {
        #expect(JSONText.compacted([0x22, 0xC3, 0x28, 0x22]) == nil)
    }

    @Test(arguments: [
        ("0", "0"), ("-0.5e-3", "-0.5e-3"), (" true ", "true"), ("[ ]", "[]"), ("{ }", "{}"),
        ("\"a b\\\" \\/\"", "\"a b\\\" \\/\""), ("[1, [2, {\"x\": null}]]", "[1,[2,{\"x\":null}]]"),
    ])
    func validJSONIsCompacted(_ pair: (String, String)) {
        #expect(JSONText.compacted(Array(pair.0.utf8)) == Array(pair.1.utf8))
    }

    /// A member whose value has no whitespace between its tokens is marked compact: taken as it is, it is what
    /// `compacted` would make of it (the submit path then skips compacting a large input).
    @Test(arguments: [
        "{\"input\": [1,{\"a\":\" spaced string \"}], \"b\": 1}", "{\"input\":[1, 2],\"b\":1}", "{ \"input\" : \"x\" }",
        "{\"input\":{\"k\" :1}}", "{\"input\":\"\\\" \\n\"}", "{\"b\":[ ],\"input\":-1.5e3}",
    ])
    func aMemberMarkedCompactIsItsCompactedForm(_ text: String) throws {
        let bytes = Array(text.utf8)
        let members = try #require(JSONText.members(of: bytes))
        let input = try #require(members["input"])
        let value = Array(bytes[input.range])
        #expect(input.isCompact == (JSONText.compacted(value) == value), "\(text)")
        #expect(members["b"].map { $0.isCompact == (JSONText.compacted(Array(bytes[$0.range])) == Array(bytes[$0.range])) } ?? true)
    }

    /// Plain runs of a string are passed eight bytes at a time: a quote, a backslash or a control byte at any place
    /// within a word, after bytes of every kind (UTF-8 included), is still found.
    @Test func aSpecialByteAnywhereInAWordIsFound() {
        let fillers: [[UInt8]] = [Array("abcdefghijklmnopqrstuvwx".utf8), Array("é€😀 ~ÿ~~~~~~~".utf8)]
        for filler in fillers {
            for length in 0..<20 {
                let plain = Array(filler.prefix(length))
                let whole = [0x22] + plain + [0x22]
                #expect(JSONText.compacted(whole) == whole || String(validating: plain, as: UTF8.self) == nil)
                for special: UInt8 in [0x00, 0x01, 0x0A, 0x1F] {
                    #expect(JSONText.compacted([0x22] + plain + [special] + plain + [0x22]) == nil, "\(length) \(special)")
                }
                let escaped = [0x22] + plain + Array("\\\"".utf8) + plain + [0x22]
                #expect(JSONText.isValue(escaped) || String(validating: plain, as: UTF8.self) == nil, "\(length)")
                #expect(!JSONText.isValue([0x22] + plain + [0x22] + plain + [0x22]) || length == 0, "\(length)")
            }
        }
    }
}

/// A peer's `input_required` question is encoded into the event followers see, never spliced in as text.
@Suite struct InputRequiredEventTests {
    static func object(_ bytes: [UInt8]) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
    }

    @Test func aQuestionThatIsNotOneJSONValueCannotAddKeysToTheEvent() throws {
        let forged = try Self.object(MeshNode.inputRequiredEvent(Array(#"1,"agentmesh":"forged","extra":true"#.utf8)))
        #expect(forged.keys.sorted() == ["agentmesh", "question"])
        #expect(forged["agentmesh"] as? String == "input-required")
        #expect(forged["question"] as? String == #"1,"agentmesh":"forged","extra":true"#)
        let notUTF8 = try Self.object(MeshNode.inputRequiredEvent([0xFF, 0x22, 0x7D]))
        #expect(notUTF8.keys.sorted() == ["agentmesh", "question"])
    }

    @Test func aJSONQuestionIsKeptAsItsValue() throws {
        let event = try Self.object(MeshNode.inputRequiredEvent(Array(#"{ "prompt": "Approve?", "n": [1, 2] }"#.utf8)))
        let question = try #require(event["question"] as? [String: Any])
        #expect(question["prompt"] as? String == "Approve?")
        #expect(question["n"] as? [Int] == [1, 2])
    }
}

import Foundation
import MeshCore
import Testing

/// Tasks, events and workflow runs have ids of their own types: the same 32 hex digits, apart in the type system,
/// made one from another only by saying so.
@Suite struct MeshIDTests {
    @Test func anIdKeepsItsBitsAcrossKindsAndItsTextEverywhere() throws {
        let run = try #require(WorkflowID(hex: "00112233445566778899aabbccddeeff"))
        let asTask = TaskID(run)
        #expect(asTask.description == run.description && asTask.high == run.high && asTask.low == run.low)
        let encoded = try JSONEncoder().encode([run])
        #expect(String(decoding: encoded, as: UTF8.self) == #"["00112233445566778899aabbccddeeff"]"#)
        #expect(try JSONDecoder().decode([WorkflowID].self, from: encoded) == [run])
    }

    @Test func aDocumentWithABadIdSaysWhatKindOfIdItWanted() {
        #expect {
            try JSONDecoder().decode([EventID].self, from: Data(#"["xyz"]"#.utf8))
        } throws: { error in
            "\(error)".contains("'xyz' is not an event id")
        }
    }
}

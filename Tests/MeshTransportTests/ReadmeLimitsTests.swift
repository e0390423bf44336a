import Foundation
import MeshCore
import Testing

@testable import MeshTransport

/// The limits README quotes are the code's: it once said inputs of at most 4,128,768 bytes and bodies of 4 MiB
/// while the code took 15 MiB and 31 MiB.
@Suite struct ReadmeLimitsTests {
    static let readme: String = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return (try? String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)) ?? ""
    }()

    @Test func theInputAndBodyLimitsInReadmeAreTheCodes() {
        let mebibyte = 1 << 20
        let quotes = [
            "max_input_bytes = \(NodeSettings.defaultTaskInput)   # the largest task input; at most \(NodeSettings.largestTaskInput) "
                + "(a request's body is at most \(ControlServer.maximumBodyLength / mebibyte) MiB)",
            "node takes inputs of up to \(NodeSettings.defaultTaskInput / mebibyte) MiB, `run --max-input-bytes`, at most "
                + "\(NodeSettings.largestTaskInput / mebibyte) MiB; an executor's result up to "
                + "\(SecureSession.defaultMaximumMessageLength / mebibyte) MiB)",
            "messages up to \(SecureSession.defaultMaximumMessageLength / mebibyte) MiB",
        ]
        #expect(!Self.readme.isEmpty)
        let flowing = Self.readme.replacingOccurrences(of: "\n", with: " ")
        for quote in quotes {
            #expect(flowing.contains(quote), "README should say: \(quote)")
        }
        #expect(ControlServer.maximumBodyLength % mebibyte == 0, "the body limit is a whole number of MiB, as README says it")
    }
}

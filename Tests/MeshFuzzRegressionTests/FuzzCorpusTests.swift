import MeshCore
import Foundation
import MeshTestKit
import Testing

/// Replays every saved fuzz input (seeds and past crashers) through its target: each must return normally.
/// A crasher found by scripts/fuzz goes into Corpus/<target>/ so it stays fixed.
@Suite struct FuzzCorpusTests {
    static func corpus() throws -> [(target: String, file: URL)] {
        let root = try #require(Bundle.module.url(forResource: "Corpus", withExtension: nil))
        var inputs: [(String, URL)] = []
        for target in try FileManager.default.contentsOfDirectory(atPath: root.path).sorted() {
            let folder = root.appendingPathComponent(target)
            for file in try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() {
                inputs.append((target, folder.appendingPathComponent(file)))
            }
        }
        return inputs
    }

    @Test func everySavedInputReplaysWithoutACrash() throws {
        let inputs = try Self.corpus()
        #expect(Set(inputs.map(\.target)) == Set(FuzzTargets.names), "every target has at least one saved input")
        for (target, file) in inputs {
            #expect(FuzzTargets.run(target, Array(try Data(contentsOf: file))), "\(target) is not a fuzz target")
        }
    }

    @Test func randomInputsNeverTrapAnyTarget() {
        var rng = SeededGenerator(seed: 0xF022)
        for target in FuzzTargets.names {
            for _ in 0..<300 {
                _ = FuzzTargets.run(target, rng.bytes(Int.random(in: 0...600, using: &rng)))
            }
        }
    }
}

import Foundation
import MeshTestKit

#if FUZZING
/// libFuzzer calls this for every input; `MESH_FUZZ_TARGET` names the decoder (scripts/fuzz sets it).
private let target = ProcessInfo.processInfo.environment["MESH_FUZZ_TARGET"] ?? "frames"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    _ = FuzzTargets.run(target, bytes)
    return 0
}
#else
/// Without libFuzzer: `mesh-fuzz TARGET FILE...` replays inputs (a crasher, a corpus) through one target.
@main
struct MeshFuzz {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        guard let target = arguments.first, FuzzTargets.names.contains(target) else {
            FileHandle.standardError.write(Data("usage: mesh-fuzz TARGET FILE...\ntargets: \(FuzzTargets.names.joined(separator: ", "))\n".utf8))
            exit(2)
        }
        for path in arguments.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else {
                FileHandle.standardError.write(Data("cannot read \(path)\n".utf8))
                exit(1)
            }
            _ = FuzzTargets.run(target, Array(data))
        }
        print("replayed \(arguments.count - 1) input(s) through \(target) without a crash")
    }
}
#endif

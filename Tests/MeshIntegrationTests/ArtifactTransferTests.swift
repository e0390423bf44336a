import Foundation
import MeshControl
import MeshCore
import MeshCrypto
import MeshTestKit
import MeshWire
import NIOCore
import Testing

@testable import MeshTransport

/// Artifact transfers between in-process nodes, with faults the serving node makes on purpose
/// (``NodeSettings/artifactFaults``, a seam no environment variable reaches).
@Suite(.serialized) struct ArtifactTransferTests {
    /// An agent that leaves MIB MiB of random bytes as its result's artifact.
    static func blobAgent(mib: Int) -> CapabilitySpec {
        CapabilitySpec(name: "blob", executor: .exec(command: "sh", arguments: [
            "-c", "head -c \(mib << 20) /dev/urandom > \"$AGENTMESH_ARTIFACTS_OUT/blob.bin\"; echo '{}'",
        ]))
    }

    /// Runs `blob` on b for a, with b making `faults`; returns a's task once it ended, its one artifact's bytes as a
    /// serves them, and how many chunks b served.
    static func fetchThroughFaults(_ faults: ArtifactFaults, mib: Int) async throws
        -> (a: TestNode, task: ControlAPI.TaskInfo, bytes: [UInt8], digest: String, servedAfterCut: [UInt64])
    {
        let mesh = try TestMesh()
        let (a, b) = try mesh.trustedPair()
        // Sessions that outlast seconds of a busy machine: the whole suite shares 2 cores, and a session dropped
        // for idleness would fail the attempt, not the transfer under test.
        let runningB = try await b.start {
            $0.capabilities = [Self.blobAgent(mib: mib)]
            $0.artifactFaults = faults
            $0.idleTimeout = .seconds(30)
        }
        let runningA = try await a.start {
            $0.joins = [runningB.address]
            $0.idleTimeout = .seconds(30)
        }
        let id = try await TaskIntegrationTests.submit(runningA, "blob", [:] as [String: String], timeout: 120, attempts: 3)
        let task = try await TaskIntegrationTests.wait(runningA, id, seconds: 120)
        let artifact = try #require(task.resultArtifacts?.first, "\(task.state) \(task.error ?? "")")
        let saved = "/tmp/am-transfer-" + UUID().uuidString.prefix(8)
        defer { unlink(saved) }
        _ = try ControlClient(socketPath: a.home.controlSocketPath).download(artifact: artifact.sha256, to: saved)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: saved)))
        let served = await runningB.node.offsetsServedAfterCut
        await runningA.stop()
        await runningB.stop()
        return (a, task, bytes, artifact.sha256, served)
    }

    @Test func aLargeArtifactSurvivesASessionCutMidTransferAndResumes() async throws {
        // b cuts the session right after serving the 20th chunk, once.
        let (a, task, bytes, digest, served) = try await Self.fetchThroughFaults(ArtifactFaults(cutAfterChunk: 20), mib: 50)
        #expect(task.state == "completed" && bytes.count == 50 << 20)
        #expect(Hex.encode(SHA256.hash(bytes)) == digest)
        // The session was cut, and the transfer went on from where the cut left it, not from the start: either the
        // chunks b read after the cut reach a over the next session, or a notices the silence and asks again from
        // its first missing chunk (more than once on a busy machine). Either way, what b serves after the cut starts
        // no lower than the window before it: chunks 13 to 20 may have been lost with the session, never 1 to 12.
        // b always serves after the cut (the last 30 chunks), so this is checked on every run.
        #expect(!a.logs.matching("peer disconnected").isEmpty)
        let lowest = try #require(served.min(), "nothing served after the cut")
        #expect(lowest >= UInt64(20 - ArtifactPullMachine.Settings().window) << 20, "served from offset \(lowest) after the cut: \(served.count) chunks")
        for stalled in a.logs.matching("an artifact transfer stalled; asking again from the first missing chunk") {
            #expect((Int(stalled.metadata["offset"] ?? "") ?? 0) >= 8 << 20, "\(stalled)")
        }
    }

    @Test func aCorruptedChunkIsDetectedAndFetchedAgain() async throws {
        // b flips a byte of the 3rd chunk it serves, once, as a faulty disk or a lying peer would.
        let (a, task, bytes, digest, _) = try await Self.fetchThroughFaults(ArtifactFaults(corruptChunk: 3), mib: 8)
        #expect(task.state == "completed" && Hex.encode(SHA256.hash(bytes)) == digest)
        #expect(!a.logs.matching("an artifact chunk did not match its owner's digest; asking for it again", ["offset": "2097152"]).isEmpty)
    }

    /// An artifact is served only to a peer a task entitles: the executor a task was offered to gets its input, and
    /// another trusted peer asking for the same bytes, under that task or under none, is told no.
    @Test func anArtifactIsServedOnlyToThePeerATaskEntitles() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a"), b = try mesh.node("b"), mallory = try mesh.node("mallory")
        try a.trust(b, mallory)
        try b.trust(a)
        let runningA = try await a.start()
        let runningB = try await b.start {
            $0.joins = [runningA.address]
            $0.capabilities = [CapabilitySpec(name: "hold", executor: .exec(command: "sh", arguments: ["-c", "cat > /dev/null; sleep 20"]))]
        }
        #expect(await eventually { await runningA.members("alive").contains("b") })
        let file = "/tmp/am-secret-" + UUID().uuidString.prefix(8)
        defer { unlink(file) }
        try Data(repeating: 0x53, count: 4096).write(to: URL(fileURLWithPath: file))
        let secret = try ControlClient(socketPath: a.home.controlSocketPath).upload(file: file, name: "secret.bin", mediaType: "application/octet-stream")
        let body = try ControlAPI.encoder().encode(ControlAPI.SubmitRequest(
            capability: "hold", input: ControlAPI.JSONValue([String: Any]()), timeoutSeconds: 60, maxAttempts: 1, artifacts: [secret]))
        let answer = await runningA.node.handleControl(ControlRequest(method: "POST", path: "/v1/tasks", query: [:], body: Array(body)))
        let task = try ControlAPI.decoder().decode(ControlAPI.TaskInfo.self, from: Data(answer.body))
        // b runs it only once it has pulled the artifact from a.
        #expect(await eventually(timeout: .seconds(30)) {
            (try? await TaskIntegrationTests.wait(runningA, task.id, seconds: 0))?.state == "running"
        })

        let session = try await mallory.openSession(to: runningA.address)
        let digest = try #require(Hex.decode(secret.sha256))
        let taskID = try #require(TaskID(hex: task.id))
        let answers = try await session.executeThenClose { inbound, outbound throws -> [String] in
            var events = inbound.makeAsyncIterator()
            guard case .established? = try await events.next() else { return [String]() }
            var random = SystemRandomNumberGenerator()
            for asked in [taskID, TaskID(using: &random)] {
                try await outbound.write(.task(.artifactRequest(asked, digest: digest, offset: 0, length: 4096)))
            }
            var answers: [String] = []
            while answers.count < 2, let event = try await events.next() {
                switch event {
                case .message(.task(.artifactUnavailable(_, _, let reason)), _, _): answers.append("unavailable: \(reason)")
                case .message(.task(.artifactChunk(_, _, _, _, _)), _, _): answers.append("chunk")
                default: break
                }
            }
            return answers
        }
        #expect(answers == Array(repeating: "unavailable: not an artifact of that task here", count: 2), "\(answers)")
        await runningB.stop()
        await runningA.stop()
    }
}

import Foundation
import MeshCore
import MeshCrypto
import MeshTestKit
import MeshWire
import NIOCore
import NIOPosix
import Testing

@testable import MeshTransport
import MeshControl

/// Gossip membership between real nodes on loopback.
@Suite(.serialized) struct MembershipIntegrationTests {
    @Test func everyNodeLearnsTheWholeMeshThroughAnyMember() async throws {
        let mesh = try TestMesh()
        let names = ["a", "b", "c", "d"]
        let nodes = try names.map { try mesh.node($0) }
        var running: [RunningNode] = []
        for (index, node) in nodes.enumerated() {
            // A chain: each node knows only the one before it.
            running.append(try await node.start {
                $0.isOpen = true
                $0.capabilities = [CapabilitySpec(name: "echo-\(index)", executor: .builtinEcho)]
                if index > 0 { $0.joins = [running[index - 1].address] }
            })
        }
        for (index, node) in running.enumerated() {
            let others = Set(names.enumerated().filter { $0.offset != index }.map(\.element))
            // 30 s: with the whole suite on 2 cores, local timers' 200 ms probes can suspect a member for a while.
            #expect(await eventually(timeout: .seconds(30)) { await node.members("alive") == others }, "\(names[index]) did not see everyone")
        }
        let seenByA = await running[0].node.members().members.first { $0.name == "d" }
        #expect(seenByA?.capabilities.map(\.name) == ["echo-3"])
        for node in running.reversed() { await node.stop() }
    }

    @Test func aLeavingNodeIsSeenAsLeft() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let b = try mesh.node("b")
        let c = try mesh.node("c")
        let runningA = try await a.start { $0.isOpen = true }
        let runningB = try await b.start {
            $0.isOpen = true
            $0.joins = [runningA.address]
        }
        let runningC = try await c.start {
            $0.isOpen = true
            $0.joins = [runningA.address]
        }
        #expect(await eventually { await runningB.members("alive") == ["a", "c"] })
        runningC.node.requestLeave()
        _ = try? await runningC.task.value
        #expect(await eventually {
            let seenByA = await runningA.members("left")
            let seenByB = await runningB.members("left")
            return seenByA == ["c"] && seenByB == ["c"]
        })
        #expect(a.logs.matching("member declared dead").isEmpty, "a graceful leave is not a death")
        await runningB.stop()
        await runningA.stop()
    }

    /// `agentmesh trust` on a running node: the newly trusted peer's session opens, it becomes a member, and its
    /// capabilities can be used, without a restart (membership used to keep the trust list it started with).
    @Test func aPeerTrustedWhileTheNodeRunsBecomesAMember() async throws {
        let mesh = try TestMesh()
        let x = try mesh.node("x")
        let y = try mesh.node("y")
        try y.trust(x)
        let runningX = try await x.start()
        let runningY = try await y.start {
            $0.joins = [runningX.address]
            $0.capabilities = [CapabilitySpec(name: "echo", executor: .builtinEcho)]
        }
        // x refuses y until it trusts it.
        try await Task.sleep(for: .milliseconds(300))
        #expect(await runningX.members("alive").isEmpty)
        try x.trust(y)
        #expect(await eventually { await runningX.members("alive") == ["y"] }, "y never became a member of x")
        #expect(await eventually { await runningY.members("alive") == ["x"] })
        let id = try await TaskIntegrationTests.submit(runningX, "echo", ["n": 1])
        #expect(try await TaskIntegrationTests.wait(runningX, id).state == "completed")
        await runningY.stop()
        await runningX.stop()
    }

    /// An authenticated peer that gossips a record for another node, signed with its own key.
    @Test func aForgedRecordIsRejectedAndReportedAsMisbehaviour() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let victim = try mesh.node("victim")
        let mallory = try mesh.node("mallory")
        let runningA = try await a.start { $0.isOpen = true }

        let forged = MemberRecord(
            identity: victim.identity.publicIdentity, address: "127.0.0.1:1", incarnation: 5, capabilities: [],
            load: 0, signer: .ed25519(mallory.identity))
        let channel = try await mallory.openSession(to: runningA.address)
        try await channel.executeThenClose { inbound, outbound in
            var events = inbound.makeAsyncIterator()
            guard case .established? = try await events.next() else {
                Issue.record("mallory's session was not established")
                return
            }
            try await outbound.write(.membership(.gossip(updates: [.alive(forged)])))
            #expect(await eventually {
                !a.logs.matching("peer misbehaved", ["reason": "bad signature", "peer": mallory.id.short]).isEmpty
            })
        }
        let alive = await runningA.members("alive")
        #expect(!alive.contains("victim"))
        await runningA.stop()
    }
}

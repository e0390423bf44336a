import Foundation
import MeshCore
import MeshCrypto
import MeshTestKit
import MeshTransport
import Testing
import MeshControl

/// Real nodes on loopback: who gets in, who is refused and why, and that nothing a stranger does blocks a peer.
@Suite(.serialized) struct ConnectionTests {
    @Test func twoTrustedNodesAuthenticateAndListEachOther() async throws {
        let mesh = try TestMesh()
        let (a, b) = try mesh.trustedPair()
        let runningA = try await a.start()
        let runningB = try await b.start { $0.joins = [runningA.address] }
        // This suite's first test runs while every other suite starts its nodes on the same 2 cores: once in a full
        // run, 10 s were not enough. A correct join still shows within a second when alone.
        #expect(await eventually(timeout: .seconds(30)) { await runningA.peerIDs() == [b.id.description] })
        #expect(await eventually(timeout: .seconds(30)) { await runningB.peerIDs() == [a.id.description] })

        // The same view through the control socket, as `agentmesh members` reads it.
        let socket = a.home.controlSocketPath
        let members = try await offloaded {
            try ControlClient(socketPath: socket).get("/v1/members", as: ControlAPI.Members.self)
        }
        let peer = try #require(members.members.first { $0.id == b.id.description })
        #expect(peer.name == "b")
        #expect(peer.connection == "inbound")
        #expect(peer.trust == "trusted")
        #expect(peer.address == runningB.address.description)
        #expect(members.members.first?.connection == "self")
        await runningB.stop()
        await runningA.stop()
    }

    @Test func unlistedPeerIsRefusedWithTheReasonOnBothSides() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let stranger = try mesh.node("stranger")
        try stranger.trust(a)
        let runningA = try await a.start()
        let runningS = try await stranger.start { $0.joins = [runningA.address] }
        #expect(await eventually {
            !a.logs.matching("refused connection", ["reason": "not a trusted peer"]).isEmpty
        })
        #expect(await eventually {
            !stranger.logs.matching("cannot reach join address", ["reason": "a (\(a.id.short)) refused this node"]).isEmpty
        })
        #expect(await runningA.peerIDs().isEmpty)
        #expect(await runningS.peerIDs().isEmpty)
        #expect(stranger.logs.matching("peer authenticated").isEmpty)
        await runningS.stop()
        await runningA.stop()
    }

    @Test func openModeAdmitsAnyHolderOfTheNetworkKey() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let newcomer = try mesh.node("newcomer")
        let runningA = try await a.start { $0.isOpen = true }
        let runningN = try await newcomer.start {
            $0.isOpen = true
            $0.joins = [runningA.address]
        }
        #expect(await eventually { await runningA.peerIDs() == [newcomer.id.description] })
        let member = await runningA.node.members().members.first { $0.id == newcomer.id.description }
        #expect(member?.trust == "open")
        await runningN.stop()
        await runningA.stop()
    }

    @Test func wrongNetworkKeyIsStoppedAtTheGate() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let outsider = try mesh.node("outsider", networkKeyFile: mesh.foreignNetworkKeyFile())
        let runningA = try await a.start { $0.isOpen = true }
        let runningO = try await outsider.start {
            $0.isOpen = true
            $0.joins = [runningA.address]
        }
        #expect(await eventually {
            !a.logs.matching("refused connection", ["reason": "network-key check"]).isEmpty
        })
        #expect(await runningA.peerIDs().isEmpty)
        await runningO.stop()
        await runningA.stop()
    }

    /// Every kind of bad first bytes is refused with its reason, and a trusted peer still gets in afterwards.
    @Test func badBytesAreRefusedAndNeverBlockARealPeer() async throws {
        let mesh = try TestMesh()
        let (a, b) = try mesh.trustedPair()
        let runningA = try await a.start()
        let credentials = HandshakeCredentials(identity: b.identity, networkKey: b.networkKey, listenAddress: "")
        var rng = SeededGenerator(seed: 42)

        let cases: [(name: String, reason: String, attack: @Sendable (RawConnection) -> Void)] = [
            ("random bytes", "network-key check", { [noise = rng.bytes(HandshakeProtocol.helloLength)] in $0.sendFrame(noise) }),
            ("over-long length prefix", "exceeds the 65 allowed", { $0.send([0xff, 0xff] + [UInt8](repeating: 1, count: 100)) }),
            ("empty frame", "empty frame", { $0.send([0, 0]) }),
            ("truncated hello", "closed during the handshake", { connection in
                let hello = InitiatorHandshake(credentials: credentials).hello
                connection.send([0, UInt8(hello.count)] + hello.prefix(30))
                connection.finishSending()
            }),
            ("bit-flipped hello", "network-key check", { connection in
                var hello = InitiatorHandshake(credentials: credentials).hello
                hello[17] ^= 0x08
                connection.sendFrame(hello)
            }),
            ("garbage finish after a valid hello", "failed to decrypt", { connection in
                connection.sendFrame(InitiatorHandshake(credentials: credentials).hello)
                _ = connection.readFrame(within: .seconds(2))
                connection.sendFrame([UInt8](repeating: 0x5a, count: 200))
            }),
        ]
        for attack in cases {
            let before = a.logs.matching("refused connection", ["reason": attack.reason]).count
            let connection = try RawConnection(to: runningA.address)
            let closed = try await offloaded {
                attack.attack(connection)
                return connection.closedByPeer(within: .seconds(3))
            }
            #expect(closed, "\(attack.name): node kept the connection open")
            connection.shut()
            #expect(await eventually {
                a.logs.matching("refused connection", ["reason": attack.reason]).count > before
            }, "\(attack.name): no refusal logged with reason '\(attack.reason)'")
        }

        // A recorded hello, replayed on a second connection, is refused before any Diffie-Hellman.
        let hello = InitiatorHandshake(credentials: credentials).hello
        let first = try RawConnection(to: runningA.address)
        let answered = try await offloaded {
            first.sendFrame(hello)
            return first.readFrame(within: .seconds(2)) != nil
        }
        #expect(answered)
        let replay = try RawConnection(to: runningA.address)
        let replayClosed = try await offloaded {
            replay.sendFrame(hello)
            return replay.closedByPeer(within: .seconds(3))
        }
        #expect(replayClosed)
        #expect(await eventually { !a.logs.matching("refused connection", ["reason": "replay"]).isEmpty })
        first.shut()
        replay.shut()

        let runningB = try await b.start { $0.joins = [runningA.address] }
        #expect(await eventually { await runningA.peerIDs() == [b.id.description] })
        await runningB.stop()
        await runningA.stop()
    }

    @Test func silentConnectionsTimeOutAndNewerConnectionsDisplaceThem() async throws {
        let mesh = try TestMesh()
        let (a, b) = try mesh.trustedPair()
        let runningA = try await a.start {
            $0.maximumPendingHandshakes = 3
            $0.handshakeTimeout = .seconds(1)
        }
        #expect(await eventually { !a.logs.matching("listening").isEmpty })
        // One source address holds at most a quarter of the slots (here one of three): each newer connection from
        // it displaces the older one at once, and the last one times out.
        var silent: [RawConnection] = []
        for _ in 0..<3 {
            silent.append(try RawConnection(to: runningA.address))
            if silent.count > 1 {
                let older = silent[silent.count - 2]
                #expect(try await offloaded { older.closedByPeer(within: .milliseconds(500)) }, "the older one was not displaced")
            }
        }
        let last = silent[2]
        #expect(try await offloaded { last.closedByPeer(within: .seconds(3)) }, "silent connection was not timed out")
        for connection in silent { connection.shut() }
        #expect(await eventually {
            a.logs.matching("refused connection", ["reason": "did not finish within"]).count == 1
        })
        #expect(await eventually {
            a.logs.matching("refused connection", ["reason": "oldest pending handshake"]).count == 2
        })
        let runningB = try await b.start { $0.joins = [runningA.address] }
        #expect(await eventually { await runningA.peerIDs() == [b.id.description] })
        await runningB.stop()
        await runningA.stop()
    }

    @Test func stoppingANodeSendsAnAuthenticatedClose() async throws {
        let mesh = try TestMesh()
        let (a, b) = try mesh.trustedPair()
        let runningA = try await a.start()
        let runningB = try await b.start { $0.joins = [runningA.address] }
        #expect(await eventually { await runningA.peerIDs().count == 1 })
        await runningB.stop()
        #expect(await eventually {
            !a.logs.matching("peer disconnected", ["reason": "node is shutting down"]).isEmpty
        })
        #expect(await runningA.peerIDs().isEmpty)
        await runningA.stop()
    }

    @Test func dialerReconnectsWhenThePeerComesBack() async throws {
        let mesh = try TestMesh()
        let (a, b) = try mesh.trustedPair()
        let firstA = try await a.start()
        let runningB = try await b.start { $0.joins = [firstA.address] }
        #expect(await eventually { await runningB.peerIDs().count == 1 })
        await firstA.stop()
        #expect(await eventually { await runningB.peerIDs().isEmpty })
        let secondA = try await a.start { $0.listen = firstA.address }
        #expect(await eventually { await runningB.peerIDs() == [a.id.description] })
        await runningB.stop()
        await secondA.stop()
    }

    @Test func nodesThatDialEachOtherKeepOneConnection() async throws {
        let mesh = try TestMesh()
        let (a, b) = try mesh.trustedPair()
        let runningA = try await a.start()
        let runningB = try await b.start { $0.joins = [runningA.address] }
        #expect(await eventually { await runningA.peerIDs().count == 1 })
        // Restarting A with a join back to B makes both sides dial each other.
        await runningA.stop()
        let againA = try await a.start {
            $0.listen = runningA.address
            $0.joins = [runningB.address]
        }
        #expect(await eventually {
            let fromA = await againA.peerIDs()
            let fromB = await runningB.peerIDs()
            return fromA.count == 1 && fromB.count == 1
        })
        // Stable: no flapping between the two connections.
        let flapsBefore = a.logs.matching("peer disconnected").count
        try await Task.sleep(for: .seconds(1))
        #expect(a.logs.matching("peer disconnected").count == flapsBefore)
        #expect(await againA.peerIDs() == [b.id.description])
        await runningB.stop()
        await againA.stop()
    }
}

@Suite(.serialized) struct NodeStartupTests {
    @Test func portInUseIsAClearError() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let b = try mesh.node("b")
        let runningA = try await a.start()
        await #expect {
            _ = try await b.start { $0.listen = runningA.address }
        } throws: { error in
            "\(error)".contains("cannot listen on \(runningA.address)") && "\(error)".contains("in use")
        }
        await runningA.stop()
    }

    @Test func secondNodeOnTheSameHomeIsRefused() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let runningA = try await a.start()
        await #expect {
            _ = try await a.start()
        } throws: { error in
            "\(error)".contains("already running")
        }
        await runningA.stop()
    }

    @Test func controlSocketIsPrivateAndAnswersErrorsAsJSON() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let runningA = try await a.start()
        let attributes = try FileManager.default.attributesOfItem(atPath: a.home.controlSocketPath)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let client = ControlClient(socketPath: a.home.controlSocketPath)
        let missing = try await offloaded { try client.request(method: "GET", path: "/v1/nothing") }
        #expect(missing.status == 404)
        #expect(String(decoding: missing.body, as: UTF8.self).contains("no such endpoint"))
        #expect(try await offloaded { try client.request(method: "DELETE", path: "/v1/members") }.status == 405)
        let info = try await offloaded { try client.get("/v1/node", as: ControlAPI.NodeInfo.self) }
        #expect(info.identityLine == IdentityLine.render(a.identity.publicIdentity))
        #expect(info.listen == runningA.address.description)
        await runningA.stop()
        #expect(!FileManager.default.fileExists(atPath: a.home.controlSocketPath))
    }
}

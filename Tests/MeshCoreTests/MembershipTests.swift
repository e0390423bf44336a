import MeshCore
import MeshCrypto
import MeshTestKit
import Synchronization
import Testing

/// The membership machine in a deterministic in-memory mesh (virtual clock, seeded randomness).
@Suite struct MembershipSimulationTests {
    static func mesh(_ count: Int, seed: UInt64 = 1, loss: Double = 0) -> MembershipSimulation {
        var configuration = MembershipSimulation.Configuration(nodeCount: count, seed: seed, settings: .localTesting)
        configuration.loss = loss
        return MembershipSimulation(configuration)
    }

    /// README: per-node traffic stays flat as the mesh grows. In a settled mesh on LAN timers each node sends about
    /// the same number of membership messages a second with 30 members as with 10 (a probe, its ack and the
    /// occasional push-pull; gossip rides on them), not a number that grows with the mesh.
    @Test func perNodeTrafficStaysFlatFrom10To30Nodes() {
        func messagesPerNodePerSecond(_ count: Int) -> Double {
            var mesh = MembershipSimulation(MembershipSimulation.Configuration(nodeCount: count, seed: 7, settings: .lan))
            mesh.run(for: .seconds(10))  // settle
            let before = mesh.messagesSent
            mesh.run(for: .seconds(60))
            return Double(mesh.messagesSent - before) / Double(count) / 60
        }
        let (ten, thirty) = (messagesPerNodePerSecond(10), messagesPerNodePerSecond(30))
        #expect(ten > 1 && ten < 6, "\(ten)")
        #expect(thirty / ten < 1.25, "10 nodes: \(ten), 30 nodes: \(thirty) messages per node per second")
    }

    @Test func aJoinReachesEveryNodeThroughOneSeed() {
        var mesh = Self.mesh(20)
        mesh.run(for: .seconds(1))
        let joiner = mesh.join(via: 3)
        let converged = mesh.run(until: mesh.now + .seconds(10)) { mesh in
            mesh.fraction(seeing: joiner) { $0?.status == .alive } == 1
        }
        #expect(converged)
        // The joiner learned the whole mesh from its seed in one exchange, with no wait for a push-pull round.
        #expect(mesh.nodes[joiner].view.count == 20)
        #expect(mesh.misbehaviour.isEmpty)
    }

    @Test func aCrashedNodeIsDeclaredDeadEverywhereAndTheAccuserIsNamed() {
        var mesh = Self.mesh(12)
        mesh.run(for: .seconds(1))
        mesh.crash(5)
        let dead = mesh.run(until: mesh.now + .seconds(30)) { mesh in
            mesh.fraction(seeing: 5) { $0?.status == .dead } == 1
        }
        #expect(dead)
        let view = mesh.nodes[0].member(mesh.nodeID(5))
        #expect(view?.accuser != nil)
        #expect(mesh.events.contains { if case .suspected(let id, _, _) = $0.event { return id == mesh.nodeID(5) }; return false })
        #expect(mesh.liveNodesDeclaredDead().isEmpty, "no live node was declared dead")
        #expect(mesh.misbehaviour.isEmpty)
    }

    @Test func aRestartedNodeComesBackWithAHigherIncarnation() {
        var mesh = Self.mesh(8)
        mesh.run(for: .seconds(1))
        mesh.crash(2)
        #expect(mesh.run(until: mesh.now + .seconds(30)) { $0.fraction(seeing: 2) { $0?.status == .dead } == 1 })
        let deadIncarnation = mesh.nodes[0].member(mesh.nodeID(2))!.incarnation
        mesh.restart(2, via: 0)
        let back = mesh.run(until: mesh.now + .seconds(20)) { mesh in
            mesh.fraction(seeing: 2) { $0?.status == .alive && $0!.incarnation > deadIncarnation } == 1
        }
        #expect(back)
        #expect(mesh.events.contains { if case .refuted = $0.event { return $0.node == 2 }; return false })
    }

    @Test func aGracefulLeaveIsSeenEverywhereAndReapedLater() {
        var mesh = Self.mesh(10)
        mesh.run(for: .seconds(1))
        mesh.leave(4)
        #expect(mesh.run(until: mesh.now + .seconds(5)) { $0.fraction(seeing: 4) { $0?.status == .left } == 1 })
        #expect(mesh.liveNodesDeclaredDead().isEmpty)
        let reapAfter = mesh.configuration.settings.reapAfter
        #expect(mesh.run(until: mesh.now + reapAfter + .seconds(2)) { $0.fraction(seeing: 4) { $0 == nil } == 1 })
    }

    @Test func onePercentLossCausesNoFalseDeaths() {
        var mesh = Self.mesh(40, seed: 7, loss: 0.01)
        mesh.run(for: .seconds(60))
        #expect(mesh.liveNodesDeclaredDead().isEmpty)
        #expect(mesh.messagesLost > 0)
    }

    @Test func aPartitionHealsAndMembershipAgreesAgain() {
        var mesh = Self.mesh(10)
        mesh.run(for: .seconds(1))
        mesh.partition([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
        #expect(mesh.run(until: mesh.now + .seconds(60)) { $0.fraction(seeing: 7) { $0?.status == .dead } >= 0.5 })
        mesh.heal()
        // A dead member is only revived by a newer record: the partitioned side refutes when push-pull brings the
        // claims about it across.
        let agreed = mesh.run(until: mesh.now + .seconds(60)) { mesh in
            (0..<10).allSatisfy { node in mesh.fraction(seeing: node) { $0?.status == .alive } == 1 }
        }
        #expect(agreed)
    }

    @Test func theSameSeedReplaysExactly() {
        func trace(seed: UInt64) -> [String] {
            var mesh = Self.mesh(15, seed: seed, loss: 0.05)
            mesh.run(for: .seconds(2))
            mesh.crash(3)
            mesh.run(for: .seconds(20))
            return mesh.events.map { "\($0.node) \($0.time) \($0.event)" }
        }
        let first = trace(seed: 99)
        #expect(!first.isEmpty)
        #expect(first == trace(seed: 99))
        #expect(first != trace(seed: 100))
    }
}

/// Single-machine rules: signatures, trust, refutation, Lifeguard confirmations, unsolicited answers.
@Suite struct MembershipRuleTests {
    struct Node {
        let identity: NodeIdentity
        var machine: Membership
        init(_ name: String, trust: TrustPolicy = TrustPolicy(isOpen: true), settings: MembershipSettings = .localTesting) {
            self.identity = NodeIdentity(name: name)
            self.machine = Membership(
                identity: self.identity.publicIdentity, address: "127.0.0.1:1", trust: trust,
                signer: .ed25519(self.identity), settings: settings, seed: 1, now: .zero)
        }
        var id: NodeID { self.identity.nodeID }
        var signer: MembershipSigner { .ed25519(self.identity) }
        func record(incarnation: UInt64 = 0, address: String = "127.0.0.1:2") -> MemberRecord {
            MemberRecord(
                identity: self.identity.publicIdentity, address: address, incarnation: incarnation,
                capabilities: [Capability(name: "echo", capacity: 4)], load: 0, signer: self.signer)
        }
    }

    static func misbehaviour(_ directives: [MembershipDirective]) -> [String] {
        directives.compactMap { if case .misbehaving(_, let reason) = $0 { return reason }; return nil }
    }

    @Test func aRecordWithABadSignatureIsRejectedAndReported() {
        var a = Node("a")
        let b = Node("b")
        let mallory = Node("mallory")
        // A record for b's identity, signed by mallory: forged address and capabilities.
        let forged = MemberRecord(
            identity: b.identity.publicIdentity, address: "10.6.6.6:1", incarnation: 9, capabilities: [], load: 0,
            signer: mallory.signer)
        let directives = a.machine.receive(.gossip(updates: [.alive(forged)]), from: mallory.id, now: .zero)
        #expect(Self.misbehaviour(directives).contains { $0.contains("bad signature") })
        #expect(a.machine.member(b.id) == nil)
    }

    @Test func aRecordOfAnUntrustedNodeIsIgnoredQuietly() {
        let b = Node("b")
        let c = Node("c")
        var a = Node("a", trust: TrustPolicy(trusted: [PeerDescriptor(identity: b.identity.publicIdentity)]))
        let directives = a.machine.receive(.gossip(updates: [.alive(b.record()), .alive(c.record())]), from: b.id, now: .zero)
        #expect(a.machine.member(b.id)?.status == .alive)
        #expect(a.machine.member(c.id) == nil, "a cannot talk to c, so c must not be probed and falsely suspected")
        #expect(Self.misbehaviour(directives).isEmpty)
    }

    /// `untrust` on a running node: the member leaves this node's view at once (no probes, no live count, no work)
    /// without a death claim for the mesh, the gossip of others cannot bring it back, and trusting it again can.
    @Test func aMemberTheTrustListNoLongerAdmitsLeavesTheViewAtOnceWithoutAClaim() {
        let b = Node("b")
        let c = Node("c")
        let both = TrustPolicy(trusted: [b.identity, c.identity].map { PeerDescriptor(identity: $0.publicIdentity) })
        let onlyB = TrustPolicy(trusted: [PeerDescriptor(identity: b.identity.publicIdentity)])
        var a = Node("a", trust: both)
        _ = a.machine.receive(.gossip(updates: [.alive(b.record()), .alive(c.record())]), from: b.id, now: .zero)
        #expect(a.machine.liveCount == 3)
        a.machine.updateTrust(both)
        #expect(a.machine.leaveOutRefusedMembers().isEmpty, "an unchanged list drops no one")

        a.machine.updateTrust(onlyB)
        let directives = a.machine.leaveOutRefusedMembers()
        #expect(directives == [.changed(.distrusted(c.record()))])
        #expect(a.machine.member(c.id) == nil && a.machine.liveCount == 2)
        #expect(a.machine.member(b.id)?.status == .alive)
        let gossip = a.machine.receive(.gossip(updates: [.alive(c.record(incarnation: 5))]), from: b.id, now: .seconds(1))
        #expect(a.machine.member(c.id) == nil, "b still trusts c, and its gossip of c changes nothing here")
        #expect(!gossip.contains { if case .changed = $0 { return true } else { return false } })
        for second in 1...30 {
            for directive in a.machine.tick(now: .seconds(second)) {
                guard case .send(let message, let peer, _) = directive else { continue }
                #expect(peer != c.id, "c is not probed: \(message)")
                let updates: [MembershipUpdate]
                switch message {
                case .gossip(let carried), .ping(_, let carried), .pingRequest(_, _, let carried), .pushPull(_, let carried):
                    updates = carried
                default: updates = []
                }
                #expect(!updates.contains { $0.subject == c.id }, "no claim about c is spread")
            }
        }

        a.machine.updateTrust(both)
        _ = a.machine.receive(.gossip(updates: [.alive(c.record(incarnation: 5))]), from: c.id, now: .seconds(31))
        #expect(a.machine.member(c.id)?.status == .alive, "trusted again, its record is taken")
    }

    /// A refused connection to a member's address is evidence, not a hint: dead at once, claimed by this node,
    /// and refuted by the member if it comes back.
    @Test func aMemberThatRefusesConnectionsIsDeadAtOnce() {
        var a = Node("a")
        let b = Node("b")
        _ = a.machine.receive(.gossip(updates: [.alive(b.record())]), from: b.id, now: .zero)
        #expect(a.machine.member(b.id)?.status == .alive)
        #expect(a.machine.refused(a.id, now: .zero).isEmpty, "never itself")
        let directives = a.machine.refused(b.id, now: .seconds(1))
        #expect(a.machine.member(b.id)?.status == .dead)
        #expect(directives.contains { if case .changed(.died(b.id, _, a.id)) = $0 { return true } else { return false } })
        #expect(a.machine.refused(b.id, now: .seconds(2)).isEmpty, "already dead")
        _ = a.machine.receive(.gossip(updates: [.alive(b.record(incarnation: 1))]), from: b.id, now: .seconds(3))
        #expect(a.machine.member(b.id)?.status == .alive, "back with a higher incarnation")
    }

    /// One trusted peer that sends many copies of a well-signed record of a node this one does not trust costs it
    /// no signature checks at all (trust is checked first); a bad update ends the work on its message.
    @Test func cheapChecksComeFirstAndABadUpdateEndsItsMessage() {
        let verifications = Counter()
        let counting = MembershipSigner(sign: { _ in [] }, verify: { signature, _, _ in
            verifications.increment()
            return signature.isEmpty
        })
        let b = Node("b")
        let stranger = Node("stranger")
        var a = Membership(
            identity: NodeIdentity(name: "a").publicIdentity, address: "127.0.0.1:1",
            trust: TrustPolicy(trusted: [PeerDescriptor(identity: b.identity.publicIdentity)]), signer: counting,
            settings: .localTesting, seed: 1, now: .zero)
        let strangerRecord = MemberRecord(
            identity: stranger.identity.publicIdentity, address: "127.0.0.1:9", incarnation: 1, capabilities: [],
            load: 0, signer: .unsigned)
        let flood = [MembershipUpdate](repeating: .alive(strangerRecord), count: 10_000)
        #expect(Self.misbehaviour(a.receive(.gossip(updates: flood), from: b.id, now: .zero)).isEmpty)
        #expect(verifications.value == 0, "no record of an untrusted node is verified")
        #expect(a.member(stranger.id) == nil)

        let forged = MemberRecord(
            identity: b.identity.publicIdentity, address: "10.6.6.6:1", incarnation: 9, capabilities: [], load: 0,
            signer: Node("mallory").signer)
        let rest = [MembershipUpdate](repeating: .alive(forged), count: 1_000)
        let directives = a.receive(.gossip(updates: [.alive(forged)] + rest), from: b.id, now: .zero)
        #expect(Self.misbehaviour(directives).count == 1)
        #expect(verifications.value == 1, "the rest of a message with a bad update is not looked at")
    }

    @Test func recordsAndMessagesRoundTripTheCodec() throws {
        let b = Node("b")
        let claim = StatusClaim(kind: .suspect, target: b.id, incarnation: 3, accuser: b.id, signer: b.signer)
        let messages: [MembershipMessage] = [
            .ping(sequence: 1, updates: [.alive(b.record())]), .ack(sequence: 2, updates: []),
            .pingRequest(sequence: 3, target: b.id, updates: [.claim(claim)]),
            .indirectAck(sequence: 4, target: b.id, updates: []), .nack(sequence: 5, target: b.id),
            .gossip(updates: [.alive(b.record(incarnation: 7)), .claim(claim)]),
            .pushPull(isReply: true, updates: [.alive(b.record())]),
        ]
        for message in messages {
            let decoded = try MembershipMessage(decoding: message.encoded())
            #expect(decoded == message)
        }
        #expect(b.record().isValid(using: b.signer))
        var tampered = b.record().incarnation
        tampered += 1
        #expect(!b.record().updated(incarnation: tampered, signer: Node("x").signer).isValid(using: b.signer))
    }

    @Test func anUnknownProtocolVersionIsRefused() throws {
        let b = Node("b")
        var bytes = MembershipMessage.gossip(updates: [.alive(b.record())]).encoded()
        bytes[6] = 9  // the record's version byte: tag(1) + count(4) + kind(1)
        #expect(throws: MembershipMessage.DecodeError.record(.unsupportedVersion(9))) {
            try MembershipMessage(decoding: bytes)
        }
    }

    @Test func garbageNeverTrapsTheDecoder() {
        var rng = SeededGenerator(seed: 5)
        let valid = MembershipMessage.gossip(updates: [.alive(Node("b").record())]).encoded()
        for _ in 0..<3000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            _ = try? MembershipMessage(decoding: Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng))))
            _ = try? MembershipMessage(decoding: rng.bytes(Int.random(in: 0...300, using: &rng)))
        }
        // A huge claimed update count is refused before anything is allocated for it.
        #expect(throws: MembershipMessage.DecodeError.self) {
            try MembershipMessage(decoding: [6, 0xff, 0xff, 0xff, 0xff])
        }
    }

    @Test func anAckForAPingNeverSentIsMisbehaviour() {
        var a = Node("a")
        let b = Node("b")
        _ = a.machine.receive(.gossip(updates: [.alive(b.record())]), from: b.id, now: .zero)
        let directives = a.machine.receive(.ack(sequence: 77, updates: []), from: b.id, now: .zero)
        #expect(Self.misbehaviour(directives).contains { $0.contains("never sent") })
        let nack = a.machine.receive(.nack(sequence: 1, target: b.id), from: b.id, now: .zero)
        #expect(!Self.misbehaviour(nack).isEmpty)
    }

    @Test func aLateAckIsIgnoredNotReported() {
        var a = Node("a")
        let b = Node("b")
        _ = a.machine.receive(.gossip(updates: [.alive(b.record())]), from: b.id, now: .zero)
        var sequence: UInt32?
        var now = Duration.zero
        while sequence == nil, now < .seconds(2) {
            now += .milliseconds(10)
            for case .send(.ping(let s, _), let target, _) in a.machine.tick(now: now) where target == b.id {
                sequence = s
            }
        }
        let probe = try! #require(sequence)
        // The probe period ends without an answer; the answer comes afterwards.
        for step in 1...100 { _ = a.machine.tick(now: now + .milliseconds(10 * step)) }
        let late = a.machine.receive(.ack(sequence: probe, updates: []), from: b.id, now: now + .seconds(2))
        #expect(Self.misbehaviour(late).isEmpty)
    }

    @Test func aClaimAgainstThisNodeIsRefutedWithAHigherIncarnation() {
        var a = Node("a")
        let b = Node("b")
        _ = a.machine.receive(.gossip(updates: [.alive(b.record())]), from: b.id, now: .zero)
        let claim = StatusClaim(kind: .suspect, target: a.id, incarnation: 0, accuser: b.id, signer: b.signer)
        let directives = a.machine.receive(.gossip(updates: [.claim(claim)]), from: b.id, now: .zero)
        #expect(a.machine.local.incarnation == 1)
        #expect(directives.contains(.changed(.refuted(claim: .suspect, by: b.id, newIncarnation: 1))))
        #expect(a.machine.localHealth == 1, "being suspected raises the local health multiplier")
    }

    @Test func aClaimSignedBySomeoneElseIsRejected() {
        var a = Node("a")
        let b = Node("b")
        let c = Node("c")
        _ = a.machine.receive(.gossip(updates: [.alive(b.record()), .alive(c.record())]), from: b.id, now: .zero)
        // c "accuses" b, but the signature is b's own key: forged accuser.
        let forged = StatusClaim(kind: .dead, target: b.id, incarnation: 0, accuser: c.id, signer: b.signer)
        let directives = a.machine.receive(.gossip(updates: [.claim(forged)]), from: b.id, now: .zero)
        #expect(a.machine.member(b.id)?.status == .alive)
        #expect(Self.misbehaviour(directives).contains { $0.contains("bad signature") })
    }

    @Test func independentConfirmationsShortenASuspicion() {
        var settings = MembershipSettings.localTesting
        settings.indirectChecks = 3
        var a = Node("a", settings: settings)
        let others = (0..<5).map { Node("m\($0)") }
        _ = a.machine.receive(.gossip(updates: others.map { .alive($0.record()) }), from: others[0].id, now: .zero)
        let target = others[0]
        func suspicion(by accuser: Node) -> MembershipUpdate {
            .claim(StatusClaim(kind: .suspect, target: target.id, incarnation: 0, accuser: accuser.id, signer: accuser.signer))
        }
        _ = a.machine.receive(.gossip(updates: [suspicion(by: others[1])]), from: others[1].id, now: .zero)
        // Find when a single accusation would expire, on a copy.
        var lone = a.machine
        var loneDeath = Duration.zero
        for step in 1...2000 where lone.member(target.id)?.status == .suspect {
            loneDeath = .milliseconds(10 * step)
            _ = lone.tick(now: loneDeath)
        }
        for accuser in others[2...4] {
            _ = a.machine.receive(.gossip(updates: [suspicion(by: accuser)]), from: accuser.id, now: .zero)
        }
        #expect(a.machine.member(target.id)?.confirmations == 4)
        var confirmedDeath = Duration.zero
        for step in 1...2000 where a.machine.member(target.id)?.status == .suspect {
            confirmedDeath = .milliseconds(10 * step)
            _ = a.machine.tick(now: confirmedDeath)
        }
        #expect(a.machine.member(target.id)?.status == .dead)
        #expect(confirmedDeath < loneDeath, "confirmed: \(confirmedDeath), alone: \(loneDeath)")
    }

    @Test func mergingIsIdempotentAndOrderIndependent() {
        let b = Node("b")
        let c = Node("c")
        let updates: [MembershipUpdate] = [
            .alive(b.record(incarnation: 1)), .alive(b.record(incarnation: 3)), .alive(c.record()),
            .claim(StatusClaim(kind: .suspect, target: b.id, incarnation: 3, accuser: c.id, signer: c.signer)),
            .claim(StatusClaim(kind: .suspect, target: b.id, incarnation: 2, accuser: c.id, signer: c.signer)),
        ]
        func state(_ order: [MembershipUpdate]) -> [String] {
            var a = Node("a")
            // Known first, so every claim's accuser can be checked whatever the order.
            _ = a.machine.receive(.gossip(updates: [.alive(c.record())]), from: c.id, now: .zero)
            for update in order + order { _ = a.machine.receive(.gossip(updates: [update]), from: c.id, now: .zero) }
            return a.machine.view.map { "\($0.record.name) \($0.status) \($0.incarnation)" }.sorted()
        }
        var rng = SeededGenerator(seed: 3)
        let reference = state(updates)
        #expect(reference == ["b suspect 3", "c alive 0"])
        for _ in 0..<20 { #expect(state(updates.shuffled(using: &rng)) == reference) }
    }
}

/// Counts calls from a `@Sendable` closure.
final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { self.count.withLock { $0 += 1 } }
    var value: Int { self.count.withLock { $0 } }
}

import MeshCore
import MeshCrypto
import Testing

/// Limits, audit entries, bans and transcripts for one node's peers, on a manual clock.
@Suite struct PeerAccountabilityTests {
    static let local = NodeIdentity(name: "a")
    static let peer = NodeIdentity(name: "b")
    static var peerID: NodeID { peer.publicIdentity.nodeID }
    static let handshakeHash = [UInt8](repeating: 7, count: 32)

    static func accountability(offers: Rate = Rate(perSecond: 10, burst: 10)) -> PeerAccountability {
        var limits = PeerLimiter<NodeID>.Settings()
        limits.rates[.offers] = offers
        var machine = PeerAccountability(limits: limits, signingKey: local.signingKey, checkpointInterval: .seconds(5))
        _ = machine.sessionStarted(1, peer: peer.publicIdentity, handshakeHash: handshakeHash, detail: "inbound", time: 0)
        return machine
    }

    static func offer(_ n: UInt64) -> TaskMessage {
        .offer(TaskOffer(id: TaskID(high: 0, low: n), epoch: 1, capability: "echo", input: [], timeRemaining: .seconds(9)))
    }

    static func events(_ actions: [PeerAccountability.Action]) -> [AuditEvent] {
        actions.compactMap { if case .audit(let entry, _) = $0 { return entry.event } else { return nil } }
    }

    @Test func aSessionIsAuditedWhenItStartsAndOnceWhenItEnds() {
        var machine = PeerAccountability(limits: .init(), signingKey: Self.local.signingKey, checkpointInterval: .seconds(5))
        let started = machine.sessionStarted(4, peer: Self.peer.publicIdentity, handshakeHash: Self.handshakeHash, detail: "x", time: 1)
        #expect(Self.events(started) == [.connected])
        #expect(machine.peers[Self.peerID]?.name == "b")
        #expect(Self.events(machine.sessionEnded(4, reason: "peer closed", time: 2)) == [.disconnected])
        #expect(machine.sessionEnded(4, reason: "again", time: 3).isEmpty)
    }

    /// Open mode admits any holder of the network key: identities that came and went, owing nothing, are forgotten;
    /// a connected peer and a banned one are remembered.
    @Test func peersThatAreGoneAndOweNothingAreForgotten() {
        var machine = Self.accountability(offers: Rate(perSecond: 1, burst: 2))
        let visitors = (0..<50).map { NodeIdentity(name: "v\($0)").publicIdentity }
        for (index, visitor) in visitors.enumerated() {
            let session = UInt64(100 + index)
            _ = machine.sessionStarted(session, peer: visitor, handshakeHash: Self.handshakeHash, detail: "x", time: 0)
            _ = machine.received(.task(Self.offer(1), digest: []), bytes: 80, from: visitor.nodeID, session: session, now: .zero, time: 0)
            _ = machine.sessionEnded(session, reason: "gone", time: 0)
        }
        // b, still connected, floods until it is banned, then its session ends.
        for n in 0..<200 where machine.limiter.bannedUntil(Self.peerID, now: .milliseconds(n)) == nil {
            _ = machine.received(
                .task(Self.offer(UInt64(n)), digest: []), bytes: 80, from: Self.peerID, session: 1, now: .milliseconds(n), time: 0)
        }
        #expect(machine.limiter.banCount(Self.peerID) == 1)
        _ = machine.sessionEnded(1, reason: "banned", time: 0)
        let stayer = NodeIdentity(name: "stayer").publicIdentity
        _ = machine.sessionStarted(9, peer: stayer, handshakeHash: Self.handshakeHash, detail: "x", time: 0)
        #expect(machine.peers.count == 52)

        machine.forgetIdlePeers(now: .milliseconds(500))
        #expect(machine.peers.count == 52, "the visitors' buckets are not full again yet")
        machine.forgetIdlePeers(now: .seconds(60))
        #expect(Set(machine.peers.keys) == [Self.peerID, stayer.nodeID], "the banned peer and the connected one stay")
        #expect(machine.limiter.banCount(Self.peerID) == 1, "its ban is remembered, so a second one lasts longer")
    }

    @Test func aTaskMessageIsAuditedWithItsDigestThenDelivered() {
        var machine = Self.accountability()
        let digest = [UInt8](repeating: 1, count: 32)
        let (deliver, actions) = machine.received(
            .task(Self.offer(1), digest: digest), bytes: 80, from: Self.peerID, session: 1, now: .zero, time: 5)
        #expect(deliver)
        guard case .audit(let entry, let peer)? = actions.first else { Issue.record("no audit entry"); return }
        #expect(entry.event == .received && entry.digest == digest && entry.task == TaskID(high: 0, low: 1))
        #expect(peer == Self.peerID && entry.session == 1)
        #expect(machine.received.messages == 1 && machine.received.bytes == 80, "node-wide totals for /v1/node")
    }

    /// Over the limit an offer is declined `rate_limited`; a peer that stays over it is banned and then nothing
    /// it sends is acted on, and a new session is refused, until the ban ends.
    @Test func offersOverTheLimitAreDeclinedThenThePeerIsBanned() {
        var machine = Self.accountability(offers: Rate(perSecond: 1, burst: 2))
        var declined = 0
        var ban: (until: Duration, reason: String)?
        for n in 0..<200 where ban == nil {
            let (deliver, actions) = machine.received(
                .task(Self.offer(UInt64(n)), digest: []), bytes: 80, from: Self.peerID, session: 1, now: .milliseconds(n), time: 0)
            for action in actions {
                if case .declineRateLimited = action { declined += 1 }
                if case .ban(_, let until, let reason) = action { ban = (until, reason) }
            }
            if n < 2 { #expect(deliver, "the burst is accepted") }
        }
        #expect(declined > 0)
        let (until, reason) = try! #require(ban)
        #expect(reason.contains("stayed over its offers limit"))
        #expect(machine.isBanned(Self.peerID, now: until - .seconds(1)))
        let during = machine.received(.membership(updates: 1), bytes: 10, from: Self.peerID, session: 1, now: until - .seconds(1), time: 0)
        #expect(!during.deliver)
        let refused = machine.admit(Self.peer.publicIdentity, overrides: [:], from: "10.0.0.2:1", now: until - .seconds(1), time: 0)
        #expect(refused.refusal?.hasPrefix("banned for another") == true)
        #expect(Self.events(refused.actions) == [.handshakeRefused])
        #expect(machine.admit(Self.peer.publicIdentity, overrides: [:], from: "x", now: until, time: 0).refusal == nil)
    }

    /// Keepalives and messages of unknown kinds are counted too: a flood of pings is refused and then banned.
    @Test func aFloodOfPingsIsCountedAndBanned() {
        var machine = Self.accountability()
        var banned = false
        var delivered = 0
        for n in 0..<1_000 where !banned {
            let (deliver, actions) = machine.received(.other, bytes: 20, from: Self.peerID, session: 1, now: .microseconds(n), time: 0)
            if deliver { delivered += 1 }
            banned = actions.contains { if case .ban = $0 { return true } else { return false } }
        }
        #expect(banned, "a thousand pings at once get the peer banned")
        #expect(delivered == 400, "the gossip burst is what gets through")
    }

    /// After 64 task messages, and a second after the first unsigned one, this node signs what it sent; the
    /// signature verifies against the peer's own count of what it received.
    @Test func whatThisNodeSentIsSignedByCountAndByTime() throws {
        var machine = Self.accountability()
        var received = Transcript()
        var checkpoints: [TranscriptCheckpoint] = []
        for n in 0..<70 {
            let digest = SHA256.hash([UInt8(n)])
            received.append(digest: digest)
            for case .sendTranscript(let checkpoint, 1, Self.peerID) in machine.sent(
                Self.offer(UInt64(n)), digest: digest, session: 1, now: .milliseconds(n), time: 0)
            {
                checkpoints.append(checkpoint)
            }
        }
        #expect(checkpoints.map(\.count) == [64])
        #expect(machine.tick(now: .milliseconds(500), time: 0).actions.isEmpty, "the rest has not waited a second yet")
        for case .sendTranscript(let checkpoint, _, _) in machine.tick(now: .milliseconds(1_100), time: 0).actions {
            checkpoints.append(checkpoint)
        }
        let last = try #require(checkpoints.last)
        #expect(last.count == 70 && last.transcript == received.hash && last.handshakeHash == Self.handshakeHash)
        #expect(last.isSigned(by: Self.local.signingKey.publicKey))
        #expect(machine.tick(now: .seconds(3), time: 0).actions.isEmpty, "nothing new to sign")
    }

    /// The peer's signature over what it sent is kept when it matches what arrived; a lie is misbehaviour, and
    /// three of them are a ban.
    @Test func aPeersTranscriptIsCheckedAndALieCountsTowardsABan() {
        var machine = Self.accountability()
        var sent = Transcript()
        for n in 0..<3 {
            let digest = SHA256.hash([UInt8(n)])
            sent.append(digest: digest)
            _ = machine.received(.task(Self.offer(UInt64(n)), digest: digest), bytes: 80, from: Self.peerID, session: 1, now: .zero, time: 0)
        }
        let honest = TranscriptCheckpoint(signing: sent, handshakeHash: Self.handshakeHash, with: Self.peer.signingKey)
        let kept = machine.received(.transcript(honest), bytes: 136, from: Self.peerID, session: 1, now: .zero, time: 0)
        #expect(!kept.deliver && Self.events(kept.actions) == [.peerCheckpoint])

        var lie = sent
        lie.append(digest: SHA256.hash([9]))
        let lying = TranscriptCheckpoint(signing: lie, handshakeHash: Self.handshakeHash, with: Self.peer.signingKey)
        var banned = false
        for strike in 1...3 {
            let actions = machine.received(.transcript(lying), bytes: 136, from: Self.peerID, session: 1, now: .zero, time: 0).actions
            #expect(Self.events(actions).first == .misbehaved)
            banned = actions.contains { if case .ban = $0 { return true } else { return false } }
            #expect(banned == (strike == 3))
        }
        let forged = TranscriptCheckpoint(signing: sent, handshakeHash: Self.handshakeHash, with: Ed25519SigningKey())
        let reason = machine.received(.transcript(forged), bytes: 136, from: Self.peerID, session: 1, now: .zero, time: 0)
            .actions.compactMap { if case .misbehaved(_, let why) = $0 { return why } else { return nil } }
        #expect(reason == ["its transcript checkpoint carries a bad signature"])
    }

    /// Strangers' refusals go to the shared log at a bounded rate; the rest are counted in a later record.
    @Test func refusalsOfStrangersAreRecordedAtABoundedRate() {
        var machine = Self.accountability()
        var recorded = 0
        for n in 0..<100 {
            let stranger = NodeIdentity(name: "s\(n)").publicIdentity
            for case .auditRefusal in machine.handshakeRefused(
                stranger, detail: "refused here: not trusted", hasLog: false, isTrusted: false, now: .milliseconds(n), time: 0)
            {
                recorded += 1
            }
        }
        #expect(recorded == PeerAccountability.refusalRecordsPerSecond)
        let summary = machine.tick(now: .milliseconds(1_000), time: 0).actions.compactMap { action -> String? in
            if case .auditRefusal(let entry) = action { return entry.detail } else { return nil }
        }
        #expect(summary == ["80 more refused handshakes not recorded one by one"])
        // A trusted peer's refusal (a ban, a wrong key) always goes to its own log.
        let own = machine.handshakeRefused(
            Self.peer.publicIdentity, detail: "refused here: banned", hasLog: true, isTrusted: true, now: .seconds(2), time: 0)
        #expect(own.count == 1 && Self.events(own) == [.handshakeRefused])
    }

    @Test func theAuditLogsAreAskedForACheckpointEveryInterval() {
        var machine = Self.accountability()
        #expect(machine.tick(now: .seconds(1), time: 0).checkpointDue == false)
        #expect(machine.tick(now: .seconds(5), time: 0).checkpointDue)
        #expect(machine.tick(now: .seconds(6), time: 0).checkpointDue == false)
        #expect(machine.tick(now: .seconds(10), time: 0).checkpointDue)
    }
}

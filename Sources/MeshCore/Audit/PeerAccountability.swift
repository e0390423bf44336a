public import MeshCrypto

/// Per-peer accountability as a pure state machine: what each message from an authenticated peer costs against
/// its limits (``PeerLimiter``), which audit entries every interaction produces, when a peer is banned, and when this
/// node signs the transcript of the task messages it sent in a session (so the peer's log holds this node's word).
///
/// It reads no clock: callers pass core time (`now`, for limits and timers) and wall-clock milliseconds (`time`,
/// for the records people read), and carry out the ``Action``s it returns, in order.
public struct PeerAccountability: Sendable {
    public enum Action: Sendable, Equatable {
        /// Append to the peer's audit log.
        case audit(AuditEntry, peer: NodeID)
        /// Send this node's signature over what it sent in `session` (with `peer`).
        case sendTranscript(TranscriptCheckpoint, session: UInt64, peer: NodeID)
        /// Tell the submitter its offer was over the limit (it places the task elsewhere).
        case declineRateLimited(TaskID, epoch: UInt32, peer: NodeID)
        /// The peer did something an honest peer never does (logged; already audited and counted).
        case misbehaved(NodeID, reason: String)
        /// Close the peer's session (the close frame says why) and refuse it until `until`.
        case ban(NodeID, until: Duration, reason: String)
        /// Append to this node's own log of refused handshakes (identities nobody here trusts get no log of their
        /// own, so a stream of fresh identities costs one file, not one per identity).
        case auditRefusal(AuditEntry)
    }

    /// What a message from a peer is, as far as accounting goes.
    public enum Inbound: Sendable {
        /// A task message, with the SHA-256 of its wire bytes.
        case task(TaskMessage, digest: [UInt8])
        /// The peer's signed transcript of what it sent.
        case transcript(TranscriptCheckpoint)
        /// A membership message carrying this many member updates (each one is work: a lookup, maybe a signature).
        case membership(updates: Int)
        /// Keepalives and anything else the session layer handles.
        case other
    }

    /// What the audit follows in one authenticated session.
    private struct Session: Sendable {
        let peer: NodeID
        let handshakeHash: [UInt8]
        /// Task messages this node sent, and how many of them its last signature covered.
        var sent = Transcript()
        var sentSigned: UInt64 = 0
        var firstUnsignedAt: Duration?
        /// Task messages the peer sent, to check its signatures against.
        var received = Transcript()
    }

    /// A transcript is signed after this many task messages, or this long after the first one it would cover.
    public static let transcriptEvery: UInt64 = 64
    public static let transcriptDelay: Duration = .seconds(1)

    public private(set) var limiter: PeerLimiter<NodeID>
    /// Every peer that completed a handshake since this node started (names and keys for records and reports).
    public private(set) var peers: [NodeID: PeerIdentity] = [:]
    /// Every message of every authenticated session since the node started, and their bytes (kept when a peer's
    /// own counters are forgotten).
    public private(set) var received: (messages: UInt64, bytes: UInt64) = (0, 0)
    private var sessions: [UInt64: Session] = [:]
    private let signingKey: Ed25519SigningKey
    private let checkpointInterval: Duration
    private var checkpointRequestedAt: Duration = .zero
    /// Refused handshakes of strangers recorded in the current second, and those left out since the last record.
    private var refusals: (second: Int64, recorded: Int, skipped: Int) = (0, 0, 0)
    /// At most this many refusals of strangers a second are recorded one by one; the rest are counted.
    public static let refusalRecordsPerSecond = 20

    public init(limits: PeerLimiter<NodeID>.Settings, signingKey: Ed25519SigningKey, checkpointInterval: Duration) {
        self.limiter = PeerLimiter(settings: limits)
        self.signingKey = signingKey
        self.checkpointInterval = checkpointInterval
    }

    public func isBanned(_ peer: NodeID, now: Duration) -> Bool { self.limiter.bannedUntil(peer, now: now) != nil }

    // MARK: - Sessions

    /// A handshake finished. A banned peer is refused (audited; the node closes with the reason returned); anyone
    /// else gets its descriptor's limits, if any.
    public mutating func admit(
        _ peer: PeerIdentity, overrides: [LimitClass: Rate], from remote: String, now: Duration, time: Int64
    ) -> (refusal: String?, actions: [Action]) {
        guard let until = self.limiter.bannedUntil(peer.nodeID, now: now) else {
            self.limiter.setOverrides(overrides, for: peer.nodeID)
            return (nil, [])
        }
        self.peers[peer.nodeID] = self.peers[peer.nodeID] ?? peer
        let reason = "banned for another \(Int((until - now).seconds.rounded())) s"
        return (reason, [.audit(
            AuditEntry(.handshakeRefused, time: time, detail: "refused here: \(reason) (from \(remote))"), peer: peer.nodeID)])
    }

    public mutating func sessionStarted(
        _ number: UInt64, peer: PeerIdentity, handshakeHash: [UInt8], detail: String, time: Int64
    ) -> [Action] {
        self.peers[peer.nodeID] = peer
        self.sessions[number] = Session(peer: peer.nodeID, handshakeHash: handshakeHash)
        return [.audit(
            AuditEntry(.connected, time: time, session: number, detail: detail, extra: handshakeHash), peer: peer.nodeID)]
    }

    /// Peers with no session, no ban on record and full buckets are forgotten (their limits start afresh if they
    /// come back), so a node in open mode does not grow with every identity that ever connected.
    public mutating func forgetIdlePeers(now: Duration) {
        let connected = Set(self.sessions.values.map(\.peer))
        self.limiter.forgetIdle(now: now, except: connected)
        let remembered = self.limiter.keys
        self.peers = self.peers.filter { connected.contains($0.key) || remembered.contains($0.key) }
    }

    public mutating func sessionEnded(_ number: UInt64, reason: String, time: Int64) -> [Action] {
        guard let session = self.sessions.removeValue(forKey: number) else { return [] }
        return [.audit(AuditEntry(.disconnected, time: time, session: number, detail: reason), peer: session.peer)]
    }

    /// A handshake this node refused, or the peer refused. A peer that is trusted, or already has a log, gets the
    /// record in its own log; a stranger's refusal goes to the shared refusal log, at a bounded rate.
    public mutating func handshakeRefused(
        _ peer: PeerIdentity, detail: String, hasLog: Bool, isTrusted: Bool, now: Duration, time: Int64
    ) -> [Action] {
        if hasLog || isTrusted {
            self.peers[peer.nodeID] = self.peers[peer.nodeID] ?? peer
            return [.audit(AuditEntry(.handshakeRefused, time: time, detail: detail), peer: peer.nodeID)]
        }
        let second = Int64((now.seconds).rounded(.down))
        if second != self.refusals.second { self.refusals = (second, 0, self.refusals.skipped) }
        guard self.refusals.recorded < Self.refusalRecordsPerSecond else {
            self.refusals.skipped += 1
            return []
        }
        self.refusals.recorded += 1
        var note = "\(peer.name) \(peer.nodeID): \(detail)"
        if self.refusals.skipped > 0 {
            note += " (and \(self.refusals.skipped) more refused handshakes not recorded one by one)"
            self.refusals.skipped = 0
        }
        return [.auditRefusal(AuditEntry(.handshakeRefused, time: time, detail: note, extra: peer.identityKey.bytes))]
    }

    // MARK: - Receiving

    /// Every message of an authenticated session: task messages are audited first (before the node acts on them),
    /// then everything is counted against the peer's limits. `deliver` says whether the node acts on it.
    public mutating func received(
        _ inbound: Inbound, bytes: Int, from peer: NodeID, session number: UInt64, now: Duration, time: Int64
    ) -> (deliver: Bool, actions: [Action]) {
        var actions: [Action] = []
        self.received.messages += 1
        self.received.bytes += UInt64(bytes)
        switch inbound {
        case .task(let task, let digest):
            self.sessions[number]?.received.append(digest: digest)
            actions.append(.audit(AuditEntry(
                .received, time: time, session: number, message: task.tag, task: task.taskID, epoch: task.epoch,
                digest: digest, detail: Self.detail(of: task)), peer: peer))
        case .transcript(let checkpoint):
            return (false, self.checkTranscript(checkpoint, from: peer, session: number, now: now, time: time))
        case .membership, .other:
            break
        }
        // A peer being cut off: its connection is closing; nothing more from it is acted on.
        guard !self.isBanned(peer, now: now) else { return (false, actions) }
        var classes: [(LimitClass, Double)] = [(.bytes, Double(bytes))]
        switch inbound {
        // A message stuffed with updates costs accordingly: one token, plus one per 32 updates.
        case .membership(let updates): classes.append((.gossip, 1 + Double(updates / 32)))
        case .task(.offer, _), .task(.input, _): classes.append((.offers, 1))
        case .task(.event, _): classes.append((.events, 1))
        case .task(.result, _), .task(.log, _), .task(.progress, _), .task(.eventAck, _), .task(.inputRequired, _),
            .task(.artifactUnavailable, _):
            classes.append((.results, 1))
        // Asking for an artifact costs what is asked for, as if it had been sent here: serving a peer that asks for
        // the same bytes again and again is a flood like receiving them.
        case .task(.artifactRequest(_, _, _, let length), _): classes.append((.bytes, Double(length)))
        // Keepalives and unknown kinds cost a gossip token each: a flood of them is a flood like any other.
        case .other: classes.append((.gossip, 1))
        case .task, .transcript: break
        }
        for (limitClass, cost) in classes {
            guard self.admit(peer, limitClass, cost: cost, inbound, session: number, now: now, time: time, into: &actions)
            else { return (false, actions) }
        }
        return (true, actions)
    }

    /// An offer's trace context, kept in the audit record so a trace and the record of who did what meet; which
    /// artifact, and which of its bytes, an artifact message is about.
    static func detail(of task: TaskMessage) -> String {
        switch task {
        case .offer(let offer): return offer.options.traceparent.map { "traceparent \($0)" } ?? ""
        case .artifactRequest(_, let digest, let offset, let length):
            return "artifact sha256:\(Hex.encode(digest)) asked \(offset)+\(length)"
        case .artifactChunk(_, let digest, let offset, _, let bytes):
            return "artifact sha256:\(Hex.encode(digest)) bytes \(offset)+\(bytes.count)"
        case .artifactUnavailable(_, let digest, let reason):
            return "artifact sha256:\(Hex.encode(digest)) unavailable: \(reason)"
        default: return ""
        }
    }

    /// Bytes the peer may still send before its `bytes` limit refuses more: a node pulling an artifact asks for
    /// no more than this, so an honest transfer slows down instead of getting its peer refused.
    public func bytesAllowance(for peer: NodeID, now: Duration) -> Double {
        self.limiter.usage(of: peer, now: now).first { $0.limitClass == .bytes }?.tokensLeft ?? .infinity
    }

    /// Over the limit, an offer is declined `rate_limited` and anything else is dropped; a peer that stays over its
    /// limits is banned.
    private mutating func admit(
        _ peer: NodeID, _ limitClass: LimitClass, cost: Double, _ inbound: Inbound, session: UInt64, now: Duration,
        time: Int64, into actions: inout [Action]
    ) -> Bool {
        switch self.limiter.admit(peer, limitClass, cost: cost, now: now) {
        case .accepted:
            return true
        case .refused:
            var entry = AuditEntry(.rateLimited, time: time, session: session)
            let rate = self.limiter.rate(limitClass, for: peer)?.description ?? "?"
            if case .task(let task, _) = inbound {
                entry.message = task.tag
                entry.task = task.taskID
                entry.epoch = task.epoch
            }
            if case .task(.offer(let offer), _) = inbound {
                entry.detail = "\(limitClass) over \(rate): declined rate_limited"
                actions.append(.audit(entry, peer: peer))
                actions.append(.declineRateLimited(offer.id, epoch: offer.epoch, peer: peer))
            } else {
                entry.detail = "\(limitClass) over \(rate): dropped \(Self.kind(inbound))"
                actions.append(.audit(entry, peer: peer))
            }
            return false
        case .banned(let until):
            actions += self.ban(peer, until: until, why: "stayed over its \(limitClass) limit", now: now, time: time)
            return false
        }
    }

    private static func kind(_ inbound: Inbound) -> String {
        switch inbound {
        case .task: return "task"
        case .transcript: return "transcript"
        case .membership: return "membership"
        case .other: return "message"
        }
    }

    /// A peer's signed transcript must match what this node received from it in the session; a match is kept in
    /// the audit log as evidence of what the peer said.
    private mutating func checkTranscript(
        _ checkpoint: TranscriptCheckpoint, from peer: NodeID, session number: UInt64, now: Duration, time: Int64
    ) -> [Action] {
        guard let session = self.sessions[number], let identity = self.peers[peer] else { return [] }
        guard checkpoint.handshakeHash == session.handshakeHash, checkpoint.count == session.received.count,
            checkpoint.transcript == session.received.hash
        else {
            return self.misbehaved(
                peer, reason: "its signed transcript does not match the \(session.received.count) task messages it sent in this session",
                now: now, time: time)
        }
        guard checkpoint.isSigned(by: identity.identityKey) else {
            return self.misbehaved(peer, reason: "its transcript checkpoint carries a bad signature", now: now, time: time)
        }
        return [.audit(AuditEntry(
            .peerCheckpoint, time: time, session: number, detail: "peer signed \(checkpoint.count) task messages",
            extra: checkpoint.encoded()), peer: peer)]
    }

    /// Something an honest peer never does: audited, reported, and counted towards a ban.
    public mutating func misbehaved(_ peer: NodeID, reason: String, now: Duration, time: Int64) -> [Action] {
        var actions: [Action] = [
            .misbehaved(peer, reason: reason), .audit(AuditEntry(.misbehaved, time: time, detail: reason), peer: peer),
        ]
        if case .banned(let until) = self.limiter.misbehaved(peer, now: now) {
            actions += self.ban(peer, until: until, why: "misbehaved repeatedly (last: \(reason))", now: now, time: time)
        }
        return actions
    }

    private func ban(_ peer: NodeID, until: Duration, why: String, now: Duration, time: Int64) -> [Action] {
        let reason = "banned for \(Int((until - now).seconds.rounded())) s: \(why)"
        return [.audit(AuditEntry(.banned, time: time, detail: reason), peer: peer), .ban(peer, until: until, reason: reason)]
    }

    // MARK: - Sending

    /// A task message this node wrote on `session` (after the write, so a signature follows what it covers).
    public mutating func sent(_ task: TaskMessage, digest: [UInt8], session number: UInt64, now: Duration, time: Int64) -> [Action] {
        guard var session = self.sessions[number] else { return [] }
        var actions: [Action] = [.audit(AuditEntry(
            .sent, time: time, session: number, message: task.tag, task: task.taskID, epoch: task.epoch, digest: digest,
            detail: Self.detail(of: task)),
            peer: session.peer)]
        session.sent.append(digest: digest)
        if session.firstUnsignedAt == nil { session.firstUnsignedAt = now }
        self.sessions[number] = session
        if session.sent.count - session.sentSigned >= Self.transcriptEvery {
            actions += self.signTranscript(number)
        }
        return actions
    }

    /// Signs what this node sent in `session` and not yet signed (also before a close).
    public mutating func signTranscript(_ number: UInt64) -> [Action] {
        guard var session = self.sessions[number], session.sent.count > session.sentSigned else { return [] }
        let checkpoint = TranscriptCheckpoint(signing: session.sent, handshakeHash: session.handshakeHash, with: self.signingKey)
        session.sentSigned = session.sent.count
        session.firstUnsignedAt = nil
        self.sessions[number] = session
        return [.sendTranscript(checkpoint, session: number, peer: session.peer)]
    }

    /// The earliest time ``tick(now:time:)`` has something to do: a transcript to sign, a checkpoint to ask for,
    /// refusals left out to count.
    public var nextDeadline: Duration {
        var earliest = self.checkpointRequestedAt + self.checkpointInterval
        for session in self.sessions.values {
            if let since = session.firstUnsignedAt { earliest = min(earliest, since + Self.transcriptDelay) }
        }
        if self.refusals.skipped > 0 { earliest = min(earliest, .seconds(self.refusals.second + 1)) }
        return earliest
    }

    /// Signs transcripts that have waited long enough. `checkpointDue` says the audit logs should sign a
    /// checkpoint now (every `checkpointInterval`).
    public mutating func tick(now: Duration, time: Int64) -> (actions: [Action], checkpointDue: Bool) {
        var actions: [Action] = []
        // Refusals left out in a second that has passed are counted in the log without waiting for another one.
        if self.refusals.skipped > 0, Int64(now.seconds.rounded(.down)) != self.refusals.second {
            actions.append(.auditRefusal(AuditEntry(
                .handshakeRefused, time: time,
                detail: "\(self.refusals.skipped) more refused handshakes not recorded one by one")))
            self.refusals = (Int64(now.seconds.rounded(.down)), 0, 0)
        }
        for (number, session) in self.sessions.sorted(by: { $0.key < $1.key }) {
            guard let since = session.firstUnsignedAt, now - since >= Self.transcriptDelay else { continue }
            actions += self.signTranscript(number)
        }
        let due = now - self.checkpointRequestedAt >= self.checkpointInterval
        if due { self.checkpointRequestedAt = now }
        return (actions, due)
    }
}

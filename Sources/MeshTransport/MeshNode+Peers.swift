import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshWire
import NIOCore
import Synchronization
import MeshStorage
import MeshControl

/// What the audit follows in one authenticated session.
struct SessionAudit: Sendable {
    let peer: PeerIdentity
    let handshakeHash: [UInt8]
    /// Task messages this node sent in the session, and how many of them its last checkpoint covered.
    var sent = Transcript()
    var sentSigned: UInt64 = 0
    var firstUnsignedAt: Duration?
    /// Task messages the peer sent, to check its checkpoints against.
    var received = Transcript()
}

/// The node's side of per-peer accountability: every message from an authenticated peer is counted against its
/// limits (``PeerLimiter``), and every interaction with a peer goes into that peer's audit log (``AuditLog``).
extension MeshNode {
    /// A task message's transcript checkpoint is sent after this many messages, or this long after the first one
    /// it would cover.
    static let transcriptCheckpointEvery: UInt64 = 64
    static let transcriptCheckpointDelay: Duration = .seconds(1)

    // MARK: - Receiving

    /// Every message of an authenticated session comes through here: task messages are audited first (before the
    /// node acts on them), then everything is counted against the peer's limits, then handled.
    func receive(_ message: WireMessage, bytes: [UInt8], from peer: NodeID, session number: UInt64) {
        switch message {
        case .task(let task):
            let digest = SHA256.hash(bytes)
            self.sessions[number]?.received.append(digest: digest)
            self.audit(AuditEntry(
                .received, time: AuditLog.wallClockMilliseconds(), session: number, message: task.tag,
                task: task.taskID, epoch: task.epoch, digest: digest), peer: peer)
        case .transcript(let checkpoint):
            self.receiveTranscriptCheckpoint(checkpoint, from: peer, session: number)
            return
        case .ping, .pong, .welcome, .membership:
            break
        }
        // A peer being cut off: its connection is closing; nothing more from it is acted on.
        guard self.limiter.bannedUntil(peer, now: self.now) == nil else { return }
        guard self.admit(peer, .bytes, cost: Double(bytes.count), for: message, session: number) else { return }
        switch message {
        case .membership(let membership):
            guard self.admit(peer, .gossip, for: message, session: number) else { return }
            self.receiveMembership(membership, from: peer)
        case .task(let task):
            switch task {
            case .offer: guard self.admit(peer, .offers, for: message, session: number) else { return }
            case .result: guard self.admit(peer, .results, for: message, session: number) else { return }
            case .accept, .decline, .resultAck, .cancel, .held, .resume: break
            }
            self.receiveTask(task, from: peer)
        case .ping, .pong, .welcome, .transcript:
            break
        }
    }

    /// Counts one message against a limit. Over the limit, an offer is declined `rate_limited` (its submitter tries
    /// another member) and anything else is dropped; a peer over its limits for too long is banned.
    private func admit(
        _ peer: NodeID, _ limitClass: LimitClass, cost: Double = 1, for message: WireMessage, session: UInt64
    ) -> Bool {
        switch self.limiter.admit(peer, limitClass, cost: cost, now: self.now) {
        case .accepted:
            return true
        case .refused:
            var entry = AuditEntry(.rateLimited, time: AuditLog.wallClockMilliseconds(), session: session)
            if case .task(let task) = message {
                entry.message = task.tag
                entry.task = task.taskID
                entry.epoch = task.epoch
            }
            if case .task(.offer(let offer)) = message {
                entry.detail = "\(limitClass) over \(self.limiter.rate(limitClass, for: peer)?.description ?? "?"): declined rate_limited"
                self.audit(entry, peer: peer)
                if let connection = self.connections[peer] {
                    self.write(.task(.decline(offer.id, epoch: offer.epoch, reason: .rateLimited)), to: connection)
                }
            } else {
                entry.detail = "\(limitClass) over \(self.limiter.rate(limitClass, for: peer)?.description ?? "?"): dropped \(message.kind)"
                self.audit(entry, peer: peer)
            }
            return false
        case .banned(let until):
            self.ban(peer, until: until, why: "stayed over its \(limitClass) limit")
            return false
        }
    }

    /// Checks a peer's signed transcript against what this node received from it in the session; a match is kept
    /// in the audit log as evidence of what the peer said.
    private func receiveTranscriptCheckpoint(_ checkpoint: TranscriptCheckpoint, from peer: NodeID, session number: UInt64) {
        guard let session = self.sessions[number] else { return }
        guard checkpoint.handshakeHash == session.handshakeHash, checkpoint.count == session.received.count,
            checkpoint.transcript == session.received.hash
        else {
            self.peerMisbehaved(peer, reason: "its signed transcript does not match the \(session.received.count) task messages it sent in this session")
            return
        }
        guard checkpoint.isSigned(by: session.peer.identityKey) else {
            self.peerMisbehaved(peer, reason: "its transcript checkpoint carries a bad signature")
            return
        }
        self.audit(AuditEntry(
            .peerCheckpoint, time: AuditLog.wallClockMilliseconds(), session: number,
            detail: "peer signed \(checkpoint.count) task messages", extra: checkpoint.encoded()), peer: peer)
    }

    /// Something an honest peer never does: audited, logged, and counted towards a ban.
    func peerMisbehaved(_ peer: NodeID, reason: String) {
        self.logger.warning("peer misbehaved", metadata: ["peer": "\(self.memberName(peer))", "reason": "\(reason)"])
        self.audit(AuditEntry(.misbehaved, time: AuditLog.wallClockMilliseconds(), detail: reason), peer: peer)
        if case .banned(let until) = self.limiter.misbehaved(peer, now: self.now) {
            self.ban(peer, until: until, why: "misbehaved repeatedly (last: \(reason))")
        }
    }

    /// Cuts a peer off until `until`: its session is closed (the close frame says why) and it is refused until then.
    private func ban(_ peer: NodeID, until: Duration, why: String) {
        let length = Int((until - self.now).seconds.rounded())
        let reason = "banned for \(length) s: \(why)"
        self.logger.warning("peer banned", metadata: [
            "peer": "\(self.memberName(peer))", "for": "\(length) s", "why": "\(why)",
            "ban": "\(self.limiter.banCount(peer))",
        ])
        self.audit(AuditEntry(.banned, time: AuditLog.wallClockMilliseconds(), detail: reason), peer: peer)
        guard let connection = self.connections[peer] else { return }
        self.connections.closing(connection.number, because: reason)
        Self.close(connection.channel, .banned(reason))
    }

    // MARK: - Sessions

    /// Before authentication: counts a connection attempt against its source address. Connections from this host
    /// are not counted (every node on it shares the address) unless the settings say so.
    nonisolated func admitConnection(from remote: SocketAddress?) -> Bool {
        guard let ip = remote?.ipAddress else { return true }
        if !self.settings.limitsLoopbackConnections, ip == "127.0.0.1" || ip == "::1" || ip.hasPrefix("127.") {
            return true
        }
        let now = self.now
        let verdict = self.connectionLimiter.withLock { $0.admit(ip, .connections, now: now) }
        guard verdict == .accepted else {
            self.logger.debug("refused connection over the per-address limit", metadata: ["remote": "\(ip)"])
            return false
        }
        return true
    }

    /// A banned peer's new session is refused (and audited) until the ban ends.
    func admitSession(_ peer: EstablishedPeer, channel: any Channel) -> Bool {
        let id = peer.identity.nodeID
        guard let until = self.limiter.bannedUntil(id, now: self.now) else {
            let descriptor = self.trustStore.current().trusted[peer.identity.identityKey]
            self.limiter.setOverrides(descriptor?.limits ?? [:], for: id)
            return true
        }
        let reason = "banned for another \(Int((until - self.now).seconds.rounded())) s"
        self.audit(AuditEntry(
            .handshakeRefused, time: AuditLog.wallClockMilliseconds(),
            detail: "refused here: \(reason) (from \(channel.remoteAddress.display))"), identity: peer.identity)
        channel.triggerUserOutboundEvent(CloseRequest(.banned(reason)), promise: nil)
        channel.close(promise: nil)
        return false
    }

    func sessionStarted(_ connection: PeerConnection) {
        let peer = connection.established
        self.authenticatedPeers[peer.identity.nodeID] = peer.identity
        self.sessions[connection.number] = SessionAudit(peer: peer.identity, handshakeHash: peer.handshakeHash)
        self.audit(AuditEntry(
            .connected, time: AuditLog.wallClockMilliseconds(), session: connection.number,
            detail: "\(connection.origin.isAccepted ? "inbound from" : "outbound to") \(connection.channel.remoteAddress.display)",
            extra: peer.handshakeHash), identity: peer.identity)
    }

    func sessionEnded(_ number: UInt64, peer: NodeID, reason: String) {
        guard let session = self.sessions.removeValue(forKey: number) else { return }
        self.audit(AuditEntry(.disconnected, time: AuditLog.wallClockMilliseconds(), session: number, detail: reason),
                   identity: session.peer)
    }

    /// A handshake refused by either side names the peer when its identity was learned.
    func auditConnectionFailure(_ error: any Error) {
        switch error as? TransportError {
        case .handshake(.refused(let peer, let reason))?:
            self.audit(AuditEntry(.handshakeRefused, time: AuditLog.wallClockMilliseconds(), detail: "refused here: \(reason)"),
                       identity: peer)
        case .refusedByPeer(let peer, let reason)?:
            self.audit(AuditEntry(.handshakeRefused, time: AuditLog.wallClockMilliseconds(), detail: "refused by the peer: \(reason.text)"),
                       identity: peer)
        default:
            break
        }
    }

    // MARK: - Sending

    /// Audits a task message written to a peer and signs the session's transcript when enough is unsigned.
    func auditSent(_ task: TaskMessage, bytes: [UInt8], on connection: PeerConnection) {
        let digest = SHA256.hash(bytes)
        self.audit(AuditEntry(
            .sent, time: AuditLog.wallClockMilliseconds(), session: connection.number, message: task.tag,
            task: task.taskID, epoch: task.epoch, digest: digest), identity: connection.established.identity)
        guard var session = self.sessions[connection.number] else { return }
        session.sent.append(digest: digest)
        if session.firstUnsignedAt == nil { session.firstUnsignedAt = self.now }
        self.sessions[connection.number] = session
        if session.sent.count - session.sentSigned >= Self.transcriptCheckpointEvery {
            self.signTranscript(of: connection)
        }
    }

    func signTranscript(of connection: PeerConnection) {
        guard var session = self.sessions[connection.number], session.sent.count > session.sentSigned else { return }
        let checkpoint = TranscriptCheckpoint(
            signing: session.sent, handshakeHash: session.handshakeHash, with: self.identity.signingKey)
        session.sentSigned = session.sent.count
        session.firstUnsignedAt = nil
        self.sessions[connection.number] = session
        connection.channel.writeAndFlush(WireMessage.transcript(checkpoint), promise: nil)
    }

    /// Signs transcripts that have waited long enough; now and then asks the audit log for checkpoints and forgets
    /// source addresses whose connection buckets are full again (so a scan from many addresses leaves nothing behind).
    func accountabilityTick(now: Duration) {
        for connection in self.connections.all.values {
            guard let since = self.sessions[connection.number]?.firstUnsignedAt,
                now - since >= Self.transcriptCheckpointDelay
            else { continue }
            self.signTranscript(of: connection)
        }
        if now - self.auditCheckpointRequestedAt >= self.settings.auditCheckpointInterval {
            self.auditCheckpointRequestedAt = now
            self.auditLog?.requestCheckpoints()
            self.connectionLimiter.withLock { $0.forgetIdle(now: now) }
        }
    }

    // MARK: - The audit log

    /// Queues an entry for a peer's log. The peer's identity comes from its session or its member record; a peer
    /// this node knows nothing about cannot have a log.
    func audit(_ entry: AuditEntry, peer: NodeID) {
        guard let identity = self.authenticatedPeers[peer] ?? self.membership?.member(peer)?.record.identity else { return }
        self.audit(entry, identity: identity)
    }

    func audit(_ entry: AuditEntry, identity: PeerIdentity) {
        guard identity.nodeID != self.identity.nodeID else { return }
        self.auditLog?.append(entry, peer: identity)
    }

    func openAuditLog(_ log: AuditLog) {
        self.auditLog = log
        log.onProgress { progress in
            self.onLoop { $0.auditProgressed(progress) }
        }
        let recovery = log.recovery
        for (file, bytes) in recovery.truncatedTails {
            self.logger.notice("cut an incomplete record off the end of an audit log (a crash mid-append)", metadata: [
                "file": "\(file)", "bytes": "\(bytes)",
            ])
        }
        for (file, movedTo, why) in recovery.setAside {
            self.logger.error("set a broken audit log aside and began a new one", metadata: [
                "file": "\(file)", "moved-to": "\(movedTo)", "why": "\(why)",
            ])
        }
        self.logger.info("audit logs verified", metadata: [
            "folder": "\(log.directory)", "logs": "\(recovery.logs)", "records": "\(recovery.records)",
        ])
    }

    private func auditProgressed(_ progress: AuditLog.Progress) {
        switch progress {
        case .committed(let through):
            if self.commitGate.auditCommitted(through: through).availabilityChanged {
                self.logger.notice("the audit log is writable again; taking new tasks")
                self.storageAvailabilityChanged()
            }
            self.releaseDeferredTaskActions()
        case .failed(let error):
            if self.commitGate.auditFailed().availabilityChanged {
                self.logger.error("cannot write the audit log; refusing work that would go unaudited until it can", metadata: [
                    "error": "\(error.description)",
                ])
                self.storageAvailabilityChanged()
            }
        }
    }

    // MARK: - Control API

    /// `agentmesh limits`: every connected or counted peer, class by class.
    func limitsReport() -> ControlAPI.Limits {
        let now = self.now
        let peers = self.limiter.keys.union(self.connections.all.keys).sorted { self.memberName($0) < self.memberName($1) }
        return ControlAPI.Limits(
            defaults: Dictionary(uniqueKeysWithValues: self.limiter.settings.rates.map { ($0.key.rawValue, $0.value.description) }),
            peers: peers.map { peer in
                ControlAPI.PeerLimits(
                    id: peer.description,
                    name: self.authenticatedPeers[peer]?.name ?? self.membership?.member(peer)?.record.name ?? peer.short,
                    connected: self.connections[peer] != nil,
                    bannedUntil: self.limiter.bannedUntil(peer, now: now).map(self.wallClockDate(for:)),
                    bans: self.limiter.banCount(peer),
                    classes: self.limiter.usage(of: peer, now: now).filter { $0.limitClass != .connections }.map {
                        ControlAPI.LimitUsage(
                            limitClass: $0.limitClass.rawValue, rate: $0.rate.description,
                            tokensLeft: ($0.tokensLeft * 10).rounded() / 10, accepted: $0.accepted, refused: $0.refused)
                    })
            })
    }
}

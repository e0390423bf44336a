import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshWire
import NIOCore
import Synchronization
import MeshStorage
import MeshControl

/// The node's side of per-peer accountability: ``PeerAccountability`` decides what every interaction with an
/// authenticated peer costs and records; the node carries out what it says (audit records, declines, bans,
/// signed transcripts). Connection attempts before authentication are counted here per source address.
extension MeshNode {
    // MARK: - Receiving

    /// Every message of an authenticated session comes through here: it is accounted for (audited, counted against
    /// the peer's limits), then handled if the accounting lets it through.
    func receive(_ message: WireMessage, bytes: [UInt8], digest: [UInt8]? = nil, from peer: NodeID, session number: UInt64) {
        let inbound: PeerAccountability.Inbound
        switch message {
        case .task(let task):
            // A large message's digest was taken by its session as it arrived.
            let whole = task.digestCoversWholeMessage ? digest : nil
            inbound = .task(task, digest: whole ?? task.auditDigest(wireBytes: bytes))
        case .transcript(let checkpoint): inbound = .transcript(checkpoint)
        case .membership(let membership): inbound = .membership(updates: membership.updates.count)
        case .ping, .pong, .welcome: inbound = .other
        }
        let (deliver, actions) = self.peers.accountability.received(
            inbound, bytes: bytes.count, from: peer, session: number, now: self.now, time: AuditLog.wallClockMilliseconds())
        self.perform(actions)
        guard deliver else { return }
        switch message {
        case .membership(let membership): self.receiveMembership(membership, from: peer)
        case .task(let task): self.receiveTask(task, from: peer)
        case .ping, .pong, .welcome, .transcript: break
        }
    }

    /// A message of a kind this build does not know: not acted on, but counted against the peer's limits.
    func receiveUnknown(bytes: Int, from peer: NodeID, session number: UInt64) {
        self.perform(self.peers.accountability.received(
            .other, bytes: bytes, from: peer, session: number, now: self.now, time: AuditLog.wallClockMilliseconds()).actions)
    }

    /// Something an honest peer never does (reported by membership or the session): audited, logged, counted towards a ban.
    func peerMisbehaved(_ peer: NodeID, reason: String) {
        self.perform(self.peers.accountability.misbehaved(peer, reason: reason, now: self.now, time: AuditLog.wallClockMilliseconds()))
    }

    /// Carries out what accounting decided, in order.
    func perform(_ actions: [PeerAccountability.Action]) {
        for action in actions {
            self.metricsAccounting(action)
            switch action {
            case .audit(let entry, let peer):
                self.audit(entry, peer: peer)
            case .sendTranscript(let checkpoint, let session, let peer):
                guard let connection = self.peers.connections[peer], connection.number == session else { continue }
                connection.channel.writeAndFlush(OutboundMessage(WireMessage.transcript(checkpoint).encoded()), promise: nil)
            case .declineRateLimited(let id, let epoch, let peer):
                guard let connection = self.peers.connections[peer] else { continue }
                self.write(.task(.decline(id, epoch: epoch, reason: .rateLimited)), to: connection)
            case .misbehaved(let peer, let reason):
                self.context.logger.warning("peer misbehaved", metadata: ["peer": "\(self.memberName(peer))", "reason": "\(reason)"])
            case .auditRefusal(let entry):
                // This node's own log (its file is named by this node's id) holds the refusals of strangers.
                self.auditLog?.append(entry, peer: PeerIdentity(
                    name: "refused handshakes", identityKey: self.identity.signingKey.publicKey, staticKey: []))
            case .ban(let peer, let until, let reason):
                self.context.logger.warning("peer banned", metadata: [
                    "peer": "\(self.memberName(peer))", "for": "\(Int((until - self.now).seconds.rounded())) s",
                    "why": "\(reason)", "ban": "\(self.peers.accountability.limiter.banCount(peer))",
                ])
                guard let connection = self.peers.connections[peer] else { continue }
                self.peers.connections.closing(connection.number, because: reason)
                Self.close(connection.channel, .banned(reason))
            }
        }
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
        let verdict = self.context.gate.addresses.withLock { $0.admit(ip, .connections, now: now) }
        guard verdict == .accepted else {
            self.context.logger.debug("refused connection over the per-address limit", metadata: ["remote": "\(ip)"])
            return false
        }
        return true
    }

    /// A banned peer's new session is refused (and audited) until the ban ends.
    func admitSession(_ peer: EstablishedPeer, channel: any Channel) -> Bool {
        let overrides = self.context.gate.trustStore.current().trusted[peer.identity.identityKey]?.limits ?? [:]
        let (refusal, actions) = self.peers.accountability.admit(
            peer.identity, overrides: overrides, from: channel.remoteAddress.display, now: self.now,
            time: AuditLog.wallClockMilliseconds())
        self.perform(actions)
        guard let refusal else { return true }
        Self.close(channel, .banned(refusal))
        return false
    }

    func sessionStarted(_ connection: PeerConnection) {
        let peer = connection.established
        self.perform(self.peers.accountability.sessionStarted(
            connection.number, peer: peer.identity, handshakeHash: peer.handshakeHash,
            detail: "\(connection.origin.isAccepted ? "inbound from" : "outbound to") \(connection.channel.remoteAddress.display)",
            time: AuditLog.wallClockMilliseconds()))
    }

    func sessionEnded(_ number: UInt64, reason: String) {
        self.perform(self.peers.accountability.sessionEnded(number, reason: reason, time: AuditLog.wallClockMilliseconds()))
    }

    /// A handshake refused by either side names the peer when its identity was learned.
    func auditConnectionFailure(_ error: any Error) {
        let (peer, detail): (PeerIdentity, String)
        switch error as? TransportError {
        case .handshake(.refused(let refused, let reason))?: (peer, detail) = (refused, "refused here: \(reason)")
        case .refusedByPeer(let refusing, let reason)?: (peer, detail) = (refusing, "refused by the peer: \(reason.text)")
        default: return
        }
        let trusted: Bool
        switch self.context.gate.trustStore.current().decision(for: peer) {
        case .trusted, .admittedByOpenMode: trusted = true
        case .refused: trusted = false
        }
        self.perform(self.peers.accountability.handshakeRefused(
            peer, detail: detail, hasLog: self.auditLog?.hasLog(for: peer.nodeID) ?? false, isTrusted: trusted,
            now: self.now, time: AuditLog.wallClockMilliseconds()))
    }

    // MARK: - Sending

    /// Audits a task message written to a peer; enough unsigned ones get this node's signature.
    func auditSent(_ task: TaskMessage, digest: [UInt8], on connection: PeerConnection) {
        self.perform(self.peers.accountability.sent(
            task, digest: digest, session: connection.number, now: self.now,
            time: AuditLog.wallClockMilliseconds()))
    }

    /// Signs transcripts that have waited long enough; now and then asks the audit log for checkpoints and forgets
    /// source addresses whose connection buckets are full again (so a scan from many addresses leaves nothing behind)
    /// and peers that are gone and owe nothing (so a stream of fresh identities in open mode leaves nothing either).
    func accountabilityTick(now: Duration) {
        let (actions, checkpointDue) = self.peers.accountability.tick(now: now, time: AuditLog.wallClockMilliseconds())
        self.perform(actions)
        if checkpointDue {
            self.auditLog?.requestCheckpoints()
            self.context.gate.addresses.withLock { $0.forgetIdle(now: now) }
            self.peers.accountability.forgetIdlePeers(now: now)
        }
    }

    // MARK: - The audit log

    /// Queues an entry for a peer's log. The peer's identity comes from its session or its member record; a peer
    /// this node knows nothing about cannot have a log.
    func audit(_ entry: AuditEntry, peer: NodeID) {
        guard let identity = self.peers.accountability.peers[peer] ?? self.peers.membership.member(peer)?.record.identity else { return }
        self.audit(entry, identity: identity)
    }

    func audit(_ entry: AuditEntry, identity: PeerIdentity) {
        guard identity.nodeID != self.identity.nodeID else { return }
        self.auditLog?.append(entry, peer: identity)
    }

    func openAuditLog(_ log: AuditLog) {
        log.onProgress { progress in
            self.onLoop { $0.auditProgressed(progress) }
        }
        let recovery = log.recovery
        for (file, bytes) in recovery.truncatedTails {
            self.context.logger.notice("cut an incomplete record off the end of an audit log (a crash mid-append)", metadata: [
                "file": "\(file)", "bytes": "\(bytes)",
            ])
        }
        for (file, movedTo, why) in recovery.setAside {
            self.context.logger.error("set a broken audit log aside and began a new one", metadata: [
                "file": "\(file)", "moved-to": "\(movedTo)", "why": "\(why)",
            ])
        }
        self.context.logger.info("audit logs verified", metadata: [
            "folder": "\(log.directory)", "logs": "\(recovery.logs)", "records": "\(recovery.records)",
        ])
    }

    private func auditProgressed(_ progress: AuditLog.Progress) {
        switch progress {
        case .committed(let through):
            if self.taskPlane.commitGate.auditCommitted(through: through).availabilityChanged {
                self.context.logger.notice("the audit log is writable again; taking new tasks")
                self.storageAvailabilityChanged()
            }
            self.releaseDeferredTaskActions()
        case .failed(let error):
            if self.taskPlane.commitGate.auditFailed().availabilityChanged {
                self.context.logger.error("cannot write the audit log; refusing work that would go unaudited until it can", metadata: [
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
        let limiter = self.peers.accountability.limiter
        let peers = limiter.keys.union(self.peers.connections.all.keys).sorted { self.memberName($0) < self.memberName($1) }
        return ControlAPI.Limits(
            defaults: Dictionary(uniqueKeysWithValues: limiter.settings.rates.map { ($0.key.rawValue, $0.value.description) }),
            peers: peers.map { peer in
                ControlAPI.PeerLimits(
                    id: peer.description,
                    name: self.peers.accountability.peers[peer]?.name ?? self.peers.membership.member(peer)?.record.name ?? peer.short,
                    connected: self.peers.connections[peer] != nil,
                    bannedUntil: limiter.bannedUntil(peer, now: now).map(self.wallClockDate(for:)),
                    bans: limiter.banCount(peer),
                    classes: limiter.usage(of: peer, now: now).filter { $0.limitClass != .connections }.map {
                        ControlAPI.LimitUsage(
                            limitClass: $0.limitClass.rawValue, rate: $0.rate.description,
                            tokensLeft: ($0.tokensLeft * 10).rounded() / 10, accepted: $0.accepted, refused: $0.refused)
                    })
            })
    }
}

import MeshCrypto

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Timers and fan-outs of the membership protocol. ``lan`` follows memberlist's LAN defaults; ``localTesting``
/// shortens everything for loopback tests.
public struct MembershipSettings: Sendable {
    /// Time between probes of one member (scaled by the local health multiplier, Lifeguard §IV-B).
    public var probeInterval: Duration = .seconds(1)
    /// How long a direct probe waits for its ack before asking others (also scaled).
    public var probeTimeout: Duration = .milliseconds(500)
    /// Members asked to probe indirectly when the direct probe times out (SWIM's k).
    public var indirectChecks = 3
    /// Suspicion lasts `suspicionMultiplier × log10(N) × probeInterval` at least (memberlist's formula)...
    public var suspicionMultiplier = 4
    /// ...and starts at this multiple of that minimum, shrinking as independent confirmations arrive (Lifeguard §IV-C).
    public var suspicionMaximumMultiplier = 6
    /// Each update is piggybacked `retransmitMultiplier × ⌈log10(N + 1)⌉` times (SWIM's λ log N). memberlist uses 4;
    /// push gossip then misses a given (member, update) pair with probability about e^-8, which at 50 nodes joining
    /// at once (2,450 pairs) leaves a straggler in most runs until the next push-pull. 6 makes it about e^-12.
    public var retransmitMultiplier = 6
    /// How often pending updates are pushed to `gossipFanout` members without waiting for a probe.
    public var gossipInterval: Duration = .milliseconds(200)
    public var gossipFanout = 3
    /// Full state exchange with one random member (anti-entropy).
    public var pushPullInterval: Duration = .seconds(30)
    /// Full state exchange with one random *dead* member, so that the two sides of a healed partition find each
    /// other again (Serf's reconnect). A member that is really dead just costs one lost message.
    public var reconnectInterval: Duration = .seconds(30)
    /// The local health multiplier ranges over `0..<maximumLocalHealth`.
    public var maximumLocalHealth = 8
    /// Dead and left members are forgotten after this long.
    public var reapAfter: Duration = .seconds(3600)
    /// Updates piggybacked on one message.
    public var maximumPiggyback = 16

    public init() {}

    public static let lan = MembershipSettings()

    public static var localTesting: MembershipSettings {
        var settings = MembershipSettings()
        settings.probeInterval = .milliseconds(200)
        settings.probeTimeout = .milliseconds(100)
        settings.suspicionMultiplier = 3
        settings.gossipInterval = .milliseconds(50)
        settings.pushPullInterval = .seconds(5)
        settings.reconnectInterval = .seconds(2)
        settings.reapAfter = .seconds(30)
        return settings
    }
}

public enum MemberStatus: String, Sendable, Equatable, CustomStringConvertible {
    case alive, suspect, dead, left
    public var description: String { self.rawValue }
}

/// One member as this node sees it.
public struct MemberView: Sendable, Equatable {
    public let record: MemberRecord
    public let status: MemberStatus
    /// The incarnation the status refers to (the record's, or a newer one a claim named).
    public let incarnation: UInt64
    /// Who made the suspect/dead claim, if any.
    public let accuser: NodeID?
    /// Distinct members that confirmed a suspicion (Lifeguard).
    public let confirmations: Int
    /// When this node last learned anything about the member (core time).
    public let lastChange: Duration
}

/// What the node should do or know after an event.
public enum MembershipDirective: Sendable, Equatable {
    /// Send a message to a member; `address` lets the shell dial when no session is open.
    case send(MembershipMessage, to: NodeID, address: String)
    /// A change worth logging (and, later, auditing).
    case changed(MembershipEvent)
    /// A peer broke the protocol (forged signature, unsolicited ack, …): the shell logs it and penalises the peer.
    case misbehaving(NodeID, reason: String)
}

public enum MembershipEvent: Sendable, Equatable {
    case joined(MemberRecord)
    case updated(MemberRecord)
    case suspected(NodeID, incarnation: UInt64, accuser: NodeID)
    case confirmed(NodeID, by: NodeID, confirmations: Int)
    case recovered(NodeID, incarnation: UInt64)
    case died(NodeID, incarnation: UInt64, accuser: NodeID)
    case left(NodeID)
    case reaped(NodeID)
    /// The trust list no longer admits this member: it left this node's view at once, without a claim to the mesh
    /// (members that still trust it keep it).
    case distrusted(MemberRecord)
    /// This node heard a claim against itself and answered with a higher incarnation.
    case refuted(claim: StatusClaim.Kind, by: NodeID, newIncarnation: UInt64)
}

/// SWIM membership with the Lifeguard refinements, as a pure state machine.
///
/// Feed it events — ``tick(now:)``, ``receive(_:from:now:)``, ``connected(to:address:now:)`` — with a monotonic `now`
/// (a `Duration` since any fixed origin); it returns directives. It owns a seeded generator, so a run is fully
/// determined by its seed and its inputs. No I/O, no clock: the shell (or the simulator) does both.
///
/// - SeeAlso: Das et al., *SWIM* (2002); Dadgar et al., *Lifeguard* (arXiv 1707.00788); hashicorp/memberlist.
public struct Membership: Sendable {
    public let settings: MembershipSettings
    private let identity: PeerIdentity
    private let signer: MembershipSigner
    private var trust: TrustPolicy
    private var random: SplitMix64

    public private(set) var local: MemberRecord
    private var members: [NodeID: Member] = [:]
    private var broadcasts: [NodeID: Broadcast] = [:]
    private var connected: Set<NodeID> = []
    /// Lifeguard's local health multiplier: how much to distrust our own timing.
    public private(set) var localHealth = 0
    private var hasLeft = false

    /// A shuffled pass over the live members, walked by `probeCursor`; also the pool for random sampling.
    private var probeOrder: [NodeID] = []
    private var probeCursor = 0
    /// Bookkeeping kept in step with `members` by ``store(_:for:)`` so that no timer has to scan every member:
    /// at 10,000 members per node a scan per tick is what would make a simulation impossible.
    private var liveMembers = 0
    private var suspects: Set<NodeID> = []
    private var departed: Set<NodeID> = []
    private var probe: Probe?
    private var relays: [UInt32: Relay] = [:]
    private var recentPings = RecentRequests()
    private var recentPingRequests = RecentRequests()
    private var sequence: UInt32 = 0
    private var nextProbe: Duration
    private var nextGossip: Duration
    private var nextPushPull: Duration
    private var nextReconnect: Duration
    private var nextReap: Duration

    /// Kept small on purpose (the simulator holds N² of them): the record is one word, and the claim and suspicion
    /// that only non-alive members have live in a box.
    private struct Member: Sendable {
        var record: MemberRecord
        var status: MemberStatus
        var incarnation: UInt64
        var trouble: Trouble?
        var lastChange: Duration

        var view: MemberView {
            MemberView(
                record: self.record, status: self.status, incarnation: self.incarnation,
                accuser: self.trouble?.claim.accuser, confirmations: self.trouble?.suspicion?.confirmers.count ?? 0,
                lastChange: self.lastChange)
        }
    }

    /// The claim behind a suspect, dead or left status, and the suspicion timer.
    private final class Trouble: Sendable {
        let claim: StatusClaim
        let suspicion: Suspicion?

        init(claim: StatusClaim, suspicion: Suspicion?) {
            self.claim = claim
            self.suspicion = suspicion
        }
    }

    private struct Suspicion: Sendable {
        let started: Duration
        var confirmers: Set<NodeID>
        var deadline: Duration
    }

    /// Sequences of recent pings and ping requests, so an answer that arrives after its probe period is recognised
    /// as late (ignored) rather than unsolicited (misbehaviour).
    private struct RecentRequests: Sendable {
        private var entries: [(sequence: UInt32, peer: NodeID)] = []
        private var next = 0
        static let capacity = 256

        mutating func record(_ sequence: UInt32, to peer: NodeID) {
            if self.entries.count < Self.capacity {
                self.entries.append((sequence, peer))
            } else {
                self.entries[self.next] = (sequence, peer)
                self.next = (self.next + 1) % Self.capacity
            }
        }

        func contains(_ sequence: UInt32, peer: NodeID) -> Bool {
            self.entries.contains { $0.sequence == sequence && $0.peer == peer }
        }
    }

    private struct Broadcast: Sendable {
        let update: MembershipUpdate
        var transmissions: Int
    }

    private struct Probe: Sendable {
        let sequence: UInt32
        let target: NodeID
        let timeout: Duration
        let periodEnd: Duration
        var intermediaries: Set<NodeID> = []
        var nacks = 0
        var acknowledged = false
        var indirectSent = false
    }

    private struct Relay: Sendable {
        let requester: NodeID
        let requesterSequence: UInt32
        let target: NodeID
        let deadline: Duration
    }

    /// - Parameters:
    ///   - identity: this node's public identity.
    ///   - address: the address peers dial (`host:port`).
    ///   - capabilities: what this node offers.
    ///   - incarnation: the starting incarnation; a restarted node refutes older claims about itself by going higher.
    ///   - trust: members this node may talk to; records of others are ignored (they could never be probed).
    ///   - signer: signs this node's records and claims, verifies others'.
    ///   - seed: seeds the generator behind probe order and gossip targets.
    public init(
        identity: PeerIdentity, address: String, capabilities: [Capability] = [], incarnation: UInt64 = 0,
        trust: TrustPolicy, signer: MembershipSigner, settings: MembershipSettings, seed: UInt64, now: Duration
    ) {
        self.settings = settings
        self.identity = identity
        self.signer = signer
        self.trust = trust
        self.random = SplitMix64(seed: seed)
        self.local = MemberRecord(
            identity: identity, address: address, incarnation: incarnation, capabilities: capabilities, load: 0,
            signer: signer)
        self.nextProbe = now + settings.probeInterval
        self.nextGossip = now + settings.gossipInterval
        self.nextPushPull = now + settings.pushPullInterval
        self.nextReconnect = now + settings.reconnectInterval
        self.nextReap = now + settings.probeInterval
    }

    public var nodeID: NodeID { self.local.nodeID }

    // MARK: - Views

    /// Every known member but this node, in no particular order.
    public var view: [MemberView] { self.members.values.map(\.view) }

    public func member(_ id: NodeID) -> MemberView? { self.members[id]?.view }

    /// Members believed alive or suspect, plus this node: the N in every log N.
    public var liveCount: Int { 1 + self.liveMembers }

    public var pendingBroadcasts: Int { self.broadcasts.count }

    /// Starts from a known, converged view without announcing any of it: how a simulation of a large mesh begins
    /// (announcing N records at each of N nodes would cost N² broadcasts before the experiment even starts).
    public mutating func assumeMembers(_ records: [MemberRecord], now: Duration) {
        self.members.reserveCapacity(records.count)
        for record in records where record.nodeID != self.nodeID {
            self.store(
                Member(record: record, status: .alive, incarnation: record.incarnation, trouble: nil, lastChange: now),
                for: record.nodeID)
        }
    }

    /// When ``tick(now:)`` next has timed work to do, so the shell can sleep until then instead of polling.
    /// Gossip of news queued later is not included: the shell caps its sleep at `gossipInterval` for that.
    public var nextDeadline: Duration {
        var deadline = min(self.nextProbe, self.nextPushPull, self.nextReconnect, self.nextReap)
        if !self.broadcasts.isEmpty { deadline = min(deadline, self.nextGossip) }
        if let probe = self.probe {
            deadline = min(deadline, probe.indirectSent || probe.acknowledged ? probe.periodEnd : probe.timeout)
        }
        for id in self.suspects {
            if let suspicion = self.members[id]?.trouble?.suspicion { deadline = min(deadline, suspicion.deadline) }
        }
        for relay in self.relays.values { deadline = min(deadline, relay.deadline) }
        return deadline
    }

    // MARK: - Events from the shell

    /// A session with `peer` is up. A peer we know nothing about gets a full state exchange at once: that is how a
    /// joining node learns the mesh from its seed in one round trip, with no wait for the next push-pull.
    public mutating func connected(to peer: NodeID, address: String, now: Duration) -> [MembershipDirective] {
        var directives: [MembershipDirective] = []
        self.connected.insert(peer)
        // Unknown, or known as suspect or dead (a healed partition, a restart): exchange state now.
        if peer != self.nodeID, self.members[peer].map({ $0.status != .alive }) ?? true {
            directives.append(.send(.pushPull(isReply: false, updates: self.fullState()), to: peer, address: address))
        }
        return directives
    }

    /// The session with `peer` ended. Only a hint: a dead host on another machine sends no reset, so detection
    /// stays with the probes.
    public mutating func disconnected(from peer: NodeID) {
        self.connected.remove(peer)
    }

    /// The trust list as it is now (`agentmesh trust` on a running node): records of newly trusted members are taken
    /// from now on. Cheap: called at every tick and session start.
    public mutating func updateTrust(_ policy: TrustPolicy) {
        self.trust = policy
    }

    /// The trust list changed (`agentmesh untrust`): members it refuses leave this node's view now: they are no
    /// longer probed, counted or offered work (waiting for their probes to fail took 45 s, and the death claim it
    /// ended in would have told the whole mesh a lie). No claim is spread: for members that still trust them they
    /// are alive. It reads every member, so the shell calls it only when the list changed, not at every tick.
    public mutating func leaveOutRefusedMembers() -> [MembershipDirective] {
        var directives: [MembershipDirective] = []
        for (id, member) in self.members.sorted(by: { $0.key < $1.key }) where !self.admits(member.record) {
            self.store(nil, for: id)
            self.broadcasts[id] = nil
            directives.append(.changed(.distrusted(member.record)))
        }
        return directives
    }

    /// The address peers should dial, known once the listener is bound (its port); before any traffic.
    public mutating func advertise(_ address: String) {
        self.local = self.local.updated(address: address, incarnation: self.local.incarnation, signer: self.signer)
    }

    /// This node's capabilities or load changed: re-sign and spread the record.
    public mutating func updateLocal(capabilities: [Capability]? = nil, load: UInt32? = nil) {
        self.local = self.local.updated(capabilities: capabilities, load: load, signer: self.signer)
        self.enqueue(.alive(self.local))
    }

    /// Graceful leave: a signed "left" claim, pushed to every live member at once (not just piggybacked), so the
    /// mesh learns it before this node goes away.
    public mutating func leave(now: Duration) -> [MembershipDirective] {
        var directives: [MembershipDirective] = []
        self.hasLeft = true
        let claim = StatusClaim(
            kind: .left, target: self.nodeID, incarnation: self.local.incarnation, accuser: self.nodeID, signer: self.signer)
        for member in self.sortedMembers() where member.status == .alive || member.status == .suspect {
            directives.append(.send(
                .gossip(updates: [.claim(claim)]), to: member.record.nodeID, address: member.record.address))
        }
        return directives
    }

    /// Drives every timer: probes, indirect probes, suspicion timeouts, gossip, push-pull, reaping. Call it often
    /// (every few tens of milliseconds); it does nothing when nothing is due.
    public mutating func tick(now: Duration) -> [MembershipDirective] {
        var directives: [MembershipDirective] = []
        guard !self.hasLeft else { return directives }
        self.advanceProbe(now: now, into: &directives)
        self.expireRelays(now: now, into: &directives)
        self.expireSuspicions(now: now, into: &directives)
        if now >= self.nextGossip {
            self.nextGossip = now + self.settings.gossipInterval
            self.gossip(into: &directives)
        }
        if now >= self.nextPushPull {
            self.nextPushPull = now + self.settings.pushPullInterval
            if let partner = self.randomLiveMembers(count: 1, excluding: []).first,
                let member = self.members[partner]
            {
                directives.append(.send(
                    .pushPull(isReply: false, updates: self.fullState()), to: partner, address: member.record.address))
            }
        }
        if now >= self.nextReconnect {
            self.nextReconnect = now + self.settings.reconnectInterval
            let dead = self.departed.sorted().filter { self.members[$0]?.status == .dead }
            if let id = dead.randomElement(using: &self.random), let record = self.members[id]?.record {
                directives.append(.send(
                    .pushPull(isReply: false, updates: self.fullState()), to: record.nodeID, address: record.address))
            }
        }
        if now >= self.nextReap {
            self.nextReap = now + self.settings.probeInterval
            self.reap(now: now, into: &directives)
        }
        return directives
    }

    /// A message from an authenticated peer.
    public mutating func receive(
        _ message: MembershipMessage, from peer: NodeID, now: Duration
    ) -> [MembershipDirective] {
        var directives: [MembershipDirective] = []
        for update in message.updates {
            self.apply(update, from: peer, now: now, into: &directives)
            // An honest peer never sends a bad update: the rest of this message is not worth the work.
            if case .misbehaving? = directives.last { return directives }
        }
        let peerAddress = self.members[peer]?.record.address ?? ""
        switch message {
        case .ping(let sequence, _):
            directives.append(.send(.ack(sequence: sequence, updates: self.piggyback()), to: peer, address: peerAddress))

        case .ack(let sequence, _):
            if var probe = self.probe, probe.sequence == sequence, probe.target == peer {
                probe.acknowledged = true
                self.probe = probe
            } else if let relay = self.relays[sequence], relay.target == peer {
                self.relays[sequence] = nil
                let requesterAddress = self.members[relay.requester]?.record.address ?? ""
                directives.append(.send(
                    .indirectAck(sequence: relay.requesterSequence, target: peer, updates: self.piggyback()),
                    to: relay.requester, address: requesterAddress))
            } else if !self.recentPings.contains(sequence, peer: peer) {
                directives.append(.misbehaving(peer, reason: "ack for a ping it was never sent (sequence \(sequence))"))
            }

        case .pingRequest(let sequence, let target, _):
            if let member = self.members[target], member.status == .alive || member.status == .suspect,
                target != peer
            {
                let relaySequence = self.nextSequence()
                self.recentPings.record(relaySequence, to: target)
                self.relays[relaySequence] = Relay(
                    requester: peer, requesterSequence: sequence, target: target,
                    deadline: now + self.scaled(self.settings.probeTimeout))
                directives.append(.send(
                    .ping(sequence: relaySequence, updates: self.piggyback()), to: target, address: member.record.address))
            } else {
                directives.append(.send(.nack(sequence: sequence, target: target), to: peer, address: peerAddress))
            }

        case .indirectAck(let sequence, let target, _):
            if var probe = self.probe, probe.sequence == sequence, probe.target == target,
                probe.intermediaries.contains(peer)
            {
                probe.acknowledged = true
                self.probe = probe
            } else if !self.recentPingRequests.contains(sequence, peer: peer) {
                directives.append(.misbehaving(peer, reason: "indirect ack for a probe it was not asked to make"))
            }

        case .nack(let sequence, let target):
            if var probe = self.probe, probe.sequence == sequence, probe.target == target,
                probe.intermediaries.contains(peer)
            {
                probe.nacks += 1
                self.probe = probe
            } else if !self.recentPingRequests.contains(sequence, peer: peer) {
                directives.append(.misbehaving(peer, reason: "nack for a probe it was not asked to make"))
            }

        case .gossip:
            break

        case .pushPull(let isReply, _):
            if !isReply {
                directives.append(.send(.pushPull(isReply: true, updates: self.fullState()), to: peer, address: peerAddress))
            }
        }
        return directives
    }

    // MARK: - Probing (SWIM §3, Lifeguard §IV)

    private func scaled(_ duration: Duration) -> Duration { duration * (self.localHealth + 1) }

    private mutating func adjustLocalHealth(by delta: Int) {
        self.localHealth = min(max(self.localHealth + delta, 0), self.settings.maximumLocalHealth - 1)
    }

    private mutating func nextSequence() -> UInt32 {
        self.sequence &+= 1
        return self.sequence
    }

    private mutating func advanceProbe(now: Duration, into directives: inout [MembershipDirective]) {
        if var probe = self.probe {
            if !probe.acknowledged, !probe.indirectSent, now >= probe.timeout {
                probe.indirectSent = true
                let helpers = self.randomLiveMembers(count: self.settings.indirectChecks, excluding: [probe.target])
                probe.intermediaries = Set(helpers)
                for helper in helpers {
                    guard let member = self.members[helper] else { continue }
                    self.recentPingRequests.record(probe.sequence, to: helper)
                    directives.append(.send(
                        .pingRequest(sequence: probe.sequence, target: probe.target, updates: self.piggyback()),
                        to: helper, address: member.record.address))
                }
                self.probe = probe
            }
            guard now >= probe.periodEnd || probe.acknowledged else { return }
            self.probe = nil
            if probe.acknowledged {
                self.adjustLocalHealth(by: -1)
            } else {
                // Lifeguard: missing nacks mean our own messages are not getting through; distrust our timing more.
                let expected = probe.intermediaries.count
                self.adjustLocalHealth(by: expected > 0 ? max(expected - probe.nacks, 0) : 1)
                self.suspect(probe.target, now: now, into: &directives)
            }
        }
        guard self.probe == nil, now >= self.nextProbe else { return }
        self.nextProbe = now + self.scaled(self.settings.probeInterval)
        guard let target = self.nextProbeTarget(), let member = self.members[target] else { return }
        let sequence = self.nextSequence()
        self.recentPings.record(sequence, to: target)
        self.probe = Probe(
            sequence: sequence, target: target, timeout: now + self.scaled(self.settings.probeTimeout),
            periodEnd: now + self.scaled(self.settings.probeInterval))
        directives.append(.send(.ping(sequence: sequence, updates: self.piggyback()), to: target, address: member.record.address))
    }

    /// Round robin over a shuffled list, reshuffled each pass (SWIM §4.3): every member is probed within a bounded
    /// time, and failures are found as fast as random selection would on average.
    private mutating func nextProbeTarget() -> NodeID? {
        for _ in 0..<2 {
            while self.probeCursor < self.probeOrder.count {
                let candidate = self.probeOrder[self.probeCursor]
                self.probeCursor += 1
                if self.isLive(candidate) { return candidate }
            }
            self.rebuildProbeOrder()
            if self.probeOrder.isEmpty { return nil }
        }
        return nil
    }

    private mutating func rebuildProbeOrder() {
        // Sorted before shuffling: dictionary order differs between processes, and a seed must replay anywhere.
        self.probeOrder = self.members.compactMap { id, member in
            member.status == .alive || member.status == .suspect ? id : nil
        }.sorted()
        self.probeOrder.shuffle(using: &self.random)
        self.probeCursor = 0
    }

    private func isLive(_ id: NodeID) -> Bool {
        guard let status = self.members[id]?.status else { return false }
        return status == .alive || status == .suspect
    }

    /// Every write to `members` goes through here, so the counters, sets and probe order stay in step.
    private mutating func store(_ member: Member?, for id: NodeID) {
        let old: MemberStatus?
        if let member {
            old = self.members.updateValue(member, forKey: id)?.status
        } else {
            old = self.members.removeValue(forKey: id)?.status
        }
        let new = member?.status
        let wasLive = old == .alive || old == .suspect
        let isLive = new == .alive || new == .suspect
        if wasLive != isLive { self.liveMembers += isLive ? 1 : -1 }
        if old == .suspect { self.suspects.remove(id) }
        if new == .suspect { self.suspects.insert(id) }
        if old == .dead || old == .left { self.departed.remove(id) }
        if new == .dead || new == .left { self.departed.insert(id) }
        if !wasLive, isLive, !self.probeOrder.isEmpty {
            // A new or recovered member joins the current pass at a random place still ahead of the cursor.
            let position = Int.random(in: self.probeCursor...self.probeOrder.count, using: &self.random)
            self.probeOrder.insert(id, at: position)
        }
    }

    private func sortedMembers() -> [Member] {
        self.members.sorted { $0.key < $1.key }.map(\.value)
    }

    /// Random live members for gossip, indirect probes and push-pull. Members with an open session are cheaper to
    /// reach, but choosing among them confines news to the (bounded, often star-shaped) session graph, where an
    /// epidemic can die out before it reaches everyone — a convergence tail until the next push-pull. Drawing
    /// every target uniformly costs a dial for most sends, and the handshake storm while many nodes join starves
    /// small hosts. So a third of a choice (and any single choice) is drawn uniformly, the rest from sessions.
    private mutating func randomLiveMembers(count: Int, excluding: Set<NodeID>) -> [NodeID] {
        guard count > 0 else { return [] }
        var chosen: [NodeID] = []
        let fromSessions = count - max(1, count / 3)
        if fromSessions > 0 {
            let connected = self.connected.filter { !excluding.contains($0) && self.isLive($0) }.sorted()
            chosen = Array(connected.shuffled(using: &self.random).prefix(fromSessions))
        }
        if self.probeOrder.isEmpty { self.rebuildProbeOrder() }
        // Sample the probe order (a permutation of the live members) instead of scanning every member.
        var attempts = 8 * count
        while chosen.count < count, attempts > 0, let candidate = self.probeOrder.randomElement(using: &self.random) {
            attempts -= 1
            if self.isLive(candidate), !excluding.contains(candidate), !chosen.contains(candidate) {
                chosen.append(candidate)
            }
        }
        return chosen
    }

    private mutating func expireRelays(now: Duration, into directives: inout [MembershipDirective]) {
        for (sequence, relay) in self.relays.sorted(by: { $0.key < $1.key }) where now >= relay.deadline {
            self.relays[sequence] = nil
            let address = self.members[relay.requester]?.record.address ?? ""
            directives.append(.send(
                .nack(sequence: relay.requesterSequence, target: relay.target), to: relay.requester, address: address))
        }
    }

    // MARK: - Suspicion (Lifeguard §IV-C)

    private func suspicionTimeouts() -> (minimum: Duration, maximum: Duration, expectedConfirmations: Int) {
        let n = Double(self.liveCount)
        let minimum = self.settings.probeInterval * (Double(self.settings.suspicionMultiplier) * max(1, log10(n)))
        let maximum = minimum * self.settings.suspicionMaximumMultiplier
        return (minimum, maximum, min(self.settings.indirectChecks, max(self.liveCount - 2, 0)))
    }

    /// The suspicion deadline after `confirmations` independent confirmations: starts at the maximum and falls
    /// logarithmically towards the minimum as confirmations arrive.
    private func suspicionTimeout(confirmations: Int) -> Duration {
        let (minimum, maximum, expected) = self.suspicionTimeouts()
        guard expected > 0 else { return minimum }
        let fraction = log(Double(confirmations + 1)) / log(Double(expected + 1))
        let timeout = maximum - (maximum - minimum) * min(fraction, 1)
        return max(minimum, timeout)
    }

    /// Our own probe failed: suspect the member, or, if it is already suspect, add our independent confirmation
    /// (Lifeguard: confirmations are what shorten a suspicion from its maximum towards its minimum).
    private mutating func suspect(_ target: NodeID, now: Duration, into directives: inout [MembershipDirective]) {
        guard let member = self.members[target], member.status == .alive || member.status == .suspect else { return }
        let claim = StatusClaim(
            kind: .suspect, target: target, incarnation: member.incarnation, accuser: self.nodeID, signer: self.signer)
        self.apply(.claim(claim), from: self.nodeID, now: now, into: &directives)
    }

    /// Strong evidence that a member is gone: its session was cut without a close, and a new connection to its
    /// listen address was refused (nothing listens there; a stalled or slow process still accepts). It is declared
    /// dead at once, as this node's signed claim, without waiting out a suspicion; a member that comes back refutes
    /// the claim with a higher incarnation, as after any death.
    public mutating func refused(_ target: NodeID, now: Duration) -> [MembershipDirective] {
        var directives: [MembershipDirective] = []
        guard target != self.nodeID, let member = self.members[target], member.status == .alive || member.status == .suspect
        else { return [] }
        let claim = StatusClaim(
            kind: .dead, target: target, incarnation: member.incarnation, accuser: self.nodeID, signer: self.signer)
        self.apply(.claim(claim), from: self.nodeID, now: now, into: &directives)
        return directives
    }

    private mutating func expireSuspicions(now: Duration, into directives: inout [MembershipDirective]) {
        for id in self.suspects.sorted() {
            guard let member = self.members[id], let suspicion = member.trouble?.suspicion, now >= suspicion.deadline else { continue }
            let claim = StatusClaim(
                kind: .dead, target: id, incarnation: member.incarnation, accuser: self.nodeID, signer: self.signer)
            self.apply(.claim(claim), from: self.nodeID, now: now, into: &directives)
        }
    }

    // MARK: - Merging updates

    /// Applies one update under SWIM's order: alive(i) < suspect(i) < alive(i+1), and dead(i) or left(i) beat
    /// alive(i) and suspect(i). Anything that changes state is re-broadcast.
    private mutating func apply(
        _ update: MembershipUpdate, from peer: NodeID, now: Duration, into directives: inout [MembershipDirective]
    ) {
        switch update {
        case .alive(let record):
            self.applyAlive(record, from: peer, now: now, into: &directives)
        case .claim(let claim):
            self.applyClaim(claim, from: peer, now: now, into: &directives)
        }
    }

    private mutating func applyAlive(
        _ record: MemberRecord, from peer: NodeID, now: Duration, into directives: inout [MembershipDirective]
    ) {
        guard record.protocolVersion == MemberRecord.protocolVersion else {
            directives.append(.misbehaving(peer, reason: "member record with protocol version \(record.protocolVersion)"))
            return
        }
        if record.nodeID == self.nodeID {
            // Someone holds a newer (or different) record of ours: we restarted, or it is stale. Go higher.
            if record != self.local, record.incarnation >= self.local.incarnation {
                guard record.isValid(using: self.signer) else {
                    directives.append(.misbehaving(peer, reason: "forged record for this node"))
                    return
                }
                self.refute(above: record.incarnation, kind: nil, by: peer, into: &directives)
            }
            return
        }
        let existing = self.members[record.nodeID]
        if let existing {
            let newer: Bool
            switch existing.status {
            case .alive: newer = record.incarnation > existing.record.incarnation
            case .suspect, .dead, .left: newer = record.incarnation > existing.incarnation
            }
            guard newer else { return }
        }
        // Cheap checks first: a record of a node this one does not trust changes nothing, however well signed.
        guard existing != nil || self.admits(record) else { return }
        // Verify only what would change state: re-broadcast copies of known records cost nothing.
        guard record.isValid(using: self.signer) else {
            directives.append(.misbehaving(peer, reason: "member record for \(record.nodeID.short) with a bad signature"))
            return
        }
        self.store(
            Member(record: record, status: .alive, incarnation: record.incarnation, trouble: nil, lastChange: now),
            for: record.nodeID)
        self.enqueue(.alive(record))
        switch existing?.status {
        case nil: directives.append(.changed(.joined(record)))
        case .alive?: directives.append(.changed(.updated(record)))
        case .suspect?, .dead?, .left?: directives.append(.changed(.recovered(record.nodeID, incarnation: record.incarnation)))
        }
    }

    private func admits(_ record: MemberRecord) -> Bool {
        switch self.trust.decision(for: record.identity) {
        case .trusted, .admittedByOpenMode: return true
        case .refused: return false
        }
    }

    private mutating func applyClaim(
        _ claim: StatusClaim, from peer: NodeID, now: Duration, into directives: inout [MembershipDirective]
    ) {
        let accuserKey: Ed25519PublicKey?
        if claim.accuser == self.nodeID {
            accuserKey = self.local.identityKey
        } else {
            accuserKey = self.members[claim.accuser]?.record.identityKey
        }
        if claim.kind == .left, claim.accuser != claim.target {
            directives.append(.misbehaving(peer, reason: "leave claim for \(claim.target.short) made by another member"))
            return
        }

        if claim.target == self.nodeID {
            guard claim.incarnation >= self.local.incarnation, !self.hasLeft else { return }
            guard let accuserKey, claim.isValid(accuserKey: accuserKey, using: self.signer) else { return }
            // Refuting a claim about ourselves also means others found us slow: Lifeguard raises local health.
            self.adjustLocalHealth(by: 1)
            self.refute(above: claim.incarnation, kind: claim.kind, by: claim.accuser, into: &directives)
            return
        }

        guard var member = self.members[claim.target] else { return }
        let applies: Bool
        switch (claim.kind, member.status) {
        case (.suspect, .alive): applies = claim.incarnation >= member.incarnation
        case (.suspect, .suspect): applies = claim.incarnation >= member.incarnation
        case (.dead, .alive), (.dead, .suspect), (.left, .alive), (.left, .suspect), (.left, .dead):
            applies = claim.incarnation >= member.incarnation
        case (.suspect, .dead), (.suspect, .left), (.dead, .dead), (.dead, .left), (.left, .left):
            applies = false
        }
        guard applies else { return }
        guard let accuserKey else { return }  // an accuser we do not know cannot be checked, so it is not believed
        guard claim.isValid(accuserKey: accuserKey, using: self.signer) else {
            directives.append(.misbehaving(peer, reason: "\(claim.kind) claim with a bad signature"))
            return
        }

        if claim.kind == .suspect, member.status == .suspect, claim.incarnation == member.incarnation,
            let trouble = member.trouble, var suspicion = trouble.suspicion
        {
            // A confirmation from another accuser shortens the suspicion (Lifeguard).
            guard !suspicion.confirmers.contains(claim.accuser) else { return }
            suspicion.confirmers.insert(claim.accuser)
            suspicion.deadline = suspicion.started + self.suspicionTimeout(confirmations: suspicion.confirmers.count - 1)
            member.trouble = Trouble(claim: trouble.claim, suspicion: suspicion)
            self.store(member, for: claim.target)
            self.enqueue(.claim(claim), key: claim.target)
            directives.append(.changed(.confirmed(claim.target, by: claim.accuser, confirmations: suspicion.confirmers.count)))
            return
        }
        let status: MemberStatus
        let event: MembershipEvent
        switch claim.kind {
        case .suspect:
            status = .suspect
            event = .suspected(claim.target, incarnation: claim.incarnation, accuser: claim.accuser)
        case .dead:
            status = .dead
            event = .died(claim.target, incarnation: claim.incarnation, accuser: claim.accuser)
        case .left:
            status = .left
            event = .left(claim.target)
        }
        member.status = status
        member.incarnation = claim.incarnation
        member.trouble = Trouble(
            claim: claim,
            suspicion: status == .suspect
                ? Suspicion(started: now, confirmers: [claim.accuser], deadline: now + self.suspicionTimeout(confirmations: 0))
                : nil)
        member.lastChange = now
        directives.append(.changed(event))
        self.store(member, for: claim.target)
        self.enqueue(.claim(claim), key: claim.target)
    }

    private mutating func refute(
        above incarnation: UInt64, kind: StatusClaim.Kind?, by accuser: NodeID, into directives: inout [MembershipDirective]
    ) {
        self.local = self.local.updated(incarnation: incarnation + 1, signer: self.signer)
        self.enqueue(.alive(self.local))
        directives.append(.changed(.refuted(claim: kind ?? .suspect, by: accuser, newIncarnation: self.local.incarnation)))
    }

    private mutating func reap(now: Duration, into directives: inout [MembershipDirective]) {
        for id in self.departed.sorted() {
            guard let member = self.members[id], now - member.lastChange >= self.settings.reapAfter else { continue }
            self.store(nil, for: id)
            self.broadcasts[id] = nil
            directives.append(.changed(.reaped(id)))
        }
    }

    // MARK: - Dissemination (SWIM §4.1)

    private var retransmitLimit: Int {
        self.settings.retransmitMultiplier * Int(log10(Double(self.liveCount + 1)).rounded(.up))
    }

    /// Queues an update, replacing older news about the same member.
    private mutating func enqueue(_ update: MembershipUpdate, key: NodeID? = nil) {
        self.broadcasts[key ?? update.subject] = Broadcast(update: update, transmissions: 0)
    }

    /// Up to `maximumPiggyback` updates, least-transmitted first; each is dropped after its retransmit limit.
    private mutating func piggyback() -> [MembershipUpdate] {
        guard !self.broadcasts.isEmpty else { return [] }
        let limit = max(self.retransmitLimit, 1)
        let chosen = self.broadcasts.sorted { lhs, rhs in
            lhs.value.transmissions != rhs.value.transmissions
                ? lhs.value.transmissions < rhs.value.transmissions : lhs.key < rhs.key
        }.prefix(self.settings.maximumPiggyback)
        var updates: [MembershipUpdate] = []
        for (key, broadcast) in chosen {
            updates.append(broadcast.update)
            if broadcast.transmissions + 1 >= limit {
                self.broadcasts[key] = nil
            } else {
                self.broadcasts[key]?.transmissions += 1
            }
        }
        return updates
    }

    private mutating func gossip(into directives: inout [MembershipDirective]) {
        guard !self.broadcasts.isEmpty else { return }
        for target in self.randomLiveMembers(count: self.settings.gossipFanout, excluding: []) {
            let updates = self.piggyback()
            guard !updates.isEmpty, let member = self.members[target] else { break }
            directives.append(.send(.gossip(updates: updates), to: target, address: member.record.address))
        }
    }

    /// Everything this node knows, for push-pull: every record, and the claim behind every non-alive status.
    private func fullState() -> [MembershipUpdate] {
        var updates: [MembershipUpdate] = [.alive(self.local)]
        updates.reserveCapacity(self.members.count + 1)
        for member in self.sortedMembers() {
            updates.append(.alive(member.record))
            if let claim = member.trouble?.claim, member.status != .alive { updates.append(.claim(claim)) }
        }
        return updates
    }
}

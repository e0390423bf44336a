/// Which sessions a node keeps: one per peer (a duplicate loses by a rule both ends apply alike), at most
/// `maximumConnections` (the least recently active on-demand or accepted ones are shed), and, for a member that has
/// no session yet, a short queue of messages waiting for the dial that opens one.
///
/// A pure value: the node registers sessions as handshakes finish and carries out what comes back (close this
/// handle, write these queued messages, dial that member). `Handle` is whatever the node writes to.
public struct ConnectionTable<Handle, Message> {
    public enum Origin: Sendable, Equatable {
        /// The peer dialled this node.
        case accepted
        /// This node dialled a join address (kept and re-dialled; never shed).
        case dialled(HostAndPort)
        /// This node dialled a member to reach it (shed first when over the bound).
        case onDemand(NodeID)

        public var isAccepted: Bool { self == .accepted }

        public var isJoin: Bool {
            if case .dialled = self { return true }
            return false
        }
    }

    public struct Connection {
        public let number: UInt64
        public let peer: NodeID
        public let handle: Handle
        public let origin: Origin
        /// Which node dialled it.
        public let initiator: NodeID
        public fileprivate(set) var lastActivity: Duration
    }

    public enum Registration {
        /// Kept as session `number`. Close every handle in `close` with its reason, then write `pending` to it.
        case registered(number: UInt64, close: [(Handle, CloseCause)], pending: [Message])
        /// Another session with the peer wins: close this one as a duplicate.
        case duplicate
        /// An on-demand dial reached a node other than the member it was for.
        case wrongPeer(expected: NodeID)
    }

    public enum CloseCause: Equatable, Sendable {
        case duplicate
        case pruned(keepingAtMost: Int)
    }

    /// How to get a message to a peer.
    public enum Route {
        case write(Handle)
        /// Queued; dial the member (no dial for it is under way yet).
        case dial
        /// Queued behind a dial already under way.
        case queued
        /// The queue for this member is full; the message is dropped (both protocols tolerate loss).
        case dropped
    }

    public let maximumConnections: Int
    public let maximumPendingSends: Int
    public private(set) var all: [NodeID: Connection] = [:]
    private var lastNumber: UInt64 = 0
    private var pendingSends: [NodeID: [Message]] = [:]
    private var dialing: Set<NodeID> = []
    /// Why this node closed a session itself, so its end is reported truthfully.
    private var closedHere: [UInt64: String] = [:]

    public init(maximumConnections: Int, maximumPendingSends: Int = 32) {
        self.maximumConnections = maximumConnections
        self.maximumPendingSends = maximumPendingSends
    }

    public subscript(peer: NodeID) -> Connection? { self.all[peer] }

    public var count: Int { self.all.count }

    /// Messages queued for members being dialled.
    public var hasPendingSends: Bool { !self.pendingSends.isEmpty }

    /// A session finished its handshake.
    public mutating func register(
        peer: NodeID, handle: Handle, origin: Origin, initiator: NodeID, now: Duration
    ) -> Registration {
        if case .onDemand(let expected) = origin, expected != peer { return .wrongPeer(expected: expected) }
        var close: [(Handle, CloseCause)] = []
        if let existing = self.all[peer] {
            guard ConnectionArbiter.keepsNewConnection(existingInitiator: existing.initiator, newInitiator: initiator)
            else { return .duplicate }
            self.closedHere[existing.number] = "closed here: duplicate connection"
            close.append((existing.handle, .duplicate))
        }
        self.lastNumber += 1
        let number = self.lastNumber
        self.all[peer] = Connection(
            number: number, peer: peer, handle: handle, origin: origin, initiator: initiator, lastActivity: now)
        self.dialing.remove(peer)
        let pending = self.pendingSends.removeValue(forKey: peer) ?? []
        close += self.prune(keeping: peer)
        return .registered(number: number, close: close, pending: pending)
    }

    /// Over the bound, the least recently active sessions that are not join connections (their loop would only
    /// dial again) are closed.
    private mutating func prune(keeping newest: NodeID) -> [(Handle, CloseCause)] {
        // Sessions already closing here still count until they end, but are not chosen again.
        let open = self.all.values.filter { self.closedHere[$0.number] == nil }
        let excess = open.count - self.maximumConnections
        guard excess > 0 else { return [] }
        let victims = open
            .filter { !$0.origin.isJoin && $0.peer != newest }
            .sorted { $0.lastActivity < $1.lastActivity }
            .prefix(excess)
        return victims.map { victim in
            self.closedHere[victim.number] = "closed here: pruned to keep at most \(self.maximumConnections) sessions"
            return (victim.handle, CloseCause.pruned(keepingAtMost: self.maximumConnections))
        }
    }

    /// This node is closing session `number` itself, for this reason (a ban, for example).
    public mutating func closing(_ number: UInt64, because reason: String) {
        self.closedHere[number] = "closed here: \(reason)"
    }

    /// A session ended. Returns why this node closed it, if it did, and whether it was the peer's current session
    /// (a duplicate that lost was never current).
    public mutating func ended(_ number: UInt64, peer: NodeID) -> (closedHere: String?, wasCurrent: Bool) {
        let reason = self.closedHere.removeValue(forKey: number)
        guard let connection = self.all[peer], connection.number == number else { return (reason, false) }
        self.all[peer] = nil
        return (reason, true)
    }

    /// A message from the peer: its session is active.
    public mutating func heard(from peer: NodeID, now: Duration) {
        self.all[peer]?.lastActivity = now
    }

    /// Where a message to `peer` goes: its session, or a queue while a dial opens one.
    public mutating func route(_ message: Message, to peer: NodeID, now: Duration) -> Route {
        if let connection = self.all[peer] {
            self.all[peer]?.lastActivity = now
            return .write(connection.handle)
        }
        var pending = self.pendingSends[peer, default: []]
        guard pending.count < self.maximumPendingSends else { return .dropped }
        pending.append(message)
        self.pendingSends[peer] = pending
        return self.dialing.insert(peer).inserted ? .dial : .queued
    }

    /// A dial of `peer` with nothing queued (to see whether it still listens); false if one is under way.
    public mutating func startDial(_ peer: NodeID) -> Bool {
        self.all[peer] == nil && self.dialing.insert(peer).inserted
    }

    /// A dial for `peer` ended; what it did not deliver is dropped.
    public mutating func dialEnded(_ peer: NodeID) {
        self.dialing.remove(peer)
        if self.all[peer] == nil { self.pendingSends[peer] = nil }
    }

    /// At shutdown: every session, which the table forgets.
    public mutating func removeAll() -> [Connection] {
        defer {
            self.all.removeAll()
            self.pendingSends.removeAll()
        }
        return Array(self.all.values)
    }
}

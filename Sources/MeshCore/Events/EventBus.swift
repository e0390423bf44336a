public import MeshCrypto

/// An event published on the mesh: a topic and JSON data, named by a random id that every node de-duplicates on,
/// and signed by the node that published it, so no peer that passes it on can put another node's name on it.
public struct MeshEvent: Sendable, Equatable {
    public let id: EventID
    public let topic: String
    /// The node that published it: the hash of `originKey` (see ``NodeID/init(identityKey:)``).
    public let origin: NodeID
    /// Wall-clock milliseconds when it was published.
    public let time: Int64
    public let data: [UInt8]
    /// The publisher's identity key and its signature over ``signedBytes``. Only events kept by a node from before
    /// events were signed lack them; such an event is never sent again.
    public let seal: Seal?

    public struct Seal: Sendable, Equatable {
        public let originKey: Ed25519PublicKey
        public let signature: [UInt8]

        public init(originKey: Ed25519PublicKey, signature: [UInt8]) {
            self.originKey = originKey
            self.signature = signature
        }
    }

    public static let maximumData = 64 * 1024
    public static let signatureLength = 64
    static let signatureDomain = Array("agentmesh-event-v1".utf8)

    public init(id: EventID, topic: String, origin: NodeID, time: Int64, data: [UInt8], seal: Seal?) {
        self.id = id
        self.topic = topic
        self.origin = origin
        self.time = time
        self.data = data
        self.seal = seal
    }

    /// An event published by `identity`, signed with its key.
    public init(id: EventID, topic: String, publishedBy identity: NodeIdentity, time: Int64, data: [UInt8]) {
        let originKey = identity.signingKey.publicKey
        let signature = identity.signingKey.signature(
            for: Self.signedBytes(id: id, topic: topic, originKey: originKey, time: time, data: data))
        self.init(
            id: id, topic: topic, origin: identity.nodeID, time: time, data: data,
            seal: Seal(originKey: originKey, signature: signature))
    }

    /// What the publisher signs: `"agentmesh-event-v1" ‖ id ‖ topic (1 + n) ‖ origin key ‖ time ‖ data (4 + n)`.
    public static func signedBytes(id: EventID, topic: String, originKey: Ed25519PublicKey, time: Int64, data: [UInt8]) -> [UInt8] {
        var writer = ByteWriter(capacity: data.count + 128)
        writer.raw(Self.signatureDomain)
        writer.u64(id.high)
        writer.u64(id.low)
        writer.shortString(topic)
        writer.raw(originKey.bytes)
        writer.u64(UInt64(bitPattern: time))
        writer.longBytes(data)
        return writer.bytes
    }

    /// Whether the event is what its origin signed: the seal's key is the origin's, and the signature covers
    /// every field.
    public var isAuthentic: Bool {
        guard let seal, NodeID(identityKey: seal.originKey) == self.origin else { return false }
        return seal.originKey.isValidSignature(
            seal.signature,
            for: Self.signedBytes(id: self.id, topic: self.topic, originKey: seal.originKey, time: self.time, data: self.data))
    }

    /// Topics are named like capabilities: 1 to 64 characters of A-Z a-z 0-9 . _ -
    public static func isValidTopic(_ topic: String) -> Bool { Capability.isValidName(topic) }

    /// A topic, or a prefix ending in `*` (`research.*`; `*` alone is every topic).
    public static func isValidPattern(_ pattern: String) -> Bool {
        pattern == "*" || Self.isValidTopic(pattern.hasSuffix("*") ? String(pattern.dropLast()) : pattern)
    }

    /// Whether `topic` is `pattern`, or starts with it when the pattern ends in `*`.
    public static func topic(_ topic: String, matches pattern: String) -> Bool {
        pattern.hasSuffix("*") ? topic.hasPrefix(pattern.dropLast()) : topic == pattern
    }
}

/// Events spread peer to peer, with no broker, as a pure state machine.
///
/// The publisher sends an event to every live member and re-sends it each `retryInterval` to those that have not
/// acknowledged it, until all have (or died, or `giveUpAfter` passed). A node that receives an event it has not
/// seen acknowledges it, keeps it in its history, delivers it to its own subscribers, and passes it once to every
/// live member except the sender and the publisher, so members the publisher could not reach still get it, also
/// when the publisher dies right after publishing. Ids de-duplicate: a node delivers an event at most once
/// however often it arrives, so every live subscriber gets it at least once and acts on it once.
public struct EventBus: Sendable {
    public struct Settings: Sendable {
        public var historyLimit = 10_000
        /// And at most this many bytes of events, and of those one origin's at most `originBytesLimit`: one
        /// peer's 10,000 events of 64 KiB grew a node by 890 MiB (and each node it relayed them to by 750), within
        /// every rate limit. A flooding origin now pushes out its own oldest events, not everyone's.
        public var historyBytesLimit = 64 * 1024 * 1024
        public var originBytesLimit = 16 * 1024 * 1024
        public var retryInterval: Duration = .seconds(1)
        public var giveUpAfter: Duration = .seconds(300)
        /// One origin's events hold at most this many places of the history: a peer's 10,001 tiny events pushed
        /// every other origin's out (and with them what de-duplicated a replay of theirs).
        public var originCountLimit = 2_500
        /// Events are taken only within this much of their signed time (milliseconds), and the ids of events that
        /// left the history are remembered that long: a replay of an old event is refused, a recent one is known.
        public var replayWindow: Int64 = 15 * 60 * 1000
        public var rememberedLimit = 100_000
        public init() {}
    }

    /// An event as a node keeps it: numbered in the order this node received it.
    public struct Record: Sendable, Equatable {
        public let sequence: Int
        public let event: MeshEvent
        /// What each local subscription made of it (`ran`, `failed: …`, `workflow ID`), by subscription.
        public var outcomes: [String: String]

        public init(sequence: Int, event: MeshEvent, outcomes: [String: String] = [:]) {
            self.sequence = sequence
            self.event = event
            self.outcomes = outcomes
        }
    }

    public enum Directive: Sendable, Equatable {
        case send(TaskMessage, to: NodeID)
        /// Keep (or update) the record durably.
        case store(Record)
        /// Drop a record that fell out of the history.
        case forget(EventID)
        /// Hand the event to this node's subscribers.
        case deliver(MeshEvent)
    }

    public let local: NodeID
    public let settings: Settings
    public private(set) var history: [Record] = []
    /// Each kept event's sequence number.
    private var index: [EventID: Int] = [:]
    /// Bytes of the history, in all and per origin (see ``bytes(of:)``).
    public private(set) var historyBytes = 0
    private var bytesByOrigin: [NodeID: Int] = [:]
    private var countByOrigin: [NodeID: Int] = [:]
    /// Ids of events that left the history, with their signed time, oldest first, until the replay window passes.
    private var remembered: [EventID: Int64] = [:]
    private var rememberedOrder: [EventID] = []
    /// Events this node published that some members have not acknowledged.
    private var unacknowledged: [EventID: (event: MeshEvent, waiting: Set<NodeID>, nextAt: Duration, until: Duration)] = [:]

    public init(local: NodeID, settings: Settings = Settings()) {
        self.local = local
        self.settings = settings
    }

    /// Records from the store, oldest first.
    public mutating func restore(_ records: [Record]) {
        for record in records.sorted(by: { $0.sequence < $1.sequence }) { self.append(record) }
    }

    public var lastSequence: Int { self.history.last?.sequence ?? 0 }

    public func record(_ id: EventID) -> Record? {
        self.position(of: id).map { self.history[$0] }
    }

    /// Where an event sits in the history (sequences ascend, with gaps where stored records could not be read).
    private func position(of id: EventID) -> Int? {
        guard let sequence = self.index[id] else { return nil }
        var low = 0, high = self.history.count - 1
        while low <= high {
            let middle = (low + high) / 2
            let found = self.history[middle].sequence
            if found == sequence { return middle }
            if found < sequence { low = middle + 1 } else { high = middle - 1 }
        }
        return nil
    }

    /// The records after `sequence`, oldest first, optionally of one topic.
    /// `topic`: a topic or a pattern (``MeshEvent/topic(_:matches:)``); nil for every event.
    public func records(after sequence: Int, topic: String?, limit: Int) -> [Record] {
        let first = self.history.firstIndex { $0.sequence > sequence } ?? self.history.endIndex
        return Array(self.history[first...].lazy.filter { record in
            topic.map { MeshEvent.topic(record.event.topic, matches: $0) } ?? true
        }.prefix(limit))
    }

    /// Publishes from this node to every member in `members` (the live ones).
    public mutating func publish(_ event: MeshEvent, to members: [NodeID], now: Duration) -> [Directive] {
        guard self.index[event.id] == nil else { return [] }
        var directives = self.keep(event)
        let others = Set(members).subtracting([self.local])
        for member in others.sorted() { directives.append(.send(.event(event), to: member)) }
        if !others.isEmpty {
            self.unacknowledged[event.id] = (event, others, now + self.settings.retryInterval, now + self.settings.giveUpAfter)
        }
        return directives
    }

    /// `time`: this node's wall clock in milliseconds, against the events' signed times.
    public mutating func receive(_ message: TaskMessage, from peer: NodeID, members: [NodeID], now: Duration, time: Int64) -> [Directive] {
        switch message {
        case .event(let event):
            var directives: [Directive] = [.send(.eventAck(event.id), to: peer)]
            self.forgetRemembered(before: time - self.settings.replayWindow)
            // Known (kept, or let go within the window), or outside the window: acknowledged, not taken again.
            guard self.index[event.id] == nil, self.remembered[event.id] == nil,
                // Compared as a range around this node's time: the event's time is the peer's, and a difference
                // taken with it (Int64.min) would overflow.
                (time - self.settings.replayWindow...time + self.settings.replayWindow).contains(event.time)
            else { return directives }
            directives += self.keep(event)
            for member in Set(members).subtracting([self.local, peer, event.origin]).sorted() {
                directives.append(.send(.event(event), to: member))
            }
            return directives
        case .eventAck(let id):
            self.unacknowledged[id]?.waiting.remove(peer)
            if self.unacknowledged[id]?.waiting.isEmpty == true { self.unacknowledged[id] = nil }
            return []
        default:
            return []
        }
    }

    /// Members still to acknowledge an event this node published (empty once all have).
    public func waiting(for id: EventID) -> Set<NodeID> { self.unacknowledged[id]?.waiting ?? [] }

    /// Re-sends to the live members that have not acknowledged; forgets members no longer alive.
    public mutating func tick(now: Duration, alive: Set<NodeID>) -> [Directive] {
        var directives: [Directive] = []
        for (id, entry) in self.unacknowledged {
            var entry = entry
            entry.waiting.formIntersection(alive)
            if entry.waiting.isEmpty || now >= entry.until {
                self.unacknowledged[id] = nil
                continue
            }
            if now >= entry.nextAt {
                for member in entry.waiting.sorted() { directives.append(.send(.event(entry.event), to: member)) }
                entry.nextAt = now + self.settings.retryInterval
            }
            self.unacknowledged[id] = entry
        }
        return directives
    }

    public var nextDeadline: Duration? { self.unacknowledged.values.map(\.nextAt).min() }

    /// A subscriber's outcome for an event, kept with its record.
    public mutating func handled(_ id: EventID, by subscription: String, outcome: String) -> [Directive] {
        guard let position = self.position(of: id) else { return [] }
        self.history[position].outcomes[subscription] = outcome
        return [.store(self.history[position])]
    }

    private mutating func keep(_ event: MeshEvent) -> [Directive] {
        let record = Record(sequence: self.lastSequence + 1, event: event)
        var directives: [Directive] = [.store(record), .deliver(event)]
        for dropped in self.append(record) { directives.append(.forget(dropped)) }
        return directives
    }

    /// What a kept event counts against the byte budgets: its data, its topic and a record's overhead.
    static func bytes(of event: MeshEvent) -> Int { event.data.count + event.topic.utf8.count + 128 }

    /// The bytes of the history that came from `origin`.
    public func bytes(from origin: NodeID) -> Int { self.bytesByOrigin[origin] ?? 0 }

    /// Appends, dropping the origin's own oldest events past its share, then the oldest beyond the count and byte
    /// limits; returns the ids dropped.
    @discardableResult
    private mutating func append(_ record: Record) -> [EventID] {
        let origin = record.event.origin
        self.history.append(record)
        self.index[record.event.id] = record.sequence
        self.historyBytes += Self.bytes(of: record.event)
        self.bytesByOrigin[origin, default: 0] += Self.bytes(of: record.event)
        self.countByOrigin[origin, default: 0] += 1
        var dropped: [EventID] = []
        while self.bytes(from: origin) > self.settings.originBytesLimit || (self.countByOrigin[origin] ?? 0) > self.settings.originCountLimit,
            let oldest = self.history.firstIndex(where: { $0.event.origin == origin })
        {
            dropped.append(self.remove(at: oldest))
        }
        while !self.history.isEmpty,
            self.history.count > self.settings.historyLimit || self.historyBytes > self.settings.historyBytesLimit
        {
            dropped.append(self.remove(at: 0))
        }
        return dropped
    }

    private mutating func remove(at position: Int) -> EventID {
        let record = self.history.remove(at: position)
        self.index[record.event.id] = nil
        let size = Self.bytes(of: record.event)
        self.historyBytes -= size
        let left = self.bytes(from: record.event.origin) - size
        self.bytesByOrigin[record.event.origin] = left > 0 ? left : nil
        let count = (self.countByOrigin[record.event.origin] ?? 1) - 1
        self.countByOrigin[record.event.origin] = count > 0 ? count : nil
        self.remember(record.event)
        return record.event.id
    }

    private mutating func remember(_ event: MeshEvent) {
        guard self.remembered.updateValue(event.time, forKey: event.id) == nil else { return }
        self.rememberedOrder.append(event.id)
        while self.rememberedOrder.count > self.settings.rememberedLimit {
            self.remembered[self.rememberedOrder.removeFirst()] = nil
        }
    }

    /// Lets go of remembered ids whose events are older than the window: such events are refused by their time.
    private mutating func forgetRemembered(before cutoff: Int64) {
        var drop = 0
        while drop < self.rememberedOrder.count, let time = self.remembered[self.rememberedOrder[drop]], time < cutoff {
            self.remembered[self.rememberedOrder[drop]] = nil
            drop += 1
        }
        if drop > 0 { self.rememberedOrder.removeFirst(drop) }
    }

    /// Whether the bus knows the event: kept, or let go within the replay window.
    public func knows(_ id: EventID) -> Bool { self.index[id] != nil || self.remembered[id] != nil }
}

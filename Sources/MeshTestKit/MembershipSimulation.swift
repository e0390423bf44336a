public import MeshCore
import MeshCrypto

/// A deterministic simulation of many ``Membership`` machines: an in-memory network with latency, loss and
/// partitions, a virtual clock, and one seed behind every random choice. The same configuration and the same calls
/// replay exactly, so a failing seed can be investigated.
public struct MembershipSimulation {
    public struct Configuration: Sendable {
        public var nodeCount: Int
        public var seed: UInt64
        public var settings: MembershipSettings
        /// Probability that any one message is lost.
        public var loss = 0.0
        /// One-way delay of a message, drawn uniformly.
        public var latency: ClosedRange<Duration> = .milliseconds(1) ... .milliseconds(5)
        /// How often every node's timers run.
        public var tick: Duration = .milliseconds(25)

        public init(nodeCount: Int, seed: UInt64, settings: MembershipSettings = .lan) {
            self.nodeCount = nodeCount
            self.seed = seed
            self.settings = settings
        }
    }

    public let configuration: Configuration
    public private(set) var nodes: [Membership] = []
    public private(set) var now: Duration = .zero
    public private(set) var messagesSent = 0
    public private(set) var messagesLost = 0
    /// Every membership event, with the index of the node that saw it and when.
    public private(set) var events: [(node: Int, time: Duration, event: MembershipEvent)] = []
    /// Misbehaviour reports; an honest simulation must produce none.
    public private(set) var misbehaviour: [(node: Int, peer: NodeID, reason: String)] = []
    /// Kept even when the event log is off: when each member was first suspected, and which members anyone
    /// declared dead (with when), which is all the large experiments need.
    public private(set) var firstSuspicion: [NodeID: Duration] = [:]
    public private(set) var declaredDead: [NodeID: Duration] = [:]

    private var index: [NodeID: Int] = [:]
    private var crashed: Set<Int> = []
    private var group: [Int] = []
    private var random: SplitMix64
    private var queue = DeliveryQueue()
    private var nextTick: Duration = .zero
    private let recordEvents: Bool

    /// Builds `nodeCount` nodes that already know each other (a converged mesh).
    /// - Parameter recordEvents: keep the event log (turn off for the largest runs to save memory).
    public init(_ configuration: Configuration, recordEvents: Bool = true) {
        self.configuration = configuration
        self.random = SplitMix64(seed: configuration.seed)
        self.recordEvents = recordEvents
        var records: [MemberRecord] = []
        records.reserveCapacity(configuration.nodeCount)
        for i in 0..<configuration.nodeCount {
            let node = self.makeNode(number: i)
            records.append(node.local)
            self.index[node.nodeID] = i
            self.nodes.append(node)
            self.group.append(0)
        }
        for i in self.nodes.indices { self.nodes[i].assumeMembers(records, now: .zero) }
    }

    private mutating func makeNode(number: Int) -> Membership {
        // Keys need not be real: records are unsigned here, so only their uniqueness matters.
        let identity = PeerIdentity(
            name: "n\(number)", identityKey: try! Ed25519PublicKey(bytes: self.random.bytes(32)),
            staticKey: self.random.bytes(32))
        return Membership(
            identity: identity, address: "sim:\(number)", trust: TrustPolicy(isOpen: true), signer: .unsigned,
            settings: self.configuration.settings, seed: self.random.next(), now: self.now)
    }

    public func nodeID(_ node: Int) -> NodeID { self.nodes[node].nodeID }

    // MARK: - Faults and membership changes

    /// Adds a node that joins through `seed` (a session opens between them); returns its index.
    @discardableResult
    public mutating func join(via seed: Int) -> Int {
        let number = self.nodes.count
        let node = self.makeNode(number: number)
        self.index[node.nodeID] = number
        self.nodes.append(node)
        self.group.append(self.group[seed])
        self.connect(number, seed)
        return number
    }

    /// Simulates a session opening between two nodes.
    public mutating func connect(_ a: Int, _ b: Int) {
        let joined = self.nodes[a].connected(to: self.nodeID(b), address: "sim:\(b)", now: self.now)
        self.handle(joined, at: a)
        let seeded = self.nodes[b].connected(to: self.nodeID(a), address: "sim:\(a)", now: self.now)
        self.handle(seeded, at: b)
    }

    /// The node stops dead: it sends and receives nothing more.
    public mutating func crash(_ node: Int) { self.crashed.insert(node) }

    /// A crashed node comes back with the same identity but none of its state (a restart), and rejoins via `seed`.
    public mutating func restart(_ node: Int, via seed: Int) {
        let old = self.nodes[node].local
        self.nodes[node] = Membership(
            identity: old.identity, address: old.address, trust: TrustPolicy(isOpen: true), signer: .unsigned,
            settings: self.configuration.settings, seed: self.random.next(), now: self.now)
        self.crashed.remove(node)
        self.connect(node, seed)
    }

    public mutating func leave(_ node: Int) {
        let directives = self.nodes[node].leave(now: self.now)
        self.handle(directives, at: node)
        self.crashed.insert(node)
    }

    /// Puts nodes in partition groups: messages between different groups are lost. `[0, 0, 1, …]`.
    public mutating func partition(_ groups: [Int]) {
        precondition(groups.count == self.nodes.count, "one group per node")
        self.group = groups
    }

    public mutating func heal() { self.group = Array(repeating: 0, count: self.nodes.count) }

    public func isCrashed(_ node: Int) -> Bool { self.crashed.contains(node) }

    // MARK: - Running

    /// Advances virtual time by `duration`, delivering messages and running timers in time order.
    public mutating func run(for duration: Duration) {
        self.run(until: self.now + duration) { _ in false }
    }

    /// Runs until `condition` holds (checked after each tick) or `deadline`; returns whether it held.
    @discardableResult
    public mutating func run(until deadline: Duration, _ condition: (Self) -> Bool) -> Bool {
        while self.now < deadline {
            if let next = self.queue.peekTime, next <= self.nextTick {
                let delivery = self.queue.pop()!
                self.now = delivery.time
                self.deliver(delivery)
                continue
            }
            self.now = self.nextTick
            self.nextTick = self.now + self.configuration.tick
            for node in self.nodes.indices where !self.crashed.contains(node) {
                let directives = self.nodes[node].tick(now: self.now)
                if !directives.isEmpty { self.handle(directives, at: node) }
            }
            if condition(self) { return true }
        }
        return condition(self)
    }

    private mutating func deliver(_ delivery: Delivery) {
        guard !self.crashed.contains(delivery.to) else { return }
        let directives = self.nodes[delivery.to].receive(delivery.message, from: self.nodeID(delivery.from), now: self.now)
        self.handle(directives, at: delivery.to)
    }

    private mutating func handle(_ directives: [MembershipDirective], at node: Int) {
        for directive in directives {
            switch directive {
            case .send(let message, let target, _):
                self.messagesSent += 1
                guard let to = self.index[target], !self.crashed.contains(to), self.group[to] == self.group[node] else {
                    self.messagesLost += 1
                    continue
                }
                if self.configuration.loss > 0, Double.random(in: 0..<1, using: &self.random) < self.configuration.loss {
                    self.messagesLost += 1
                    continue
                }
                let lower = self.configuration.latency.lowerBound
                let spread = self.configuration.latency.upperBound - lower
                let delay = lower + spread * Double.random(in: 0...1, using: &self.random)
                self.queue.push(Delivery(time: self.now + delay, order: self.messagesSent, from: node, to: to, message: message))
            case .changed(let event):
                if self.recordEvents { self.events.append((node, self.now, event)) }
                switch event {
                case .suspected(let id, _, _): if self.firstSuspicion[id] == nil { self.firstSuspicion[id] = self.now }
                case .died(let id, _, _): if self.declaredDead[id] == nil { self.declaredDead[id] = self.now }
                default: break
                }
            case .misbehaving(let peer, let reason):
                self.misbehaviour.append((node, peer, reason))
            }
        }
    }

    // MARK: - Observations

    /// Live nodes (not crashed) whose view of `subject` satisfies `predicate`, over all live nodes but the subject.
    public func fraction(seeing subject: Int, _ predicate: (MemberView?) -> Bool) -> Double {
        let id = self.nodeID(subject)
        var total = 0
        var matching = 0
        for node in self.nodes.indices where node != subject && !self.crashed.contains(node) {
            total += 1
            if predicate(self.nodes[node].member(id)) { matching += 1 }
        }
        return total == 0 ? 1 : Double(matching) / Double(total)
    }

    /// Distinct live nodes that some node has declared dead: false positives when nothing crashed.
    public func liveNodesDeclaredDead() -> Set<Int> {
        Set(self.declaredDead.keys.compactMap { id in
            self.index[id].flatMap { self.crashed.contains($0) ? nil : $0 }
        })
    }
}

struct Delivery {
    let time: Duration
    let order: Int
    let from: Int
    let to: Int
    let message: MembershipMessage
}

/// A binary min-heap of deliveries by (time, send order), so equal times deliver in the order sent.
struct DeliveryQueue {
    private var heap: [Delivery] = []

    var peekTime: Duration? { self.heap.first?.time }

    private static func before(_ a: Delivery, _ b: Delivery) -> Bool {
        a.time != b.time ? a.time < b.time : a.order < b.order
    }

    mutating func push(_ delivery: Delivery) {
        self.heap.append(delivery)
        var child = self.heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Self.before(self.heap[child], self.heap[parent]) else { break }
            self.heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Delivery? {
        guard !self.heap.isEmpty else { return nil }
        self.heap.swapAt(0, self.heap.count - 1)
        let top = self.heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < self.heap.count, Self.before(self.heap[left], self.heap[smallest]) { smallest = left }
            if right < self.heap.count, Self.before(self.heap[right], self.heap[smallest]) { smallest = right }
            if smallest == parent { break }
            self.heap.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}

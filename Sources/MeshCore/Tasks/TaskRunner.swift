/// The executing side of the task protocol, as a pure state machine.
///
/// It decides whether to take an offer (capability, capacity, draining, epoch), asks the shell to persist an
/// accepted task *before* the accept goes out and a result before it is sent, keeps every result until the
/// submitter acknowledges it (re-sending it on a timer and when the submitter reconnects), and stops runs that are
/// cancelled or pass their deadline. Task ids make it idempotent: a re-offer of a task that already finished is
/// answered with the stored result, and a re-offer of a running task never starts a second run.
public struct TaskRunner: Sendable {
    public struct Settings: Sendable {
        /// An unacknowledged result is sent again this often.
        public var resultResendInterval: Duration = .seconds(2)
        public init() {}
    }

    /// A task this node accepted, from the offer until the submitter acknowledges its result.
    public struct AcceptedTask: Sendable, Equatable {
        public let id: TaskID
        public internal(set) var epoch: UInt32
        public let submitter: NodeID
        public let capability: String
        public let input: [UInt8]
        /// Core time by which the run must end.
        public let deadline: Duration
        /// Set once the run ended; kept until acknowledged.
        public internal(set) var outcome: TaskOutcome?
        var lastSent: Duration?
    }

    public enum Directive: Sendable, Equatable {
        case send(TaskMessage, to: NodeID)
        /// Make the accepted task durable; the accept in the same batch goes out only after this.
        case persistAccepted(AcceptedTask)
        /// Make the result durable before it is sent.
        case persistResult(TaskID, epoch: UInt32, outcome: TaskOutcome)
        /// The submitter acknowledged the result: drop the task from storage.
        case forget(TaskID)
        /// Run the executor for this task.
        case start(AcceptedTask)
        /// Stop the run (cancel or deadline); the shell reports back with ``finished(_:outcome:now:)``.
        case stop(TaskID)
    }

    public let settings: Settings
    /// How many tasks of each capability may run at once.
    public let capacity: [String: Int]
    public private(set) var isDraining = false
    private var tasks: [TaskID: AcceptedTask] = [:]
    private var running: [String: Int] = [:]

    public init(capacity: [String: Int], settings: Settings = .init()) {
        self.capacity = capacity
        self.settings = settings
    }

    /// Tasks running now: the load this node advertises.
    public var load: Int { self.running.values.reduce(0, +) }

    public func task(_ id: TaskID) -> AcceptedTask? { self.tasks[id] }

    /// Stop taking new offers (before a planned shutdown); running tasks finish.
    public mutating func drain() { self.isDraining = true }

    /// Reloads tasks from storage after a restart. Finished ones wait for their acknowledgement; unfinished ones
    /// are started again (the run in progress died with the process).
    public mutating func restore(_ stored: [AcceptedTask], now: Duration) -> [Directive] {
        var directives: [Directive] = []
        for task in stored.sorted(by: { $0.id < $1.id }) {
            var task = task
            task.lastSent = nil
            self.tasks[task.id] = task
            if task.outcome == nil {
                self.running[task.capability, default: 0] += 1
                directives.append(.start(task))
            }
        }
        return directives
    }

    public mutating func receive(_ message: TaskMessage, from peer: NodeID, now: Duration) -> [Directive] {
        var directives: [Directive] = []
        switch message {
        case .offer(let offer):
            self.receiveOffer(offer, from: peer, now: now, into: &directives)
        case .resultAck(let id, let epoch):
            if let task = self.tasks[id], task.submitter == peer, task.outcome != nil, epoch >= task.epoch {
                self.tasks[id] = nil
                directives.append(.forget(id))
            }
        case .cancel(let id, let epoch):
            if let task = self.tasks[id], task.submitter == peer, task.outcome == nil, epoch >= task.epoch {
                directives.append(.stop(id))
            }
        case .accept, .decline, .result:
            break  // submitter-side messages; a confused peer's are ignored here
        }
        return directives
    }

    private mutating func receiveOffer(
        _ offer: TaskOffer, from peer: NodeID, now: Duration, into directives: inout [Directive]
    ) {
        if var existing = self.tasks[offer.id], existing.submitter == peer {
            guard offer.epoch >= existing.epoch else {
                directives.append(.send(.decline(offer.id, epoch: offer.epoch, reason: .staleEpoch), to: peer))
                return
            }
            // The same task again (a retry after a lost accept, or a newer epoch): never a second run.
            existing.epoch = offer.epoch
            self.tasks[offer.id] = existing
            directives.append(.persistAccepted(existing))
            directives.append(.send(.accept(offer.id, epoch: offer.epoch), to: peer))
            if let outcome = existing.outcome {
                directives.append(.send(.result(offer.id, epoch: offer.epoch, outcome: outcome), to: peer))
                self.tasks[offer.id]?.lastSent = now
            }
            return
        }
        guard !self.isDraining else {
            directives.append(.send(.decline(offer.id, epoch: offer.epoch, reason: .draining), to: peer))
            return
        }
        guard let limit = self.capacity[offer.capability] else {
            directives.append(.send(.decline(offer.id, epoch: offer.epoch, reason: .unknownCapability), to: peer))
            return
        }
        guard self.running[offer.capability, default: 0] < limit else {
            directives.append(.send(.decline(offer.id, epoch: offer.epoch, reason: .busy), to: peer))
            return
        }
        let task = AcceptedTask(
            id: offer.id, epoch: offer.epoch, submitter: peer, capability: offer.capability, input: offer.input,
            deadline: now + offer.timeRemaining, outcome: nil, lastSent: nil)
        self.tasks[offer.id] = task
        self.running[offer.capability, default: 0] += 1
        directives.append(.persistAccepted(task))
        directives.append(.send(.accept(offer.id, epoch: offer.epoch), to: peer))
        directives.append(.start(task))
    }

    /// The executor finished (or was stopped). Persist, then send the result.
    public mutating func finished(_ id: TaskID, outcome: TaskOutcome, now: Duration) -> [Directive] {
        guard var task = self.tasks[id], task.outcome == nil else { return [] }
        task.outcome = outcome
        task.lastSent = now
        self.tasks[id] = task
        self.running[task.capability, default: 1] -= 1
        return [
            .persistResult(id, epoch: task.epoch, outcome: outcome),
            .send(.result(id, epoch: task.epoch, outcome: outcome), to: task.submitter),
        ]
    }

    /// Deadlines and re-sends of unacknowledged results.
    public mutating func tick(now: Duration) -> [Directive] {
        var directives: [Directive] = []
        for (id, task) in self.tasks.sorted(by: { $0.key < $1.key }) {
            if let outcome = task.outcome {
                if let sent = task.lastSent, now - sent < self.settings.resultResendInterval { continue }
                self.tasks[id]?.lastSent = now
                directives.append(.send(.result(id, epoch: task.epoch, outcome: outcome), to: task.submitter))
            } else if now >= task.deadline {
                directives.append(.stop(id))
            }
        }
        return directives
    }

    /// A session with the submitter is back: send it every result it has not acknowledged, now.
    public mutating func reconnected(to submitter: NodeID, now: Duration) -> [Directive] {
        var directives: [Directive] = []
        for (id, task) in self.tasks.sorted(by: { $0.key < $1.key }) where task.submitter == submitter {
            guard let outcome = task.outcome else { continue }
            self.tasks[id]?.lastSent = now
            directives.append(.send(.result(id, epoch: task.epoch, outcome: outcome), to: submitter))
        }
        return directives
    }
}

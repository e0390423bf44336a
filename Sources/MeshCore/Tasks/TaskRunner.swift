/// The executing side of the task protocol, as a pure state machine.
///
/// It decides whether to take an offer (capability, capacity, storage, epoch), asks the shell to persist an
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
        /// Core time by which the run must end (set anew when an answer arrives after a paused wait).
        public internal(set) var deadline: Duration
        public let options: TaskOptions
        /// The agent asked a question and waits for the answer.
        public internal(set) var isWaitingForInput = false
        /// Set once the run ended; kept until acknowledged.
        public internal(set) var outcome: TaskOutcome?
        /// Restored after a restart and not yet confirmed by the submitter: it does not run until `resume`.
        public internal(set) var isHeld = false
        var lastSent: Duration?
        /// The run was stopped because the deadline passed (not because the submitter cancelled it).
        var isStoppedAtDeadline = false
        /// Bytes of stderr forwarded to the submitter during this run.
        var loggedBytes = 0
        /// Progress events forwarded to the submitter during this run.
        var progressSent: UInt32 = 0

        /// Waiting for an answer with a paused deadline: the submitter's input timeout ends the wait, not the deadline.
        var isDeadlinePaused: Bool { self.isWaitingForInput && self.options.inputTimeout != nil }

        /// A task as the store kept it.
        public init(
            id: TaskID, epoch: UInt32, submitter: NodeID, capability: String, input: [UInt8], deadline: Duration,
            outcome: TaskOutcome?, options: TaskOptions = TaskOptions()
        ) {
            self.options = options
            self.id = id
            self.epoch = epoch
            self.submitter = submitter
            self.capability = capability
            self.input = input
            self.deadline = deadline
            self.outcome = outcome
        }
    }

    public enum Directive: Sendable, Equatable {
        case send(TaskMessage, to: NodeID)
        /// Make the accepted task durable; the accept in the same batch goes out only after this.
        case persistAccepted(AcceptedTask)
        /// Make the result durable before it is sent.
        case persistResult(TaskID, epoch: UInt32, outcome: TaskOutcome)
        /// The submitter acknowledged the result (or the task moved on): drop the task from storage.
        case forget(TaskID)
        /// Run the executor for this task.
        case start(AcceptedTask)
        /// Stop the run (cancel or deadline); the shell reports back with ``finished(_:outcome:now:)``.
        case stop(TaskID)
        /// Hand the agent the answer to its question.
        case deliverInput(TaskID, reply: [UInt8])
    }

    public let settings: Settings
    /// How much of one run's stderr goes to the submitter live; the rest is left out, with a note saying so.
    public static let forwardedLogLimit = 256 * 1024
    /// Progress events one run forwards, at most.
    public static let forwardedProgressLimit: UInt32 = 10_000
    /// How many tasks of each capability may run at once.
    public let capacity: [String: Int]
    /// False while the store cannot make accepted tasks durable: new offers are declined.
    public private(set) var isStorageAvailable = true
    /// Leaving after the runs in progress: new offers are declined `draining`.
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

    /// Every task held here, oldest deadline first.
    public var allTasks: [AcceptedTask] { self.tasks.values.sorted { ($0.deadline, $0.id) < ($1.deadline, $1.id) } }

    public mutating func setStorageAvailable(_ available: Bool) { self.isStorageAvailable = available }

    public mutating func setDraining() { self.isDraining = true }

    /// Reloads tasks from storage after a restart. Finished ones wait for their acknowledgement. Unfinished ones are
    /// held: the run in progress died with the process, and the submitter may since have re-offered the task
    /// elsewhere, so each is announced with `held` and starts again only on the submitter's `resume`.
    public mutating func restore(_ stored: [AcceptedTask], now: Duration) -> [Directive] {
        var directives: [Directive] = []
        for task in stored.sorted(by: { $0.id < $1.id }) {
            var task = task
            task.lastSent = now
            task.isHeld = task.outcome == nil
            self.tasks[task.id] = task
            if task.isHeld {
                self.running[task.capability, default: 0] += 1
                directives.append(.send(.held(task.id, epoch: task.epoch), to: task.submitter))
            }
        }
        return directives
    }

    /// The store could not make a just-accepted task durable: give it up before it starts, and tell the submitter.
    public mutating func abandon(_ id: TaskID) -> [Directive] {
        guard let task = self.tasks[id], task.outcome == nil else { return [] }
        self.release(task)
        return [.forget(id), .send(.decline(id, epoch: task.epoch, reason: .storageUnavailable), to: task.submitter)]
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
            guard let task = self.tasks[id], task.submitter == peer, task.outcome == nil, epoch >= task.epoch else { break }
            if task.isHeld {
                // The submitter moved on while this node was down: nothing ran, nothing to report.
                self.release(task)
                directives.append(.forget(id))
            } else {
                directives.append(.stop(id))
            }
        case .resume(let id, let epoch):
            guard var task = self.tasks[id], task.submitter == peer, task.isHeld, epoch == task.epoch else { break }
            task.isHeld = false
            self.tasks[id] = task
            directives.append(.start(task))
        case .input(let id, let epoch, let reply, let timeRemaining):
            guard var task = self.tasks[id], task.submitter == peer, task.epoch == epoch, task.outcome == nil, !task.isHeld
            else { break }
            task.isWaitingForInput = false
            task.deadline = now + timeRemaining
            self.tasks[id] = task
            directives.append(.deliverInput(id, reply: reply))
        case .accept, .decline, .result, .held, .log, .progress, .event, .eventAck, .inputRequired, .artifactRequest, .artifactChunk, .artifactUnavailable:
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
            // The same task again (a retry after a lost accept, or a newer epoch): never a second run. A held task
            // re-offered is confirmed by the offer itself.
            let wasHeld = existing.isHeld
            let changed = wasHeld || offer.epoch != existing.epoch
            existing.epoch = offer.epoch
            existing.isHeld = false
            self.tasks[offer.id] = existing
            // The submitter confirming an attempt after a reconnection changes nothing worth a write.
            if changed { directives.append(.persistAccepted(existing)) }
            directives.append(.send(.accept(offer.id, epoch: offer.epoch), to: peer))
            if wasHeld { directives.append(.start(existing)) }
            if let outcome = existing.outcome {
                directives.append(.send(.result(offer.id, epoch: offer.epoch, outcome: outcome), to: peer))
                self.tasks[offer.id]?.lastSent = now
            }
            return
        }
        guard self.isStorageAvailable else {
            directives.append(.send(.decline(offer.id, epoch: offer.epoch, reason: .storageUnavailable), to: peer))
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
            deadline: now + offer.timeRemaining, outcome: nil, options: offer.options)
        self.tasks[offer.id] = task
        self.running[offer.capability, default: 0] += 1
        directives.append(.persistAccepted(task))
        directives.append(.send(.accept(offer.id, epoch: offer.epoch), to: peer))
        directives.append(.start(task))
    }

    /// The running executor wrote `chunk` to stderr: it goes to the submitter, in pieces a message can carry, until
    /// the run has forwarded `forwardedLogLimit` bytes.
    public mutating func logged(_ id: TaskID, _ chunk: [UInt8]) -> [Directive] {
        guard var task = self.tasks[id], task.outcome == nil, !task.isHeld, task.loggedBytes < Self.forwardedLogLimit
        else { return [] }
        var forwarded = Array(chunk.prefix(Self.forwardedLogLimit - task.loggedBytes))
        task.loggedBytes += forwarded.count
        if task.loggedBytes >= Self.forwardedLogLimit {
            forwarded += Array("\n[agentmesh: the rest of this run's stderr is not forwarded (256 KiB limit)]\n".utf8)
        }
        self.tasks[id] = task
        return stride(from: 0, to: forwarded.count, by: TaskMessage.maximumLogChunk).map { start in
            .send(.log(id, epoch: task.epoch, chunk: Array(forwarded[start..<min(start + TaskMessage.maximumLogChunk, forwarded.count)])),
                  to: task.submitter)
        }
    }

    /// The running executor emitted progress events: they go to the submitter in batches a message can carry, until
    /// the run has forwarded `forwardedProgressLimit`; one too large becomes a note saying how large it was.
    public mutating func progressed(_ id: TaskID, _ events: [[UInt8]]) -> [Directive] {
        guard var task = self.tasks[id], task.outcome == nil, !task.isHeld, task.progressSent < Self.forwardedProgressLimit
        else { return [] }
        var kept = events.prefix(Int(Self.forwardedProgressLimit - task.progressSent)).map { event in
            event.count <= TaskMessage.maximumProgressEvent
                ? event : Array("{\"agentmesh\":\"event dropped: \(event.count) bytes is over the \(TaskMessage.maximumProgressEvent)-byte limit\"}".utf8)
        }
        if task.progressSent + UInt32(kept.count) == Self.forwardedProgressLimit {
            kept[kept.count - 1] = Array("{\"agentmesh\":\"the rest of this run's events are not forwarded (\(Self.forwardedProgressLimit) limit)\"}".utf8)
        }
        var directives: [Directive] = []
        var batch: [[UInt8]] = []
        var batchBytes = 0
        func flush() {
            guard !batch.isEmpty else { return }
            directives.append(.send(.progress(id, epoch: task.epoch, first: task.progressSent + 1, events: batch), to: task.submitter))
            task.progressSent += UInt32(batch.count)
            batch = []
            batchBytes = 0
        }
        for event in kept {
            if batch.count == TaskMessage.maximumProgressBatch || batchBytes + event.count > TaskMessage.maximumProgressBatchBytes { flush() }
            batch.append(event)
            batchBytes += event.count
        }
        flush()
        self.tasks[id] = task
        return directives
    }

    /// The agent asked a person a question: the submitter is told and answers with ``TaskMessage/input``. While it
    /// waits, the deadline pauses if the submitter asked for that (it then enforces the input timeout itself).
    public mutating func askedForInput(_ id: TaskID, question: [UInt8]) -> [Directive] {
        guard var task = self.tasks[id], task.outcome == nil, !task.isHeld else { return [] }
        task.isWaitingForInput = true
        self.tasks[id] = task
        return [.send(.inputRequired(id, epoch: task.epoch, question: question), to: task.submitter)]
    }

    /// The executor finished (or was stopped). Persist, then send the result.
    public mutating func finished(_ id: TaskID, outcome: TaskOutcome, now: Duration) -> [Directive] {
        guard var task = self.tasks[id], task.outcome == nil, !task.isHeld else { return [] }
        let outcome = task.isStoppedAtDeadline && outcome == .canceled
            ? .timedOut("stopped at the task's deadline") : outcome
        task.outcome = outcome
        task.lastSent = now
        self.tasks[id] = task
        self.running[task.capability, default: 1] -= 1
        return [
            .persistResult(id, epoch: task.epoch, outcome: outcome),
            .send(.result(id, epoch: task.epoch, outcome: outcome), to: task.submitter),
        ]
    }

    /// Deadlines, re-sends of unacknowledged results and of `held` announcements.
    /// The earliest time ``tick(now:)`` has something to do (nil: nothing accepted), given the time now: a
    /// deadline, or a result or `held` to send again.
    public func nextDeadline(now: Duration) -> Duration? {
        var earliest: Duration?
        for task in self.tasks.values {
            let due: Duration
            if task.outcome != nil || task.isHeld {
                let resend = task.lastSent.map { $0 + self.settings.resultResendInterval } ?? now
                due = task.isHeld ? min(resend, task.deadline) : resend
            } else {
                // Stopped at the deadline: waiting for the executor to report back, nothing to do until then.
                if task.isStoppedAtDeadline || task.isDeadlinePaused { continue }
                due = task.deadline
            }
            earliest = min(earliest ?? due, due)
        }
        return earliest
    }

    public mutating func tick(now: Duration) -> [Directive] {
        var directives: [Directive] = []
        for (id, task) in self.tasks.sorted(by: { $0.key < $1.key }) {
            if task.isHeld, now >= task.deadline {
                // Never confirmed before its deadline: the submitter has expired it.
                self.release(task)
                directives.append(.forget(id))
            } else if task.outcome != nil || task.isHeld {
                if let sent = task.lastSent, now - sent < self.settings.resultResendInterval { continue }
                self.tasks[id]?.lastSent = now
                directives.append(.send(Self.pendingReport(task), to: task.submitter))
            } else if now >= task.deadline, !task.isStoppedAtDeadline, !task.isDeadlinePaused {
                self.tasks[id]?.isStoppedAtDeadline = true
                directives.append(.stop(id))
            }
        }
        return directives
    }

    /// A session with the submitter is back: send it every result it has not acknowledged and every held task, now.
    public mutating func reconnected(to submitter: NodeID, now: Duration) -> [Directive] {
        var directives: [Directive] = []
        for (id, task) in self.tasks.sorted(by: { $0.key < $1.key }) where task.submitter == submitter {
            guard task.outcome != nil || task.isHeld else { continue }
            self.tasks[id]?.lastSent = now
            directives.append(.send(Self.pendingReport(task), to: submitter))
        }
        return directives
    }

    /// What the submitter still has to hear about a task: its result, or that this node holds it.
    private static func pendingReport(_ task: AcceptedTask) -> TaskMessage {
        if let outcome = task.outcome { return .result(task.id, epoch: task.epoch, outcome: outcome) }
        return .held(task.id, epoch: task.epoch)
    }

    private mutating func release(_ task: AcceptedTask) {
        self.tasks[task.id] = nil
        if task.outcome == nil { self.running[task.capability, default: 1] -= 1 }
    }
}

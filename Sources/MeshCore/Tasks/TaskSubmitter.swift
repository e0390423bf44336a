/// The lifecycle states of a task as its submitting node sees them.
public enum TaskState: String, Sendable, Equatable, CaseIterable, CustomStringConvertible {
    case submitted, offered, running, completed, failed, canceled, expired
    /// The agent asked a question and waits for a person's answer (`reply`).
    case inputRequired = "input_required"

    public var isTerminal: Bool {
        switch self {
        case .completed, .failed, .canceled, .expired: return true
        case .submitted, .offered, .running, .inputRequired: return false
        }
    }

    public var description: String { self.rawValue }
}

/// The submitting side of the task protocol, as a pure state machine: the node that takes a task from a client owns
/// it until it ends. It picks a capable member by capability and load, offers the task with an attempt epoch,
/// moves to the next candidate on a decline, retries with exponential back-off and jitter after a timeout or a
/// failure, keeps a circuit breaker per peer, re-offers at once when membership declares the executor dead, and
/// ignores results from superseded epochs, so a slow peer can never overwrite a newer outcome.
public struct TaskSubmitter: Sendable {
    public struct Settings: Sendable {
        /// An offer with neither accept nor decline by then counts as a failed attempt.
        public var offerTimeout: Duration = .seconds(2)
        /// The back-off after an attempt that failed or went unanswered: 0.5 s, then doubling (with jitter) to 10 s.
        public var retryInitialDelay: Duration = .milliseconds(500)
        public var retryMaximumDelay: Duration = .seconds(10)
        /// How often a task that no live member can take looks again (a member that appears wakes it at once).
        public var memberRecheckInterval: Duration = .seconds(5)
        /// Consecutive unanswered offers to one peer that open its breaker, and how long it stays open.
        public var breakerThreshold = 3
        public var breakerCooldown: Duration = .seconds(30)
        /// After a restart, how long an offer in flight waits for its peer to reappear before it counts as timed out.
        public var restoreGrace: Duration = .seconds(10)
        /// A running attempt is confirmed this long after it was accepted, then at doubling intervals up to
        /// `runningCheckMaximum`, by offering it again with its epoch: the executor that holds it answers accept (never
        /// a second run) or its result; one that lost it in a restart takes it afresh or declines, and the task moves
        /// on. Without it, an attempt whose confirmation after a restart was lost waited for its deadline.
        public var runningCheckInterval: Duration = .seconds(30)
        public var runningCheckMaximum: Duration = .seconds(300)
        /// How long a finished task stays listed (and stored) before it is forgotten.
        public var finishedRetention: Duration = .seconds(24 * 3600)
        /// How many finished tasks stay in memory; older ones are only in the store (a busy node finishes millions
        /// a day), where the node looks them up when asked.
        public var finishedInMemory = 10_000
        /// And how many bytes of their inputs and results, at most: ten thousand 10 MiB results would not fit.
        public var finishedBytesInMemory = 64 * 1024 * 1024
        /// How often the store is told to drop what is past retention.
        public var retentionSweepInterval: Duration = .seconds(60)
        public init() {}
    }

    /// A member that could run tasks: its capabilities (name → capacity) and current load.
    public struct Candidate: Sendable, Equatable {
        public let id: NodeID
        public let capabilities: [String: Int]
        public let load: Int

        public init(id: NodeID, capabilities: [String: Int], load: Int) {
            self.id = id
            self.capabilities = capabilities
            self.load = load
        }
    }

    public enum AttemptOutcome: Sendable, Equatable {
        case declined(DeclineReason)
        case timedOut
        case peerDied
        case completed
        case failed(String)
        case canceled
        case superseded
    }

    /// One offer of the task to one peer.
    public struct Attempt: Sendable, Equatable {
        public let epoch: UInt32
        public let peer: NodeID
        public let offeredAt: Duration
        public internal(set) var acceptedAt: Duration?
        public internal(set) var endedAt: Duration?
        public internal(set) var outcome: AttemptOutcome?

        public init(
            epoch: UInt32, peer: NodeID, offeredAt: Duration, acceptedAt: Duration? = nil, endedAt: Duration? = nil,
            outcome: AttemptOutcome? = nil
        ) {
            self.epoch = epoch
            self.peer = peer
            self.offeredAt = offeredAt
            self.acceptedAt = acceptedAt
            self.endedAt = endedAt
            self.outcome = outcome
        }
    }

    /// Why a task in `submitted` has not been offered yet.
    public enum Waiting: Sendable, Equatable {
        /// No live member offers the capability; a member that appears gets it at once.
        case forMember
        /// Members offer it, but this node already has as many of its tasks there as they have room for.
        case forSlot
        /// Backing off after an attempt that failed or went unanswered.
        case forRetry
        /// Every member declined (busy, rate limited): a new round after a back-off, or when a slot frees.
        case forNewRound
    }

    public struct SubmittedTask: Sendable, Equatable {
        public let id: TaskID
        public let capability: String
        public let input: [UInt8]
        public let submittedAt: Duration
        /// Moves later by the time spent waiting for an answer, when the submitter asked for that.
        public internal(set) var deadline: Duration
        public let maximumAttempts: Int
        public internal(set) var options = TaskOptions()
        /// The agent's question (JSON), while and after it waits for an answer.
        public internal(set) var question: [UInt8]?
        /// The answer given to `question`: sent again if the agent asks the same after a restart.
        public internal(set) var reply: [UInt8]?
        /// When the agent asked (the pause and the input timeout count from here).
        public internal(set) var askedAt: Duration?
        public internal(set) var state: TaskState
        public internal(set) var attempts: [Attempt]
        public internal(set) var outcome: TaskOutcome?
        /// Why the task failed or expired, in one sentence.
        public internal(set) var error: String?
        public internal(set) var finishedAt: Duration?
        /// When a waiting task is offered next.
        public internal(set) var nextOfferAt: Duration?
        /// Attempts that ended without a result, for the retry back-off.
        public internal(set) var failures = 0
        /// Why the task waits, while it is `submitted` (nil before its first offer and after a restart).
        public internal(set) var waiting: Waiting?
        /// Peers that declined in the current round; skipped until the round starts over.
        var declinedBy: Set<NodeID> = []
        /// When the current offer was (re)sent; the offer timeout counts from here.
        var offerSentAt: Duration?
        /// Restored with an offer in flight: the offer is sent again once its peer is back among the candidates.
        var isAwaitingPeer = false
        /// While running: when the attempt is next confirmed with its executor, and the interval after that.
        var nextCheckAt: Duration?
        var checkInterval: Duration?

        public var currentAttempt: Attempt? { self.attempts.last }

        /// While the agent waits for an answer and the submitter asked the deadline to pause: when the wait ends.
        public var pausedUntil: Duration? {
            guard self.state == .inputRequired, let asked = self.askedAt, let timeout = self.options.inputTimeout else { return nil }
            return asked + timeout
        }

        /// The member whose run was stopped at the deadline, when the task timed out while running.
        public var timedOutWhileRunningOn: NodeID? {
            guard self.state == .expired, let last = self.currentAttempt, last.acceptedAt != nil,
                last.outcome == .timedOut
            else { return nil }
            return last.peer
        }

        /// Attempts that count against `maximumAttempts`: a decline (busy, rate limited…) only routes the task on,
        /// so a burst larger than the mesh's capacity waits instead of giving up.
        public var triedAttempts: Int {
            self.attempts.count { if case .declined? = $0.outcome { return false } else { return true } }
        }

        /// A task as the store kept it.
        public init(
            id: TaskID, capability: String, input: [UInt8], submittedAt: Duration, deadline: Duration,
            maximumAttempts: Int, state: TaskState, attempts: [Attempt], outcome: TaskOutcome?, error: String?,
            finishedAt: Duration?, nextOfferAt: Duration?, failures: Int, options: TaskOptions = TaskOptions(),
            question: [UInt8]? = nil, reply: [UInt8]? = nil, askedAt: Duration? = nil
        ) {
            self.options = options
            self.question = question
            self.reply = reply
            self.askedAt = askedAt
            self.id = id
            self.capability = capability
            self.input = input
            self.submittedAt = submittedAt
            self.deadline = deadline
            self.maximumAttempts = maximumAttempts
            self.state = state
            self.attempts = attempts
            self.outcome = outcome
            self.error = error
            self.finishedAt = finishedAt
            self.nextOfferAt = nextOfferAt
            self.failures = failures
        }
    }

    public enum Directive: Sendable, Equatable {
        case send(TaskMessage, to: NodeID)
        /// Make the task's new state durable (before the client or the executor is told anything that depends on it).
        case persist(SubmittedTask)
        /// The task reached a terminal state: wake whoever waits for it.
        case finished(SubmittedTask)
        /// Drop the task from storage (past its retention, or abandoned because it could not be stored).
        case forget(TaskID)
        /// Drop every stored task that finished before this time (retention of tasks no longer in memory).
        case forgetFinished(before: Duration)
    }

    public let settings: Settings
    public let local: NodeID
    private var candidates: [Candidate] = []
    private var tasks: [TaskID: SubmittedTask] = [:]
    /// Tasks not yet finished: the timers and membership changes only look at these, so a node that keeps a day of
    /// finished tasks does not pay for them on every tick.
    private var unfinished: Set<TaskID> = []
    /// Finished tasks in the order they finished, for forgetting them after the retention period.
    private var finishedOrder: [(id: TaskID, at: Duration)] = []
    private var finishedOrderStart = 0
    /// Bytes of the inputs and results of the finished tasks in memory.
    private var finishedBytes = 0

    private static func payloadBytes(_ task: SubmittedTask) -> Int {
        if case .success(let output)? = task.outcome { return task.input.count + output.count }
        return task.input.count
    }
    private var retentionSweptAt: Duration = .zero
    /// Attempts of this node's tasks still open (offered or running) per peer and capability: a peer is offered no
    /// more than the capacity it advertises, so a burst queues here instead of drawing `busy` declines (and a
    /// flood of re-offers that the peer's rate limit would count against this node).
    private var inFlight: [NodeID: [String: Int]] = [:]
    /// Tasks waiting for one of those slots, first come first served, per capability.
    private var waitingForSlot: [String: TaskQueue] = [:]
    /// Capabilities whose slots opened during the current event; refilled before it returns.
    private var freedSlots: Set<String> = []
    private var breakers: [NodeID: (failures: Int, openUntil: Duration?)] = [:]
    /// Tasks whose state or attempts changed during the current event with no `.persist` of the change yet: every
    /// event ends by persisting them. A store left behind the machine restores, after a crash, attempts the machine
    /// had already ended; each then holds a slot that no executor will ever free (kill -9 of executors and then of
    /// the submitter left 8 of 1,000 tasks `running` for good, and with them every task waiting for those slots).
    private var unsaved: [TaskID] = []
    /// The member that took the newest task of each conversation (`TaskOptions.context`), for the newest contexts.
    private var affinity: [String: NodeID] = [:]
    private var affinityOrder: [String] = []
    private var random: SplitMix64

    /// Conversations whose member is remembered, at most.
    public static let maximumContexts = 10_000

    public init(local: NodeID, settings: Settings = .init(), seed: UInt64) {
        self.local = local
        self.settings = settings
        self.random = SplitMix64(seed: seed)
    }

    public func task(_ id: TaskID) -> SubmittedTask? { self.tasks[id] }

    /// The members offering `capability` with how many of this node's tasks are open there and their capacity.
    public func slots(for capability: String) -> [(peer: NodeID, open: Int, capacity: Int)] {
        self.candidates.compactMap { candidate in
            guard let capacity = candidate.capabilities[capability], capacity > 0 else { return nil }
            return (candidate.id, self.inFlight[candidate.id]?[capability] ?? 0, capacity)
        }
    }
    public var allTasks: [SubmittedTask] { self.tasks.values.sorted { $0.submittedAt < $1.submittedAt } }

    // MARK: - Events

    /// A client submitted a task. The first directive persists it; the shell answers the client after that.
    public mutating func submit(
        id: TaskID, capability: String, input: [UInt8], timeout: Duration, maximumAttempts: Int,
        options: TaskOptions = TaskOptions(), now: Duration
    ) -> [Directive] {
        guard self.tasks[id] == nil else { return [] }  // a repeated submission of the same id is the same task
        let task = SubmittedTask(
            id: id, capability: capability, input: input, submittedAt: now, deadline: now + timeout,
            maximumAttempts: max(1, maximumAttempts), state: .submitted, attempts: [], outcome: nil, error: nil,
            finishedAt: nil, nextOfferAt: now, failures: 0, options: options)
        self.tasks[id] = task
        self.unfinished.insert(id)
        var directives: [Directive] = [.persist(task)]
        self.offer(id, now: now, into: &directives)
        self.persistUnsaved(into: &directives)
        return directives
    }

    /// The store could not make a just-submitted task durable: the client gets an error, the task never existed.
    public mutating func abandon(_ id: TaskID) -> [Directive] {
        guard let task = self.tasks.removeValue(forKey: id) else { return [] }
        self.unsaved.removeAll { $0 == id }
        if task.state.isTerminal { self.finishedBytes -= Self.payloadBytes(task) }
        self.unfinished.remove(id)
        if let attempt = task.currentAttempt, attempt.outcome == nil { self.releaseSlot(of: attempt.peer, task.capability) }
        return [.forget(id)]
    }

    /// Reloads tasks from storage after a restart. Waiting tasks are offered again; an offer that was in flight is
    /// sent again, with the same epoch, once its peer reappears (so an executor that already holds the task answers
    /// it instead of a second peer running it); a running task waits for its executor's result or `held`.
    public mutating func restore(_ stored: [SubmittedTask], now: Duration) {
        for task in stored.filter(\.state.isTerminal).sorted(by: { ($0.finishedAt ?? now) < ($1.finishedAt ?? now) }) {
            self.finishedOrder.append((task.id, task.finishedAt ?? now))
            self.finishedBytes += Self.payloadBytes(task)
        }
        for var task in stored {
            if !task.state.isTerminal { self.unfinished.insert(task.id) }
            if !task.state.isTerminal, let attempt = task.currentAttempt, attempt.outcome == nil {
                self.inFlight[attempt.peer, default: [:]][task.capability, default: 0] += 1
            }
            task.declinedBy = []
            task.offerSentAt = now
            task.isAwaitingPeer = task.state == .offered
            if task.state == .submitted { task.nextOfferAt = min(task.nextOfferAt ?? now, now) }
            self.tasks[task.id] = task
        }
        for task in stored.sorted(by: { $0.submittedAt < $1.submittedAt }) {
            if let context = task.options.context, let ran = task.attempts.last(where: { $0.acceptedAt != nil }) {
                self.remember(context, on: ran.peer)
            }
        }
    }

    /// The members that could run tasks changed (membership or load). Waiting tasks get another chance.
    public mutating func candidatesChanged(_ candidates: [Candidate], now: Duration) -> [Directive] {
        self.candidates = candidates.sorted { $0.id < $1.id }
        var directives: [Directive] = []
        for id in self.unfinished.sorted() {
            guard let task = self.tasks[id], !task.state.isTerminal else { continue }
            if task.state == .submitted, let next = task.nextOfferAt,
                next <= now || (task.waiting == .forMember && self.hasCandidate(for: task.capability))
            {
                self.offer(id, now: now, into: &directives)
            } else if task.isAwaitingPeer, let attempt = task.currentAttempt,
                self.candidates.contains(where: { $0.id == attempt.peer })
            {
                self.tasks[id]?.isAwaitingPeer = false
                self.tasks[id]?.offerSentAt = now
                directives.append(self.offerMessage(task, epoch: attempt.epoch, now: now, to: attempt.peer))
            }
        }
        self.offerQueuedTasks(now: now, into: &directives, all: true)
        self.persistUnsaved(into: &directives)
        return directives
    }

    /// Membership declared `peer` dead: every task offered to or running on it is re-offered at once.
    /// `sparing`: tasks whose result is already in hand (its artifacts on their way), which the peer's death does
    /// not undo: they are not offered again.
    public mutating func peerDied(_ peer: NodeID, now: Duration, sparing spared: Set<TaskID> = []) -> [Directive] {
        self.candidates.removeAll { $0.id == peer }
        var directives: [Directive] = []
        for id in self.unfinished.sorted() where !spared.contains(id) {
            guard let task = self.tasks[id], !task.state.isTerminal, task.currentAttempt?.peer == peer,
                task.currentAttempt?.outcome == nil
            else { continue }
            self.endAttempt(id, .peerDied, now: now)
            self.tasks[id]?.nextOfferAt = now
            self.offer(id, now: now, into: &directives)
        }
        self.offerQueuedTasks(now: now, into: &directives)
        self.persistUnsaved(into: &directives)
        return directives
    }

    /// A session with `peer` started: it, or this node, may have restarted since the attempts open there were
    /// offered. Each is offered to it again with its current epoch, which an executor answers as it would the first
    /// offer: one that holds the task accepts it again (never a second run) or sends its result, and one whose new
    /// life never heard of it takes it afresh or declines. Without this, an attempt the peer no longer holds waits
    /// for a result that cannot come, and keeps its slot for good.
    public mutating func reconnected(to peer: NodeID, now: Duration) -> [Directive] {
        var directives: [Directive] = []
        for id in self.unfinished.sorted() {
            guard let task = self.tasks[id], let current = task.currentAttempt, current.peer == peer,
                current.outcome == nil, task.state == .offered || task.state == .running || task.state == .inputRequired
            else { continue }
            if task.state == .offered {
                self.tasks[id]?.isAwaitingPeer = false
                self.tasks[id]?.offerSentAt = now
            }
            directives.append(self.offerMessage(task, epoch: current.epoch, now: now, to: peer))
        }
        return directives
    }

    /// The slot accounting agrees with the tasks: each peer's open count is exactly its number of open attempts
    /// (offered, running or waiting for input). Nil when it holds, else what is off; the tests check it after
    /// every event.
    public var slotAccountingError: String? {
        var open: [NodeID: [String: Int]] = [:]
        for id in self.unfinished {
            guard let task = self.tasks[id], !task.state.isTerminal, let attempt = task.currentAttempt,
                attempt.outcome == nil
            else { continue }
            open[attempt.peer, default: [:]][task.capability, default: 0] += 1
        }
        let counted = self.inFlight.filter { !$0.value.isEmpty }
        guard open != counted else { return nil }
        return "slots counted \(counted) but the open attempts are \(open)"
    }

    public mutating func receive(_ message: TaskMessage, from peer: NodeID, now: Duration) -> [Directive] {
        var directives: [Directive] = []
        let id = message.taskID
        guard var task = self.tasks[id] else {
            // A task this node never offered (or forgot): a holder is told to drop it; anything else changes nothing.
            if case .held(_, let epoch) = message { directives.append(.send(.cancel(id, epoch: epoch), to: peer)) }
            return directives
        }
        let current = task.currentAttempt
        switch message {
        case .accept(_, let epoch):
            guard let current, current.epoch == epoch, current.peer == peer, task.state == .offered else { break }
            task.state = .running
            task.isAwaitingPeer = false
            task.attempts[task.attempts.count - 1].acceptedAt = now
            task.nextCheckAt = now + self.settings.runningCheckInterval
            task.checkInterval = self.settings.runningCheckInterval
            self.tasks[id] = task
            directives.append(.persist(task))
            if let context = task.options.context { self.remember(context, on: peer) }

        case .decline(_, let epoch, let reason):
            guard let current, current.epoch == epoch, current.peer == peer, current.outcome == nil else { break }
            self.endAttempt(id, .declined(reason), now: now)
            self.tasks[id]?.declinedBy.insert(peer)
            self.tasks[id]?.nextOfferAt = now
            self.offer(id, now: now, into: &directives)

        case .result(_, let epoch, let outcome):
            // Acknowledge every result from the peer that ran it, so it can forget it, even a superseded one.
            guard let attempt = task.attempts.last(where: { $0.epoch == epoch }), attempt.peer == peer else { break }
            if task.state.isTerminal || epoch != current?.epoch {
                directives.append(.send(.resultAck(id, epoch: epoch), to: peer))
                break
            }
            if attempt.outcome == .peerDied { self.revive(id, attempt: attempt, now: now) }
            switch outcome {
            case .success:
                self.endAttempt(id, .completed, now: now)
                self.breakers[peer] = nil
                self.finish(id, .completed, outcome: outcome, error: nil, now: now, into: &directives)
            case .canceled:
                self.endAttempt(id, .canceled, now: now)
                self.finish(id, .canceled, outcome: outcome, error: nil, now: now, into: &directives)
            case .rejected(let message):
                // The agent said the input is bad: another attempt would say the same.
                self.endAttempt(id, .failed(message), now: now)
                self.finish(id, .failed, outcome: outcome, error: message, now: now, into: &directives)
            case .timedOut:
                self.endAttempt(id, .timedOut, now: now)
                self.finish(id, .expired, outcome: outcome, error: self.timedOut(task), now: now, into: &directives)
            case .failure(let message):
                // The executor answered: a task that fails on its input says nothing about the peer's health, so
                // the breaker is left alone (only unanswered offers count against a peer).
                self.endAttempt(id, .failed(message), now: now)
                if self.tasks[id]!.triedAttempts >= task.maximumAttempts {
                    self.finish(id, .failed, outcome: outcome, error: message, now: now, into: &directives)
                } else {
                    self.scheduleRetry(id, now: now)
                    directives.append(.persist(self.tasks[id]!))
                }
            }
            directives.append(.send(.resultAck(id, epoch: epoch), to: peer))
            self.offerWaitingTask(freedBy: peer, capability: task.capability, now: now, into: &directives)

        case .held(_, let epoch):
            // An executor restarted holding this task: it may run it only if its attempt is still the current one.
            guard let current, current.epoch == epoch, current.peer == peer, current.outcome == nil,
                !task.state.isTerminal
            else {
                directives.append(.send(.cancel(id, epoch: epoch), to: peer))
                break
            }
            if task.state == .offered {
                task.state = .running
                task.isAwaitingPeer = false
                task.attempts[task.attempts.count - 1].acceptedAt = now
                self.tasks[id] = task
                directives.append(.persist(task))
            }
            directives.append(.send(.resume(id, epoch: epoch), to: peer))

        case .inputRequired(_, let epoch, let question):
            guard let current, current.epoch == epoch, current.peer == peer, current.outcome == nil,
                task.state == .running || task.state == .inputRequired
            else { break }
            if let reply = task.reply, task.question == question {
                // Asked again (the executor restarted): the answer given is still the answer.
                directives.append(.send(.input(id, epoch: epoch, reply: reply, timeRemaining: task.deadline - now), to: peer))
                break
            }
            task.state = .inputRequired
            task.question = question
            task.reply = nil
            task.askedAt = now
            self.tasks[id] = task
            directives.append(.persist(task))

        case .offer, .resultAck, .cancel, .resume, .log, .progress, .event, .eventAck, .input, .artifactRequest, .artifactChunk, .artifactUnavailable:
            break  // executor-side messages; logs are kept by the shell (see `acceptsLog`)
        }
        self.offerQueuedTasks(now: now, into: &directives)
        self.persistUnsaved(into: &directives)
        return directives
    }

    /// Whether a log chunk from `peer` belongs to the task's current run (a superseded run's stderr is not kept).
    public func acceptsLog(_ id: TaskID, epoch: UInt32, from peer: NodeID) -> Bool {
        guard let task = self.tasks[id], let current = task.currentAttempt else { return false }
        return current.epoch == epoch && current.peer == peer
    }

    private mutating func remember(_ context: String, on peer: NodeID) {
        if self.affinity.updateValue(peer, forKey: context) == nil {
            self.affinityOrder.append(context)
            if self.affinityOrder.count > Self.maximumContexts {
                self.affinity[self.affinityOrder.removeFirst()] = nil
            }
        }
    }

    /// The member a conversation's tasks go to first, if one is remembered.
    public func member(for context: String) -> NodeID? { self.affinity[context] }

    public enum ReplyRefusal: Error, Equatable {
        case notWaiting(TaskState)
    }

    /// A person answered the agent's question: the answer goes to the executor, and the run goes on (with the time
    /// spent waiting added to the deadline, if the submitter asked for that).
    public mutating func reply(_ id: TaskID, _ answer: [UInt8], now: Duration) -> Result<[Directive], ReplyRefusal> {
        guard var task = self.tasks[id], task.state == .inputRequired, let current = task.currentAttempt else {
            return .failure(.notWaiting(self.tasks[id]?.state ?? .failed))
        }
        if task.options.inputTimeout != nil, let asked = task.askedAt { task.deadline += now - asked }
        task.state = .running
        task.reply = answer
        task.askedAt = nil
        self.tasks[id] = task
        return .success([
            .persist(task),
            .send(.input(id, epoch: current.epoch, reply: answer, timeRemaining: task.deadline - now), to: current.peer),
        ])
    }

    /// The client cancelled: a running attempt is told to stop; the task ends as canceled either way.
    public mutating func cancel(_ id: TaskID, now: Duration) -> [Directive] {
        guard let task = self.tasks[id], !task.state.isTerminal else { return [] }
        var directives: [Directive] = []
        if let current = task.currentAttempt, current.outcome == nil {
            directives.append(.send(.cancel(id, epoch: current.epoch), to: current.peer))
            self.endAttempt(id, .canceled, now: now)
        }
        self.finish(id, .canceled, outcome: .canceled, error: nil, now: now, into: &directives)
        self.offerQueuedTasks(now: now, into: &directives)
        self.persistUnsaved(into: &directives)
        return directives
    }

    /// The earliest time ``tick(now:)`` has something to do: a deadline, an offer timing out, a retry, the oldest
    /// finished task's retention, the next retention sweep.
    public var nextDeadline: Duration {
        var earliest = self.retentionSweptAt + self.settings.retentionSweepInterval
        if self.finishedOrderStart < self.finishedOrder.count {
            earliest = min(earliest, self.finishedOrder[self.finishedOrderStart].at + self.settings.finishedRetention)
        }
        for id in self.unfinished {
            guard let task = self.tasks[id] else { continue }
            earliest = min(earliest, task.pausedUntil ?? task.deadline)
            if task.state == .offered, let current = task.currentAttempt {
                let wait = task.isAwaitingPeer ? self.settings.restoreGrace : self.settings.offerTimeout
                earliest = min(earliest, (task.offerSentAt ?? current.offeredAt) + wait)
            }
            if task.state == .submitted, let next = task.nextOfferAt { earliest = min(earliest, next) }
            if task.state == .running, let check = task.nextCheckAt { earliest = min(earliest, check) }
        }
        return earliest
    }

    /// Offer timeouts, due retries and deadlines.
    public mutating func tick(now: Duration) -> [Directive] {
        var directives: [Directive] = self.forgetExpired(now: now)
        if now - self.retentionSweptAt >= self.settings.retentionSweepInterval {
            self.retentionSweptAt = now
            directives.append(.forgetFinished(before: now - self.settings.finishedRetention))
        }
        for id in self.unfinished.sorted() {
            guard let task = self.tasks[id], !task.state.isTerminal else { continue }
            if let until = task.pausedUntil {
                // The deadline waits with the agent, for at most the input timeout.
                guard now >= until, let current = task.currentAttempt else { continue }
                directives.append(.send(.cancel(id, epoch: current.epoch), to: current.peer))
                self.endAttempt(id, .timedOut, now: now)
                let seconds = Self.seconds(task.options.inputTimeout ?? .zero)
                self.finish(id, .expired, outcome: nil, error: "no answer within \(seconds) to the agent's question", now: now, into: &directives)
                continue
            }
            if now >= task.deadline {
                if let current = task.currentAttempt, current.outcome == nil {
                    directives.append(.send(.cancel(id, epoch: current.epoch), to: current.peer))
                    self.endAttempt(id, .timedOut, now: now)
                }
                self.finish(id, .expired, outcome: nil, error: self.timedOut(self.tasks[id]!), now: now, into: &directives)
                continue
            }
            let offerWait = task.isAwaitingPeer ? self.settings.restoreGrace : self.settings.offerTimeout
            if task.state == .offered, let current = task.currentAttempt, now - (task.offerSentAt ?? current.offeredAt) >= offerWait {
                self.tasks[id]?.isAwaitingPeer = false
                self.endAttempt(id, .timedOut, now: now)
                self.recordFailure(of: current.peer, now: now)
                self.scheduleRetry(id, now: now)
            }
            if self.tasks[id]?.state == .submitted, let next = self.tasks[id]?.nextOfferAt, now >= next {
                self.offer(id, now: now, into: &directives)
            }
            if let running = self.tasks[id], running.state == .running, let current = running.currentAttempt, current.outcome == nil {
                let interval = running.checkInterval ?? self.settings.runningCheckInterval
                if let due = running.nextCheckAt, now >= due {
                    directives.append(self.offerMessage(running, epoch: current.epoch, now: now, to: current.peer))
                    let next = min(interval * 2, self.settings.runningCheckMaximum)
                    self.tasks[id]?.nextCheckAt = now + next
                    self.tasks[id]?.checkInterval = next
                } else if running.nextCheckAt == nil {
                    // Restored running: the reconnection confirms it first; this is the check after that.
                    self.tasks[id]?.nextCheckAt = now + interval
                    self.tasks[id]?.checkInterval = interval
                }
            }
        }
        self.offerQueuedTasks(now: now, into: &directives)
        self.persistUnsaved(into: &directives)
        return directives
    }

    // MARK: - Offering

    /// Whether a member this machine knows of offers `capability` (it hears of changes on ``candidatesChanged``).
    public func hasCandidate(for capability: String) -> Bool {
        self.candidates.contains { $0.capabilities[capability] != nil }
    }

    private enum Choice {
        case peer(NodeID)
        /// Members would take it, but this node already has as many of its tasks there as they have room for.
        case saturated
        case nobody
    }

    /// Least loaded relative to capacity first (counting this node's own open attempts there); this node only when
    /// strictly better than every other member.
    private mutating func choose(for task: SubmittedTask, now: Duration) -> Choice {
        let willing = self.candidates.filter { candidate in
            guard let capacity = candidate.capabilities[task.capability], capacity > 0 else { return false }
            if task.declinedBy.contains(candidate.id) { return false }
            if let openUntil = self.breakers[candidate.id]?.openUntil, now < openUntil { return false }
            return true
        }
        func open(_ candidate: Candidate) -> Int { self.inFlight[candidate.id]?[task.capability] ?? 0 }
        let usable = willing.filter { open($0) < $0.capabilities[task.capability] ?? 0 }
        // A conversation stays with the member that ran its previous task while that member can take it.
        if let context = task.options.context, let member = self.affinity[context], usable.contains(where: { $0.id == member }) {
            return .peer(member)
        }
        func score(_ candidate: Candidate) -> Double {
            Double(max(candidate.load, open(candidate))) / Double(candidate.capabilities[task.capability] ?? 1)
        }
        guard let best = usable.map(score).min() else { return willing.isEmpty ? .nobody : .saturated }
        let remote = usable.filter { $0.id != self.local && score($0) == best }
        if let pick = remote.randomElement(using: &self.random) { return .peer(pick.id) }
        return usable.first { $0.id == self.local && score($0) == best }.map { .peer($0.id) } ?? .nobody
    }

    private mutating func offer(_ id: TaskID, now: Duration, into directives: inout [Directive]) {
        guard var task = self.tasks[id], !task.state.isTerminal else { return }
        if now >= task.deadline {
            // No attempt starts after the deadline.
            self.finish(id, .expired, outcome: nil, error: self.timedOut(task), now: now, into: &directives)
            return
        }
        if task.triedAttempts >= task.maximumAttempts {
            let last = task.error ?? "no attempt succeeded"
            self.finish(id, .failed, outcome: nil, error: "gave up after \(task.triedAttempts) attempts: \(last)", now: now, into: &directives)
            return
        }
        let choice = self.choose(for: task, now: now)
        if case .saturated = choice {
            // Waits for a slot, without a timer: the next attempt that ends for this capability offers it.
            task.state = .submitted
            task.nextOfferAt = nil
            task.waiting = .forSlot
            self.tasks[id] = task
            self.unsaved.append(id)
            self.waitingForSlot[task.capability, default: TaskQueue()].append(id)
            return
        }
        guard case .peer(let chosen) = choice else {
            if !task.declinedBy.isEmpty {
                // Everyone declined this round: start a new round after a back-off.
                task.declinedBy = []
                self.tasks[id] = task
                self.scheduleRetry(id, now: now, waiting: .forNewRound)
                return
            }
            task.state = .submitted
            task.nextOfferAt = now + self.settings.memberRecheckInterval
            task.waiting = .forMember
            self.tasks[id] = task
            self.unsaved.append(id)
            return
        }
        let epoch = UInt32(task.attempts.count + 1)
        task.attempts.append(Attempt(epoch: epoch, peer: chosen, offeredAt: now))
        self.inFlight[chosen, default: [:]][task.capability, default: 0] += 1
        task.state = .offered
        task.nextOfferAt = nil
        task.waiting = nil
        task.offerSentAt = now
        self.tasks[id] = task
        directives.append(.persist(task))
        directives.append(self.offerMessage(task, epoch: epoch, now: now, to: chosen))
    }

    /// The offer carries the trace with this node's span for the task as the parent of the executor's.
    private func offerMessage(_ task: SubmittedTask, epoch: UInt32, now: Duration, to peer: NodeID) -> Directive {
        var options = task.options
        options.traceparent = options.traceparent.flatMap(TraceContext.init).map { $0.child(of: TraceContext.spanID(of: task.id)).description }
        return .send(
            .offer(TaskOffer(
                id: task.id, epoch: epoch, capability: task.capability, input: task.input,
                timeRemaining: task.deadline - now, options: options)),
            to: peer)
    }

    /// A run just ended on `peer`, so it has a free slot: the oldest task that every member declined (busy) is
    /// offered now instead of at its next round. A task backing off after a failure waits its back-off.
    private mutating func offerWaitingTask(
        freedBy peer: NodeID, capability: String, now: Duration, into directives: inout [Directive]
    ) {
        let waiting = self.unfinished.compactMap { self.tasks[$0] }.filter { task in
            task.state == .submitted && task.capability == capability && task.waiting == .forNewRound
                && (task.nextOfferAt ?? now) > now
        }
        guard let oldest = waiting.min(by: { ($0.submittedAt, $0.id) < ($1.submittedAt, $1.id) }) else { return }
        self.tasks[oldest.id]?.declinedBy = []
        self.offer(oldest.id, now: now, into: &directives)
    }

    private mutating func scheduleRetry(_ id: TaskID, now: Duration, waiting: Waiting = .forRetry) {
        guard var task = self.tasks[id] else { return }
        var backoff = Backoff(initial: self.settings.retryInitialDelay, maximum: self.settings.retryMaximumDelay)
        for _ in 0..<task.failures { _ = backoff.nextDelay(using: &self.random) }
        task.failures += 1
        task.state = .submitted
        task.nextOfferAt = now + backoff.nextDelay(using: &self.random)
        task.waiting = waiting
        self.tasks[id] = task
        self.unsaved.append(id)
    }

    /// Why a task timed out, in one sentence (the shell adds the member a run was stopped on).
    private func timedOut(_ task: SubmittedTask) -> String {
        let limit = "timed out after \(Self.seconds(task.deadline - task.submittedAt))"
        if let last = task.currentAttempt, last.acceptedAt != nil, last.outcome == nil || last.outcome == .timedOut {
            return limit  // it was running
        }
        switch task.waiting {
        case .forMember?: return "\(limit): no live member offers \(task.capability)"
        case .forSlot?: return "\(limit) waiting for a free slot: every member offering \(task.capability) was busy"
        default: break
        }
        let tried = task.triedAttempts
        guard tried > 0 else { return limit }
        return "\(limit) after \(tried) attempt\(tried == 1 ? "" : "s")" + (task.error.map { "; the last: \($0)" } ?? "")
    }

    /// "3 s", "2.5 s" (to a tenth of a second).
    public static func seconds(_ duration: Duration) -> String {
        let tenths = (duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000 + 50) / 100
        return tenths % 10 == 0 ? "\(tenths / 10) s" : "\(tenths / 10).\(tenths % 10) s"
    }

    private mutating func endAttempt(_ id: TaskID, _ outcome: AttemptOutcome, now: Duration) {
        guard var task = self.tasks[id], !task.attempts.isEmpty, task.attempts[task.attempts.count - 1].outcome == nil
        else { return }
        task.attempts[task.attempts.count - 1].outcome = outcome
        task.attempts[task.attempts.count - 1].endedAt = now
        if case .failed(let message) = outcome { task.error = message }
        self.tasks[id] = task
        self.unsaved.append(id)
        self.releaseSlot(of: task.attempts[task.attempts.count - 1].peer, task.capability)
    }

    /// The current attempt's peer was declared dead too soon (no other member could take the task meanwhile), and
    /// its result came: the attempt ran after all. Its outcome is the result's, not "peer died" beside a completed
    /// task, and it shows as accepted (at the latest when its result came); its slot, freed at the death, is held
    /// again for the result to free.
    private mutating func revive(_ id: TaskID, attempt: Attempt, now: Duration) {
        guard var task = self.tasks[id], let index = task.attempts.lastIndex(where: { $0.epoch == attempt.epoch }) else { return }
        task.attempts[index].outcome = nil
        task.attempts[index].endedAt = nil
        if task.attempts[index].acceptedAt == nil { task.attempts[index].acceptedAt = now }
        self.tasks[id] = task
        self.inFlight[attempt.peer, default: [:]][task.capability, default: 0] += 1
    }

    private mutating func releaseSlot(of peer: NodeID, _ capability: String) {
        guard let count = self.inFlight[peer]?[capability], count > 0 else { return }
        self.inFlight[peer]?[capability] = count > 1 ? count - 1 : nil
        self.freedSlots.insert(capability)
    }

    /// Ends an event: each task it changed is persisted as it now is, unless the event's last `.persist` of it
    /// already says exactly that.
    private mutating func persistUnsaved(into directives: inout [Directive]) {
        guard !self.unsaved.isEmpty else { return }
        var lastPersisted: [TaskID: SubmittedTask] = [:]
        for case .persist(let task) in directives { lastPersisted[task.id] = task }
        for id in self.unsaved {
            guard let task = self.tasks[id], lastPersisted[id] != task else { continue }
            lastPersisted[id] = task
            directives.append(.persist(task))
        }
        self.unsaved = []
    }

    /// Offers tasks waiting for a slot, oldest first, while a member has room for them.
    private mutating func offerQueuedTasks(now: Duration, into directives: inout [Directive], all: Bool = false) {
        let capabilities = all ? Set(self.waitingForSlot.keys) : self.freedSlots
        self.freedSlots = []
        for capability in capabilities.sorted() {
            while let id = self.waitingForSlot[capability]?.first {
                guard let task = self.tasks[id], task.state == .submitted, task.nextOfferAt == nil else {
                    self.waitingForSlot[capability]?.removeFirst()
                    continue
                }
                guard case .peer = self.choose(for: task, now: now) else { break }
                self.waitingForSlot[capability]?.removeFirst()
                self.offer(id, now: now, into: &directives)
            }
            if self.waitingForSlot[capability]?.isEmpty == true { self.waitingForSlot[capability] = nil }
        }
    }

    private mutating func recordFailure(of peer: NodeID, now: Duration) {
        var breaker = self.breakers[peer] ?? (0, nil)
        breaker.failures += 1
        if breaker.failures >= self.settings.breakerThreshold {
            breaker.openUntil = now + self.settings.breakerCooldown
            breaker.failures = 0
        }
        self.breakers[peer] = breaker
    }

    /// Forgets finished tasks past their retention, oldest first, and keeps no more than `finishedInMemory` of the
    /// rest (and `finishedBytesInMemory` of their payloads) in memory; the store keeps those until their retention ends.
    private mutating func forgetExpired(now: Duration) -> [Directive] {
        var directives: [Directive] = []
        while self.finishedOrderStart < self.finishedOrder.count {
            let (id, finishedAt) = self.finishedOrder[self.finishedOrderStart]
            let expired = now - finishedAt >= self.settings.finishedRetention
            let overBound = self.finishedOrder.count - self.finishedOrderStart > self.settings.finishedInMemory
                || self.finishedBytes > self.settings.finishedBytesInMemory
            guard expired || overBound else { break }
            self.finishedOrderStart += 1
            if let task = self.tasks[id], task.state.isTerminal {
                self.finishedBytes -= Self.payloadBytes(task)
                self.tasks[id] = nil
                if expired { directives.append(.forget(id)) }
            }
        }
        if self.finishedOrderStart > 1024, self.finishedOrderStart * 2 > self.finishedOrder.count {
            self.finishedOrder.removeFirst(self.finishedOrderStart)
            self.finishedOrderStart = 0
        }
        return directives
    }

    private mutating func finish(
        _ id: TaskID, _ state: TaskState, outcome: TaskOutcome?, error: String?, now: Duration,
        into directives: inout [Directive]
    ) {
        guard var task = self.tasks[id] else { return }
        task.state = state
        task.outcome = outcome
        if let error { task.error = error }
        task.nextOfferAt = nil
        task.finishedAt = now
        self.tasks[id] = task
        self.unfinished.remove(id)
        self.finishedOrder.append((id, now))
        self.finishedBytes += Self.payloadBytes(task)
        directives.append(.persist(task))
        directives.append(.finished(task))
    }
}

/// A first-in, first-out queue of task ids that pops in O(1).
struct TaskQueue: Sendable {
    private var items: [TaskID] = []
    private var head = 0

    var first: TaskID? { self.head < self.items.count ? self.items[self.head] : nil }
    var isEmpty: Bool { self.head >= self.items.count }

    mutating func append(_ id: TaskID) { self.items.append(id) }

    mutating func removeFirst() {
        self.head += 1
        if self.head > 1024, self.head * 2 > self.items.count {
            self.items.removeFirst(self.head)
            self.head = 0
        }
    }
}

import Foundation
import Logging
import MeshCore
import MeshWire
import NIOCore
import MeshExecutors
import MeshStorage
import MeshControl

/// The node's part in the task protocol: it drives ``TaskSubmitter`` for tasks clients submit here and
/// ``TaskRunner`` for tasks peers offer, delivers offers to itself without the network, runs executors, and serves
/// the task endpoints of the control API.
extension MeshNode {
    // MARK: - Events

    func receiveTask(_ message: TaskMessage, from peer: NodeID) {
        guard self.isRunning else { return }
        switch message {
        case .offer, .resultAck, .cancel, .resume:
            self.runTaskRunner { $0.receive(message, from: peer, now: self.now) }
        case .accept, .decline, .result, .held:
            self.runSubmitter { $0.receive(message, from: peer, now: self.now) }
        }
    }

    func taskTick(now: Duration) {
        self.runSubmitter { submitter in
            submitter.candidatesChanged(self.taskCandidates(), now: now) + submitter.tick(now: now)
        }
        self.runTaskRunner { $0.tick(now: now) }
        self.advertiseLoadIfChanged(now: now)
    }

    /// Membership declared a member dead: tasks it was running are offered elsewhere at once.
    func executorDied(_ peer: NodeID) {
        self.runSubmitter { $0.peerDied(peer, now: self.now) }
    }

    /// A session with a submitter is back: it gets every result it has not acknowledged.
    func submitterReconnected(_ peer: NodeID) {
        self.runTaskRunner { $0.reconnected(to: peer, now: self.now) }
    }

    /// Alive members and their capabilities, with this node's own live load.
    private func taskCandidates() -> [TaskSubmitter.Candidate] {
        var candidates: [TaskSubmitter.Candidate] = []
        if let runner = self.runner, !runner.capacity.isEmpty {
            candidates.append(.init(id: self.identity.nodeID, capabilities: runner.capacity, load: runner.load))
        }
        for view in self.membership?.view ?? [] where view.status == .alive && !view.record.capabilities.isEmpty {
            candidates.append(.init(
                id: view.record.nodeID,
                capabilities: Dictionary(
                    view.record.capabilities.map { ($0.name, Int($0.capacity)) }, uniquingKeysWith: { first, _ in first }),
                load: Int(view.record.load)))
        }
        return candidates
    }

    /// Load travels in the signed member record; re-signing on every task would flood gossip, so at most once a second.
    private func advertiseLoadIfChanged(now: Duration) {
        guard let load = self.runner?.load, load != self.advertisedLoad, now - self.loadAdvertisedAt >= .seconds(1)
        else { return }
        self.advertisedLoad = load
        self.loadAdvertisedAt = now
        self.membership?.updateLocal(load: UInt32(load))
    }

    // MARK: - Driving the machines

    /// What the machines asked for; ``CommitGate`` holds it until what it depends on is stored.
    enum DeferredTaskAction: Sendable {
        case submitter(TaskSubmitter.Directive)
        case runner(TaskRunner.Directive)
    }

    /// The machines are mutated in place: a copy taken out and written back would share, and so duplicate, every
    /// stored task on each event (copy-on-write), which made a busy node slower the more tasks it kept.
    func runSubmitter(_ event: (inout TaskSubmitter) -> [TaskSubmitter.Directive]) {
        guard self.submitter != nil else { return }
        let directives = event(&self.submitter!)
        var changes: [TaskStore.Change] = []
        var actions: [DeferredTaskAction] = []
        for directive in directives {
            switch directive {
            case .persist(let task): changes.append(.submitted(task))
            case .forget(let id): changes.append(.forgetSubmitted(id))
            case .send, .finished: actions.append(.submitter(directive))
            }
        }
        self.afterCommit(of: changes, perform: actions)
    }

    func runTaskRunner(_ event: (inout TaskRunner) -> [TaskRunner.Directive]) {
        guard self.runner != nil else { return }
        let directives = event(&self.runner!)
        var changes: [TaskStore.Change] = []
        var actions: [DeferredTaskAction] = []
        for directive in directives {
            switch directive {
            case .persistAccepted(let task): changes.append(.accepted(task))
            case .persistResult(let id, _, _):
                if let task = self.runner?.task(id) { changes.append(.accepted(task)) }
            case .forget(let id): changes.append(.forgetAccepted(id))
            // A refusal depends on nothing durable, and must get out even while the disk is full.
            case .send(.decline(let id, let epoch, let reason), let peer):
                self.deliver(.decline(id, epoch: epoch, reason: reason), to: peer)
            case .send, .start, .stop: actions.append(.runner(directive))
            }
        }
        self.afterCommit(of: changes, perform: actions)
    }

    private func afterCommit(of changes: [TaskStore.Change], perform actions: [DeferredTaskAction]) {
        guard let store = self.taskStore else { return }
        let sequence = store.enqueue(changes)
        guard !actions.isEmpty else { return }
        self.commitGate.submit(actions, afterStore: sequence, audit: self.auditLog?.lastQueued ?? 0)
            .forEach(self.perform)
    }

    private func perform(_ action: DeferredTaskAction) {
        switch action {
        case .submitter(.send(let message, let peer)):
            // An offer whose attempt ended while it waited (the task was abandoned or moved on) stays unsent.
            if case .offer(let offer) = message {
                guard let attempt = self.submitter?.task(offer.id)?.currentAttempt, attempt.epoch == offer.epoch,
                    attempt.peer == peer, attempt.outcome == nil
                else { return }
            }
            self.deliver(message, to: peer)
        case .submitter(.finished(let task)):
            self.logger.info("task finished", metadata: [
                "task": "\(task.id)", "state": "\(task.state)", "attempts": "\(task.attempts.count)",
                "error": "\(task.error ?? "-")",
            ])
            self.wakeWaiters(for: task.id)
        case .runner(.send(let message, let peer)):
            if case .accept(let id, let epoch) = message, self.runner?.task(id)?.epoch != epoch { return }
            self.deliver(message, to: peer)
        case .runner(.start(let task)):
            guard let current = self.runner?.task(task.id), current.outcome == nil, !current.isHeld,
                self.executions[task.id] == nil
            else { return }
            self.startExecution(current)
        case .runner(.stop(let id)):
            self.executions[id]?.cancel()
        case .submitter(.persist), .submitter(.forget), .runner(.persistAccepted), .runner(.persistResult),
            .runner(.forget):
            break  // store changes never wait
        }
    }

    // MARK: - The store

    /// Restores both machines from the store and follows its commits from now on.
    func openTaskStore(
        _ store: TaskStore, restoring stored: (submitted: [TaskSubmitter.SubmittedTask], accepted: [TaskRunner.AcceptedTask])
    ) {
        self.taskStore = store
        store.onProgress { progress in
            self.loop.execute { self.assumeIsolated { $0.storeProgressed(progress) } }
        }
        self.submitter?.restore(stored.submitted, now: self.now)
        self.runTaskRunner { $0.restore(stored.accepted, now: self.now) }
        if !stored.submitted.isEmpty || !stored.accepted.isEmpty {
            self.logger.info("restored tasks", metadata: [
                "submitted": "\(stored.submitted.count)",
                "unfinished": "\(stored.submitted.filter { !$0.state.isTerminal }.count)",
                "accepted": "\(stored.accepted.count)",
            ])
        }
    }

    private func storeProgressed(_ progress: TaskStore.Progress) {
        switch progress {
        case .committed(let through):
            let progress = self.commitGate.storeCommitted(through: through)
            if progress.availabilityChanged {
                self.logger.notice("the task store is writable again; taking new tasks")
                self.storageAvailabilityChanged()
            }
            self.releaseDeferredTaskActions()
            for waiter in progress.waiters { waiter.resume(returning: nil) }
        case .failed(let error):
            let progress = self.commitGate.storeFailed()
            if progress.availabilityChanged {
                self.logger.error("cannot write the task store; refusing new tasks until it can", metadata: [
                    "store": "\(self.taskStore?.path ?? "-")", "error": "\(error.description)",
                ])
                self.storageAvailabilityChanged()
            }
            for waiter in progress.waiters { waiter.resume(returning: error) }
        }
    }

    /// Performs the deferred batches whose changes and audit records are durable, oldest first. One at a time:
    /// performing a batch can queue more (a task offered to this node itself), which must line up behind it.
    func releaseDeferredTaskActions() {
        while let actions = self.commitGate.nextReady() {
            actions.forEach(self.perform)
        }
    }

    /// The node takes peers' tasks only while both the task store and the audit log can be written: work that
    /// could not be made durable, or would go unaudited, is declined `storage_unavailable`.
    func storageAvailabilityChanged() {
        let available = self.commitGate.isWritable
        self.runner?.setStorageAvailable(available)
        if !available { self.abandonUnstartedTasks() }
    }

    /// Offers accepted in memory whose accept is still waiting for the failing disk are given back (declined), so
    /// the submitter places them elsewhere instead of waiting for this disk.
    private func abandonUnstartedTasks() {
        let unstarted = self.commitGate.heldActions.compactMap { action -> TaskID? in
            if case .runner(.start(let task)) = action { return task.id }
            return nil
        }
        guard self.runner != nil, !unstarted.isEmpty else { return }
        var directives: [TaskRunner.Directive] = []
        for id in unstarted { directives += self.runner!.abandon(id) }
        for directive in directives {
            switch directive {
            case .forget(let id): self.taskStore?.enqueue([.forgetAccepted(id)])
            case .send(let message, let peer): self.deliver(message, to: peer)  // a refusal needs nothing durable
            default: break
            }
        }
    }

    /// Waits until the change with this sequence number is durable; returns the store's error if it cannot be.
    private func awaitDurable(_ sequence: UInt64) async -> TaskStore.StoreError? {
        guard sequence > self.commitGate.storeCommitted else { return nil }
        return await withCheckedContinuation { continuation in
            if !self.commitGate.wait(forStore: sequence, continuation) { continuation.resume(returning: nil) }
        }
    }

    /// At shutdown: signs what the audit logs have unsigned, and gives queued store changes and audit records up to
    /// 2 s to reach the disk.
    func flushToDisk() async {
        self.auditLog?.requestCheckpoints()
        let deadline = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < deadline,
            (self.commitGate.isStoreWritable && (self.taskStore?.lastQueued ?? 0) > self.commitGate.storeCommitted)
                || (self.commitGate.isAuditWritable && (self.auditLog?.lastQueued ?? 0) > self.commitGate.auditCommitted)
        {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Offers to this node go to its own runner, and its results to its own submitter, without the network.
    private func deliver(_ message: TaskMessage, to peer: NodeID) {
        if peer == self.identity.nodeID {
            self.receiveTask(message, from: peer)
            return
        }
        let address = self.membership?.member(peer)?.record.address ?? ""
        self.send(.task(message), to: peer, address: address)
    }

    private func startExecution(_ task: TaskRunner.AcceptedTask) {
        guard let spec = self.settings.capabilities.first(where: { $0.name == task.capability }) else {
            self.runTaskRunner { $0.finished(task.id, outcome: .failure("no executor for \(task.capability)"), now: self.now) }
            return
        }
        let timeout = task.deadline - self.now
        if case .builtinEcho = spec.executor, timeout > .zero {
            // Nothing to wait for: answering in the same turn saves two thread hand-offs per task.
            self.runTaskRunner { $0.finished(task.id, outcome: .success(task.input), now: self.now) }
            return
        }
        self.executions[task.id] = Task {
            let outcome = await TaskExecution.run(spec.executor, input: task.input, timeout: timeout)
            self.executionFinished(task.id, outcome: outcome)
        }
    }

    private func executionFinished(_ id: TaskID, outcome: TaskOutcome) {
        self.executions[id] = nil
        // A run stopped by shutdown is not an outcome: the restarted node holds the task and asks to run it again.
        guard self.isRunning else { return }
        self.runTaskRunner { $0.finished(id, outcome: outcome, now: self.now) }
    }

    // MARK: - Waiting

    private func wakeWaiters(for id: TaskID) {
        for waiter in self.waiters.removeValue(forKey: id)?.values ?? [:].values {
            waiter.expiry.cancel()
            waiter.continuation.resume()
        }
    }

    func wakeAllWaiters() {
        for id in Array(self.waiters.keys) { self.wakeWaiters(for: id) }
    }

    /// Waits until the task ends or `timeout` passes, whichever is first.
    private func waitForTask(_ id: TaskID, timeout: Duration) async {
        guard let task = self.submitter?.task(id), !task.state.isTerminal, timeout > .zero else { return }
        let token = UUID()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let expiry = self.loop.scheduleTask(in: TimeAmount(timeout)) {
                self.assumeIsolated { $0.expireWaiter(id, token) }
            }
            self.waiters[id, default: [:]][token] = TaskWaiter(continuation: continuation, expiry: expiry)
        }
    }

    private func expireWaiter(_ id: TaskID, _ token: UUID) {
        self.waiters[id]?.removeValue(forKey: token)?.continuation.resume()
    }

    // MARK: - Control API

    func handleTaskRequest(_ request: ControlRequest) async -> ControlResponse {
        let parts = request.path.split(separator: "/").map(String.init)  // ["v1", "tasks", id?, "cancel"?]
        switch (request.method, parts.count) {
        case ("POST", 2):
            var wait: Duration?
            if let text = request.query["wait"] {
                guard let seconds = Double(text), seconds >= 0, seconds <= 3600 else {
                    return .error(400, "wait must be a number of seconds from 0 to 3600")
                }
                wait = .milliseconds(Int64(seconds * 1000))
            }
            return await self.submitTask(request.body, wait: wait)
        case ("GET", 2):
            let state = request.query["state"]
            if let state, TaskState(rawValue: state) == nil {
                return .error(400, "unknown state '\(state)': use one of \(TaskState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let tasks = (self.submitter?.allTasks ?? []).filter { state == nil || $0.state.rawValue == state }
            return self.taskDocuments.list(tasks)
        case ("GET", 3):
            guard let id = TaskID(hex: parts[2]) else { return .error(400, "'\(parts[2])' is not a task id") }
            guard self.submitter?.task(id) != nil else { return .error(404, "no task \(parts[2]) on this node") }
            if let wait = request.query["wait"] {
                guard let seconds = Double(wait), seconds >= 0, seconds <= 3600 else {
                    return .error(400, "wait must be a number of seconds from 0 to 3600")
                }
                await self.waitForTask(id, timeout: .milliseconds(Int64(seconds * 1000)))
            }
            guard let task = self.submitter?.task(id) else { return .error(404, "no task \(parts[2]) on this node") }
            return self.taskDocuments.task(task)
        case ("POST", 4) where parts[3] == "cancel":
            guard let id = TaskID(hex: parts[2]), self.submitter?.task(id) != nil else {
                return .error(404, "no task \(parts[2]) on this node")
            }
            self.runSubmitter { $0.cancel(id, now: self.now) }
            return self.taskDocuments.task(self.submitter!.task(id)!)
        default:
            return .error(404, "no such endpoint: \(request.method) \(request.path)")
        }
    }

    /// Submits a task; with `wait`, answers once it ends (200) or when `wait` runs out (202), saving a round trip.
    private func submitTask(_ body: [UInt8], wait: Duration?) async -> ControlResponse {
        let request: ControlAPI.SubmitRequest
        do {
            request = try ControlAPI.decoder().decode(ControlAPI.SubmitRequest.self, from: Data(body))
        } catch {
            return .error(400, "the request is not a task: send JSON like {\"capability\": \"NAME\", \"input\": {…}}")
        }
        guard Capability.isValidName(request.capability) else {
            return .error(400, "capability name '\(request.capability)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
        }
        let input: Data
        do {
            input = try JSONSerialization.data(withJSONObject: request.input.value, options: [.fragmentsAllowed, .sortedKeys])
        } catch {
            return .error(400, "the input is not JSON")
        }
        guard input.count <= self.settings.maximumTaskInput else {
            return .error(413, "the input has \(input.count) bytes; this node accepts at most \(self.settings.maximumTaskInput)")
        }
        let timeout = request.timeoutSeconds ?? 60
        guard timeout > 0, timeout <= 86_400 else { return .error(400, "timeout_seconds must be between 0 and 86400") }
        let attempts = request.maxAttempts ?? 5
        guard (1...100).contains(attempts) else { return .error(400, "max_attempts must be between 1 and 100") }
        guard self.commitGate.isStoreWritable else {
            return .error(507, "this node cannot store new tasks now (\(self.taskStore?.path ?? "its task store") is not writable); try another node")
        }
        guard self.commitGate.isAuditWritable else {
            return .error(507, "this node cannot audit new work now (\(self.auditLog?.directory ?? "its audit log") is not writable); try another node")
        }
        var generator = SystemRandomNumberGenerator()
        let id = TaskID(using: &generator)
        self.runSubmitter {
            $0.submit(
                id: id, capability: request.capability, input: Array(input),
                timeout: .milliseconds(Int64(timeout * 1000)), maximumAttempts: attempts, now: self.now)
        }
        // The client hears "accepted" only once the task is durable.
        if let error = await self.awaitDurable(self.taskStore?.lastQueued ?? 0) {
            self.runSubmitter { $0.abandon(id) }
            return .error(507, "the task could not be stored: \(error.description); nothing was submitted")
        }
        if let wait { await self.waitForTask(id, timeout: wait) }
        guard let task = self.submitter?.task(id) else { return .error(500, "the task was not recorded") }
        // Without `wait` the answer is "accepted" (202) even when a fast executor has already finished the task.
        return self.taskDocuments.task(task, status: wait != nil && task.state.isTerminal ? 200 : 202)
    }

    private var taskDocuments: TaskDocuments {
        TaskDocuments(date: self.wallClockDate(for:)) { id in
            id == self.identity.nodeID ? self.identity.name : (self.membership?.member(id)?.record.name ?? id.short)
        }
    }
}

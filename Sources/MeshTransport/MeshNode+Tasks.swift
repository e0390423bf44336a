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
        guard self.isServing else { return }
        switch message {
        case .offer, .resultAck, .cancel, .resume:
            self.runTaskRunner { $0.receive(message, from: peer, now: self.now) }
        case .result:
            guard !self.holdResultForArtifacts(message, from: peer) else { return }
            self.runSubmitter { $0.receive(message, from: peer, now: self.now) }
        case .accept, .decline, .held:
            self.runSubmitter { $0.receive(message, from: peer, now: self.now) }
        case .artifactRequest(let id, let digest, let offset, let length):
            self.serveArtifact(id, digest: digest, offset: offset, length: length, to: peer)
        case .artifactChunk(let id, let digest, let offset, let chainingValue, let bytes):
            self.receiveArtifactChunk(id, digest: digest, offset: offset, chainingValue: chainingValue, bytes: bytes, from: peer)
        case .artifactUnavailable(let id, let digest, let reason):
            self.receiveArtifactUnavailable(id, digest: digest, reason: reason, from: peer)
        case .log(let id, let epoch, let chunk):
            guard self.submitter.acceptsLog(id, epoch: epoch, from: peer) else { return }
            self.taskPlane.followers.logs.append(chunk, to: id)
            self.wake(.taskLog, id)
        case .progress(let id, let epoch, let first, let events):
            self.receiveProgress(id, epoch: epoch, first: first, events: events, from: peer)
        case .input:
            self.runTaskRunner { $0.receive(message, from: peer, now: self.now) }
        case .inputRequired(let id, _, let question):
            self.runSubmitter { $0.receive(message, from: peer, now: self.now) }
            if self.submitter.task(id)?.state == .inputRequired {
                // Followers see the question where they see progress.
                self.recordLocalEvent(id, Self.inputRequiredEvent(question))
            }
        case .event, .eventAck:
            self.receiveEvent(message, from: peer)
        }
    }

    /// The event followers see for an agent's question. The question comes from a peer: it is written as the JSON
    /// value it is, or as a string when it is not exactly one JSON value, never spliced in as text (a question of
    /// `1,"agentmesh":"forged"` put a key of its own into the event).
    static func inputRequiredEvent(_ question: [UInt8]) -> [UInt8] {
        let value = JSONText.compacted(question, maximumDepth: 64) ?? {
            var writer = JSONWriter()
            writer.string(String(decoding: question, as: UTF8.self))
            return writer.bytes
        }()
        return Array(#"{"agentmesh":"input-required","question":"#.utf8) + value + Array("}".utf8)
    }

    func taskTick(now: Duration) {
        self.runSubmitter { submitter in
            submitter.candidatesChanged(self.taskCandidates(), now: now) + submitter.tick(now: now)
        }
        self.runTaskRunner { $0.tick(now: now) }
        self.artifactTick(now: now)
        if now - self.transfers.sweptAt > .seconds(600) {
            self.transfers.sweptAt = now
            self.sweepArtifacts()
        }
        self.eventTick(now: now)
        self.advertiseLoadIfChanged(now: now)
    }

    /// Membership declared a member dead: tasks it was running are offered elsewhere at once.
    func executorDied(_ peer: NodeID) {
        // A result whose artifacts are still coming stays: they are on the executor's disk, and a restarted
        // executor serves them (the pull gives up, and the task is retried, if it never comes back).
        self.runSubmitter { $0.peerDied(peer, now: self.now, sparing: self.transfers.heldResults) }
    }

    /// A session with a peer started. As a submitter it gets every result it has not acknowledged; as an executor,
    /// every attempt still open there is confirmed with it (either side may have restarted in between).
    func taskSessionStarted(with peer: NodeID) {
        self.runTaskRunner { $0.reconnected(to: peer, now: self.now) }
        self.runSubmitter { $0.reconnected(to: peer, now: self.now) }
    }

    /// Alive members and their capabilities, with this node's own live load.
    func taskCandidates() -> [TaskSubmitter.Candidate] {
        var candidates: [TaskSubmitter.Candidate] = []
        if !self.runner.capacity.isEmpty {
            candidates.append(.init(id: self.identity.nodeID, capabilities: self.runner.capacity, load: self.runner.load))
        }
        for view in self.peers.membership.view where view.status == .alive && !view.record.capabilities.isEmpty {
            candidates.append(.init(
                id: view.record.nodeID,
                capabilities: Dictionary(
                    view.record.capabilities.map { ($0.name, Int($0.capacity)) }, uniquingKeysWith: { first, _ in first }),
                load: Int(view.record.load)))
        }
        return candidates
    }

    /// Runs of peers' tasks in progress here.
    var runningLoad: Int { self.runner.load }

    /// Load travels in the signed member record; re-signing on every task would flood gossip, so at most once a second.
    private func advertiseLoadIfChanged(now: Duration) {
        let load = self.runner.load
        guard load != self.peers.advertisedLoad.load, now - self.peers.advertisedLoad.at >= .seconds(1)
        else { return }
        self.peers.advertisedLoad = (load, now)
        self.peers.membership.updateLocal(load: UInt32(load))
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
        let directives = event(&self.submitter)
        var changes: [TaskStore.Change] = []
        var actions: [DeferredTaskAction] = []
        for directive in directives {
            switch directive {
            case .persist(let task):
                changes.append(.submitted(task))
                if !task.state.isTerminal, self.webhooks.targets[.task(task.id)] != nil {
                    self.webhookStateChanged(.task(task.id), state: task.state.rawValue, isFinal: false) {
                        self.taskDocumentBytes(task.id)
                    }
                }
            case .forget(let id): changes.append(.forgetSubmitted(id))
            case .forgetFinished(let before):
                changes.append(.forgetFinished(before: before))
                Self.returnFreedHeap()
            case .send, .finished: actions.append(.submitter(directive))
            }
        }
        self.afterCommit(of: changes, perform: actions)
    }

    /// Once a minute (with the retention sweep): heap pages that large payloads left free go back to the system.
    /// glibc keeps freed megabyte buffers for the next ones (`run` sets that up, and a chunk freed inside the heap is
    /// never given back on its own), so a node that once moved 10 MiB payloads held on to hundreds of megabytes.
    static func returnFreedHeap() {
        _ = glibcMallocTrim(64 << 20)
    }

    func runTaskRunner(_ event: (inout TaskRunner) -> [TaskRunner.Directive]) {
        let directives = event(&self.runner)
        var changes: [TaskStore.Change] = []
        var actions: [DeferredTaskAction] = []
        for directive in directives {
            switch directive {
            case .persistAccepted(let task): changes.append(.accepted(task))
            case .persistResult(let id, _, _):
                if let task = self.runner.task(id) { changes.append(.accepted(task)) }
            case .forget(let id): changes.append(.forgetAccepted(id))
            // A refusal depends on nothing durable, and must get out even while the disk is full.
            case .send(.decline(let id, let epoch, let reason), let peer):
                self.deliver(.decline(id, epoch: epoch, reason: reason), to: peer)
            case .send, .start, .stop: actions.append(.runner(directive))
            case .deliverInput(let id, let reply): self.taskPlane.localRuns.inputs[id]?.deliver(reply)
            }
        }
        self.afterCommit(of: changes, perform: actions)
    }

    private func afterCommit(of changes: [TaskStore.Change], perform actions: [DeferredTaskAction]) {
        guard let store = self.taskStore else { return }
        let sequence = store.enqueue(changes)
        guard !actions.isEmpty else { return }
        self.taskPlane.commitGate.submit(actions, afterStore: sequence, audit: self.auditLog?.lastQueued ?? 0)
            .forEach(self.perform)
    }

    private func perform(_ action: DeferredTaskAction) {
        switch action {
        case .submitter(.send(let message, let peer)):
            // An offer whose attempt ended while it waited (the task was abandoned or moved on) stays unsent.
            if case .offer(let offer) = message {
                guard let attempt = self.submitter.task(offer.id)?.currentAttempt, attempt.epoch == offer.epoch,
                    attempt.peer == peer, attempt.outcome == nil
                else { return }
            }
            self.deliver(message, to: peer)
        case .submitter(.finished(let task)):
            self.context.logger.debug("task finished", metadata: [
                "task": "\(task.id)", "state": "\(task.state)", "attempts": "\(task.attempts.count)",
                "error": "\(task.error ?? "-")",
            ])
            // Counted before anyone waiting hears of the end, so a client that reads /metrics next sees it.
            self.metricsTaskFinished(task)
            self.wakeWaiters(for: task.id)
            self.taskPlane.followers.progress.taskFinished(task.id)
            self.traceTaskFinished(task)
            self.workflowTaskEnded(task)
            self.webhookStateChanged(.task(task.id), state: task.state.rawValue, isFinal: true) { self.taskDocumentBytes(task.id) }
        case .runner(.send(let message, let peer)):
            if case .accept(let id, let epoch) = message, self.runner.task(id)?.epoch != epoch { return }
            self.deliver(message, to: peer)
        case .runner(.start(let task)):
            guard let current = self.runner.task(task.id), current.outcome == nil, !current.isHeld,
                self.taskPlane.localRuns.tasks[task.id] == nil
            else { return }
            self.startExecution(current)
        case .runner(.stop(let id)):
            self.taskPlane.localRuns.tasks[id]?.cancel()
        case .submitter(.persist), .submitter(.forget), .submitter(.forgetFinished), .runner(.persistAccepted),
            .runner(.persistResult),
            .runner(.forget), .runner(.deliverInput):
            break  // store changes never wait
        }
    }

    // MARK: - The store

    /// Restores both machines from the store and follows its commits from now on.
    func openTaskStore(
        _ store: TaskStore, restoring stored: (submitted: [TaskSubmitter.SubmittedTask], accepted: [TaskRunner.AcceptedTask])
    ) {
        store.onProgress { progress in
            self.onLoop { $0.storeProgressed(progress) }
        }
        self.submitter.restore(stored.submitted, now: self.now)
        self.runTaskRunner { $0.restore(stored.accepted, now: self.now) }
        if !stored.submitted.isEmpty || !stored.accepted.isEmpty {
            self.context.logger.info("restored tasks", metadata: [
                "submitted": "\(stored.submitted.count)",
                "unfinished": "\(stored.submitted.filter { !$0.state.isTerminal }.count)",
                "accepted": "\(stored.accepted.count)",
            ])
        }
    }

    private func storeProgressed(_ progress: TaskStore.Progress) {
        switch progress {
        case .committed(let through):
            let progress = self.taskPlane.commitGate.storeCommitted(through: through)
            if progress.availabilityChanged {
                self.context.logger.notice("the task store is writable again; taking new tasks")
                self.storageAvailabilityChanged()
            }
            self.releaseDeferredTaskActions()
            for waiter in progress.waiters { waiter(nil) }
        case .failed(let error):
            let progress = self.taskPlane.commitGate.storeFailed()
            if progress.availabilityChanged {
                self.context.logger.error("cannot write the task store; refusing new tasks until it can", metadata: [
                    "store": "\(self.taskStore?.path ?? "-")", "error": "\(error.description)",
                ])
                self.storageAvailabilityChanged()
            }
            for waiter in progress.waiters { waiter(error) }
        }
    }

    /// Performs the deferred batches whose changes and audit records are durable, oldest first. One at a time:
    /// performing a batch can queue more (a task offered to this node itself), which must line up behind it.
    func releaseDeferredTaskActions() {
        while let actions = self.taskPlane.commitGate.nextReady() {
            actions.forEach(self.perform)
        }
    }

    /// The node takes peers' tasks only while both the task store and the audit log can be written: work that
    /// could not be made durable, or would go unaudited, is declined `storage_unavailable`.
    func storageAvailabilityChanged() {
        let available = self.taskPlane.commitGate.isWritable
        self.runner.setStorageAvailable(available)
        if !available { self.abandonUnstartedTasks() }
    }

    /// Offers accepted in memory whose accept is still waiting for the failing disk are given back (declined), so
    /// the submitter places them elsewhere instead of waiting for this disk.
    private func abandonUnstartedTasks() {
        let unstarted = self.taskPlane.commitGate.heldActions.compactMap { action -> TaskID? in
            if case .runner(.start(let task)) = action { return task.id }
            return nil
        }
        guard !unstarted.isEmpty else { return }
        var directives: [TaskRunner.Directive] = []
        for id in unstarted { directives += self.runner.abandon(id) }
        for directive in directives {
            switch directive {
            case .forget(let id): self.taskStore?.enqueue([.forgetAccepted(id)])
            case .send(let message, let peer): self.deliver(message, to: peer)  // a refusal needs nothing durable
            default: break
            }
        }
    }

    /// At shutdown: signs what the audit logs have unsigned, and gives queued store changes and audit records up to
    /// 2 s to reach the disk.
    func flushToDisk() async {
        await self.telemetry.tracer?.flush()
        self.auditLog?.requestCheckpoints()
        let deadline = self.now + .seconds(2)
        while self.now < deadline,
            (self.taskPlane.commitGate.isStoreWritable && (self.taskStore?.lastQueued ?? 0) > self.taskPlane.commitGate.storeCommitted)
                || (self.taskPlane.commitGate.isAuditWritable && (self.auditLog?.lastQueued ?? 0) > self.taskPlane.commitGate.auditCommitted)
        {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Offers to this node go to its own runner, and its results to its own submitter, without the network.
    func deliver(_ message: TaskMessage, to peer: NodeID) {
        if peer == self.identity.nodeID {
            self.receiveTask(message, from: peer)
            return
        }
        let address = self.peers.membership.member(peer)?.record.address ?? ""
        self.send(.task(message), to: peer, address: address)
    }

    private func startExecution(_ task: TaskRunner.AcceptedTask) {
        guard let spec = self.settings.capabilities.first(where: { $0.name == task.capability }) else {
            self.runTaskRunner { $0.finished(task.id, outcome: .failure("no executor for \(task.capability)"), now: self.now) }
            return
        }
        // A run whose deadline pauses while it waits for an answer is stopped by the runner's deadline alone.
        let timeout = task.options.inputTimeout == nil ? task.deadline - self.now : .seconds(366 * 86_400)
        if case .builtinEcho = spec.executor, timeout > .zero {
            // Nothing to wait for: answering in the same turn saves two thread hand-offs per task.
            self.telemetry.metrics.increment("agentmesh_executions_total", [("capability", task.capability), ("outcome", "completed")])
            // Observed too, so the histogram's count agrees with the counter (a run of no measurable time).
            self.telemetry.metrics.record("agentmesh_execution_seconds", [("capability", task.capability)], seconds: 0)
            self.traceExecutionFinished(task, started: self.now, outcome: .success([]))
            self.runTaskRunner { $0.finished(task.id, outcome: .success(task.input), now: self.now) }
            return
        }
        self.prepareArtifacts(for: task, executor: spec.executor) { prepared in
            // The task may have been canceled or superseded while its inputs arrived.
            guard self.isRunning, let current = self.runner.task(task.id), current.epoch == task.epoch, current.outcome == nil else { return }
            switch prepared {
            case .failure(let error):
                let sentence = "the task's input artifacts could not be fetched: \(error)"
                self.runTaskRunner {
                    $0.finished(task.id, outcome: error.isLimit ? .rejected(sentence) : .failure(sentence), now: self.now)
                }
            case .success(let (json, folders)):
                self.run(task, spec: spec, input: json, folders: folders, timeout: timeout)
            }
        }
    }

    private func run(
        _ task: TaskRunner.AcceptedTask, spec: CapabilitySpec, input: [UInt8], folders: ArtifactFolders?, timeout: Duration
    ) {
        let answers = AgentInput()
        self.taskPlane.localRuns.inputs[task.id] = answers
        self.metricsExecutionStarted(task.id, capability: task.capability)
        self.taskPlane.localRuns.tasks[task.id] = Task {
            let context = TaskExecution.Context(
                taskID: task.id, attempt: task.epoch, deadline: self.context.clock.wallClockDate(for: task.deadline),
                contextID: task.options.context, traceparent: self.executionTrace(task)?.description, artifacts: folders)
            let loop = self.context.loop
            // Read on a GCD thread; one `execute` per chunk keeps them in order on the node's loop.
            let stderr: @Sendable ([UInt8]) -> Void = { chunk in
                loop.execute { self.assumeIsolated { node in node.runTaskRunner { $0.logged(task.id, chunk) } } }
            }
            let progress: @Sendable ([[UInt8]]) -> Void = { events in
                loop.execute { self.assumeIsolated { node in node.runTaskRunner { $0.progressed(task.id, events) } } }
            }
            var channels = TaskExecution.Channels()
            channels.stderr = stderr
            channels.progress = progress
            channels.answers = answers
            channels.question = { question in
                loop.execute { self.assumeIsolated { node in node.runTaskRunner { $0.askedForInput(task.id, question: question) } } }
            }
            let ran = await TaskExecution.run(spec.executor, input: input, timeout: timeout, context: context, channels: channels)
            answers.close()
            let outcome = await self.collectArtifacts(folders, outcome: ran)
            self.executionFinished(task.id, outcome: outcome)
        }
    }

    private func executionFinished(_ id: TaskID, outcome: TaskOutcome) {
        self.taskPlane.localRuns.tasks[id] = nil
        self.taskPlane.localRuns.inputs[id] = nil
        if let task = self.runner.task(id), let started = self.taskPlane.localRuns.starts[id]?.1 {
            self.traceExecutionFinished(task, started: started, outcome: outcome)
        }
        self.metricsExecutionFinished(id, outcome: outcome)
        // A run stopped by shutdown is not an outcome: the restarted node holds the task and asks to run it again.
        guard self.isRunning else { return }
        self.runTaskRunner { $0.finished(id, outcome: outcome, now: self.now) }
    }
}

/// glibc's `malloc_trim` (from <malloc.h>, which Swift's Glibc module does not export): gives back free pages in every
/// arena, keeping `pad` bytes at the top of the main heap.
@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32

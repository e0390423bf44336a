import Foundation
import MeshControl
import MeshCore
import MeshStorage
import NIOCore

/// Clients long-polling for tasks to end, each until its wait runs out.
struct TaskWaiters {
    struct Waiter {
        let wake: () -> Void
        let expiry: Scheduled<Void>
    }

    private var byTask: [TaskID: [UInt64: Waiter]] = [:]
    private var lastToken: UInt64 = 0

    /// Adds a waiter; `expiry` is given the token that ``remove(_:token:)`` takes.
    mutating func add(_ id: TaskID, wake: @escaping () -> Void, expiry: (UInt64) -> Scheduled<Void>) {
        self.lastToken += 1
        let token = self.lastToken
        self.byTask[id, default: [:]][token] = Waiter(wake: wake, expiry: expiry(token))
    }

    mutating func remove(_ id: TaskID, token: UInt64) -> Waiter? {
        defer { if self.byTask[id]?.isEmpty == true { self.byTask[id] = nil } }
        return self.byTask[id]?.removeValue(forKey: token)
    }

    mutating func removeAll(_ id: TaskID) -> [Waiter] { Array(self.byTask.removeValue(forKey: id)?.values ?? [:].values) }

    var tasks: [TaskID] { Array(self.byTask.keys) }
}

/// The control API: routes each request to what answers it. Everything runs on the node's loop and answers through
/// a callback, so a request that waits (for its task to be stored, or to end) holds no thread and no Swift task.
extension MeshNode {
    typealias Respond = @Sendable (ControlResponse) -> Void

    /// The control servers call this on the node's loop.
    nonisolated var controlHandler: ControlServer.Handler {
        { request, respond in self.assumeIsolated { $0.answer(request, respond: respond) } }
    }

    /// The same answers, awaited (for callers in Swift concurrency: tests, embedding).
    func handleControl(_ request: ControlRequest) async -> ControlResponse {
        await withCheckedContinuation { continuation in
            self.answer(request) { continuation.resume(returning: $0) }
        }
    }

    func answer(_ request: ControlRequest, respond: @escaping Respond) {
        switch ControlRoute(request) {
        case .members: respond(.json(self.members()))
        case .node: respond(.json(self.nodeInfo()))
        case .limits: respond(.json(self.limitsReport()))
        case .leave:
            self.requestLeave()
            respond(.json(["leaving": true], status: 202))
        case .submit(let body, let wait):
            self.submitTask(body, wait: wait, respond: respond)
        case .listTasks(let state):
            respond(self.taskDocuments.list(self.submitter.allTasks.filter { state == nil || $0.state == state }))
        case .task(let id, let wait):
            guard self.submittedTask(id) != nil else { return respond(.error(404, "no task \(id) on this node")) }
            self.whenTaskEnds(id, within: wait ?? .zero) { respond(self.taskDocument(id)) }
        case .cancel(let id):
            guard self.submittedTask(id) != nil else { return respond(.error(404, "no task \(id) on this node")) }
            self.runSubmitter { $0.cancel(id, now: self.now) }
            respond(self.taskDocument(id))
        case .refused(let status, let message):
            respond(.error(status, message))
        }
    }

    // MARK: - Tasks

    /// Submits a task; with `wait`, answers once it ends (200) or when `wait` runs out (202), saving a round trip.
    private func submitTask(_ body: [UInt8], wait: Duration?, respond: @escaping Respond) {
        let request: ControlAPI.SubmitRequest
        do {
            request = try ControlAPI.SubmitRequest(parsing: body)
        } catch {
            return respond(.error(400, "the request is not a task: send JSON like {\"capability\": \"NAME\", \"input\": {…}}"))
        }
        guard Capability.isValidName(request.capability) else {
            return respond(.error(400, "capability name '\(request.capability)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -"))
        }
        let input: Data
        do {
            input = try JSONSerialization.data(withJSONObject: request.input.value, options: [.fragmentsAllowed, .sortedKeys])
        } catch {
            return respond(.error(400, "the input is not JSON"))
        }
        guard input.count <= self.settings.maximumTaskInput else {
            return respond(.error(413, "the input has \(input.count) bytes; this node accepts at most \(self.settings.maximumTaskInput)"))
        }
        let timeout = request.timeoutSeconds ?? 60
        guard timeout > 0, timeout <= 86_400 else { return respond(.error(400, "timeout_seconds must be between 0 and 86400")) }
        let attempts = request.maxAttempts ?? 5
        guard (1...100).contains(attempts) else { return respond(.error(400, "max_attempts must be between 1 and 100")) }
        guard self.commitGate.isStoreWritable else {
            return respond(.error(507, "this node cannot store new tasks now (\(self.taskStore?.path ?? "its task store") is not writable); try another node"))
        }
        guard self.commitGate.isAuditWritable else {
            return respond(.error(507, "this node cannot audit new work now (\(self.auditLog?.directory ?? "its audit log") is not writable); try another node"))
        }
        var generator = SystemRandomNumberGenerator()
        let id = TaskID(using: &generator)
        self.runSubmitter {
            $0.submit(
                id: id, capability: request.capability, input: Array(input),
                timeout: .milliseconds(Int64(timeout * 1000)), maximumAttempts: attempts, now: self.now)
        }
        // The client hears "accepted" only once the task is durable.
        self.whenStored(self.taskStore?.lastQueued ?? 0) { error in
            if let error {
                self.runSubmitter { $0.abandon(id) }
                return respond(.error(507, "the task could not be stored: \(error.description); nothing was submitted"))
            }
            guard let wait else { return respond(self.taskDocument(id, status: 202)) }
            self.whenTaskEnds(id, within: wait) {
                // Without `wait` the answer is "accepted" (202) even when a fast executor has already finished.
                let ended = self.submitter.task(id)?.state.isTerminal == true
                respond(self.taskDocument(id, status: ended ? 200 : 202))
            }
        }
    }

    private func taskDocument(_ id: TaskID, status: Int = 200) -> ControlResponse {
        guard let task = self.submittedTask(id) else { return .error(404, "no task \(id) on this node") }
        return self.taskDocuments.task(task, status: status)
    }

    /// A task submitted here: in memory, or (finished long enough ago to have left memory) in the store.
    private func submittedTask(_ id: TaskID) -> TaskSubmitter.SubmittedTask? {
        if let task = self.submitter.task(id) { return task }
        return try? self.taskStore?.submittedTask(id)
    }

    private var taskDocuments: TaskDocuments {
        TaskDocuments(date: self.wallClockDate(for:)) { id in
            id == self.identity.nodeID ? self.identity.name : (self.membership.member(id)?.record.name ?? id.short)
        }
    }

    // MARK: - Waiting

    /// Calls `then` once store change `sequence` is durable, with the store's error if it cannot be.
    private func whenStored(_ sequence: UInt64, then: @escaping (TaskStore.StoreError?) -> Void) {
        if !self.commitGate.wait(forStore: sequence, then) { then(nil) }
    }

    /// Calls `then` when the task ends or `timeout` passes, whichever is first (at once for a task that ended).
    private func whenTaskEnds(_ id: TaskID, within timeout: Duration, then: @escaping () -> Void) {
        guard let task = self.submitter.task(id), !task.state.isTerminal, timeout > .zero else { return then() }
        self.waiters.add(id, wake: then) { token in
            self.loop.scheduleTask(in: TimeAmount(timeout)) {
                self.assumeIsolated { node in node.waiters.remove(id, token: token)?.wake() } as Void
            }
        }
    }

    func wakeWaiters(for id: TaskID) {
        for waiter in self.waiters.removeAll(id) {
            waiter.expiry.cancel()
            waiter.wake()
        }
    }

    func wakeAllWaiters() {
        for id in self.waiters.tasks { self.wakeWaiters(for: id) }
    }
}

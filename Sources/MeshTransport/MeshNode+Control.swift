import Foundation
import MeshControl
import MeshCore
import MeshStorage
import NIOCore

/// Clients long-polling for tasks to end, each until its wait runs out.
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
        case .leave(let drain):
            self.requestLeave(drain: drain)
            respond(.json(["leaving": true], status: 202))
        case .submit(_, let wait):
            self.submitTask(request, wait: wait, respond: respond)
        case .health:
            let health = self.health()
            respond(.json(health, status: health.status == "ok" ? 200 : 503))
        case .executing:
            respond(.json(self.executingTasks()))
        case .listTasks(let filter):
            respond(self.taskDocuments.list(self.tasks(matching: filter)))
        case .task(let reference, let wait):
            switch self.resolve(reference) {
            case .found(let id): self.whenTaskEnds(id, within: wait ?? .zero) { respond(self.taskDocument(id)) }
            case .refused(let response): respond(response)
            }
        case .taskLog(let reference, let after, let wait):
            switch self.resolve(reference) {
            case .found(let id): self.whenTaskLogs(id, after: after, within: wait ?? .zero) { respond(.json(self.taskLog(id, after: after))) }
            case .refused(let response): respond(response)
            }
        case .taskEvents(let reference, let after, let wait, let stream):
            switch self.resolve(reference) {
            case .found(let id):
                if stream {
                    self.streamEvents(id, after: after, respond: respond)
                } else {
                    self.answerEvents(id, after: after, wait: wait ?? .zero, respond: respond)
                }
            case .refused(let response): respond(response)
            }
        case .reply(let reference, let body):
            switch self.resolve(reference) {
            case .found(let id): self.reply(to: id, body, respond: respond)
            case .refused(let response): respond(response)
            }
        case .cancel(let reference):
            switch self.resolve(reference) {
            case .found(let id):
                self.runSubmitter { $0.cancel(id, now: self.now) }
                respond(self.taskDocument(id))
            case .refused(let response): respond(response)
            }
        case .metrics:
            respond(self.metricsExposition())
        case .agentCard(let host):
            respond(self.agentCard(host: host))
        case .openAPIDocument:
            var response = ControlResponse(status: 200, body: PackageResources.openapi_yaml)
            response.contentType = "application/yaml"
            respond(response)
        case .a2a(let body, let version):
            self.answerA2A(body, version: version, respond: respond)
        case .stats:
            respond(.json(self.statsReport()))
        case .publish(let body):
            self.publishEvent(body, respond: respond)
        case .events(let topic, let after, let limit, let wait):
            self.answerEventHistory(topic: topic, after: after, limit: limit, wait: wait, respond: respond)
        case .submitWorkflow(_, let wait):
            self.submitWorkflow(request, wait: wait, respond: respond)
        case .listWorkflows:
            respond(self.listWorkflows())
        case .workflow(let reference, let version, let wait):
            self.answerWorkflow(reference, version: version, wait: wait, respond: respond)
        case .cancelWorkflow(let reference):
            self.cancelWorkflow(reference, respond: respond)
        case .artifact(let digest):
            self.answerArtifact(digest, respond: respond)
        case .uiAsset(let name):
            respond(self.browserAsset(name))
        case .uiSession(let body):
            respond(self.browserSignIn(body))
        case .uiLogin:
            respond(self.browserLoginLink())
        case .uiStream:
            respond(self.browserStream())
        case .audit(let peer, let last):
            self.answerAudit(peer: peer, last: last, respond: respond)
        case .refused(let status, let message):
            respond(.error(status, message))
        case .methodNotAllowed(let allow, let message):
            var response = ControlResponse.error(405, message)
            response.headers.append(("Allow", allow.joined(separator: ", ")))
            respond(response)
        }
    }

    // MARK: - Tasks

    /// Submissions larger than this keep their input as sent (see `submitTask`); smaller ones get it in canonical
    /// form (keys sorted), so an idempotency key sees the same task however its keys were ordered.
    static let largeSubmission = 256 * 1024

    /// Submits a task; with `wait`, answers once it ends (200) or when `wait` runs out (202), saving a round trip.
    private func submitTask(_ control: ControlRequest, wait: Duration?, respond: @escaping Respond) {
        let refusal = { (why: String) in
            ControlResponse.error(400, "the request is not a task (\(why)): send JSON like {\"capability\": \"NAME\", \"input\": {…}}")
        }
        let request: ControlAPI.SubmitRequest
        let input: [UInt8]
        if control.body.count > Self.largeSubmission {
            // A large input is taken as sent (whitespace removed): parsing it into values and writing it out again
            // cost more than everything else on its way. The rest of the request is parsed as usual.
            guard let members = JSONText.members(of: control.body), let member = members["input"] else {
                return respond(refusal("not a JSON object with an input"))
            }
            let range = member.range
            if member.isCompact {
                // Checked whole by `members`: taking it is one copy, not another two passes and a copy.
                input = Array(control.body[range])
            } else {
                guard let compact = JSONText.compacted(Array(control.body[range])) else { return respond(refusal("its input is not JSON")) }
                input = compact
            }
            do {
                request = try ControlAPI.SubmitRequest(
                    parsing: Array(control.body[..<range.lowerBound]) + Array("null".utf8) + Array(control.body[range.upperBound...]))
            } catch {
                return respond(refusal(error.description))
            }
        } else {
            do {
                request = try ControlAPI.SubmitRequest(parsing: control.body)
                input = Array(try JSONSerialization.data(withJSONObject: request.input.value, options: [.fragmentsAllowed, .sortedKeys]))
            } catch {
                return respond(refusal((error as? ControlAPI.SubmitError)?.description ?? "its input cannot be written as JSON"))
            }
        }
        guard Capability.isValidName(request.capability) else {
            return respond(.error(400, "capability name '\(request.capability)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -"))
        }
        guard input.count <= self.settings.maximumTaskInput else {
            return respond(.error(413, "the input has \(input.count) bytes; this node accepts at most \(self.settings.maximumTaskInput) "
                + "(run --max-input-bytes); send larger data as artifacts (submit --attach, POST /v1/artifacts)"))
        }
        let artifacts: [ArtifactRef]
        switch self.storedArtifacts(request.artifacts ?? []) {
        case .success(let found): artifacts = found
        case .failure(let refusal): return respond(.error(400, refusal.description))
        }
        let timeout = request.timeoutSeconds ?? 60
        guard timeout > 0, timeout <= 86_400 else { return respond(.error(400, "timeout_seconds must be between 0 and 86400")) }
        let attempts = request.maxAttempts ?? 5
        guard (1...100).contains(attempts) else { return respond(.error(400, "max_attempts must be between 1 and 100")) }
        if let context = request.context, !TaskOptions.isValidContext(context) {
            return respond(.error(400, "context must be 1 to 128 printable ASCII characters without spaces"))
        }
        if let seconds = request.inputTimeoutSeconds, !(seconds > 0 && seconds <= 7 * 86_400) {
            return respond(.error(400, "input_timeout_seconds must be more than 0 and at most 604800 (a week)"))
        }
        let given = control.headers["traceparent"] ?? request.traceparent
        if let given, TraceContext(given) == nil {
            return respond(.error(400, "traceparent must be a W3C trace context: 00-<32 hex>-<16 hex>-<2 hex>, lowercase, ids not all zero"))
        }
        var generator = SystemRandomNumberGenerator()
        let id = TaskID(using: &generator)
        let options = TaskOptions(
            context: request.context, inputTimeout: request.inputTimeoutSeconds.map { .milliseconds(Int64($0 * 1000)) },
            traceparent: given ?? TraceContext.new(for: id, using: &generator).description)
        let callback: WebhookTarget?
        switch self.webhookTarget(request.callback, events: request.callbackEvents) {
        case .success(let target): callback = target
        case .failure(let refusal): return respond(.error(400, refusal.description))
        }
        let idempotencyKey: String?, digest: String
        switch self.checkIdempotency(control, canonical: [
            Array(request.capability.utf8), input, Array("\(timeout) \(attempts) \(request.waitForCapability == true)".utf8),
            Array((request.callback ?? "").utf8), Array((request.callbackEvents ?? "").utf8),
            Array("\(request.context ?? "") \(request.inputTimeoutSeconds ?? 0)".utf8),
            artifacts.flatMap { $0.digest + Array($0.name.utf8) },
        ], kind: "task") {
        case .proceed(let key, let hash): (idempotencyKey, digest) = (key, hash)
        case .refused(let response): return respond(response)
        case .repeated(let id):
            // The original, as a repeat of the same call answers it: 200, not 202.
            return self.whenTaskEnds(id, within: wait ?? .zero) { respond(self.taskDocument(id, status: 200)) }
        }
        let admission = TaskAdmission(
            id: id, capability: request.capability, payload: TaskPayload(json: input, artifacts: artifacts).encoded(),
            timeout: .milliseconds(Int64(timeout * 1000)), maximumAttempts: attempts, options: options,
            waitForCapability: request.waitForCapability == true)
        if let idempotencyKey { self.rememberIdempotencyKey(idempotencyKey, digest: digest, target: id, kind: "task") }
        self.admit(admission) { admitted in
            if case .failure(let refusal) = admitted {
                // Nothing was submitted, so the key is free again: a retry must submit, not find a task that never was.
                if let idempotencyKey { self.forgetIdempotencyKey(idempotencyKey) }
                return respond(.error(refusal.status, refusal.message))
            }
            if let callback { self.registerWebhook(callback, for: .task(id)) }
            self.touchArtifacts(artifacts)
            guard let wait else { return respond(self.taskDocument(id, status: 202)) }
            self.whenTaskEnds(id, within: wait) {
                // Without `wait` the answer is "accepted" (202) even when a fast executor has already finished.
                let ended = self.submitter.task(id)?.state.isTerminal == true
                respond(self.taskDocument(id, status: ended ? 200 : 202))
            }
        }
    }

    /// `POST /v1/tasks/ID/input`: answered once the answer is stored (it is sent to the executor then).
    private func reply(to id: TaskID, _ body: [UInt8], respond: @escaping Respond) {
        guard body.count <= TaskMessage.maximumExchange,
            let value = try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed]),
            let answer = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys])
        else { return respond(.error(400, "the answer must be JSON of at most \(TaskMessage.maximumExchange) bytes")) }
        var refusal: TaskSubmitter.ReplyRefusal?
        self.runSubmitter { submitter in
            switch submitter.reply(id, Array(answer), now: self.now) {
            case .success(let directives): return directives
            case .failure(let why):
                refusal = why
                return []
            }
        }
        if case .notWaiting(let state)? = refusal {
            return respond(.error(409, "task \(id) is \(state.rawValue), not waiting for an answer"))
        }
        self.recordLocalEvent(id, Array(#"{"agentmesh":"input","reply":"#.utf8) + Array(answer) + Array("}".utf8))
        self.whenStored(self.taskStore?.lastQueued ?? 0) { error in
            if let error { return respond(.error(507, "the answer could not be stored: \(error.description)")) }
            respond(self.taskDocument(id))
        }
    }

    private enum Resolution {
        case found(TaskID)
        case refused(ControlResponse)
    }

    /// A task id, or the one task whose id starts with a prefix (in memory or in the store).
    private func resolve(_ reference: TaskReference) -> Resolution {
        switch reference {
        case .id(let id):
            return self.submittedTask(id) != nil ? .found(id) : .refused(.error(404, "no task \(id) on this node"))
        case .prefix(let prefix):
            var matches = Set(self.submitter.allTasks.lazy.map(\.id).filter { $0.description.hasPrefix(prefix) }.prefix(10))
            matches.formUnion((try? self.taskStore?.submittedTaskIDs(prefix: prefix, limit: 10)) ?? [])
            switch matches.count {
            case 0: return .refused(.error(404, "no task on this node has an id starting with \(prefix)"))
            case 1: return matches.first.map(Resolution.found) ?? .refused(.error(404, "no task \(prefix) on this node"))
            default:
                let some = matches.map(\.description).sorted().prefix(3).joined(separator: ", ")
                return .refused(.error(409, "\(matches.count >= 10 ? "10 or more" : "\(matches.count)") tasks have ids starting with \(prefix) (\(some)…); give more digits"))
            }
        }
    }

    /// Newest first: the tasks in memory (every unfinished one and the newest finished ones).
    func tasks(matching filter: TaskFilter) -> [TaskSubmitter.SubmittedTask] {
        let earliest = filter.since.map { self.now - $0 }
        return Array(self.submitter.allTasks.reversed().lazy.filter { task in
            (filter.state == nil || task.state == filter.state)
                && (filter.capability == nil || task.capability == filter.capability)
                && (filter.context == nil || task.options.context == filter.context)
                && (earliest == nil || task.submittedAt >= earliest!)
        }.prefix(filter.limit))
    }

    private func executingTasks() -> ControlAPI.ExecutingTasks {
        ControlAPI.ExecutingTasks(tasks: self.runner.allTasks.map { task in
            ControlAPI.ExecutingTask(
                id: task.id.description, capability: task.capability, submitter: self.memberName(task.submitter),
                attempt: Int(task.epoch), state: task.isHeld ? "held" : task.outcome == nil ? "running" : "reported",
                deadline: self.wallClockDate(for: task.deadline))
        })
    }

    private func taskLog(_ id: TaskID, after: Int) -> ControlAPI.TaskLog {
        let log = self.taskPlane.followers.logs.log(id) ?? TaskLog()
        let (bytes, dropped) = log.read(after: after)
        return ControlAPI.TaskLog(
            id: id.description, from: min(after, log.total) + dropped, to: log.total, dropped: dropped,
            text: String(decoding: bytes, as: UTF8.self), finished: self.submittedTask(id)?.state.isTerminal ?? true)
    }

    /// Calls `then` once the log has bytes after `after`, the task has ended, or `timeout` passed.
    private func whenTaskLogs(_ id: TaskID, after: Int, within timeout: Duration, then: @escaping () -> Void) {
        guard let task = self.submitter.task(id), !task.state.isTerminal, timeout > .zero,
            (self.taskPlane.followers.logs.log(id)?.total ?? 0) <= after
        else { return then() }
        self.wait(.taskLog, for: id, timeout: timeout, wake: then)
    }

    private func health() -> ControlAPI.Health {
        let serving = self.isServing
        let store = self.taskPlane.commitGate.isStoreWritable ? "ok" : "not writable"
        let audit = self.taskPlane.commitGate.isAuditWritable ? "ok" : "not writable"
        let alive = 1 + self.peers.membership.view.count { $0.status == .alive }  // this node and the others
        return ControlAPI.Health(
            status: serving && store == "ok" && audit == "ok" ? "ok" : serving ? "degraded" : "stopping",
            store: store, audit: audit, members: alive)
    }

    private func taskDocument(_ id: TaskID, status: Int = 200) -> ControlResponse {
        guard let task = self.submittedTask(id) else { return .error(404, "no task \(id) on this node") }
        return self.taskDocuments.task(task, status: status)
    }

    /// The task document's JSON, if the task is known here.
    func taskDocumentBytes(_ id: TaskID) -> [UInt8]? {
        self.submittedTask(id).map { self.taskDocuments.task($0).body }
    }

    func submittedTaskState(_ id: TaskID) -> TaskState? { self.submittedTask(id)?.state }

    /// A task submitted here: in memory, or (finished long enough ago to have left memory) in the store.
    func submittedTask(_ id: TaskID) -> TaskSubmitter.SubmittedTask? {
        if let task = self.submitter.task(id) { return task }
        return try? self.taskStore?.submittedTask(id)
    }

    var taskDocuments: TaskDocuments {
        TaskDocuments(date: self.wallClockDate(for:), name: self.displayName, waiting: self.waitingSentence)
    }

    /// A member's name as task documents show it.
    func displayName(_ id: NodeID) -> String {
        id == self.identity.nodeID ? self.identity.name : (self.peers.membership.member(id)?.record.name ?? id.short)
    }

    /// Why a task in `submitted` has not been offered, as `task` and `tasks` show it.
    func waitingSentence(_ task: TaskSubmitter.SubmittedTask) -> String? {
        guard task.state == .submitted, let waiting = task.waiting else { return nil }
        let next = task.nextOfferAt.map { TaskSubmitter.seconds(max(.zero, $0 - self.now)) } ?? "a moment"
        switch waiting {
        case .forMember:
            return "no live member offers \(task.capability)"
        case .forSlot:
            let busy = self.submitter.slots(for: task.capability).map { "\($0.open)/\($0.capacity) busy on \(self.displayName($0.peer))" }
            return "waiting for a free slot: " + busy.joined(separator: ", ")
        case .forRetry:
            return "retrying in \(next) after attempt \(task.attempts.count) " + (task.error.map { "failed: \($0)" } ?? "went unanswered")
        case .forNewRound:
            return "every member declined it; trying again in \(next)"
        }
    }

    // MARK: - Waiting

    /// Calls `then` once store change `sequence` is durable, with the store's error if it cannot be.
    func whenStored(_ sequence: UInt64, then: @escaping (TaskStore.StoreError?) -> Void) {
        if !self.taskPlane.commitGate.wait(forStore: sequence, then) { then(nil) }
    }

    /// Calls `then` when the task ends or `timeout` passes, whichever is first (at once for a task that ended).
    private func whenTaskEnds(_ id: TaskID, within timeout: Duration, then: @escaping () -> Void) {
        guard let task = self.submitter.task(id), !task.state.isTerminal, timeout > .zero else { return then() }
        self.wait(.taskEnd, for: id, timeout: timeout, wake: then)
    }

    func wakeWaiters(for id: TaskID) {
        self.finishEventStreams(id)
        self.wake(.taskLog, id)
        self.wake(.taskEnd, id)
        // A long poll of its progress answers now: no more will come.
        self.wake(.taskProgress, id)
    }

    /// The node is stopping: event streams end, and every long poll answers with what it has now.
    func wakeAllWaiters() {
        for id in Array(self.taskPlane.followers.streams.keys) { self.finishEventStreams(id) }
        self.wakeEveryone()
    }
}

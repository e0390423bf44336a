import Foundation
import Logging
import MeshControl
import MeshCore
import MeshStorage
import MeshWorkflows
import NIOCore

/// Workflows owned by this node: each run is a ``WorkflowRun`` kept in memory and stored whole (a `workflow`
/// document) after every change; its steps are ordinary tasks submitted here, whose ends drive the run.
extension MeshNode {
    static let workflowDocument = "workflow"
    /// One item of a run, stored apart from it (see ``WorkflowRun/storedHeader()``).
    static let workflowItemDocument = "workflow-item"
    /// A run's definition and input, stored once when it starts.
    static let workflowStartDocument = "workflow-start"
    /// Finished runs kept (in memory and in the store); the oldest beyond this are forgotten.
    static let finishedWorkflowsKept = 1_000

    /// `POST /v1/workflows[?wait=S]`
    func submitWorkflow(_ control: ControlRequest, wait: Duration?, respond: @escaping Respond) {
        let request: ControlAPI.WorkflowRequest
        do {
            request = try ControlAPI.decoder().decode(ControlAPI.WorkflowRequest.self, from: Data(control.body))
        } catch {
            return respond(.error(400, "the request is not a workflow run: send JSON like {\"workflow\": {\"name\": …, \"steps\": […]}, \"input\": {…}}"))
        }
        let definition: WorkflowDefinition
        do {
            definition = try WorkflowDefinition(parsing: JSON(foundation: request.workflow.value))
        } catch {
            return respond(.error(400, "the workflow is not valid: \(error.description)"))
        }
        let callback: WebhookTarget?
        switch self.webhookTarget(request.callback ?? definition.callback, events: request.callbackEvents) {
        case .success(let target): callback = target
        case .failure(let refusal): return respond(.error(400, refusal.description))
        }
        let idempotencyKey: String?, digest: String
        let input = request.input.map { JSON(foundation: $0.value) }
        switch self.checkIdempotency(control, canonical: [
            JSON(foundation: request.workflow.value).bytes, (input ?? .null).bytes, Array((request.callback ?? "").utf8),
            Array((request.callbackEvents ?? "").utf8),
        ], kind: "workflow") {
        case .proceed(let key, let hash): (idempotencyKey, digest) = (key, hash)
        case .refused(let response): return respond(response)
        case .repeated(let target):
            let id = WorkflowID(target)
            return self.whenWorkflowChanges(id, after: nil, within: wait ?? .zero) { respond(self.workflowResponse(id, status: 200)) }
        }
        guard self.taskPlane.commitGate.isStoreWritable else {
            return respond(.error(507, "this node cannot store new workflows now (\(self.taskStore?.path ?? "its task store") is not writable); try another node"))
        }
        let id = self.startWorkflow(definition, input: input, callback: callback)
        if let idempotencyKey { self.rememberIdempotencyKey(idempotencyKey, digest: digest, target: id, kind: "workflow") }
        self.whenWorkflowStored(id) { error in
            if let error { return respond(.error(507, "the workflow could not be stored: \(error)")) }
            guard let wait else { return respond(self.workflowResponse(id, status: 202)) }
            self.whenWorkflowChanges(id, after: nil, within: wait) {
                respond(self.workflowResponse(id, status: self.workflowRuns.runs[id]?.state.isTerminal == true ? 200 : 202))
            }
        }
    }

    /// Starts a run (a client's, or one an event started); returns its id.
    @discardableResult
    func startWorkflow(_ definition: WorkflowDefinition, input: JSON?, callback: WebhookTarget?) -> WorkflowID {
        var generator = SystemRandomNumberGenerator()
        let id = WorkflowID(using: &generator)
        var run = WorkflowRun(id: id, definition: definition, input: input, time: AuditLog.wallClockMilliseconds())
        let directives = run.start(time: AuditLog.wallClockMilliseconds())
        self.workflowRuns.runs[id] = run
        if let start = try? JSONEncoder().encode(run.storedStart) {
            self.taskStore?.enqueue([.document(kind: Self.workflowStartDocument, id: .init(id), body: Array(start))])
        }
        if let callback { self.registerWebhook(callback, for: .workflow(id)) }
        self.context.logger.info("workflow started", metadata: ["workflow": "\(id)", "name": "\(definition.name)"])
        self.performWorkflow(id, directives)
        return id
    }

    /// Submits and cancels what the run asked for, stores it, and tells whoever waits.
    private func performWorkflow(_ id: WorkflowID, _ directives: [WorkflowRun.Directive]) {
        for directive in directives {
            switch directive {
            case .submit(let task):
                // A task that ended at once (found in the store) may have moved the run on past this one.
                guard self.workflowRuns.runs[id]?.isWaiting(for: task.id) == true else { continue }
                self.workflowRuns.runOfTask[task.id] = id
                self.submitWorkflowTask(task, afterRestart: false)
            case .cancel(let task):
                self.runSubmitter { $0.cancel(task, now: self.now) }
            }
        }
        guard let changedItems = self.workflowRuns.runs[id]?.takeChangedItems(), let run = self.workflowRuns.runs[id] else { return }
        self.storeWorkflow(run, changedItems: changedItems)
        self.webhookStateChanged(.workflow(id), state: run.state.rawValue, isFinal: run.state.isTerminal) {
            self.workflowDocumentBytes(id)
        }
        self.wake(.workflow, id)
        if run.state.isTerminal {
            for task in run.steps.values.flatMap({ ($0.items + $0.compensations.values).compactMap(\.task?.id) }) {
                self.workflowRuns.runOfTask[task] = nil
            }
            self.context.logger.info("workflow ended", metadata: ["workflow": "\(id)", "state": "\(run.state.rawValue)"])
            self.telemetry.tracer?.export(Span(
                traceID: id.description, spanID: TraceContext.spanID(of: id), parentID: nil, name: "workflow \(run.definition.name)",
                kind: .internal, start: Date(timeIntervalSince1970: Double(run.submittedAt) / 1000),
                end: Date(timeIntervalSince1970: Double(run.finishedAt ?? run.submittedAt) / 1000),
                attributes: [("agentmesh.workflow.id", id.description), ("agentmesh.outcome", run.state.rawValue)],
                error: run.state == .completed ? nil : (run.error ?? run.state.rawValue)))
            self.forgetOldWorkflows()
            self.subscribedWorkflowEnded(id)
        }
    }

    /// A step's task: submitted once (its id is derived, so a repeat is the same task); after a restart, one the
    /// store still holds (perhaps finished, and no longer in memory) is not submitted again.
    private func submitWorkflowTask(_ task: WorkflowTask, afterRestart: Bool) {
        let stored = afterRestart ? (try? self.taskStore?.submittedTask(task.id)) ?? nil : nil
        if let known = self.submitter.task(task.id) ?? stored {
            if known.state.isTerminal { self.workflowTaskEnded(known) }
            return
        }
        // Every step of a run is in the run's trace: the trace id is the workflow id, the run's span their parent.
        let trace = self.workflowRuns.runOfTask[task.id].map { TraceContext(traceID: $0.description, parentID: TraceContext.spanID(of: $0)) }
        // Through the one way in, like a client's task: a capability no live member offers fails the step at once
        // (unless it says wait_for_capability), and so does a task the node cannot take (its store or audit log not
        // writable), with why.
        var admission = TaskAdmission(
            id: task.id, capability: task.capability, payload: task.input, timeout: .milliseconds(Int64(task.timeoutSeconds * 1000)),
            maximumAttempts: task.attempts, options: TaskOptions(traceparent: trace?.description),
            waitForCapability: task.waitForCapability)
        admission.howToWait = "give the step wait_for_capability: true to wait for one"
        self.admit(admission) { result in
            guard case .failure(let refusal) = result else { return }
            // Not now: the refusal may come while the run is still handing out this change's directives.
            self.context.loop.execute {
                self.assumeIsolated { node in node.workflowTaskRefused(task.id, refusal.message) }
            }
        }
    }

    private func workflowTaskRefused(_ task: TaskID, _ reason: String) {
        guard let id = self.workflowRuns.runOfTask.removeValue(forKey: task) else { return }
        let directives = self.workflowRuns.runs[id]?.taskEnded(task, .failed(reason), time: AuditLog.wallClockMilliseconds()) ?? []
        self.performWorkflow(id, directives)
    }

    /// A task ended: if a workflow waits for it, the run moves on.
    func workflowTaskEnded(_ task: TaskSubmitter.SubmittedTask) {
        guard let id = self.workflowRuns.runOfTask[task.id], self.workflowRuns.runs[id] != nil else { return }
        let outcome: WorkflowTaskOutcome
        switch task.state {
        case .completed:
            if case .success(let output)? = task.outcome { outcome = .completed(Array(TaskPayload.json(of: output))) } else { outcome = .completed(Array("null".utf8)) }
        case .canceled: outcome = .canceled
        default: outcome = .failed(task.error ?? "\(task.state.rawValue)")
        }
        self.workflowRuns.runOfTask[task.id] = nil
        // In place: a copy of the run would make the machine copy a map's items on every change.
        let directives = self.workflowRuns.runs[id]?.taskEnded(task.id, outcome, time: AuditLog.wallClockMilliseconds()) ?? []
        self.performWorkflow(id, directives)
    }

    /// The run's header and the items that changed: what changed, not the whole run.
    private func storeWorkflow(_ run: WorkflowRun, changedItems: [WorkflowRun.ItemKey]) {
        let encoder = JSONEncoder()
        var changes: [TaskStore.Change] = []
        do {
            for key in changedItems {
                guard let item = run.storedItem(key) else { continue }
                changes.append(.document(
                    kind: Self.workflowItemDocument, id: .init(WorkflowRun.documentID(of: key, in: run.id)), body: Array(try encoder.encode(item))))
            }
            changes.append(.document(kind: Self.workflowDocument, id: .init(run.id), body: Array(try encoder.encode(run.storedHeader()))))
        } catch {
            return self.context.logger.error("a workflow run cannot be encoded to be stored", metadata: ["workflow": "\(run.id)", "error": "\(error)"])
        }
        self.taskStore?.enqueue(changes)
    }

    private func forgetOldWorkflows() {
        let finished = self.workflowRuns.runs.values.filter(\.state.isTerminal).sorted { ($0.finishedAt ?? 0) < ($1.finishedAt ?? 0) }
        for run in finished.dropLast(Self.finishedWorkflowsKept) {
            self.workflowRuns.runs[run.id] = nil
            self.taskStore?.enqueue([
                .forgetDocument(kind: Self.workflowDocument, id: .init(run.id)), .forgetDocument(kind: Self.workflowStartDocument, id: .init(run.id)),
            ] + run.itemKeys.map {
                .forgetDocument(kind: Self.workflowItemDocument, id: .init(WorkflowRun.documentID(of: $0, in: run.id)))
            })
        }
    }

    /// After a restart: every stored run comes back; an unfinished one re-attaches to its tasks (the store still
    /// holds them), takes the outcome of those that ended while the node was down, and re-submits any whose
    /// submission was lost with the crash.
    func restoreWorkflows() {
        guard let store = self.taskStore else { return }
        let documents: [(id: TaskStore.DocumentID, body: [UInt8])]
        var itemsByRun: [WorkflowID: [WorkflowRun.StoredItem]] = [:]
        var starts: [TaskStore.DocumentID: [UInt8]] = [:]
        do {
            documents = try store.documents(kind: Self.workflowDocument)
            for document in try store.documents(kind: Self.workflowStartDocument) { starts[document.id] = document.body }
        } catch {
            return self.restoreProblem("cannot read the stored workflows: \(error)")
        }
        for (_, item) in self.restoredDocuments(Self.workflowItemDocument, as: WorkflowRun.StoredItem.self, what: "workflow item") {
            itemsByRun[item.run, default: []].append(item)
        }
        var unfinished: [WorkflowID] = []
        for document in documents {
            let decoder = JSONDecoder()
            // A run stored whole (before runs were stored in parts) has no start document.
            let restored = Result {
                guard let start = starts[document.id] else { return try decoder.decode(WorkflowRun.self, from: Data(document.body)) }
                return WorkflowRun.restored(
                    start: try decoder.decode(WorkflowRun.StoredStart.self, from: Data(start)),
                    header: try decoder.decode(WorkflowRun.StoredHeader.self, from: Data(document.body)),
                    items: itemsByRun[.init(document.id)] ?? [])
            }
            let run: WorkflowRun
            switch restored {
            case .success(let restored): run = restored
            case .failure(let error):
                self.restoreProblem("a stored workflow (\(document.id)) cannot be read; it was skipped: \(error)")
                continue
            }
            self.workflowRuns.runs[run.id] = run
            if !run.state.isTerminal { unfinished.append(run.id) }
        }
        if !unfinished.isEmpty { self.context.logger.info("resuming workflows", metadata: ["count": "\(unfinished.count)"]) }
        for id in unfinished {
            for task in self.workflowRuns.runs[id]?.tasksInFlight ?? [] where self.workflowRuns.runs[id]?.isWaiting(for: task.id) == true {
                self.workflowRuns.runOfTask[task.id] = id
                self.submitWorkflowTask(task, afterRestart: true)
            }
        }
    }

    // MARK: - Control API

    func listWorkflows() -> ControlResponse {
        let runs = self.workflowRuns.runs.values.sorted { $0.submittedAt > $1.submittedAt }.prefix(1_000)
        return .json(ControlAPI.WorkflowList(workflows: runs.map(self.workflowInfo)))
    }

    func answerWorkflow(_ reference: TaskReference, version: Int?, wait: Duration?, respond: @escaping Respond) {
        guard let id = self.resolveWorkflow(reference, respond: respond) else { return }
        self.whenWorkflowChanges(id, after: version, within: wait ?? .zero) { respond(self.workflowResponse(id)) }
    }

    func cancelWorkflow(_ reference: TaskReference, respond: @escaping Respond) {
        guard let id = self.resolveWorkflow(reference, respond: respond), var run = self.workflowRuns.runs[id] else { return }
        let directives = run.cancel(time: AuditLog.wallClockMilliseconds())
        self.workflowRuns.runs[id] = run
        self.performWorkflow(id, directives)
        respond(self.workflowResponse(id))
    }

    private func resolveWorkflow(_ reference: TaskReference, respond: Respond) -> WorkflowID? {
        let matches: [WorkflowID]
        switch reference {
        case .id(let given): matches = self.workflowRuns.runs[WorkflowID(given)] == nil ? [] : [WorkflowID(given)]
        case .prefix(let prefix): matches = self.workflowRuns.runs.keys.filter { $0.description.hasPrefix(prefix) }
        }
        switch matches.count {
        case 1: return matches[0]
        case 0: respond(.error(404, "no workflow on this node has the id \(reference.text)")); return nil
        default: respond(.error(409, "\(matches.count) workflows have ids starting with \(reference.text); give more digits")); return nil
        }
    }

    /// Calls `then` once the run's version passes `version` (without one: once the run ends), or `timeout` passes.
    private func whenWorkflowChanges(_ id: WorkflowID, after version: Int?, within timeout: Duration, then: @escaping () -> Void) {
        guard let run = self.workflowRuns.runs[id], !run.state.isTerminal, timeout > .zero, version.map({ run.version <= $0 }) ?? true
        else { return then() }
        let deadline = self.now + timeout
        // Woken by every change: one that waits for the end waits on until then.
        let wake = { self.whenWorkflowChanges(id, after: version, within: version == nil ? deadline - self.now : .zero, then: then) }
        self.wait(.workflow, for: id, timeout: timeout, wake: wake)
    }

    private func whenWorkflowStored(_ id: WorkflowID, then: @escaping (String?) -> Void) {
        let sequence = self.taskStore?.lastQueued ?? 0
        if !self.taskPlane.commitGate.wait(forStore: sequence, { error in then(error?.description) }) { then(nil) }
    }

    func workflowResponse(_ id: WorkflowID, status: Int = 200) -> ControlResponse {
        guard let run = self.workflowRuns.runs[id] else { return .error(404, "no workflow \(id) on this node") }
        return .json(self.workflowInfo(run), status: status)
    }

    func workflowDocumentBytes(_ id: WorkflowID) -> [UInt8]? {
        guard let run = self.workflowRuns.runs[id] else { return nil }
        return ControlResponse.json(self.workflowInfo(run)).body
    }

    private func workflowInfo(_ run: WorkflowRun) -> ControlAPI.WorkflowInfo {
        func value(_ json: JSON?) -> ControlAPI.JSONValue? {
            json.flatMap { try? JSONSerialization.jsonObject(with: Data($0.bytes), options: [.fragmentsAllowed]) }.map(ControlAPI.JSONValue.init)
        }
        func date(_ milliseconds: Int64?) -> Date? { milliseconds.map { Date(timeIntervalSince1970: Double($0) / 1000) } }
        let now = AuditLog.wallClockMilliseconds()
        func seconds(_ start: Int64?, _ end: Int64?) -> Double? { start.map { Double((end ?? now) - $0) / 1000 } }
        let steps = run.definition.steps.map { step -> ControlAPI.WorkflowStep in
            let state = run.steps[step.name] ?? WorkflowRun.StepRun()
            let undos = state.compensations.sorted { $0.key < $1.key }.map(\.value)
            var compensation: String?
            if undos.contains(where: { $0.state == .failed }) {
                compensation = "compensation failed: " + (undos.first { $0.state == .failed }?.error ?? "no reason given")
            } else if undos.contains(where: { $0.state == .running }) {
                compensation = "compensating"
            } else if !undos.isEmpty {
                compensation = "compensated"
            }
            return ControlAPI.WorkflowStep(
                name: step.name, capability: step.capability, state: state.state.rawValue, after: step.after,
                items: state.items.count, completed: state.items.count { $0.state == .completed },
                failed: state.items.count { $0.state == .failed }, running: state.items.count { $0.state == .running },
                isMap: step.map != nil, tasks: state.items.compactMap { $0.task?.id.description }, error: state.error,
                output: value(state.output), startedAt: date(state.startedAt), endedAt: date(state.endedAt),
                seconds: seconds(state.startedAt, state.endedAt),
                compensation: compensation, compensationTasks: undos.compactMap { $0.task?.id.description },
                waiting: state.items.lazy.filter { $0.state == .running }
                    .compactMap { $0.task.flatMap { self.submitter.task($0.id) }.flatMap(self.waitingSentence) }.first)
        }
        return ControlAPI.WorkflowInfo(
            id: run.id.description, name: run.definition.name, state: run.state.rawValue, version: run.version,
            submittedAt: date(run.submittedAt)!, finishedAt: date(run.finishedAt),
            seconds: seconds(run.submittedAt, run.finishedAt) ?? 0, input: value(run.input) ?? ControlAPI.JSONValue(NSNull()),
            output: value(run.output), error: run.error,
            compensationFailed: run.compensationFailures.isEmpty ? nil : run.compensationFailures, steps: steps)
    }
}

extension TaskReference {
    var text: String {
        switch self {
        case .id(let id): return id.description
        case .prefix(let prefix): return prefix
        }
    }
}

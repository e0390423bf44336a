import Foundation
import MeshControl
import MeshCore
import MeshStorage
import NIOCore

/// An A2A server facade on the control listener (A2A 1.0, JSON-RPC binding): the agent card at
/// `/.well-known/agent-card.json` lists this mesh's capabilities as skills, and `POST /a2a` takes `SendMessage`,
/// `SendStreamingMessage` (server-sent events), `SubscribeToTask`, `GetTask`, `ListTasks` and `CancelTask`, decoded
/// into the typed requests of ``A2A``. A message becomes a task of the skill it names (`metadata.skill`; the only
/// one if the mesh offers one), its data part (or its text) the input, its `contextId` the conversation; a message
/// with the `taskId` of a task in `input-required` answers its question. Every task enters through ``admit(_:then:)``.
extension MeshNode {
    static let a2aVersion = "1.0"
    /// How deep a JSON value A2A takes in and shows as data: deeper ones are refused coming in and shown as their
    /// JSON text going out (a task submitted over the control API may hold one).
    static let a2aMaximumDepth = 32

    /// The card, pointing its JSON-RPC interface at the address the client reached (the request's Host).
    func agentCard(host: String?) -> ControlResponse {
        var offered: [String: Int] = [:]
        for capability in self.taskCandidates().flatMap(\.capabilities) { offered[capability.key, default: 0] += capability.value }
        let card = A2A.AgentCard(
            name: "AgentMesh node \(self.identity.name)",
            description: "Every agent on this brokerless AgentMesh mesh, reached through one node; tasks run on any capable member.",
            version: AgentMeshVersion.current,
            supportedInterfaces: [.init(url: "http://\(host ?? "127.0.0.1")/a2a", protocolBinding: "JSONRPC", protocolVersion: Self.a2aVersion)],
            skills: offered.keys.sorted().map { name in
                A2A.AgentSkill(
                    id: name, name: name,
                    description: "The '\(name)' agents of this AgentMesh mesh (\(offered[name]!) at once); a data part is the task's input, text becomes {\"text\": …}.")
            })
        return ControlResponse(status: 200, body: A2A.encoded(card) + [0x0A])
    }

    /// `POST /a2a`: one JSON-RPC 2.0 request. The envelope is checked as JSON-RPC 2.0 says (a request object with
    /// `"jsonrpc": "2.0"`, a string method, an id that is a string, a number or null; an invalid one gets -32600
    /// with a null id, JSON that does not parse -32700), a notification (no id) gets no answer, and an
    /// `A2A-Version` other than 1.x is refused with VersionNotSupportedError (-32009).
    func answerA2A(_ body: [UInt8], version: String?, respond: @escaping Respond) {
        // Decoding and encoding nested JSON as Codable trees costs far more than linear time in the depth (3 KB
        // nested 500 deep held the loop for 1.8 s): a request nested deeper than the A2A limit is refused unread.
        if !JSONText.isValue(body, maximumDepth: Self.a2aMaximumDepth + 8), JSONText.isValue(body, maximumDepth: 512) {
            return respond(Self.rpcError(.null, -32602, "invalid params: the request nests JSON more than \(Self.a2aMaximumDepth) levels deep"))
        }
        let request: A2A.Request
        do {
            request = try JSONDecoder().decode(A2A.Request.self, from: Data(body))
        } catch DecodingError.dataCorrupted(let context) where context.codingPath.isEmpty {
            return respond(Self.rpcError(.null, -32700, "parse error: the body is not JSON"))
        } catch {
            return respond(Self.rpcError(.null, -32600, "invalid request: send one JSON-RPC 2.0 request object (batches are not served)"))
        }
        if let invalid = request.invalid {
            return respond(Self.rpcError(request.id ?? .null, -32600, "invalid request: \(invalid)"))
        }
        // A notification: JSON-RPC sends no response, whatever the method did.
        let answer = respond
        let isNotification = request.id == nil
        let respond: Respond = { response in answer(isNotification ? ControlResponse(status: 204, body: []) : response) }
        let id = request.id ?? .null
        if let version, !version.isEmpty, version != "1" && !version.hasPrefix("1.") {
            return respond(Self.rpcError(id, -32009, "version not supported: A2A-Version \(version.prefix(32)); this node serves \(Self.a2aVersion)"))
        }
        if let badParams = request.badParams {
            return respond(Self.rpcError(id, -32602, "invalid params: \(badParams)"))
        }
        switch request.call {
        case .sendMessage(let send, let streaming):
            let historyLength = send.configuration?.historyLength
            guard historyLength.map({ $0 >= 0 }) ?? true else { return respond(Self.badHistoryLength(id)) }
            let wait: Duration = send.configuration?.returnImmediately == true ? .zero : .seconds(300)
            // Answered only once the task is durable, like every way in (see `admit`).
            self.a2aStartTask(send) { started in
                switch started {
                case .failure(let error): respond(Self.rpcError(id, error.code, error.message))
                case .success(let taskID):
                    if streaming { return self.a2aStream(taskID, id: id, respond: respond) }
                    self.whenTaskAsksOrEnds(taskID, until: self.now + wait) {
                        guard let task = self.a2aTask(taskID, historyLength: historyLength) else {
                            return respond(Self.rpcError(id, -32001, "task not found"))
                        }
                        respond(Self.rpcResult(id, A2A.StreamResponse(task: task)))
                    }
                }
            }
        case .getTask(let query):
            guard query.historyLength.map({ $0 >= 0 }) ?? true else { return respond(Self.badHistoryLength(id)) }
            guard let task = TaskID(hex: query.id).flatMap({ self.a2aTask($0, historyLength: query.historyLength) }) else {
                return respond(Self.rpcError(id, -32001, "task not found"))
            }
            respond(Self.rpcResult(id, task))
        case .cancelTask(let query):
            guard let taskID = TaskID(hex: query.id), let state = self.submittedTaskState(taskID) else {
                return respond(Self.rpcError(id, -32001, "task not found"))
            }
            if state.isTerminal {
                return respond(Self.rpcError(id, -32002, "task not cancelable: it is \(state.rawValue)"))
            }
            self.runSubmitter { $0.cancel(taskID, now: self.now) }
            respond(Self.rpcResult(id, self.a2aTask(taskID, historyLength: query.historyLength)))
        case .subscribeToTask(let query):
            // A stream dropped mid-task resumes here: the task as it is now first, then its updates to the end. A
            // finished task has none (UnsupportedOperationError, as the spec says for a terminal task).
            guard let taskID = TaskID(hex: query.id), let state = self.submittedTaskState(taskID) else {
                return respond(Self.rpcError(id, -32001, "task not found"))
            }
            if state.isTerminal {
                return respond(Self.rpcError(id, -32004, "unsupported operation: task \(taskID) is \(state.rawValue), so there is nothing to subscribe to"))
            }
            self.a2aStream(taskID, id: id, respond: respond)
        case .listTasks(let list):
            switch self.a2aListTasks(list) {
            case .success(let page): respond(Self.rpcResult(id, page))
            case .failure(let failure): respond(Self.rpcError(id, failure.code, failure.message))
            }
        case .pushNotificationConfig:
            respond(Self.rpcError(id, -32003, "push notifications are not supported over A2A here (the card says pushNotifications: false); the control API's signed webhooks are (submit --callback)"))
        case .unknown(let method):
            respond(Self.rpcError(id, -32601, "method not found: \(method.prefix(64)) (this node serves A2A \(Self.a2aVersion): SendMessage, SendStreamingMessage, SubscribeToTask, GetTask, ListTasks, CancelTask)"))
        }
    }

    struct RPCFailure: Error {
        let code: Int
        let message: String
    }

    private static func badHistoryLength(_ id: A2A.RequestID) -> ControlResponse {
        Self.rpcError(id, -32602, "invalid params: historyLength must be a whole number, 0 or more")
    }

    /// A new task for the message, or the answer to a waiting task's question; `then` hears of it once it is stored.
    private func a2aStartTask(_ send: A2A.SendMessageRequest, then: @escaping (Result<TaskID, RPCFailure>) -> Void) {
        switch self.a2aAdmission(send) {
        case .failure(let failure): then(.failure(failure))
        case .success(.answered(let id)):
            self.whenStored(self.taskStore?.lastQueued ?? 0) { error in
                if let error { return then(.failure(RPCFailure(code: -32603, message: "the answer could not be stored: \(error.description)"))) }
                then(.success(id))
            }
        case .success(.submit(let admission)):
            self.admit(admission) { admitted in
                switch admitted {
                case .success: then(.success(admission.id))
                case .failure(let refusal):
                    // A2A has no status codes of its own: the reason says what HTTP's 507 or 409 would.
                    then(.failure(RPCFailure(code: -32603, message: "not submitted (\(refusal.status)): \(refusal.message)")))
                }
            }
        }
    }

    private enum A2AStart {
        case answered(TaskID)
        case submit(TaskAdmission)
    }

    private func a2aAdmission(_ send: A2A.SendMessageRequest) -> Result<A2AStart, RPCFailure> {
        let message = send.message
        guard !message.parts.isEmpty else {
            return .failure(RPCFailure(code: -32602, message: "invalid params: params.message.parts must not be empty"))
        }
        guard !message.messageId.isEmpty else {
            return .failure(RPCFailure(code: -32602, message: "invalid params: params.message.messageId must not be empty"))
        }
        let input: Any
        if let data = message.parts.first(where: { $0.data != nil })?.data {
            input = data.value
        } else if message.parts.contains(where: { $0.text != nil }) {
            input = ["text": message.parts.compactMap(\.text).joined(separator: "\n")]
        } else {
            return .failure(RPCFailure(
                code: -32005, message: "content type not supported: this node takes data and text parts (artifacts go through POST /v1/artifacts)"))
        }
        if let taskId = message.taskId, !taskId.isEmpty {
            // A message for a task answers its question; a task this node does not know is not found (it started a
            // new task).
            guard let waiting = TaskID(hex: taskId), self.submittedTaskState(waiting) != nil else {
                return .failure(RPCFailure(code: -32001, message: "task not found: \(taskId.prefix(64))"))
            }
            guard let answer = try? JSONSerialization.data(withJSONObject: input, options: [.fragmentsAllowed, .sortedKeys]) else {
                return .failure(RPCFailure(code: -32602, message: "invalid params: the answer is not JSON"))
            }
            var refused: TaskSubmitter.ReplyRefusal?
            self.runSubmitter { submitter in
                switch submitter.reply(waiting, Array(answer), now: self.now) {
                case .success(let directives): return directives
                case .failure(let why):
                    refused = why
                    return []
                }
            }
            if refused != nil { return .failure(RPCFailure(code: -32004, message: "task \(waiting) is not waiting for input")) }
            return .success(.answered(waiting))
        }
        let offered = Set(self.taskCandidates().flatMap(\.capabilities.keys))
        let named = message.metadata?["skill"] ?? send.metadata?["skill"]
        guard let skill = named.map({ $0.value as? String }) ?? (offered.count == 1 ? offered.first : nil) else {
            return .failure(RPCFailure(code: -32602, message: "invalid params: name the skill in message.metadata.skill (a string); offered: \(offered.sorted().joined(separator: ", "))"))
        }
        guard offered.contains(skill) else {
            return .failure(RPCFailure(code: -32602, message: "invalid params: no live member offers the skill '\(skill.prefix(64))'"))
        }
        guard let inputBytes = try? JSONSerialization.data(withJSONObject: input, options: [.fragmentsAllowed, .sortedKeys]) else {
            return .failure(RPCFailure(code: -32602, message: "invalid params: the message's data is not JSON"))
        }
        guard inputBytes.count <= self.settings.maximumTaskInput else {
            return .failure(RPCFailure(code: -32602, message:
                "invalid params: the task's input has \(inputBytes.count) bytes; this node takes at most \(self.settings.maximumTaskInput) (run --max-input-bytes)"))
        }
        var generator = SystemRandomNumberGenerator()
        let id = TaskID(using: &generator)
        // Every A2A task is in a conversation: the client's, or a new one named after the task.
        let context = message.contextId.flatMap { TaskOptions.isValidContext($0) ? $0 : nil } ?? id.description
        return .success(.submit(TaskAdmission(
            id: id, capability: skill, payload: Array(inputBytes), timeout: .seconds(300), maximumAttempts: 5,
            options: TaskOptions(context: context, traceparent: TraceContext.new(for: id, using: &generator).description),
            waitForCapability: false)))
    }

    /// `ListTasks` (A2A 1.0 §3.1.4): the tasks submitted here that this node keeps in memory, newest first, filtered by
    /// `contextId`, `status` and `statusTimestampAfter`, `pageSize` (1 to 100, default 50) at a time. The page token
    /// is the id of the last task of the page before, so a page does not shift when new tasks arrive; a token that
    /// names no task listed here is refused (-32602). Artifacts only with `includeArtifacts`.
    private func a2aListTasks(_ list: A2A.ListTasksRequest) -> Result<A2A.ListTasksResponse, RPCFailure> {
        let invalid = { (why: String) in Result<A2A.ListTasksResponse, RPCFailure>.failure(RPCFailure(code: -32602, message: "invalid params: \(why)")) }
        let pageSize = list.pageSize ?? 50
        guard (1...100).contains(pageSize) else { return invalid("pageSize must be a whole number from 1 to 100") }
        guard list.historyLength.map({ $0 >= 0 }) ?? true else { return invalid("historyLength must be a whole number, 0 or more") }
        var after: Date?
        if let text = list.statusTimestampAfter {
            guard let stamp = Timestamp.parse(text) else { return invalid("statusTimestampAfter must be an RFC 3339 time") }
            after = stamp
        }
        var matching: [A2A.Task] = []
        for task in self.submitter.allTasks.reversed() where list.contextId == nil || task.options.context == list.contextId {
            guard var shown = self.a2aTask(task, historyLength: list.historyLength) else { continue }
            if let status = list.status, shown.status.state != status { continue }
            if let after, let stamp = Timestamp.parse(shown.status.timestamp), stamp < after { continue }
            if list.includeArtifacts != true { shown.artifacts = nil }
            matching.append(shown)
        }
        var start = 0
        if let token = list.pageToken, !token.isEmpty {
            guard let position = matching.firstIndex(where: { $0.id == token }) else {
                return invalid("pageToken is not one this node gave for these filters")
            }
            start = position + 1
        }
        let page = Array(matching[start...].prefix(pageSize))
        let next = start + page.count < matching.count ? (page.last?.id ?? "") : ""
        return .success(A2A.ListTasksResponse(tasks: page, nextPageToken: next, pageSize: pageSize, totalSize: matching.count))
    }

    /// Calls `then` when the task ends or asks a question (both are progress of the task), or at `deadline`.
    private func whenTaskAsksOrEnds(_ id: TaskID, until deadline: Duration, then: @escaping () -> Void) {
        let state = self.submittedTaskState(id)
        if state == nil || state!.isTerminal || state == .inputRequired || self.now >= deadline { return then() }
        self.wait(.taskProgress, for: id, timeout: deadline - self.now) {
            self.whenTaskAsksOrEnds(id, until: deadline, then: then)
        }
    }

    /// `SendStreamingMessage` and `SubscribeToTask`: the task, each progress event as a working status update, then
    /// the final status.
    private func a2aStream(_ taskID: TaskID, id: A2A.RequestID, respond: Respond) {
        respond(.eventStream { sink in
            self.context.loop.execute {
                self.assumeIsolated { node in
                    guard let task = node.a2aTask(taskID, historyLength: nil) else { return sink.finish() }
                    node.a2aSend(A2A.StreamResponse(task: task), id: id, to: sink)
                    node.a2aFollow(taskID, after: 0, id: id, sink: sink)
                }
            }
        })
    }

    private func a2aSend(_ event: A2A.StreamResponse, id: A2A.RequestID, to sink: ControlStreamSink) {
        sink.write(Array("data: ".utf8) + A2A.encoded(A2A.Response(id: id, result: event)) + Array("\n\n".utf8))
    }

    /// Sends the task's progress after `after`, then waits for more (woken by new progress and by the task's end).
    private func a2aFollow(_ taskID: TaskID, after: Int, id: A2A.RequestID, sink: ControlStreamSink) {
        guard !sink.isClosed else { return }
        var next = after
        let context = self.submitter.task(taskID)?.options.context ?? ""
        for event in self.eventLog(taskID).events(after: after) {
            next = event.sequence
            let status = A2A.TaskStatus(
                state: .working, message: Self.agentMessage(event.data, id: "\(taskID)-progress-\(event.sequence)", task: taskID, context: context),
                timestamp: Timestamp.string(Date()))
            self.a2aSend(A2A.StreamResponse(statusUpdate: .init(taskId: taskID.description, contextId: context, status: status)), id: id, to: sink)
        }
        let state = self.submittedTaskState(taskID)
        if state == nil || state!.isTerminal || state == .inputRequired {
            if let task = self.a2aTask(taskID, historyLength: 0) {
                if let artifact = task.artifacts?.first {
                    self.a2aSend(A2A.StreamResponse(artifactUpdate: .init(
                        taskId: task.id, contextId: task.contextId, artifact: artifact, lastChunk: true)), id: id, to: sink)
                }
                self.a2aSend(A2A.StreamResponse(statusUpdate: .init(taskId: task.id, contextId: task.contextId, status: task.status)), id: id, to: sink)
            }
            return sink.finish()
        }
        // A client that went away is noticed within the wait's time.
        self.wait(.taskProgress, for: taskID, timeout: .seconds(15)) {
            self.a2aFollow(taskID, after: next, id: id, sink: sink)
        }
    }

    private func a2aTask(_ id: TaskID, historyLength: Int?) -> A2A.Task? {
        self.submittedTask(id).flatMap { self.a2aTask($0, historyLength: historyLength) }
    }

    /// A task as A2A shows it. Its history is the message that started it and, while it waits for an answer, the
    /// agent's question; `historyLength` keeps the newest that many.
    private func a2aTask(_ task: TaskSubmitter.SubmittedTask, historyLength: Int?) -> A2A.Task? {
        let context = task.options.context ?? ""
        let state: A2A.TaskState
        switch task.state {
        case .running: state = .working
        case .inputRequired: state = .inputRequired
        case .completed: state = .completed
        case .failed, .expired: state = .failed
        case .canceled: state = .canceled
        case .submitted, .offered: state = .submitted
        }
        // When the task entered this state, not when it was asked about: its end, its latest attempt's accept (or
        // offer) while it runs, its submission before that.
        let attempt = task.attempts.last
        let changed = task.finishedAt ?? attempt?.acceptedAt ?? attempt?.offeredAt ?? task.submittedAt
        var status = A2A.TaskStatus(state: state, message: nil, timestamp: Timestamp.string(self.wallClockDate(for: changed)))
        var history = [A2A.Message(
            messageId: "\(task.id)-input", role: .user, parts: [A2A.Part(data: Self.jsonValue(Array(TaskPayload.json(of: task.input))))],
            contextId: context, taskId: task.id.description)]
        if task.state == .inputRequired, let question = task.question {
            let asked = Self.agentMessage(question, id: "\(task.id)-question-\(task.attempts.count)", task: task.id, context: context)
            status.message = asked
            history.append(asked)
        } else if let error = task.error {
            status.message = A2A.Message(
                messageId: "\(task.id)-error", role: .agent, parts: [A2A.Part(text: error)], contextId: context, taskId: task.id.description)
        }
        var shown = A2A.Task(
            id: task.id.description, contextId: context, status: status, artifacts: nil,
            history: historyLength.map { Array(history.suffix($0)) } ?? history)
        if task.state == .completed, case .success(let output)? = task.outcome {
            shown.artifacts = [A2A.Artifact(
                artifactId: "result", name: "result",
                parts: [A2A.Part(data: Self.jsonValue(Array(TaskPayload.json(of: output))), mediaType: "application/json")])]
        }
        return shown
    }

    /// A JSON value from bytes that should hold one; anything else, or one nested deeper than A2A shows, is shown
    /// as the text it is.
    private static func jsonValue(_ bytes: [UInt8]) -> ControlAPI.JSONValue {
        guard JSONText.isValue(bytes, maximumDepth: Self.a2aMaximumDepth),
            let value = try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        else { return ControlAPI.JSONValue(String(decoding: bytes, as: UTF8.self)) }
        return ControlAPI.JSONValue(value)
    }

    /// An agent's message: a string becomes a text part, any other JSON a data part.
    private static func agentMessage(_ content: [UInt8], id: String, task: TaskID, context: String) -> A2A.Message {
        let value = Self.jsonValue(content)
        let part = (value.value as? String).map { A2A.Part(text: $0) } ?? A2A.Part(data: value)
        return A2A.Message(messageId: id, role: .agent, parts: [part], contextId: context, taskId: task.description)
    }

    private static func rpcResult(_ id: A2A.RequestID, _ result: some Encodable & Sendable) -> ControlResponse {
        ControlResponse(status: 200, body: A2A.encoded(A2A.Response(id: id, result: result)) + [0x0A])
    }

    private static func rpcError(_ id: A2A.RequestID, _ code: Int, _ message: String) -> ControlResponse {
        ControlResponse(status: 200, body: A2A.encoded(A2A.ErrorResponse(id: id, code: code, message: message)) + [0x0A])
    }
}

/// A value handed to exactly one other thread (closures kept on the loop, file handles used on one queue).
package struct Unchecked<Value>: @unchecked Sendable {
    package let value: Value
    package init(_ value: Value) { self.value = value }
}

import Foundation
import MeshControl
import MeshCore
import MeshStorage
import NIOCore

/// An A2A server facade on the control listener (A2A 1.0, JSON-RPC binding): the agent card at
/// `/.well-known/agent-card.json` lists this mesh's capabilities as skills, and `POST /a2a` takes `SendMessage`,
/// `SendStreamingMessage` (server-sent events), `SubscribeToTask`, `GetTask`, `ListTasks` and `CancelTask`. A message becomes a task of the skill it
/// names (`metadata.skill`; the only one if the mesh offers one), its data part (or its text) the input, its
/// `contextId` the conversation; a message with the `taskId` of a task in `input-required` answers its question.
extension MeshNode {
    static let a2aVersion = "1.0"

    /// The card, pointing its JSON-RPC interface at the address the client reached (the request's Host).
    func agentCard(host: String?) -> ControlResponse {
        var offered: [String: Int] = [:]
        for capability in self.taskCandidates().flatMap(\.capabilities) { offered[capability.key, default: 0] += capability.value }
        let skills: [[String: Any]] = offered.keys.sorted().map { name in
            ["id": name, "name": name, "tags": ["agentmesh"],
             "description": "The '\(name)' agents of this AgentMesh mesh (\(offered[name]!) at once); a data part is the task's input, text becomes {\"text\": …}.",
             "inputModes": ["application/json", "text/plain"], "outputModes": ["application/json"]]
        }
        let card: [String: Any] = [
            "name": "AgentMesh node \(self.identity.name)",
            "description": "Every agent on this brokerless AgentMesh mesh, reached through one node; tasks run on any capable member.",
            "version": AgentMeshVersion.current,
            "supportedInterfaces": [["url": "http://\(host ?? "127.0.0.1")/a2a", "protocolBinding": "JSONRPC", "protocolVersion": Self.a2aVersion]],
            "capabilities": ["streaming": true, "pushNotifications": false],
            "securitySchemes": ["controlToken": ["httpAuthSecurityScheme": [
                "scheme": "bearer", "description": "The token in the node's DIR/control.token."]]],
            "securityRequirements": [["schemes": ["controlToken": ["list": [String]()]]]],
            "defaultInputModes": ["application/json", "text/plain"],
            "defaultOutputModes": ["application/json"],
            "skills": skills,
        ]
        return Self.jsonObject(card)
    }

    /// `POST /a2a`: one JSON-RPC 2.0 request. The envelope is checked as JSON-RPC 2.0 says (a request object with
    /// `"jsonrpc": "2.0"`, a string method, an id that is a string, a number or null; an invalid one gets -32600
    /// with a null id, JSON that does not parse -32700), a notification (no id) gets no answer, and an
    /// `A2A-Version` other than 1.x is refused with VersionNotSupportedError (-32009).
    func answerA2A(_ body: [UInt8], version: String?, respond: @escaping Respond) {
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed]) else {
            return respond(Self.rpcError(nil, -32700, "parse error: the body is not JSON"))
        }
        guard let request = parsed as? [String: Any] else {
            return respond(Self.rpcError(nil, -32600, "invalid request: send one JSON-RPC 2.0 request object (batches are not served)"))
        }
        let rawID = request["id"]
        let idIsValid = rawID == nil || rawID is NSNull || rawID is String
            || (rawID as? NSNumber).map { type(of: $0) != Bool.self && !["c", "B"].contains(String(cString: $0.objCType)) } == true
        guard request["jsonrpc"] as? String == "2.0", let method = request["method"] as? String, idIsValid else {
            let why = request["jsonrpc"] as? String != "2.0" ? "jsonrpc must be \"2.0\""
                : request["method"] is String ? "id must be a string, a number or null" : "method must be a string"
            return respond(Self.rpcError(idIsValid ? rawID : nil, -32600, "invalid request: \(why)"))
        }
        // A notification: JSON-RPC sends no response, whatever the method did.
        let answer = respond
        let isNotification = rawID == nil
        let respond: Respond = { response in answer(isNotification ? ControlResponse(status: 204, body: []) : response) }
        let id = rawID ?? NSNull()
        if let version, !version.isEmpty, version != "1" && !version.hasPrefix("1.") {
            return respond(Self.rpcError(id, -32009, "version not supported: A2A-Version \(version.prefix(32)); this node serves \(Self.a2aVersion)"))
        }
        if let given = request["params"], !(given is [String: Any]) {
            return respond(Self.rpcError(id, -32602, "invalid params: params must be an object"))
        }
        let params = request["params"] as? [String: Any] ?? [:]
        if let history = params["historyLength"] ?? (params["configuration"] as? [String: Any])?["historyLength"],
            !((history as? NSNumber).map { $0.doubleValue >= 0 && $0.doubleValue == $0.doubleValue.rounded() } ?? false)
        {
            return respond(Self.rpcError(id, -32602, "invalid params: historyLength must be a whole number, 0 or more"))
        }
        switch method {
        case "SendMessage", "SendStreamingMessage":
            let streaming = method == "SendStreamingMessage"
            let rpcID = Unchecked(id)
            let configuration = params["configuration"] as? [String: Any] ?? [:]
            let wait: Duration = configuration["returnImmediately"] as? Bool == true ? .zero : .seconds(300)
            // Answered only once the task is durable, like every way in (see `admit`).
            self.a2aStartTask(params) { started in
                switch started {
                case .failure(let error): respond(Self.rpcError(rpcID.value, error.code, error.message))
                case .success(let taskID):
                    if streaming { return self.a2aStream(taskID, id: rpcID.value, respond: respond) }
                    self.whenTaskAsksOrEnds(taskID, until: self.now + wait, then: Unchecked {
                        respond(Self.rpcResult(rpcID.value, ["task": self.a2aTask(taskID) ?? [:]]))
                    })
                }
            }
        case "GetTask":
            guard let taskID = (params["id"] as? String).flatMap(TaskID.init(hex:)), let task = self.a2aTask(taskID) else {
                return respond(Self.rpcError(id, -32001, "task not found"))
            }
            respond(Self.rpcResult(id, task))
        case "CancelTask":
            guard let taskID = (params["id"] as? String).flatMap(TaskID.init(hex:)), self.a2aTask(taskID) != nil else {
                return respond(Self.rpcError(id, -32001, "task not found"))
            }
            if let state = self.submittedTaskState(taskID), state.isTerminal {
                return respond(Self.rpcError(id, -32002, "task not cancelable: it is \(state.rawValue)"))
            }
            self.runSubmitter { $0.cancel(taskID, now: self.now) }
            respond(Self.rpcResult(id, self.a2aTask(taskID) ?? [:]))
        case "SubscribeToTask":
            // A stream dropped mid-task resumes here: the task as it is now first, then its updates to the end. A
            // finished task has none (UnsupportedOperationError, as the spec says for a terminal task).
            guard let taskID = (params["id"] as? String).flatMap(TaskID.init(hex:)), self.a2aTask(taskID) != nil else {
                return respond(Self.rpcError(id, -32001, "task not found"))
            }
            if let state = self.submittedTaskState(taskID), state.isTerminal {
                return respond(Self.rpcError(id, -32004, "unsupported operation: task \(taskID) is \(state.rawValue), so there is nothing to subscribe to"))
            }
            self.a2aStream(taskID, id: id, respond: respond)
        case "ListTasks":
            switch self.a2aListTasks(params) {
            case .success(let page): respond(Self.rpcResult(id, page))
            case .failure(let failure): respond(Self.rpcError(id, failure.code, failure.message))
            }
        case "CreateTaskPushNotificationConfig", "GetTaskPushNotificationConfig", "ListTaskPushNotificationConfigs",
            "DeleteTaskPushNotificationConfig":
            respond(Self.rpcError(id, -32003, "push notifications are not supported over A2A here (the card says pushNotifications: false); the control API's signed webhooks are (submit --callback)"))
        default:
            respond(Self.rpcError(id, -32601, "method not found: \(method) (this node serves A2A \(Self.a2aVersion): SendMessage, SendStreamingMessage, SubscribeToTask, GetTask, ListTasks, CancelTask)"))
        }
    }

    struct RPCFailure: Error {
        let code: Int
        let message: String
    }

    /// A new task for the message, or the answer to a waiting task's question; `then` hears of it once it is stored.
    private func a2aStartTask(_ params: [String: Any], then: @escaping (Result<TaskID, RPCFailure>) -> Void) {
        switch self.a2aAdmission(params) {
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

    private func a2aAdmission(_ params: [String: Any]) -> Result<A2AStart, RPCFailure> {
        guard let message = params["message"] as? [String: Any], let parts = message["parts"] as? [[String: Any]], !parts.isEmpty else {
            return .failure(RPCFailure(code: -32602, message: "params.message needs parts"))
        }
        guard let messageID = message["messageId"] as? String, !messageID.isEmpty else {
            return .failure(RPCFailure(code: -32602, message: "params.message needs a messageId"))
        }
        let input: Any
        if let data = parts.first(where: { $0["data"] != nil })?["data"] {
            input = data
        } else {
            input = ["text": parts.compactMap { $0["text"] as? String }.joined(separator: "\n")]
        }
        if let waiting = (message["taskId"] as? String).flatMap(TaskID.init(hex:)) {
            guard let answer = try? JSONSerialization.data(withJSONObject: input, options: [.fragmentsAllowed, .sortedKeys]) else {
                return .failure(RPCFailure(code: -32602, message: "the answer is not JSON"))
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
        let metadata = (message["metadata"] as? [String: Any]) ?? (params["metadata"] as? [String: Any]) ?? [:]
        let offered = Set(self.taskCandidates().flatMap(\.capabilities.keys))
        guard let skill = metadata["skill"] as? String ?? (offered.count == 1 ? offered.first : nil) else {
            return .failure(RPCFailure(code: -32602, message: "name the skill in message.metadata.skill; offered: \(offered.sorted().joined(separator: ", "))"))
        }
        guard offered.contains(skill) else {
            return .failure(RPCFailure(code: -32602, message: "no live member offers the skill '\(skill)'"))
        }
        guard let inputBytes = try? JSONSerialization.data(withJSONObject: input, options: [.fragmentsAllowed, .sortedKeys]),
            inputBytes.count <= self.settings.maximumTaskInput
        else { return .failure(RPCFailure(code: -32602, message: "the input is not JSON or is too large")) }
        let context = (message["contextId"] as? String).flatMap { TaskOptions.isValidContext($0) ? $0 : nil }
        var generator = SystemRandomNumberGenerator()
        let id = TaskID(using: &generator)
        return .success(.submit(TaskAdmission(
            id: id, capability: skill, payload: Array(inputBytes), timeout: .seconds(300), maximumAttempts: 5,
            options: TaskOptions(context: context, traceparent: TraceContext.new(for: id, using: &generator).description),
            waitForCapability: false)))
    }

    static let a2aStates = [
        "TASK_STATE_SUBMITTED", "TASK_STATE_WORKING", "TASK_STATE_INPUT_REQUIRED", "TASK_STATE_COMPLETED",
        "TASK_STATE_FAILED", "TASK_STATE_CANCELED",
    ]

    /// `ListTasks` (A2A 1.0 §3.1.4): the tasks submitted here that this node keeps in memory, newest first, filtered by
    /// `contextId`, `status` and `statusTimestampAfter`, `pageSize` (1 to 100, default 50) at a time. The page token
    /// is the id of the last task of the page before, so a page does not shift when new tasks arrive; a token that
    /// names no task listed here is refused (-32602). Artifacts only with `includeArtifacts`.
    private func a2aListTasks(_ params: [String: Any]) -> Result<[String: Any], RPCFailure> {
        let invalid = { (why: String) in Result<[String: Any], RPCFailure>.failure(RPCFailure(code: -32602, message: "invalid params: \(why)")) }
        var pageSize = 50
        if let given = params["pageSize"] {
            guard let number = given as? NSNumber, type(of: given) != Bool.self, number.doubleValue == number.doubleValue.rounded(),
                (1...100).contains(number.doubleValue)
            else { return invalid("pageSize must be a whole number from 1 to 100") }
            pageSize = number.intValue
        }
        let context = params["contextId"] as? String
        let status = params["status"] as? String
        if let status, !Self.a2aStates.contains(status) {
            return invalid("status must be one of \(Self.a2aStates.joined(separator: ", "))")
        }
        var after: Date?
        if let text = params["statusTimestampAfter"] {
            guard let stamp = (text as? String).flatMap(Timestamp.parse) else { return invalid("statusTimestampAfter must be an RFC 3339 time") }
            after = stamp
        }
        let includeArtifacts = params["includeArtifacts"] as? Bool ?? false
        if let token = params["pageToken"], !(token is String) { return invalid("pageToken must be a string") }
        var matching: [[String: Any]] = []
        for task in self.submitter.allTasks.reversed() where context == nil || task.options.context == context {
            guard var shown = self.a2aTask(task.id), let state = (shown["status"] as? [String: Any])?["state"] as? String else { continue }
            if let status, state != status { continue }
            if let after, let stamp = ((shown["status"] as? [String: Any])?["timestamp"] as? String).flatMap(Timestamp.parse), stamp < after {
                continue
            }
            if !includeArtifacts { shown["artifacts"] = nil }
            matching.append(shown)
        }
        var start = 0
        if let token = params["pageToken"] as? String, !token.isEmpty {
            guard let position = matching.firstIndex(where: { $0["id"] as? String == token }) else {
                return invalid("pageToken is not one this node gave for these filters")
            }
            start = position + 1
        }
        let page = Array(matching[start...].prefix(pageSize))
        let next = start + page.count < matching.count ? (page.last?["id"] as? String ?? "") : ""
        return .success(["tasks": page, "nextPageToken": next, "pageSize": pageSize, "totalSize": matching.count])
    }

    /// Calls `then` when the task ends or asks a question, or at `deadline` (checked every 20 ms).
    private func whenTaskAsksOrEnds(_ id: TaskID, until deadline: Duration, then: Unchecked<() -> Void>) {
        let state = self.submitter.task(id)?.state
        if state == nil || state!.isTerminal || state == .inputRequired || self.now >= deadline { return then.value() }
        self.loop.scheduleTask(in: .milliseconds(20)) {
            self.assumeIsolated { node in node.whenTaskAsksOrEnds(id, until: deadline, then: then) }
        }
    }

    /// `SendStreamingMessage`: the task, each progress event as a working status update, then the final status.
    private func a2aStream(_ taskID: TaskID, id: Any, respond: Respond) {
        let rpcID = Unchecked(id)
        respond(.eventStream { sink in
            self.loop.execute {
                self.assumeIsolated { node in
                    let send = { (result: [String: Any]) in
                        let object: [String: Any] = ["jsonrpc": "2.0", "id": rpcID.value, "result": result]
                        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
                        sink.write(Array("data: ".utf8) + Array(data) + Array("\n\n".utf8))
                    }
                    send(["task": node.a2aTask(taskID) ?? [:]])
                    node.a2aFollow(taskID, after: 0, sink: sink, send: Unchecked(send))
                }
            }
        })
    }

    private func a2aFollow(_ taskID: TaskID, after: Int, sink: ControlStreamSink, send sender: Unchecked<([String: Any]) -> Void>) {
        guard !sink.isClosed else { return }
        let send = sender.value
        let log = self.eventLog(taskID)
        var next = after
        let context = self.submitter.task(taskID)?.options.context ?? ""
        for event in log.events(after: after) {
            next = event.sequence
            let data = (try? JSONSerialization.jsonObject(with: Data(event.data), options: [.fragmentsAllowed])) ?? NSNull()
            send(["statusUpdate": [
                "taskId": taskID.description, "contextId": context,
                "status": ["state": "TASK_STATE_WORKING", "message": Self.agentMessage(data, task: taskID, context: context)],
            ]])
        }
        let state = self.submitter.task(taskID)?.state
        if state == nil || state!.isTerminal || state == .inputRequired {
            let task = self.a2aTask(taskID) ?? [:]
            if let artifacts = task["artifacts"] as? [[String: Any]], let artifact = artifacts.first {
                send(["artifactUpdate": ["taskId": taskID.description, "contextId": context, "artifact": artifact, "lastChunk": true]])
            }
            send(["statusUpdate": ["taskId": taskID.description, "contextId": context, "status": task["status"] ?? [:]]])
            return sink.finish()
        }
        let resumeAfter = next
        self.loop.scheduleTask(in: .milliseconds(20)) {
            self.assumeIsolated { node in node.a2aFollow(taskID, after: resumeAfter, sink: sink, send: sender) }
        }
    }

    /// A task as A2A shows it (proto3 JSON of `Task`).
    private func a2aTask(_ id: TaskID) -> [String: Any]? {
        guard let bytes = self.taskDocumentBytes(id),
            let task = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
        else { return nil }
        let context = task["context"] as? String ?? ""
        let state: String
        switch task["state"] as? String {
        case "running": state = "TASK_STATE_WORKING"
        case "input_required": state = "TASK_STATE_INPUT_REQUIRED"
        case "completed": state = "TASK_STATE_COMPLETED"
        case "failed", "expired": state = "TASK_STATE_FAILED"
        case "canceled": state = "TASK_STATE_CANCELED"
        default: state = "TASK_STATE_SUBMITTED"
        }
        // When the task entered this state, not when it was asked about: its end, its latest attempt's accept (or
        // offer) while it runs, its submission before that.
        let attempt = (task["attempts"] as? [[String: Any]])?.last
        let changed = task["finished_at"] as? String ?? attempt?["accepted_at"] as? String ?? attempt?["offered_at"] as? String
            ?? task["submitted_at"] as? String ?? Timestamp.string(Date())
        var status: [String: Any] = ["state": state, "timestamp": changed]
        if let question = task["question"] {
            status["message"] = Self.agentMessage(question, task: id, context: context)
        } else if let error = task["error"] as? String {
            status["message"] = Self.agentMessage(error, task: id, context: context)
        }
        var answer: [String: Any] = ["id": id.description, "contextId": context, "status": status, "history": [Any]()]
        if state == "TASK_STATE_COMPLETED" {
            answer["artifacts"] = [["artifactId": "result", "name": "result", "parts": [["data": task["result"] ?? NSNull(), "mediaType": "application/json"]]]]
        }
        return answer
    }

    private static func agentMessage(_ content: Any, task: TaskID, context: String) -> [String: Any] {
        var generator = SystemRandomNumberGenerator()
        let part: [String: Any] = (content as? String).map { ["text": $0] } ?? ["data": content]
        return ["messageId": TaskID(using: &generator).description, "role": "ROLE_AGENT", "parts": [part],
                "taskId": task.description, "contextId": context]
    }

    private static func rpcResult(_ id: Any, _ result: Any) -> ControlResponse {
        Self.jsonObject(["jsonrpc": "2.0", "id": id, "result": result])
    }

    private static func rpcError(_ id: Any?, _ code: Int, _ message: String) -> ControlResponse {
        Self.jsonObject(["jsonrpc": "2.0", "id": id ?? NSNull(), "error": ["code": code, "message": message]])
    }

    private static func jsonObject(_ object: Any) -> ControlResponse {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return ControlResponse(status: 200, body: Array(data) + [0x0A])
    }
}

/// A value handed to exactly one other thread (JSON values from `JSONSerialization`, closures kept on the loop).
package struct Unchecked<Value>: @unchecked Sendable {
    package let value: Value
    package init(_ value: Value) { self.value = value }
}

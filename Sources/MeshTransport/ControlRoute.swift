import MeshControl
import MeshCore

/// What a control request asks for, read from its method, path and query alone: the node's state is not needed to
/// route a request or to refuse a malformed one. A pure value, so every route and refusal is unit-tested.
enum ControlRoute: Equatable {
    case members
    case node
    case limits
    /// `POST /v1/leave[?drain=S]`: with `drain`, finish the runs in progress (up to S seconds) before leaving.
    case leave(drain: Duration?)
    /// `GET /v1/health`
    case health
    /// `GET /v1/executing`: the tasks peers gave this node to run.
    case executing
    /// `POST /v1/tasks[?wait=S]`
    case submit(body: [UInt8], wait: Duration?)
    /// `GET /v1/tasks[?state=S&capability=C&since=SECONDS&limit=N]`, newest first
    case listTasks(TaskFilter)
    /// `GET /v1/tasks/ID[?wait=S]`; ID may be a unique prefix
    case task(TaskReference, wait: Duration?)
    /// `GET /v1/tasks/ID/events[?after=N&wait=S]`: progress events after number N, long-polled as JSON, or as
    /// server-sent events (`Accept: text/event-stream`, resuming after `Last-Event-ID`) until the task ends
    case taskEvents(TaskReference, after: Int, wait: Duration?, stream: Bool)
    /// `POST /v1/tasks/ID/cancel`
    case cancel(TaskReference)
    /// `POST /v1/tasks/ID/input`: the answer to the agent's question
    case reply(TaskReference, body: [UInt8])
    /// `GET /v1/tasks/ID/logs[?after=N&wait=S]`: the run's stderr after byte N, long-polled for more
    case taskLog(TaskReference, after: Int, wait: Duration?)
    /// `POST /v1/workflows[?wait=S]`
    case submitWorkflow(body: [UInt8], wait: Duration?)
    /// `GET /v1/workflows`, newest first
    case listWorkflows
    /// `GET /v1/workflows/ID[?version=N&wait=S]`: with `version`, answers once the run has changed past it
    case workflow(TaskReference, version: Int?, wait: Duration?)
    /// `POST /v1/workflows/ID/cancel`
    case cancelWorkflow(TaskReference)
    /// `GET /metrics`: Prometheus text
    case metrics
    /// `GET /.well-known/agent-card.json`: the A2A agent card
    case agentCard(host: String?)
    /// `POST /a2a`: an A2A JSON-RPC request
    case a2a(body: [UInt8], version: String?)
    /// `GET /v1/stats`: per capability and executing peer
    case stats
    /// `POST /v1/events`: publish
    case publish(body: [UInt8])
    /// `GET /v1/events[?topic=T&after=N&limit=L&wait=S]`: the history after N, oldest first
    case events(topic: String?, after: Int, limit: Int, wait: Duration?)
    /// `GET /ui`, `/ui/app.js`, `/ui/app.css`: the browser view's page (no data: it signs in, then reads `/ui/api/…`)
    case uiAsset(String)
    /// `POST /ui/session` `{"code": C}`: a one-time code traded for a browser session
    case uiSession(body: [UInt8])
    /// `POST /v1/ui/login`: a one-time sign-in link for the browser view (`agentmesh ui`)
    case uiLogin
    /// `GET /v1/ui/stream`: server-sent events with the mesh, the newest tasks and workflows, and the stats, when they change
    case uiStream
    /// `GET /v1/audit[?peer=P&last=N]`: each audit log's verification, and the newest records (of one peer)
    case audit(peer: String?, last: Int)
    /// `GET /v1/artifacts/SHA256`: an artifact's bytes (`POST /v1/artifacts` streams one in, before routing)
    case artifact(digest: [UInt8])
    /// `GET /openapi.yaml`: the control API's OpenAPI document.
    case openAPIDocument
    /// Answered without the node: a bad path or parameter.
    case refused(status: Int, message: String)
    /// A path served with other methods: 405 with the `Allow` header (RFC 9110 §15.5.6).
    case methodNotAllowed(allow: [String], message: String)

    init(_ request: ControlRequest) {
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        if parts == ["metrics"] {
            self = request.method == "GET" ? .metrics : Self.notAllowed(request, ["GET"])
            return
        }
        if parts == [".well-known", "agent-card.json"] {
            self = request.method == "GET" ? .agentCard(host: request.headers["host"]) : Self.notAllowed(request, ["GET"])
            return
        }
        if parts.first == "ui" {
            switch (request.method, Array(parts.dropFirst())) {
            case ("GET", []), ("GET", [""]): self = .uiAsset("index.html")
            case ("GET", ["app.js"]), ("GET", ["app.css"]): self = .uiAsset(parts[1])
            case ("POST", ["session"]): self = .uiSession(body: request.body)
            case (_, []), (_, [""]), (_, ["app.js"]), (_, ["app.css"]): self = Self.notAllowed(request, ["GET"])
            case (_, ["session"]): self = Self.notAllowed(request, ["POST"])
            default: self = .refused(status: 404, message: "no such page: \(request.path)")
            }
            return
        }
        if parts == ["openapi.yaml"] {
            self = request.method == "GET" ? .openAPIDocument : Self.notAllowed(request, ["GET"])
            return
        }
        if parts == ["a2a"] {
            self = request.method == "POST" ? .a2a(body: request.body, version: request.headers["a2a-version"]) : Self.notAllowed(request, ["POST"])
            return
        }
        guard parts.count >= 2, parts[0] == "v1" else {
            self = .refused(status: 404, message: "no such endpoint: \(request.path)")
            return
        }
        switch (parts[1], parts.count) {
        case ("members", 2): self = request.method == "GET" ? .members : Self.notAllowed(request, ["GET"])
        case ("node", 2): self = request.method == "GET" ? .node : Self.notAllowed(request, ["GET"])
        case ("limits", 2): self = request.method == "GET" ? .limits : Self.notAllowed(request, ["GET"])
        case ("leave", 2): self = request.method == "POST" ? Self.leaveRoute(request.query) : Self.notAllowed(request, ["POST"])
        case ("health", 2): self = request.method == "GET" ? .health : Self.notAllowed(request, ["GET"])
        case ("executing", 2): self = request.method == "GET" ? .executing : Self.notAllowed(request, ["GET"])
        case ("tasks", 2...4): self = Self.taskRoute(request, parts)
        case ("workflows", 2...4): self = Self.workflowRoute(request, parts)
        case ("events", 2): self = Self.eventRoute(request)
        case ("stats", 2): self = request.method == "GET" ? .stats : Self.notAllowed(request, ["GET"])
        case ("ui", 3) where parts[2] == "login": self = request.method == "POST" ? .uiLogin : Self.notAllowed(request, ["POST"])
        case ("ui", 3) where parts[2] == "stream": self = request.method == "GET" ? .uiStream : Self.notAllowed(request, ["GET"])
        case ("audit", 2):
            guard request.method == "GET" else { self = Self.notAllowed(request, ["GET"]); return }
            let last = request.query["last"].map { Int($0) } ?? 50
            guard let last, (1...1000).contains(last) else {
                self = .refused(status: 400, message: "last must be 1 to 1000")
                return
            }
            self = .audit(peer: request.query["peer"], last: last)
        case ("artifacts", 2):
            self = request.method == "POST"
                ? .refused(status: 411, message: "send the artifact's bytes with a Content-Length")
                : .methodNotAllowed(allow: ["POST"], message: "POST /v1/artifacts stores an artifact; GET /v1/artifacts/SHA256 fetches one")
        case ("artifacts", 3):
            guard request.method == "GET" else { self = Self.notAllowed(request, ["GET"]); return }
            guard let digest = Hex.decode(parts[2].lowercased()), digest.count == 32 else {
                self = .refused(status: 400, message: "'\(parts[2])' is not a SHA-256 (64 hex digits)")
                return
            }
            self = .artifact(digest: digest)
        default: self = .refused(status: 404, message: "no such endpoint: \(request.path)")
        }
    }

    /// `wait=S`: nil when absent, `.failure` with the refusal when it is not 0 to 3600 seconds.
    private static func wait(_ request: ControlRequest) -> Result<Duration?, ControlRouteRefusal> {
        guard let text = request.query["wait"] else { return .success(nil) }
        guard let seconds = Double(text), seconds >= 0, seconds <= 3600 else {
            return .failure(ControlRouteRefusal(route: .refused(status: 400, message: "wait must be a number of seconds from 0 to 3600")))
        }
        return .success(.milliseconds(Int64(seconds * 1000)))
    }

    private static func taskRoute(_ request: ControlRequest, _ parts: [String]) -> ControlRoute {
        let wait: Duration?
        switch Self.wait(request) {
        case .success(let value): wait = value
        case .failure(let refusal): return refusal.route
        }
        switch (request.method, parts.count) {
        case ("POST", 2):
            return .submit(body: request.body, wait: wait)
        case ("GET", 2):
            return Self.listRoute(request.query)
        case ("GET", 3):
            guard let reference = TaskReference(parts[2]) else { return .refused(status: 400, message: TaskReference.mistake(parts[2])) }
            return .task(reference, wait: wait)
        case ("GET", 4) where parts[3] == "logs":
            guard let reference = TaskReference(parts[2]) else { return .refused(status: 400, message: TaskReference.mistake(parts[2])) }
            var after = 0
            if let text = request.query["after"] {
                guard let offset = Int(text), offset >= 0 else {
                    return .refused(status: 400, message: "after must be a byte offset, 0 or more")
                }
                after = offset
            }
            return .taskLog(reference, after: after, wait: wait)
        case ("GET", 4) where parts[3] == "events":
            guard let reference = TaskReference(parts[2]) else { return .refused(status: 400, message: TaskReference.mistake(parts[2])) }
            // Both are checked: a Last-Event-ID that is not an event number is refused beside ?after too. The
            // header, which a reconnecting EventSource sends, says where the client is; it wins.
            var after = 0
            for (name, text) in [("after", request.query["after"]), ("Last-Event-ID", request.headers["last-event-id"])] {
                guard let text else { continue }
                guard let number = Int(text), number >= 0 else {
                    return .refused(status: 400, message: "\(name) must be an event number, 0 or more")
                }
                after = number
            }
            let stream = (request.headers["accept"] ?? "").contains("text/event-stream")
            return .taskEvents(reference, after: after, wait: wait, stream: stream)
        case ("POST", 4) where parts[3] == "cancel":
            guard let reference = TaskReference(parts[2]) else { return .refused(status: 400, message: TaskReference.mistake(parts[2])) }
            return .cancel(reference)
        case ("POST", 4) where parts[3] == "input":
            guard let reference = TaskReference(parts[2]) else { return .refused(status: 400, message: TaskReference.mistake(parts[2])) }
            return .reply(reference, body: request.body)
        case (_, 2): return Self.notAllowed(request, ["GET", "POST"])
        case (_, 3): return Self.notAllowed(request, ["GET"])
        case (_, 4) where ["logs", "events"].contains(parts[3]): return Self.notAllowed(request, ["GET"])
        case (_, 4) where ["cancel", "input"].contains(parts[3]): return Self.notAllowed(request, ["POST"])
        default:
            return .refused(status: 404, message: "no such endpoint: \(request.method) \(request.path)")
        }
    }

    private static func eventRoute(_ request: ControlRequest) -> ControlRoute {
        switch request.method {
        case "POST": return .publish(body: request.body)
        case "GET":
            let wait: Duration?
            switch Self.wait(request) {
            case .success(let value): wait = value
            case .failure(let refusal): return refusal.route
            }
            var after = 0
            if let text = request.query["after"] {
                guard let number = Int(text), number >= 0 else { return .refused(status: 400, message: "after must be an event number, 0 or more") }
                after = number
            }
            var limit = 1_000
            if let text = request.query["limit"] {
                guard let number = Int(text), (1...10_000).contains(number) else { return .refused(status: 400, message: "limit must be 1 to 10000") }
                limit = number
            }
            if let topic = request.query["topic"], !MeshEvent.isValidPattern(topic) {
                return .refused(status: 400, message: "'\(topic.prefix(80))\(topic.count > 80 ? "…" : "")' is not a topic name, nor a prefix ending in * (research.*)")
            }
            return .events(topic: request.query["topic"], after: after, limit: limit, wait: wait)
        default: return Self.notAllowed(request, ["GET", "POST"])
        }
    }

    private static func workflowRoute(_ request: ControlRequest, _ parts: [String]) -> ControlRoute {
        let wait: Duration?
        switch Self.wait(request) {
        case .success(let value): wait = value
        case .failure(let refusal): return refusal.route
        }
        let mistake = { (text: String) in "'\(text)' is not a workflow id: give the 32 hex digits 'agentmesh workflow run' printed, or at least the first 4" }
        switch (request.method, parts.count) {
        case ("POST", 2): return .submitWorkflow(body: request.body, wait: wait)
        case ("GET", 2): return .listWorkflows
        case ("GET", 3):
            guard let reference = TaskReference(parts[2]) else { return .refused(status: 400, message: mistake(parts[2])) }
            var version: Int?
            if let text = request.query["version"] {
                guard let number = Int(text), number >= 0 else { return .refused(status: 400, message: "version must be a number, 0 or more") }
                version = number
            }
            return .workflow(reference, version: version, wait: wait)
        case ("POST", 4) where parts[3] == "cancel":
            guard let reference = TaskReference(parts[2]) else { return .refused(status: 400, message: mistake(parts[2])) }
            return .cancelWorkflow(reference)
        case (_, 2): return Self.notAllowed(request, ["GET", "POST"])
        case (_, 3): return Self.notAllowed(request, ["GET"])
        case (_, 4) where parts[3] == "cancel": return Self.notAllowed(request, ["POST"])
        default:
            return .refused(status: 404, message: "no such endpoint: \(request.method) \(request.path)")
        }
    }

    private static func listRoute(_ query: [String: String]) -> ControlRoute {
        var filter = TaskFilter()
        if let text = query["state"] {
            guard let state = TaskState(rawValue: text) else {
                return .refused(
                    status: 400,
                    message: "unknown state '\(text)': use one of \(TaskState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            filter.state = state
        }
        if let capability = query["capability"] {
            guard Capability.isValidName(capability) else {
                return .refused(status: 400, message: "'\(capability)' is not a capability name")
            }
            filter.capability = capability
        }
        if let context = query["context"] {
            guard TaskOptions.isValidContext(context) else {
                return .refused(status: 400, message: "context must be 1 to 128 printable ASCII characters without spaces")
            }
            filter.context = context
        }
        if let text = query["since"] {
            guard let seconds = Double(text), seconds > 0, seconds <= 366 * 86_400 else {
                return .refused(status: 400, message: "since must be a number of seconds (how far back), up to a year")
            }
            filter.since = .milliseconds(Int64(seconds * 1000))
        }
        if let text = query["limit"] {
            guard let limit = Int(text), (1...TaskFilter.maximumLimit).contains(limit) else {
                return .refused(status: 400, message: "limit must be 1 to \(TaskFilter.maximumLimit)")
            }
            filter.limit = limit
        }
        return .listTasks(filter)
    }

    private static func leaveRoute(_ query: [String: String]) -> ControlRoute {
        guard let text = query["drain"] else { return .leave(drain: nil) }
        guard let seconds = Double(text), seconds >= 0, seconds <= 86_400 else {
            return .refused(status: 400, message: "drain must be a number of seconds from 0 to 86400")
        }
        return .leave(drain: .milliseconds(Int64(seconds * 1000)))
    }

    private static func notAllowed(_ request: ControlRequest, _ allow: [String]) -> ControlRoute {
        .methodNotAllowed(allow: allow, message: "\(request.method) is not allowed on \(request.path); it takes \(allow.joined(separator: ", "))")
    }
}

/// Which tasks `GET /v1/tasks` lists: newest first, at most `limit`.
struct TaskFilter: Equatable {
    static let maximumLimit = 10_000
    var state: TaskState?
    var capability: String?
    var context: String?
    /// Submitted at most this long ago.
    var since: Duration?
    var limit = 1_000
}

/// A task named by its id or by a unique prefix of it (as `docker` takes container ids).
enum TaskReference: Equatable {
    case id(TaskID)
    case prefix(String)

    static let minimumPrefix = 4

    init?(_ text: String) {
        let lowered = text.lowercased()
        if let id = TaskID(hex: lowered) {
            self = .id(id)
        } else if (Self.minimumPrefix..<32).contains(lowered.count), lowered.allSatisfy(\.isHexDigit) {
            self = .prefix(lowered)
        } else {
            return nil
        }
    }

    static func mistake(_ text: String) -> String {
        "'\(text)' is not a task id: give the 32 hex digits 'agentmesh submit' printed, or at least the first \(Self.minimumPrefix)"
    }
}

/// A refusal found while reading a parameter, carried out as an error.
struct ControlRouteRefusal: Error {
    let route: ControlRoute
}

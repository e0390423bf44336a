import MeshControl
import MeshCore

/// What a control request asks for, read from its method, path and query alone: the node's state is not needed to
/// route a request or to refuse a malformed one. A pure value, so every route and refusal is unit-tested.
enum ControlRoute: Equatable {
    case members
    case node
    case limits
    case leave
    /// `POST /v1/tasks[?wait=S]`
    case submit(body: [UInt8], wait: Duration?)
    /// `GET /v1/tasks[?state=S]`
    case listTasks(state: TaskState?)
    /// `GET /v1/tasks/ID[?wait=S]`
    case task(TaskID, wait: Duration?)
    /// `POST /v1/tasks/ID/cancel`
    case cancel(TaskID)
    /// Answered without the node: a bad path, method or parameter.
    case refused(status: Int, message: String)

    init(_ request: ControlRequest) {
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        guard parts.count >= 2, parts[0] == "v1" else {
            self = .refused(status: 404, message: "no such endpoint: \(request.path)")
            return
        }
        switch (parts[1], parts.count) {
        case ("members", 2): self = request.method == "GET" ? .members : Self.notAllowed(request)
        case ("node", 2): self = request.method == "GET" ? .node : Self.notAllowed(request)
        case ("limits", 2): self = request.method == "GET" ? .limits : Self.notAllowed(request)
        case ("leave", 2): self = request.method == "POST" ? .leave : Self.notAllowed(request)
        case ("tasks", 2...4): self = Self.taskRoute(request, parts)
        default: self = .refused(status: 404, message: "no such endpoint: \(request.path)")
        }
    }

    private static func taskRoute(_ request: ControlRequest, _ parts: [String]) -> ControlRoute {
        var wait: Duration?
        if let text = request.query["wait"] {
            guard let seconds = Double(text), seconds >= 0, seconds <= 3600 else {
                return .refused(status: 400, message: "wait must be a number of seconds from 0 to 3600")
            }
            wait = .milliseconds(Int64(seconds * 1000))
        }
        switch (request.method, parts.count) {
        case ("POST", 2):
            return .submit(body: request.body, wait: wait)
        case ("GET", 2):
            guard let text = request.query["state"] else { return .listTasks(state: nil) }
            guard let state = TaskState(rawValue: text) else {
                return .refused(
                    status: 400,
                    message: "unknown state '\(text)': use one of \(TaskState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return .listTasks(state: state)
        case ("GET", 3):
            guard let id = TaskID(hex: parts[2]) else { return .refused(status: 400, message: "'\(parts[2])' is not a task id") }
            return .task(id, wait: wait)
        case ("POST", 4) where parts[3] == "cancel":
            guard let id = TaskID(hex: parts[2]) else { return .refused(status: 404, message: "no task \(parts[2]) on this node") }
            return .cancel(id)
        default:
            return .refused(status: 404, message: "no such endpoint: \(request.method) \(request.path)")
        }
    }

    private static func notAllowed(_ request: ControlRequest) -> ControlRoute {
        .refused(status: 405, message: "\(request.method) is not allowed on \(request.path)")
    }
}

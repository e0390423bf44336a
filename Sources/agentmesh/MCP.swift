import ArgumentParser
import Dispatch
import Foundation
import MeshControl
import MeshTransport
import Synchronization

/// `agentmesh mcp`: a Model Context Protocol server on stdio (JSON-RPC 2.0, one message a line) in front of the
/// local node, so an LLM client can call any agent on the mesh. Every capability a live member offers is a tool;
/// a call submits a task with the tool's arguments as its input and answers with the result, sending the agent's
/// progress events as MCP progress notifications while it runs. Written against the MCP specification (2025-06-18)
/// with JSON-RPC handled here, as the whole protocol this needs is four methods and three notifications (a client's
/// `notifications/cancelled` cancels the call's task).
struct MCP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mcp",
        abstract: "Serve the mesh's capabilities as MCP tools over stdio, for LLM clients (Claude Desktop, the mcp Python SDK…).",
        discussion: """
            Configure a client to start it, for example {"mcpServers": {"agentmesh": {"command": "agentmesh", \
            "args": ["mcp", "--home", "/home/me/.agentmesh"]}}}. The node must be running on that home.
            """)

    @OptionGroup var options: HomeOptions

    @Option(help: "Seconds a tool call's task may take (default 300).")
    var timeout: Double = 300

    static let protocolVersions = ["2025-06-18", "2025-03-26", "2024-11-05"]

    func run() throws {
        let server = MCPServer(client: ControlClient(socketPath: self.options.nodeHome.controlSocketPath), timeout: self.timeout)
        server.watchTools()
        while let line = readLine(strippingNewline: true) {
            guard !line.trimmingCharacters(in: .whitespaces).isEmpty else { continue }
            server.receive(Data(line.utf8))
        }
        server.finish()
    }
}

final class MCPServer: Sendable {
    private let client: ControlClient
    private let timeout: Double
    private let output = Mutex(())
    private let calls = DispatchGroup()
    private let knownTools = Mutex<[String]?>(nil)
    /// Calls in flight by request id, with their task once it is submitted, and the ones the client cancelled
    /// (`notifications/cancelled`): their task is cancelled, and they get no answer, as MCP says.
    private let inFlight = Mutex<[String: (task: String?, cancelled: Bool)]>([:])

    init(client: ControlClient, timeout: Double) {
        self.client = client
        self.timeout = timeout
    }

    /// One message from the client: requests are answered on their own thread (calls run long, several at once).
    func receive(_ data: Data) {
        guard let message = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            return self.send(["jsonrpc": "2.0", "id": NSNull(), "error": ["code": -32700, "message": "parse error: not a JSON object"]])
        }
        guard let method = message["method"] as? String else { return }  // a response to us: we send no requests
        let id = message["id"]
        let params = message["params"] as? [String: Any] ?? [:]
        guard let id else {
            // Notifications need no answer; a cancellation stops the call's task.
            if method == "notifications/cancelled", let cancelled = params["requestId"] { self.cancel(Self.key(cancelled)) }
            return
        }
        let key = Self.key(id)
        self.inFlight.withLock { $0[key] = (nil, false) }
        self.calls.enter()
        // JSON values from JSONSerialization, handed to one thread and not touched here again.
        let request = Unchecked((id: id, params: params))
        DispatchQueue.global().async {
            defer { self.calls.leave() }
            let (id, params) = request.value
            let answer: [String: Any]
            do {
                answer = ["jsonrpc": "2.0", "id": id, "result": try self.answer(method, params, key: key)]
            } catch let error as RPCError {
                answer = ["jsonrpc": "2.0", "id": id, "error": ["code": error.code, "message": error.message]]
            } catch {
                answer = ["jsonrpc": "2.0", "id": id, "error": ["code": -32603, "message": "\(error)"]]
            }
            let cancelled = self.inFlight.withLock { $0.removeValue(forKey: key)?.cancelled ?? false }
            if !cancelled { self.send(answer) }
        }
    }

    /// A request id as a key: a string and a number that print alike stay apart.
    private static func key(_ id: Any) -> String { (id is String ? "s:" : "n:") + "\(id)" }

    /// The client cancelled a request: its task (if one was submitted) is cancelled, and it gets no answer.
    private func cancel(_ key: String) {
        let task = self.inFlight.withLock { calls -> String? in
            guard calls[key] != nil else { return nil }
            calls[key]?.cancelled = true
            return calls[key]?.task
        }
        if let task { _ = try? self.client.request(method: "POST", path: "/v1/tasks/\(task)/cancel") }
    }

    /// Waits for calls in flight once stdin closes.
    func finish() { self.calls.wait() }

    struct RPCError: Error {
        let code: Int
        let message: String
    }

    private func answer(_ method: String, _ params: [String: Any], key: String) throws -> Any {
        switch method {
        case "initialize":
            let asked = params["protocolVersion"] as? String ?? MCP.protocolVersions[0]
            return [
                "protocolVersion": MCP.protocolVersions.contains(asked) ? asked : MCP.protocolVersions[0],
                "capabilities": ["tools": ["listChanged": true]],
                "serverInfo": ["name": "agentmesh", "version": AgentMeshVersion.current],
                "instructions": "Each tool is a capability an agent on this AgentMesh mesh offers; its arguments are the task's input.",
            ]
        case "ping":
            return [String: Any]()
        case "tools/list":
            return ["tools": try self.tools()]
        case "tools/call":
            return try self.call(params, key: key)
        default:
            throw RPCError(code: -32601, message: "method not found: \(method)")
        }
    }

    /// Every capability live members offer, with who offers it.
    private func tools() throws -> [[String: Any]] {
        let members: ControlAPI.Members
        do {
            members = try self.client.get("/v1/members", as: ControlAPI.Members.self)
        } catch {
            throw RPCError(code: -32603, message: "\(error)")
        }
        var offeredBy: [String: [String]] = [:]
        for member in members.members where member.status == "alive" {
            for capability in member.capabilities { offeredBy[capability.name, default: []].append("\(member.name) (\(capability.capacity) at once)") }
        }
        return offeredBy.keys.sorted().map { name in
            [
                "name": name,
                "description": "Runs the '\(name)' agent on the AgentMesh mesh (offered by \(offeredBy[name]!.joined(separator: ", "))); the arguments are the task's input, the result is the agent's JSON output.",
                "inputSchema": ["type": "object", "additionalProperties": true],
            ]
        }
    }

    /// Submits the task, relays its progress events, and answers with its result.
    private func call(_ params: [String: Any], key: String) throws -> [String: Any] {
        guard let name = params["name"] as? String else { throw RPCError(code: -32602, message: "tools/call needs a name") }
        let arguments = params["arguments"] ?? [String: Any]()
        // A tool's input schema is an object: a string or a list is not arguments (it ran as a task's input).
        guard arguments is [String: Any] else {
            throw RPCError(code: -32602, message: "invalid params: arguments must be an object of the tool's arguments")
        }
        let progressToken = (params["_meta"] as? [String: Any])?["progressToken"]
        let body = try JSONSerialization.data(withJSONObject: ["capability": name, "input": arguments, "timeout_seconds": self.timeout])
        let task: ControlAPI.TaskInfo
        do {
            task = try self.client.decode(self.client.request(method: "POST", path: "/v1/tasks", body: Array(body)), as: ControlAPI.TaskInfo.self)
        } catch ControlClient.Error.api(409, _) {
            throw RPCError(code: -32602, message: "unknown tool: no live member offers \(name)")
        } catch {
            return Self.toolError("\(error)")
        }
        // Cancelled while it was being submitted: the task goes now.
        let cancelledAlready = self.inFlight.withLock { calls -> Bool in
            calls[key]?.task = task.id
            return calls[key]?.cancelled == true
        }
        if cancelledAlready { _ = try? self.client.request(method: "POST", path: "/v1/tasks/\(task.id)/cancel") }
        var after = 0
        var ended = task
        while true {
            let page: ControlAPI.TaskEvents
            do {
                page = try self.client.decode(
                    self.client.request(method: "GET", path: "/v1/tasks/\(task.id)/events?after=\(after)&wait=30", timeout: .seconds(40)),
                    as: ControlAPI.TaskEvents.self)
            } catch {
                return Self.toolError("\(error)")
            }
            for event in page.events {
                guard let progressToken else { continue }
                let text = (try? JSONSerialization.data(withJSONObject: event.data.value, options: [.fragmentsAllowed, .sortedKeys]))
                    .map { String(decoding: $0, as: UTF8.self) } ?? "null"
                self.send(["jsonrpc": "2.0", "method": "notifications/progress",
                           "params": ["progressToken": progressToken, "progress": event.sequence, "message": text]])
            }
            after = page.next
            if page.finished && page.events.isEmpty { break }
        }
        do {
            ended = try self.client.decode(
                self.client.request(method: "GET", path: "/v1/tasks/\(task.id)?wait=30", timeout: .seconds(40)), as: ControlAPI.TaskInfo.self)
        } catch {
            return Self.toolError("\(error)")
        }
        guard ended.state == "completed" else {
            return Self.toolError("task \(ended.id) \(ended.state): \(ended.error ?? "no reason given")")
        }
        let result = ended.result?.value ?? NSNull()
        let text = (try? JSONSerialization.data(withJSONObject: result, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes]))
            .map { String(decoding: $0, as: UTF8.self) } ?? "null"
        var answer: [String: Any] = ["content": [["type": "text", "text": text]], "isError": false]
        if result is [String: Any] { answer["structuredContent"] = result }
        return answer
    }

    private static func toolError(_ sentence: String) -> [String: Any] {
        ["content": [["type": "text", "text": sentence]], "isError": true]
    }

    /// Tells the client when the set of tools changes (a member with new capabilities joins, one leaves).
    func watchTools() {
        DispatchQueue.global().async {
            while true {
                let names = (try? self.tools().compactMap { $0["name"] as? String }) ?? []
                let changed = self.knownTools.withLock { known -> Bool in
                    defer { known = names }
                    return known != nil && known != names
                }
                if changed { self.send(["jsonrpc": "2.0", "method": "notifications/tools/list_changed"]) }
                Thread.sleep(forTimeInterval: 2)
            }
        }
    }

    private func send(_ message: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: message, options: [.withoutEscapingSlashes]) else { return }
        self.output.withLock { _ in
            FileHandle.standardOutput.write(data + Data([0x0A]))
        }
    }
}

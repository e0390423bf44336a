import Foundation
import MeshControl
import MeshTestKit
import Testing

/// Issue 18 on real nodes: idempotent submission across a kill -9, agents that ask back, conversations.
@Suite(.serialized) struct ConversationTests {
    typealias Node = MeshProcessTests.Node

    static func submit(_ node: Node, _ body: String, key: String) throws -> ControlClient.Response {
        try node.client.request(method: "POST", path: "/v1/tasks", body: Array(body.utf8), headers: ["Idempotency-Key": key])
    }

    @Test func aRepeatedSubmissionAfterKill9ReturnsTheSameTaskAndRunsItOnce() throws {
        let (root, recorder, log) = try MeshProcessTests.scratch("conv", ["a", "b"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["work=exec:python3 \(recorder) \(log) b 0.2"])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false })
        let body = #"{"capability": "work", "input": {"n": 7}}"#
        let first = try Self.submit(a, body, key: "order-7")
        #expect(first.status == 202)
        let id = try a.client.decode(first, as: ControlAPI.TaskInfo.self).id
        // The client's connection "dropped": the node dies, comes back, and the client sends the same request again.
        a.signal(SIGKILL)
        try a.start(join: b.address)
        let again = try Self.submit(a, body, key: "order-7")
        #expect(again.status == 200, "a repeat answers 200 with the original")
        #expect(try a.client.decode(again, as: ControlAPI.TaskInfo.self).id == id)
        #expect(MeshProcessTests.waitUntil(30) { (try? a.client.get("/v1/tasks/\(id)", as: ControlAPI.TaskInfo.self))?.state == "completed" })
        #expect(MeshProcessTests.runs(in: log).count == 1 && MeshProcessTests.runs(in: log)[7]?.count == 1, "the agent ran once")
        let different = try Self.submit(a, #"{"capability": "work", "input": {"n": 8}}"#, key: "order-7")
        #expect(different.status == 422, "not 409, which says no live member offers the capability")
        #expect(String(decoding: different.body, as: UTF8.self).contains("was used for a different request"))
        // The CLI derives a key from the task itself with --idempotent.
        let once = try CommandLineTests.agentmesh("submit", "--home", a.home, "--capability", "work", "--input", "{\"n\": 9}", "--idempotent")
        let twice = try CommandLineTests.agentmesh("submit", "--home", a.home, "--capability", "work", "--input", "{\"n\": 9}", "--idempotent")
        #expect(once.status == 0 && once.stdout == twice.stdout, "\(once.stdout) \(twice.stdout)")
    }

    @Test func anAgentThatAsksIsAnsweredFromTheCLIAlsoAfterItsNodeWasKilledWhileWaiting() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-conv-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try MeshProcessTests.initHomes(root, ["a", "b"])
        let agent = FileManager.default.currentDirectoryPath + "/scripts/examples/approval_agent.py"
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["approve=exec:python3 \(agent)"])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false })
        func task(_ id: String) -> ControlAPI.TaskInfo? { try? a.client.get("/v1/tasks/\(id)", as: ControlAPI.TaskInfo.self) }

        // Asked and answered.
        let submitted = try CommandLineTests.agentmesh(
            "submit", "--home", a.home, "--capability", "approve", "--input", #"{"action": "pay"}"#, "--input-timeout", "60")
        let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(MeshProcessTests.waitUntil { task(id)?.state == "input_required" })
        #expect(task(id)?.question == ControlAPI.JSONValue(["prompt": "Approve: pay?", "earlier_decisions": 0]))
        let early = try CommandLineTests.agentmesh("reply", "--home", a.home, "0000", "--input", "{}")
        #expect(early.status != 0)
        let replied = try CommandLineTests.agentmesh("reply", "--home", a.home, String(id.prefix(8)), "--input", #"{"approved": true}"#)
        #expect(replied.status == 0, "\(replied.stderr)")
        #expect(MeshProcessTests.waitUntil { task(id)?.state == "completed" })
        #expect((task(id)?.result?.value as? [String: Any])?["approved"] as? Bool == true)

        // The executor is killed while its agent waits; restarted, it runs the agent again, which asks again.
        let second = try CommandLineTests.agentmesh(
            "submit", "--home", a.home, "--capability", "approve", "--input", #"{"action": "ship"}"#, "--input-timeout", "60",
            "--timeout", "120")
        let waiting = second.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(MeshProcessTests.waitUntil { task(waiting)?.state == "input_required" })
        b.signal(SIGKILL)
        try b.start(join: a.address, capabilities: ["approve=exec:python3 \(agent)"])
        func questions() -> Int {
            let page = try? a.client.get("/v1/tasks/\(waiting)/events", as: ControlAPI.TaskEvents.self)
            return page?.events.count { ($0.data.value as? [String: Any])?["agentmesh"] as? String == "input-required" } ?? 0
        }
        #expect(MeshProcessTests.waitUntil(30) { questions() == 2 && task(waiting)?.state == "input_required" }, "asked again after the restart")
        let answered = try CommandLineTests.agentmesh("reply", "--home", a.home, String(waiting.prefix(8)), "--input", #"{"approved": false}"#)
        #expect(answered.status == 0, "\(answered.stderr)")
        #expect(MeshProcessTests.waitUntil(30) { task(waiting)?.state == "completed" }, "\(task(waiting)?.state ?? "?") \(task(waiting)?.error ?? "")")
        #expect((task(waiting)?.result?.value as? [String: Any])?["approved"] as? Bool == false)

        // The submitting node is killed while the agent waits: the question is still there after the restart.
        let third = try CommandLineTests.agentmesh(
            "submit", "--home", a.home, "--capability", "approve", "--input", #"{"action": "refund"}"#, "--input-timeout", "60")
        let pending = third.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(MeshProcessTests.waitUntil { task(pending)?.state == "input_required" })
        a.signal(SIGKILL)
        try a.start(join: b.address)
        #expect(task(pending)?.state == "input_required")
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.status == "alive" })
        let late = try CommandLineTests.agentmesh("reply", "--home", a.home, String(pending.prefix(8)), "--input", #"{"approved": true}"#)
        #expect(late.status == 0, "\(late.stderr)")
        #expect(MeshProcessTests.waitUntil(30) { task(pending)?.state == "completed" })
    }

    @Test func aConversationsTasksStayOnOneMemberWhileItLivesAndMoveWhenItLeaves() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-conv-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try MeshProcessTests.initHomes(root, ["a", "b", "c"])
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b"), c = Node(home: "\(root)/c")
        defer { for node in [a, b, c] { node.signal(SIGKILL) } }
        let agent = "chat=exec:sh -c 'echo \"{\\\"context\\\": \\\"$AGENTMESH_CONTEXT_ID\\\"}\"'"
        try b.start(join: nil, capabilities: [agent])
        try c.start(join: b.address, capabilities: [agent])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { ["b", "c"].allSatisfy { a.status(of: $0)?.capabilities.isEmpty == false } })
        func run(_ context: String) throws -> ControlAPI.TaskInfo {
            let outcome = try CommandLineTests.agentmesh(
                "submit", "--home", a.home, "--capability", "chat", "--input", "{}", "--context", context, "--wait", "--json")
            return try ControlAPI.decoder().decode(ControlAPI.TaskInfo.self, from: Data(outcome.stdout.utf8))
        }
        let first = try run("talk-1")
        #expect(first.result == ControlAPI.JSONValue(["context": "talk-1"]), "the agent knows its conversation")
        let member = try #require(first.executedBy)
        for _ in 0..<2 { #expect(try run("talk-1").executedBy == member, "the conversation stays on \(member)") }
        let listed = try CommandLineTests.agentmesh("tasks", "--home", a.home, "--context", "talk-1", "--json")
        #expect(try ControlAPI.decoder().decode(ControlAPI.TaskList.self, from: Data(listed.stdout.utf8)).tasks.count == 3)
        // The member leaves: the conversation moves to the other one, and stays there.
        let leaving = member == "b" ? b : c
        #expect(try CommandLineTests.agentmesh("leave", "--home", leaving.home).status == 0)
        leaving.process?.waitForExit()
        #expect(MeshProcessTests.waitUntil { a.status(of: member)?.status == "left" })
        let moved = try run("talk-1")
        #expect(moved.executedBy != member && moved.executedBy != nil)
        #expect(try run("talk-1").executedBy == moved.executedBy)
    }
}

/// `http:` agents that stream (NDJSON, SSE) and that ask back (202 input_required), with a Python service.
@Suite(.serialized) struct HTTPAgentStreamingTests {
    typealias Node = MeshProcessTests.Node

    @Test func anHTTPAgentStreamsProgressAndAsksBack() throws {
        let (root, _, _) = try MeshProcessTests.scratch("http", ["a", "b"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let service = try SpawnedProcess("/usr/bin/env", ["python3", "-c", """
            import json, time
            from http.server import BaseHTTPRequestHandler, HTTPServer
            class Agent(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.0"
                def do_POST(self):
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    if self.path == "/ask":
                        if self.headers.get("X-AgentMesh-Reply") != "1":
                            answer = json.dumps({"input_required": {"prompt": "which color?"}, "state": {"asked": 1}}).encode()
                            self.send_response(202); self.send_header("Content-Type", "application/json")
                            self.send_header("Content-Length", str(len(answer))); self.end_headers(); self.wfile.write(answer); return
                        answer = json.dumps({"color": body["reply"]["color"], "state": body["state"], "input": body["input"]}).encode()
                        self.send_response(200); self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(answer))); self.end_headers(); self.wfile.write(answer); return
                    self.send_response(200)
                    if self.path == "/sse":
                        self.send_header("Content-Type", "text/event-stream"); self.end_headers()
                        for i in range(3):
                            self.wfile.write(f"event: progress\\ndata: {json.dumps({'token': i})}\\n\\n".encode()); self.wfile.flush(); time.sleep(0.05)
                        self.wfile.write(b'event: result\\ndata: {"answer": 42}\\n\\n')
                    else:
                        self.send_header("Content-Type", "application/x-ndjson"); self.end_headers()
                        for i in range(3):
                            self.wfile.write((json.dumps({"token": i}) + "\\n").encode()); self.wfile.flush(); time.sleep(0.05)
                        self.wfile.write(b'{"result": {"answer": 7}}\\n')
                def log_message(self, *args): pass
            server = HTTPServer(("127.0.0.1", 0), Agent)
            print(server.server_address[1], flush=True)
            server.serve_forever()
            """])
        defer { service.signal(SIGKILL) }
        let port = try #require(service.waitForLine { !$0.isEmpty }).trimmingCharacters(in: .whitespacesAndNewlines)
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: [
            "sse=http:http://127.0.0.1:\(port)/sse", "nd=http:http://127.0.0.1:\(port)/nd", "ask=http:http://127.0.0.1:\(port)/ask",
        ])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.count == 3 })
        for (capability, answer) in [("sse", 42), ("nd", 7)] {
            let followed = try CommandLineTests.agentmesh("submit", "--home", a.home, "--capability", capability, "--input", "{}", "--follow")
            #expect(followed.status == 0, "\(followed.stderr)")
            #expect(followed.stdout == #"{"token":0}"# + "\n" + #"{"token":1}"# + "\n" + #"{"token":2}"# + "\n" + #"{"answer":\#(answer)}"# + "\n",
                    "\(capability): \(followed.stdout)")
        }
        let asked = try CommandLineTests.agentmesh("submit", "--home", a.home, "--capability", "ask", "--input", #"{"item": "car"}"#)
        let id = asked.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        func task() -> ControlAPI.TaskInfo? { try? a.client.get("/v1/tasks/\(id)", as: ControlAPI.TaskInfo.self) }
        #expect(MeshProcessTests.waitUntil { task()?.state == "input_required" })
        #expect(task()?.question == ControlAPI.JSONValue(["prompt": "which color?"]))
        #expect(try CommandLineTests.agentmesh("reply", "--home", a.home, String(id.prefix(8)), "--input", #"{"color": "red"}"#).status == 0)
        #expect(MeshProcessTests.waitUntil { task()?.state == "completed" })
        #expect(task()?.result == ControlAPI.JSONValue(["color": "red", "state": ["asked": 1], "input": ["item": "car"]]),
                "the resumed POST carried the input, the answer and the agent's state")
    }
}

import Foundation
import MeshControl
import MeshTestKit
import Testing

/// Issue 15 on real nodes: a trace from the client through both nodes to the agent, and out over OTLP.
@Suite(.serialized) struct ObservabilityTests {
    typealias Node = MeshProcessTests.Node

    @Test func aTraceGoesFromTheClientThroughBothNodesToTheAgentAndOutOverOTLP() throws {
        let (root, _, _) = try MeshProcessTests.scratch("obs", ["a", "b"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        // A collector: records every OTLP/HTTP JSON export it receives, one line of spans each.
        let collector = try SpawnedProcess("/usr/bin/python3", ["-c", """
            import json, sys
            from http.server import BaseHTTPRequestHandler, HTTPServer
            class Collector(BaseHTTPRequestHandler):
                def do_POST(self):
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    for resource in body["resourceSpans"]:
                        service = {a["key"]: a["value"]["stringValue"] for a in resource["resource"]["attributes"]}
                        for scope in resource["scopeSpans"]:
                            for span in scope["spans"]:
                                print(json.dumps({"path": self.path, "instance": service["service.instance.id"], **span}), flush=True)
                    self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
                def log_message(self, *args): pass
            server = HTTPServer(("127.0.0.1", 0), Collector)
            print(server.server_address[1], flush=True)
            server.serve_forever()
            """])
        defer { collector.signal(SIGKILL) }
        let port = try #require(collector.waitForLine { !$0.isEmpty }).trimmingCharacters(in: .whitespacesAndNewlines)
        let otlp = ["--otlp-endpoint", "http://127.0.0.1:\(port)"]
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["trace=exec:sh -c 'echo \"{\\\"traceparent\\\": \\\"$TRACEPARENT\\\"}\"'"], extra: otlp)
        try a.start(join: b.address, extra: otlp)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false })

        let trace = "4bf92f3577b34da6a3ce929d0e0e4736", clientSpan = "00f067aa0ba902b7"
        let response = try a.client.request(
            method: "POST", path: "/v1/tasks?wait=20", body: Array(#"{"capability": "trace", "input": {}}"#.utf8),
            headers: ["traceparent": "00-\(trace)-\(clientSpan)-01"])
        let task = try a.client.decode(response, as: ControlAPI.TaskInfo.self)
        #expect(task.state == "completed" && task.traceId == trace)
        let seen = try #require((task.result?.value as? [String: Any])?["traceparent"] as? String)
        #expect(seen.hasPrefix("00-\(trace)-") && !seen.contains(clientSpan), "the agent runs in the trace, under b's span: \(seen)")
        let taskSpan = String(task.id.suffix(16))
        #expect(collector.waitForLine(timeout: .seconds(10)) { $0.contains("\"execute trace\"") } != nil)
        #expect(collector.waitForLine(timeout: .seconds(10)) { $0.contains("\"task trace\"") } != nil)
        let spans = collector.stdout.split(separator: "\n").dropFirst().compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let submitted = try #require(spans.first { $0["name"] as? String == "task trace" })
        let executed = try #require(spans.first { $0["name"] as? String == "execute trace" })
        #expect(submitted["path"] as? String == "/v1/traces")
        #expect(submitted["traceId"] as? String == trace && executed["traceId"] as? String == trace)
        #expect(submitted["spanId"] as? String == taskSpan && submitted["parentSpanId"] as? String == clientSpan)
        #expect(executed["parentSpanId"] as? String == taskSpan, "b's run is a child of a's task span")
        #expect(seen.split(separator: "-")[2] == (executed["spanId"] as? String ?? "?")[...], "the agent's parent is b's run span")
        #expect((submitted["instance"] as? String)?.hasPrefix("a ") == true && (executed["instance"] as? String)?.hasPrefix("b ") == true)
        // A malformed trace context is refused with a sentence.
        let malformed = try a.client.request(
            method: "POST", path: "/v1/tasks", body: Array(#"{"capability": "trace", "input": {}}"#.utf8),
            headers: ["traceparent": "00-\(trace)-\(String(repeating: "0", count: 16))-01"])
        #expect(malformed.status == 400 && String(decoding: malformed.body, as: UTF8.self).contains("W3C trace context"))
        // The offer's record in b's audit log of a keeps the trace context.
        for node in [a, b] { node.signal(SIGTERM) }
        let audit = try CommandLineTests.agentmesh("audit", "--home", b.home, "--peer", "a", "--last", "0", "--json")
        #expect(audit.stdout.contains("traceparent 00-\(trace)-\(taskSpan)-01"), "\(audit.stdout.prefix(600))")
    }
}

/// The MCP server, driven by the `mcp` Python SDK from PyPI (installed by scripts/test) as the client.
@Suite(.serialized) struct MCPTests {
    typealias Node = MeshProcessTests.Node

    @Test func anMCPClientListsTheMeshsCapabilitiesAndCallsThemWithProgress() throws {
        let probe = try SpawnedProcess.run("/usr/bin/env", ["python3", "-c", "import mcp"])
        try #require(probe.status == 0, "the mcp package is missing: scripts/test installs it (pip install mcp)")
        let (root, _, _) = try MeshProcessTests.scratch("mcp", ["a", "b"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["echo=builtin:echo", "stream=builtin:stream", "broken=exec:sh -c 'echo no >&2; exit 65'"])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.count == 3 })
        let client = """
            import asyncio, json, sys
            from mcp import ClientSession, StdioServerParameters
            from mcp.client.stdio import stdio_client
            async def main():
                params = StdioServerParameters(command=sys.argv[1], args=["mcp", "--home", sys.argv[2]])
                async with stdio_client(params) as (read, write):
                    async with ClientSession(read, write) as session:
                        init = await session.initialize()
                        out = {"server": init.server_info.name, "tools": sorted(t.name for t in (await session.list_tools()).tools)}
                        echoed = await session.call_tool("echo", {"text": "hi"})
                        out["echo"] = [echoed.is_error, echoed.content[0].text, echoed.structured_content]
                        seen = []
                        async def progress(progress, total, message):
                            seen.append([progress, message])
                        streamed = await session.call_tool("stream", {"events": 3, "interval_ms": 30}, progress_callback=progress)
                        out["stream"] = [streamed.content[0].text, seen]
                        broken = await session.call_tool("broken", {})
                        out["broken"] = [broken.is_error, broken.content[0].text]
                        print(json.dumps(out))
            asyncio.run(main())
            """
        let run = try SpawnedProcess.run("/usr/bin/env", ["python3", "-c", client, CommandLineTests.binary, a.home])
        #expect(run.status == 0, "\(run.stderr.suffix(1500))")
        let out = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(out["server"] as? String == "agentmesh")
        #expect(out["tools"] as? [String] == ["broken", "echo", "stream"], "every capability of the live mesh is a tool")
        let echo = try #require(out["echo"] as? [Any])
        #expect(echo[0] as? Bool == false && echo[1] as? String == #"{"text":"hi"}"#)
        #expect((echo[2] as? [String: String]) == ["text": "hi"])
        let stream = try #require(out["stream"] as? [Any])
        #expect(stream[0] as? String == #"{"events":3}"#)
        #expect((stream[1] as? [[Any]])?.map { $0[1] as? String } == [#"{"event":1,"of":3}"#, #"{"event":2,"of":3}"#, #"{"event":3,"of":3}"#],
                "each progress event arrived as an MCP progress notification")
        let broken = try #require(out["broken"] as? [Any])
        #expect(broken[0] as? Bool == true && (broken[1] as? String)?.contains("sh rejected the input (exit status 65): no") == true)
    }

    /// Spoken raw, as a strict client may: `tools/call` with arguments that are not an object is -32602 (it ran a task
    /// with a string as input), and `notifications/cancelled` cancels the call's task and leaves it unanswered (the
    /// task ran on and the cancelled request was answered later).
    @Test func argumentsMustBeAnObjectAndACancelledCallCancelsItsTask() throws {
        let (root, _, _) = try MeshProcessTests.scratch("mcp-raw", ["a", "b"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["echo=builtin:echo", "nap=exec:sh -c 'cat >/dev/null; sleep 30; echo {}'"])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.count == 2 })
        let client = """
            import json, subprocess, sys, time
            server = subprocess.Popen([sys.argv[1], "mcp", "--home", sys.argv[2]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            def send(message):
                server.stdin.write(json.dumps(message) + "\\n"); server.stdin.flush()
            def receive():
                return json.loads(server.stdout.readline())
            send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
            receive()
            send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            out = {}
            send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": "not an object"}})
            out["string"] = receive()
            send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": [1, 2]}})
            out["array"] = receive()
            send({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "nap", "arguments": {}}})
            time.sleep(2)
            send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 4, "reason": "changed my mind"}})
            time.sleep(2)
            send({"jsonrpc": "2.0", "id": 5, "method": "ping"})
            out["next"] = receive()
            server.stdin.close()
            server.wait(timeout=60)
            out["rest"] = server.stdout.read()
            print(json.dumps(out))
            """
        let run = try SpawnedProcess.run("/usr/bin/env", ["python3", "-c", client, CommandLineTests.binary, a.home])
        #expect(run.status == 0, "\(run.stderr.suffix(1500))")
        let out = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], "\(run.stdout)")
        for key in ["string", "array"] {
            let error = (out[key] as? [String: Any])?["error"] as? [String: Any]
            #expect(error?["code"] as? Int == -32602, "\(key): \(out[key] ?? "")")
        }
        #expect((out["next"] as? [String: Any])?["id"] as? Int == 5, "the cancelled call is not answered: \(out["next"] ?? "")")
        #expect((out["rest"] as? String)?.isEmpty == true, "nothing more came: \(out["rest"] ?? "")")
        let states = try a.tasks().map { "\($0.capability) \($0.state)" }
        #expect(states == ["nap canceled"], "only the nap ran, and it was cancelled: \(states)")
    }
}

/// The A2A facade, driven by the `a2a-sdk` Python package from PyPI (installed by scripts/test) as the client.
@Suite(.serialized) struct A2ATests {
    typealias Node = MeshProcessTests.Node

    @Test func anA2AClientSendsStreamsAndAnswersAnAgentThatAsks() throws {
        let probe = try SpawnedProcess.run("/usr/bin/env", ["python3", "-c", "import a2a.client"])
        try #require(probe.status == 0, "the a2a-sdk package is missing: scripts/test installs it")
        let (root, _, _) = try MeshProcessTests.scratch("a2a", ["a", "b"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let port = try MeshProcessTests.freePort()
        let agent = FileManager.default.currentDirectoryPath + "/scripts/examples/approval_agent.py"
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["echo=builtin:echo", "stream=builtin:stream", "approve=exec:python3 \(agent)"])
        try a.start(join: b.address, extra: ["--http", "127.0.0.1:\(port)"])
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.count == 3 })
        let client = """
            import asyncio, httpx, json, sys, uuid
            from google.protobuf import json_format, struct_pb2
            from a2a.client import ClientConfig, ClientFactory
            from a2a.types import a2a_pb2 as p
            def message(skill, data, task_id=None):
                meta = struct_pb2.Struct(); meta.update({"skill": skill})
                value = struct_pb2.Value(); json_format.ParseDict(data, value)
                return p.Message(message_id=str(uuid.uuid4()), role=p.ROLE_USER, parts=[p.Part(data=value)], metadata=meta,
                                 context_id="conv-1", task_id=task_id or "")
            async def send(client, msg):
                return [json_format.MessageToDict(event) for event in [e async for e in client.send_message(p.SendMessageRequest(message=msg))]]
            async def main():
                token = open(sys.argv[2]).read().strip()
                out = {}
                async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
                    blocking = await ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create_from_url(f"http://127.0.0.1:{sys.argv[1]}")
                    out["skills"] = sorted(s.id for s in blocking._card.skills)
                    out["echo"] = await send(blocking, message("echo", {"text": "hi"}))
                    asked = await send(blocking, message("approve", {"action": "pay"}))
                    out["asked"] = asked
                    task_id = asked[0]["task"]["id"]
                    out["answered"] = await send(blocking, message("approve", {"approved": True}, task_id))
                    out["got"] = json_format.MessageToDict(await blocking.get_task(p.GetTaskRequest(id=task_id)))
                    streaming = await ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create_from_url(f"http://127.0.0.1:{sys.argv[1]}")
                    out["stream"] = await send(streaming, message("stream", {"events": 3, "interval_ms": 30}))
                print(json.dumps(out))
            asyncio.run(main())
            """
        let run = try SpawnedProcess.run("/usr/bin/env", ["python3", "-c", client, port, a.home + "/control.token"])
        #expect(run.status == 0, "\(run.stderr.suffix(1500))")
        let out = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(out["skills"] as? [String] == ["approve", "echo", "stream"], "the card lists the mesh's capabilities as skills")
        func task(_ key: String, _ index: Int = 0) -> [String: Any] {
            (((out[key] as? [[String: Any]])?[index])?["task"] as? [String: Any]) ?? [:]
        }
        func state(_ task: [String: Any]) -> String? { (task["status"] as? [String: Any])?["state"] as? String }
        #expect(state(task("echo")) == "TASK_STATE_COMPLETED" && task("echo")["contextId"] as? String == "conv-1")
        let artifact = ((task("echo")["artifacts"] as? [[String: Any]])?.first?["parts"] as? [[String: Any]])?.first?["data"]
        #expect((artifact as? [String: String]) == ["text": "hi"])
        #expect(state(task("asked")) == "TASK_STATE_INPUT_REQUIRED", "the agent's question is A2A's input-required")
        let question = (((task("asked")["status"] as? [String: Any])?["message"] as? [String: Any])?["parts"] as? [[String: Any]])?.first?["data"]
        #expect((question as? [String: Any])?["prompt"] as? String == "Approve: pay?")
        #expect(state(task("answered")) == "TASK_STATE_COMPLETED", "a message with the taskId answered it")
        #expect(state(out["got"] as? [String: Any] ?? [:]) == "TASK_STATE_COMPLETED")
        let stream = out["stream"] as? [[String: Any]] ?? []
        let working = stream.compactMap { ($0["statusUpdate"] as? [String: Any])?["status"] as? [String: Any] }.filter { $0["state"] as? String == "TASK_STATE_WORKING" }
        #expect(working.count == 3, "each progress event streamed as a working status update")
        #expect((stream.last?["statusUpdate"] as? [String: Any]).flatMap { ($0["status"] as? [String: Any])?["state"] as? String } == "TASK_STATE_COMPLETED")
    }

    /// The rest of A2A 1.0's core operations with the official client: ListTasks a page at a time with its token,
    /// SubscribeToTask to a running task's end, and the errors the client raises as types (TaskNotCancelableError
    /// for a finished task, TaskNotFoundError).
    @Test func anA2AClientListsPagesSubscribesAndGetsTypedErrors() throws {
        let probe = try SpawnedProcess.run("/usr/bin/env", ["python3", "-c", "import a2a.client"])
        try #require(probe.status == 0, "the a2a-sdk package is missing: scripts/test installs it")
        let (root, _, _) = try MeshProcessTests.scratch("a2a-ops", ["a"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let port = try MeshProcessTests.freePort()
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: ["echo=builtin:echo", "nap=exec:sh -c 'cat >/dev/null; sleep 2; echo {}'"],
                    extra: ["--http", "127.0.0.1:\(port)"])
        let client = """
            import asyncio, httpx, json, sys, uuid
            from google.protobuf import json_format, struct_pb2
            from a2a.client import ClientConfig, ClientFactory
            from a2a.types import a2a_pb2 as p
            def message(skill, data, context="conv-9"):
                meta = struct_pb2.Struct(); meta.update({"skill": skill})
                value = struct_pb2.Value(); json_format.ParseDict(data, value)
                return p.Message(message_id=str(uuid.uuid4()), role=p.ROLE_USER, parts=[p.Part(data=value)], metadata=meta, context_id=context)
            async def main():
                token = open(sys.argv[2]).read().strip()
                out = {}
                async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
                    blocking = await ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create_from_url(f"http://127.0.0.1:{sys.argv[1]}")
                    for n in range(3):
                        [e async for e in blocking.send_message(p.SendMessageRequest(message=message("echo", {"n": n})))]
                    first = await blocking.list_tasks(p.ListTasksRequest(context_id="conv-9", page_size=2))
                    second = await blocking.list_tasks(p.ListTasksRequest(context_id="conv-9", page_size=2, page_token=first.next_page_token))
                    out["pages"] = [len(first.tasks), len(second.tasks), first.total_size, second.next_page_token]
                    napping = [json_format.MessageToDict(e) async for e in blocking.send_message(p.SendMessageRequest(
                        message=message("nap", {}), configuration=p.SendMessageConfiguration(return_immediately=True)))]
                    task_id = napping[0]["task"]["id"]
                    streaming = await ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create_from_url(f"http://127.0.0.1:{sys.argv[1]}")
                    events = [json_format.MessageToDict(e) async for e in streaming.subscribe(p.SubscribeToTaskRequest(id=task_id))]
                    out["subscribed"] = [list(e.keys())[0] for e in events] + [events[-1].get("statusUpdate", {}).get("status", {}).get("state")]
                    try:
                        await blocking.cancel_task(p.CancelTaskRequest(id=task_id))
                        out["cancel"] = "no error"
                    except Exception as error:
                        out["cancel"] = type(error).__name__
                    try:
                        await blocking.get_task(p.GetTaskRequest(id="0" * 32))
                    except Exception as error:
                        out["missing"] = type(error).__name__
                print(json.dumps(out))
            asyncio.run(main())
            """
        let run = try SpawnedProcess.run("/usr/bin/env", ["python3", "-c", client, "\(port)", a.home + "/control.token"])
        #expect(run.status == 0, "\(run.stderr.suffix(1500))")
        let out = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], "\(run.stdout)")
        let pages = try #require(out["pages"] as? [Any])
        #expect(pages[0] as? Int == 2 && pages[1] as? Int == 1 && pages[2] as? Int == 3 && pages[3] as? String == "", "\(pages)")
        #expect(out["subscribed"] as? [String] == ["task", "artifactUpdate", "statusUpdate", "TASK_STATE_COMPLETED"], "\(out)")
        #expect(out["cancel"] as? String == "TaskNotCancelableError")
        #expect(out["missing"] as? String == "TaskNotFoundError")
    }
}

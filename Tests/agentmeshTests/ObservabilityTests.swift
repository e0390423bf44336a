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

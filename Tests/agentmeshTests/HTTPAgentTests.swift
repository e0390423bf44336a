import Foundation
import MeshControl
import MeshTestKit
import Testing

/// `http:` agents through a real node, against services that write their answers as fast as the socket takes them.
@Suite(.serialized) struct HTTPAgentTests {
    typealias Node = MeshProcessTests.Node

    /// Eight runs at once, forty in all, of an agent that floods its answer without a pause: each is cut off at the
    /// limit and fails with why, none hangs until its deadline. (FoundationNetworking's URLSession stalled for good
    /// on such answers: all eight slots hung on the first runs.) An answer written in one write, the connection
    /// closed right after it, completes. An endless NDJSON stream is cut off at its bounds, not read until the deadline.
    @Test func anAgentAnsweringBackToBackEndsEveryRun() throws {
        let (root, _, _) = try MeshProcessTests.scratch("http-flood", ["a"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let service = try SpawnedProcess("/usr/bin/env", ["python3", "-c", #"""
            import json
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
            whole = json.dumps({"filler": "x" * (1 << 20)}).encode()
            class Flood(BaseHTTPRequestHandler):
                def do_POST(self):
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    if self.path == "/ndjson":
                        self.send_response(200)
                        self.send_header("Content-Type", "application/x-ndjson")
                        self.end_headers()
                        try:
                            while True:
                                self.wfile.write(b'{"tick": 1}\n' * 4096)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                    if self.path == "/whole":
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                         b"Connection: close\r\n\r\n" % len(whole) + whole)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "multipart/form-data; boundary=b")
                    self.end_headers()
                    self.wfile.write(b'--b\r\nContent-Disposition: form-data; name="out"; filename="o.bin"\r\n\r\n')
                    try:
                        while True:
                            self.wfile.write(b"1," * 32768)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                def log_message(self, *arguments):
                    pass
            server = ThreadingHTTPServer(("127.0.0.1", 0), Flood)
            print(server.server_address[1], flush=True)
            server.serve_forever()
            """#])
        defer { service.signal(SIGKILL) }
        let port = try #require(service.waitForLine { !$0.isEmpty }).trimmingCharacters(in: .whitespacesAndNewlines)
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: [
            "flood*8=http:http://127.0.0.1:\(port)/flood", "whole*8=http:http://127.0.0.1:\(port)/whole",
            "ndjson*8=http:http://127.0.0.1:\(port)/ndjson",
        ], extra: ["--max-artifact-bytes", "1M"])
        let runs = (0..<40).map { ("flood", $0) } + (0..<8).map { ("whole", $0) } + (0..<8).map { ("ndjson", $0) }
        let submitted = try runs.map { capability, number in
            let body = try JSONSerialization.data(withJSONObject: [
                "capability": capability, "input": ["n": number], "timeout_seconds": 8, "max_attempts": 1,
            ])
            let response = try a.client.request(method: "POST", path: "/v1/tasks", body: Array(body))
            return (capability, try a.client.decode(response, as: ControlAPI.TaskInfo.self).id)
        }
        for (capability, id) in submitted {
            let task = try a.client.decode(
                a.client.request(method: "GET", path: "/v1/tasks/\(id)?wait=15", timeout: .seconds(20)), as: ControlAPI.TaskInfo.self)
            if capability == "whole" {
                #expect(task.state == "completed", "\(task.state): \(task.error ?? "")")
            } else if capability == "ndjson" {
                // An endless event stream was read until the task's deadline; it is cut off at its bounds now.
                #expect(task.state == "failed" && task.error?.contains("streamed more than") == true, "\(task.state): \(task.error ?? "")")
            } else {
                #expect(task.state == "failed" && task.error?.contains("answered more than 1048576 bytes") == true,
                        "\(task.state): \(task.error ?? "")")
            }
        }
    }
}

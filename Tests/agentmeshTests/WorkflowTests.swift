import Foundation
import MeshControl
import MeshCore
import MeshCrypto
import MeshTestKit
import Testing

/// Issue 14 on real nodes: workflows that survive their owner's death, sagas, fan-out, streamed progress that a
/// reconnecting client resumes, webhooks.
@Suite(.serialized) struct WorkflowTests {
    typealias Node = MeshProcessTests.Node

    static func workflow(_ node: Node, _ id: String) throws -> ControlAPI.WorkflowInfo {
        try node.client.get("/v1/workflows/\(id)", as: ControlAPI.WorkflowInfo.self)
    }

    static func start(_ node: Node, _ workflow: String, input: String = "null") throws -> String {
        let body = Array("{\"workflow\": \(workflow), \"input\": \(input)}".utf8)
        let response = try node.client.request(method: "POST", path: "/v1/workflows", body: body)
        return try node.client.decode(response, as: ControlAPI.WorkflowInfo.self).id
    }

    /// Lines of the recorder log: "start N worker pid time" / "end …".
    static func starts(_ log: String) -> [Int] {
        ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            return fields.first == "start" ? Int(fields[1]) : nil
        }
    }

    @Test func aWorkflowSurvivesKill9OfItsOwnerAndNoFinishedStepRunsAgain() throws {
        let (root, recorder, log) = try MeshProcessTests.scratch("wf", ["worker", "owner"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let worker = Node(home: "\(root)/worker"), owner = Node(home: "\(root)/owner")
        defer { for node in [worker, owner] { node.signal(SIGKILL) } }
        try worker.start(join: nil, capabilities: ["step=exec:python3 \(recorder) \(log) worker 1.0"])
        try owner.start(join: worker.address)
        #expect(MeshProcessTests.waitUntil { owner.status(of: "worker")?.capabilities.isEmpty == false })

        let id = try Self.start(owner, """
            {"name": "three", "steps": [
              {"name": "one", "capability": "step", "input": {"n": 1}},
              {"name": "two", "capability": "step", "input": {"n": 2, "after": "{{steps.one.output.n}}"}},
              {"name": "three", "capability": "step", "input": {"n": 3, "after": "{{steps.two.output.n}}"}}
            ]}
            """)
        // Kill the owner while step two runs on the worker; bring it back on the same home.
        #expect(MeshProcessTests.waitUntil { (try? Self.workflow(owner, id))?.steps[1].state == "running" })
        owner.signal(SIGKILL)
        Thread.sleep(forTimeInterval: 0.3)
        try owner.start(join: worker.address)
        var run: ControlAPI.WorkflowInfo?
        #expect(MeshProcessTests.waitUntil(60) {
            run = try? Self.workflow(owner, id)
            return run?.isFinished == true
        })
        #expect(run?.state == "completed", "\(run?.error ?? "")")
        #expect(run?.output == ControlAPI.JSONValue(["one": ["n": 1], "two": ["n": 2, "after": 1], "three": ["n": 3, "after": 2]]))
        #expect(Self.starts(log).sorted() == [1, 2, 3], "each step ran exactly once: \(Self.starts(log))")
    }

    @Test func aFailingThirdStepCompensatesTheFirstTwoInReverseOrder() throws {
        let (root, recorder, log) = try MeshProcessTests.scratch("wf", ["a", "b"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: [
            "book=exec:python3 \(recorder) \(log) book 0", "undo=exec:python3 \(recorder) \(log) undo 0",
            "broken=exec:sh -c 'echo card declined >&2; exit 1'",
        ])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.count == 3 })
        let id = try Self.start(a, """
            {"name": "trip", "steps": [
              {"name": "flight", "capability": "book", "input": {"n": 1}, "compensate": {"capability": "undo", "input": {"n": 11}}},
              {"name": "hotel", "capability": "book", "input": {"n": 2}, "after": "flight",
               "compensate": {"capability": "undo", "input": {"n": "{{output.n}}"}}},
              {"name": "pay", "capability": "broken", "after": "hotel", "attempts": 2}
            ]}
            """)
        var run: ControlAPI.WorkflowInfo?
        #expect(MeshProcessTests.waitUntil(60) {
            run = try? Self.workflow(a, id)
            return run?.isFinished == true
        })
        #expect(run?.state == "compensated")
        #expect(run?.error == "step pay failed: sh exited with status 1: card declined")
        #expect(run?.steps.map(\.compensation) == ["compensated", "compensated", nil])
        #expect(Self.starts(log) == [1, 2, 2, 11], "booked flight then hotel; undid the hotel (its output), then the flight")
        let shown = try CommandLineTests.agentmesh("workflow", "show", "--home", a.home, String(id.prefix(8)))
        #expect(shown.stdout.contains("✗ pay") && shown.stdout.contains("↺ compensated"), "\(shown.stdout)")
    }

    @Test func aFanOutOfAHundredItemsRunsEightAtATimeAndFansInInOrder() throws {
        let (root, recorder, log) = try MeshProcessTests.scratch("wf", ["a", "b", "c"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b"), c = Node(home: "\(root)/c")
        defer { for node in [a, b, c] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["work*8=exec:python3 \(recorder) \(log) b 0.02"])
        try c.start(join: b.address, capabilities: ["work*8=exec:python3 \(recorder) \(log) c 0.02"])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false && a.status(of: "c")?.capabilities.isEmpty == false })
        let items = (0..<100).map { "{\"n\": \($0)}" }.joined(separator: ",")
        let id = try Self.start(a, """
            {"name": "fan", "steps": [{"name": "each", "capability": "work", "map": "{{input.items}}", "concurrency": 8, "input": "{{item}}"}],
             "output": "{{steps.each.output}}"}
            """, input: "{\"items\": [\(items)]}")
        var run: ControlAPI.WorkflowInfo?
        #expect(MeshProcessTests.waitUntil(120) {
            run = try? Self.workflow(a, id)
            return run?.isFinished == true
        })
        #expect(run?.state == "completed")
        #expect(run?.output == ControlAPI.JSONValue((0..<100).map { ["n": $0] }), "results in item order")
        // Never more than 8 at once, across both workers (runs are intervals on one monotonic clock).
        let intervals = MeshProcessTests.runs(in: log).values.joined()
        var points: [(time: Double, change: Int)] = []
        for interval in intervals {
            points.append((interval.start, 1))
            points.append((interval.end, -1))
        }
        points.sort { left, right in left.time < right.time || (left.time == right.time && left.change < right.change) }
        var open = 0, most = 0
        for point in points {
            open += point.change
            most = max(most, open)
        }
        #expect(intervals.count == 100 && most <= 8 && most >= 2, "\(intervals.count) runs, at most \(most) at once")
    }

    @Test func anSSEClientThatReconnectsWithLastEventIDSeesEveryProgressEventOnce() throws {
        let (root, _, _) = try MeshProcessTests.scratch("wf", ["a", "b"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["stream=builtin:stream"])
        let port = try MeshProcessTests.freePort()
        try a.start(join: b.address, extra: ["--http", "127.0.0.1:\(port)"])
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false })
        let token = try String(contentsOfFile: a.home + "/control.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let body = Array(#"{"capability": "stream", "input": {"events": 40, "interval_ms": 25}}"#.utf8)
        let id = try a.client.decode(a.client.request(method: "POST", path: "/v1/tasks", body: body), as: ControlAPI.TaskInfo.self).id
        // An independent client (Python's standard library): reads 10 events, hangs up, reconnects with the last
        // id it saw, and reads to the end.
        let client = """
            import sys, urllib.request
            def read(last, limit):
                headers = {"Authorization": "Bearer \(token)", "Accept": "text/event-stream"}
                if last is not None: headers["Last-Event-ID"] = str(last)
                response = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:\(port)/v1/tasks/\(id)/events", headers=headers), timeout=30)
                seen, ended, current = [], False, None
                for raw in response:
                    line = raw.decode().rstrip("\\n")
                    if line.startswith("id: "): current = int(line[4:])
                    if line.startswith("event: end"): ended = True
                    if line == "" and current is not None:
                        seen.append(current); current = None
                        if limit and len(seen) == limit: break
                response.close()
                return seen, ended
            first, _ = read(None, 10)
            rest, ended = read(first[-1], 0)
            print(" ".join(map(str, first + rest)), "ended" if ended else "open")
            """
        let result = try SpawnedProcess.run("/usr/bin/python3", ["-c", client])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            == (1...40).map(String.init).joined(separator: " ") + " ended", "every event once, in order")
        // The CLI follows the same events and then prints the result.
        let followed = try CommandLineTests.agentmesh("task", "--home", a.home, String(id.prefix(8)), "--follow")
        #expect(followed.status == 0)
        #expect(followed.stdout.split(separator: "\n").count == 41 && followed.stdout.hasSuffix("{\"events\":40}\n"))
    }

    @Test func webhooksAreSignedRetriedAndRefusedForPrivateTargetsUnlessAllowed() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-wf-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try MeshProcessTests.initHomes(root, ["a", "b"])
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try a.start(join: nil, capabilities: ["echo=builtin:echo"])
        let refused = try CommandLineTests.agentmesh(
            "submit", "--home", a.home, "--capability", "echo", "--input", "{}", "--callback", "http://127.0.0.1:9/hook")
        #expect(refused.status == 64)
        #expect(refused.stderr.contains("points into a private, loopback or link-local network"), "\(refused.stderr)")
        try b.start(join: a.address, capabilities: ["echo=builtin:echo"], extra: ["--allow-private-callbacks"])
        // A receiver that answers 503 once, then verifies the delivery with the Standard Webhooks library (from
        // PyPI, installed by scripts/test) and the node's secret, and records the body.
        let secret = try String(contentsOfFile: b.home + "/webhook.secret", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(secret.hasPrefix("whsec_"), "a Standard Webhooks secret: \(secret.prefix(6))")
        let receiver = """
            import json, sys
            from http.server import BaseHTTPRequestHandler, HTTPServer
            from standardwebhooks import Webhook
            calls = []
            class Hook(BaseHTTPRequestHandler):
                def do_POST(self):
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                    calls.append(1)
                    if len(calls) == 1:
                        self.send_response(503); self.end_headers(); return
                    try:
                        Webhook("\(secret)").verify(body, dict(self.headers.items()))
                        ok = True
                    except Exception:
                        ok = False
                    print(self.headers["X-AgentMesh-Event"], "signed" if ok else "FORGED", json.loads(body).get("result"), flush=True)
                    self.send_response(204); self.end_headers()
                def log_message(self, *args): pass
            server = HTTPServer(("127.0.0.1", 0), Hook)
            print(server.server_address[1], flush=True)
            server.serve_forever()
            """
        let hook = try SpawnedProcess("/usr/bin/env", ["python3", "-c", receiver])
        defer { hook.signal(SIGKILL) }
        let port = try #require(hook.waitForLine { !$0.isEmpty }).trimmingCharacters(in: .whitespacesAndNewlines)
        let submitted = try CommandLineTests.agentmesh(
            "submit", "--home", b.home, "--capability", "echo", "--input", "{\"x\": 1}", "--callback", "http://127.0.0.1:\(port)/hook")
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let delivered = hook.waitForLine(timeout: .seconds(20)) { $0.contains("task.") }
        #expect(delivered?.trimmingCharacters(in: .whitespacesAndNewlines) == "task.completed signed {'x': 1}",
                "delivered after one 503, signed: \(delivered ?? "nothing")")
        // Every state change, when asked: the task's way through the mesh, then its end.
        let all = try CommandLineTests.agentmesh(
            "submit", "--home", b.home, "--capability", "echo", "--input", "{\"y\": 2}", "--callback", "http://127.0.0.1:\(port)/hook",
            "--callback-all-states")
        #expect(all.status == 0, "\(all.stderr)")
        // Each delivery is its own POST: they may arrive in any order.
        #expect(hook.waitForLine(timeout: .seconds(20)) { $0.hasPrefix("task.completed signed {'y': 2}") } != nil)
        #expect(hook.waitForLine(timeout: .seconds(20)) { $0.hasPrefix("task.offered signed") || $0.hasPrefix("task.running signed") } != nil,
                "\(hook.stdout)")
    }
}

extension WorkflowTests {
    /// A receiver answering 302 had the signed request followed wherever it pointed (past the private-address
    /// check), and one answering 1.2 GB grew the node by 1.3 GiB (the answer was read whole). Webhooks now never
    /// follow a redirect and never read an answer's body.
    @Test func aWebhookFollowsNoRedirectAndReadsNoAnswerBody() throws {
        let (root, _, _) = try MeshProcessTests.scratch("hook", ["a"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: ["echo=builtin:echo"], extra: ["--allow-private-callbacks"])
        let receiver = """
            import sys
            from http.server import BaseHTTPRequestHandler, HTTPServer
            class Hook(BaseHTTPRequestHandler):
                def do_POST(self):
                    self.rfile.read(int(self.headers["Content-Length"]))
                    print(self.path, flush=True)
                    if self.path == "/moved":
                        self.send_response(302); self.send_header("Location", "/elsewhere"); self.end_headers(); return
                    if self.path == "/huge":
                        self.send_response(200); self.send_header("Content-Length", str(1200 << 20)); self.end_headers()
                        chunk = b"x" * (1 << 20)
                        try:
                            for _ in range(1200):
                                self.wfile.write(chunk)
                        except OSError:
                            print("the node stopped reading", flush=True)
                        return
                    self.send_response(204); self.end_headers()
                def log_message(self, *args): pass
            server = HTTPServer(("127.0.0.1", 0), Hook)
            print(server.server_address[1], flush=True)
            server.serve_forever()
            """
        let hook = try SpawnedProcess("/usr/bin/env", ["python3", "-c", receiver])
        defer { hook.signal(SIGKILL) }
        let port = try #require(hook.waitForLine { !$0.isEmpty }).trimmingCharacters(in: .whitespacesAndNewlines)
        let pid = try #require(a.process?.pid)
        for path in ["moved", "huge"] {
            let submitted = try CommandLineTests.agentmesh(
                "submit", "--home", a.home, "--capability", "echo", "--input", "{}", "--callback", "http://127.0.0.1:\(port)/\(path)")
            #expect(submitted.status == 0, "\(submitted.stderr)")
        }
        let before = MeshProcessTests.residentMiB(pid)
        #expect(hook.waitForLine(timeout: .seconds(20)) { $0.contains("the node stopped reading") } != nil, "\(hook.stdout)")
        #expect(MeshProcessTests.residentMiB(pid) - before < 64, "the node read the answer")
        Thread.sleep(forTimeInterval: 1)
        #expect(!hook.stdout.contains("/elsewhere"), "the redirect was followed: \(hook.stdout)")
        #expect(hook.stdout.components(separatedBy: "/moved").count == 2, "a redirect is not retried: \(hook.stdout)")
    }
}

/// Events on real nodes: published peer to peer, acted on once by every subscriber.
@Suite(.serialized) struct EventTests {
    typealias Node = MeshProcessTests.Node

    @Test func anEventReachesEachOfThreeSubscribersExactlyOnceEvenWhenThePublisherIsKilled() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-ev-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let names = ["p", "s1", "s2", "s3"]
        try MeshProcessTests.initHomes(root, names)
        let nodes = names.map { Node(home: "\(root)/\($0)") }
        defer { for node in nodes { node.signal(SIGKILL) } }
        let flow = "{\"name\": \"on-order\", \"steps\": [{\"name\": \"note\", \"capability\": \"echo\", \"input\": {\"order\": \"{{input.data.order}}\"}}]}"
        try flow.write(toFile: "\(root)/on-order.json", atomically: true, encoding: .utf8)
        try nodes[1].start(join: nil, capabilities: ["echo=builtin:echo"], extra: [
            "--subscribe", "orders.*=exec:sh -c 'cat >> \(root)/s1.out; echo >> \(root)/s1.out'",
            "--subscribe", "orders.created=workflow:\(root)/on-order.json",
        ])
        for index in 2...3 {
            try nodes[index].start(join: nodes[1].address, extra: [
                "--subscribe", "orders.created=exec:sh -c 'cat >> \(root)/\(names[index]).out; echo >> \(root)/\(names[index]).out'",
            ])
        }
        try nodes[0].start(join: nodes[1].address)
        #expect(MeshProcessTests.waitUntil { nodes.allSatisfy { $0.members().count { $0.status == "alive" } >= 3 } })
        var ids: [String] = []
        for number in 1...5 {
            let published = try CommandLineTests.agentmesh(
                "publish", "--home", nodes[0].home, "orders.created", "--data", "{\"order\": \(number)}", "--json")
            #expect(published.status == 0, "\(published.stderr)")
            let answer = try ControlAPI.decoder().decode(ControlAPI.PublishedEvent.self, from: Data(published.stdout.utf8))
            #expect(answer.members == 3 && answer.waitingFor.isEmpty, "every live member acknowledged it")
            ids.append(answer.id)
        }
        nodes[0].signal(SIGKILL)
        for name in ["s1", "s2", "s3"] {
            var lines: [String] = []
            #expect(MeshProcessTests.waitUntil(20) {
                lines = ((try? String(contentsOfFile: "\(root)/\(name).out", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
                return lines.count >= 5
            })
            Thread.sleep(forTimeInterval: 0.5)  // a duplicate would arrive meanwhile
            lines = ((try? String(contentsOfFile: "\(root)/\(name).out", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            let seen = lines.compactMap { line -> String? in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["id"] as? String
            }
            #expect(seen.sorted() == ids.sorted(), "\(name) acted on each event once: \(lines)")
        }
        // Every node keeps the history, and says what its subscription made of each event.
        let history = try nodes[2].client.get("/v1/events?topic=orders.created", as: ControlAPI.EventHistory.self)
        #expect(history.events.map(\.id) == ids)
        #expect(history.events.allSatisfy { $0.outcomes?.values.first == "ran" && $0.origin == "p" })
        let shown = try CommandLineTests.agentmesh("events", "--home", nodes[3].home, "--topic", "orders.created")
        #expect(shown.stdout.split(separator: "\n").count == 5 && shown.stdout.contains("from p"), "\(shown.stdout)")
        // The workflow subscription started one run per event, with the event as its input.
        var runs: [ControlAPI.WorkflowInfo] = []
        #expect(MeshProcessTests.waitUntil(20) {
            runs = (try? nodes[1].client.get("/v1/workflows", as: ControlAPI.WorkflowList.self))?.workflows ?? []
            return runs.count == 5 && runs.allSatisfy { $0.state == "completed" }
        })
        let orders = runs.compactMap { ($0.steps.first?.output?.value as? [String: Any])?["order"] as? Double }.sorted()
        #expect(orders == [1, 2, 3, 4, 5])
        let bad = try CommandLineTests.agentmesh("publish", "--home", nodes[1].home, "no spaces", "--data", "{}")
        #expect(bad.status == 64)
    }
}

extension EventTests {
    /// A trusted peer passing events on used to write any origin it liked: subscribers saw "b" for an event b never
    /// sent. Events are now signed by their origin; a forged one is refused and counts as misbehaviour.
    @Test func aPeerCannotPutAnotherNodesNameOnAnEvent() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-ev-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try MeshProcessTests.initHomes(root, ["a", "b", "m"])
        let (a, b) = (Node(home: "\(root)/a"), Node(home: "\(root)/b"))
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try a.start(join: nil)
        try b.start(join: a.address)
        #expect(MeshProcessTests.waitUntil { a.members().count { $0.status == "alive" } == 2 })
        let bIdentity = try NodeHome(path: "\(root)/b").loadIdentity()
        let mallory = NodeHome(path: "\(root)/m")
        let mIdentity = try mallory.loadIdentity()
        let port = try #require(a.address.split(separator: ":").last.flatMap { Int($0) })
        var (connection, session) = try BlockingConnection.handshake(
            host: "127.0.0.1", port: port,
            credentials: HandshakeCredentials(identity: mIdentity, networkKey: try mallory.loadNetworkKey(), listenAddress: "127.0.0.1:9"))
        let data = Array("{\"forged\":true}".utf8)
        var generator = SystemRandomNumberGenerator()
        // The unsigned form of earlier builds, naming b as its origin.
        var unsigned = ByteWriter()
        unsigned.u8(11)
        let first = TaskID(using: &generator)
        unsigned.u64(first.high)
        unsigned.u64(first.low)
        unsigned.u32(0)
        unsigned.shortString("orders")
        unsigned.nodeID(bIdentity.nodeID)
        unsigned.u64(0)
        unsigned.longBytes(data)
        // A signed event with b's key on it, signed by m.
        let second = EventID(using: &generator)
        let bKey = bIdentity.signingKey.publicKey
        let forged = MeshEvent(
            id: second, topic: "orders", origin: bIdentity.nodeID, time: 0, data: data,
            seal: MeshEvent.Seal(
                originKey: bKey,
                signature: mIdentity.signingKey.signature(
                    for: MeshEvent.signedBytes(id: second, topic: "orders", originKey: bKey, time: 0, data: data))))
        // The unsigned one last: a message that does not decode ends the session.
        for message in [TaskMessage.event(forged).encoded(after: 5), [5] + unsigned.bytes] {
            for frame in try session.seal(message: message) { try connection.sendFrame(frame) }
        }
        // A genuine event from b arrives, with b's name on it; the forged ones never do.
        let published = try CommandLineTests.agentmesh("publish", "--home", b.home, "orders", "--data", "{\"real\":true}")
        #expect(published.status == 0, "\(published.stderr)")
        var history: [ControlAPI.EventInfo] = []
        #expect(MeshProcessTests.waitUntil(10) {
            history = (try? a.client.get("/v1/events?topic=orders", as: ControlAPI.EventHistory.self))?.events ?? []
            return !history.isEmpty
        })
        Thread.sleep(forTimeInterval: 0.5)
        history = try a.client.get("/v1/events?topic=orders", as: ControlAPI.EventHistory.self).events
        #expect(history.count == 1 && history.allSatisfy { $0.origin == "b" && ($0.data.value as? [String: Any])?["real"] != nil },
            "only b's own event is kept: \(history.map { "\($0.origin) \($0.data.value)" })")
        #expect(MeshProcessTests.waitUntil(5) { (a.process?.stderr ?? "").contains("peer misbehaved") }, "\(a.process?.stderr ?? "")")
        connection.abort()
    }
}

/// A workflow file's YAML aliases may not grow it without bound (a 536-byte file made the CLI grow to 3 GiB).
@Suite struct WorkflowFileTests {
    @Test func anAliasBombIsRefusedBeforeItGrowsAndAnchorsWithinReasonStillWork() throws {
        let folder = "/tmp/am-yaml-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        var bomb = #"a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]"# + "\n"
        for level in 1...9 {
            bomb += "a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 9).joined(separator: ",") + "]\n"
        }
        try bomb.write(toFile: folder + "/bomb.yaml", atomically: true, encoding: .utf8)
        let refused = try CommandLineTests.agentmesh("workflow", "run", folder + "/bomb.yaml", "--home", folder + "/none")
        #expect(refused.status == 64, "\(refused.stderr)")
        #expect(refused.stderr.contains("grows past 100000 YAML values"), "\(refused.stderr)")

        let anchored = """
            name: anchored
            steps:
              first: &step {capability: echo, input: {n: 1}}
              second: *step
            """
        try anchored.write(toFile: folder + "/anchored.yaml", atomically: true, encoding: .utf8)
        let accepted = try CommandLineTests.agentmesh("workflow", "run", folder + "/anchored.yaml", "--home", folder + "/none")
        #expect(!accepted.stderr.contains("YAML"), "read as a workflow; it fails only for want of a node: \(accepted.stderr)")
    }
}

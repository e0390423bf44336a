import Foundation
import MeshControl
import MeshTestKit
import Testing

/// Rows of README's status table that nothing checked: every documented metric name, JSON logs, a workflow step's
/// attempts and timeout.
@Suite(.serialized) struct ReadmeClaimsTests {
    typealias Node = MeshProcessTests.Node

    static let readme: String = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return (try? String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)) ?? ""
    }()

    /// Metric names README documents, histograms by their base name.
    static func documentedMetrics() throws -> Set<String> {
        let pattern = try NSRegularExpression(pattern: "agentmesh_[a-z_]+")
        let range = NSRange(Self.readme.startIndex..., in: Self.readme)
        return Set(pattern.matches(in: Self.readme, range: range).compactMap { match in
            Range(match.range, in: Self.readme).map { String(Self.readme[$0]) }
        }.map { name in
            for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) { return String(name.dropLast(suffix.count)) }
            return name
        })
    }

    /// Two trusted nodes, a stranger refused, tasks that complete, fail and are retried, a workflow: every metric
    /// README names is exported by one of the two nodes (the limit's refusals, bans and declined offers are checked
    /// where they happen, in the flood and full-store tests).
    @Test func everyDocumentedMetricIsExportedAndJSONLogsAreOneObjectALine() throws {
        let root = try EverydayFlowTests.homes("a", "b", "stranger")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (aLine, bLine) = (try EverydayFlowTests.identityLine("\(root)/a"), try EverydayFlowTests.identityLine("\(root)/b"))
        #expect(try CommandLineTests.agentmesh("trust", "--home", "\(root)/a", bLine).status == 0)
        #expect(try CommandLineTests.agentmesh("trust", "--home", "\(root)/b", aLine).status == 0)
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b"), stranger = Node(home: "\(root)/stranger")
        defer { for node in [a, b, stranger] { node.signal(SIGKILL) } }
        try a.start(join: nil, open: false)
        try b.start(join: a.address, capabilities: ["echo=builtin:echo", "broken=exec:false"], extra: ["--log-format", "json"], open: false)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.count == 2 })
        try stranger.start(join: a.address, open: false)
        #expect(MeshProcessTests.waitUntil(10) { a.process?.stderr.contains("refused") == true })

        for input in ["1", "2"] {
            #expect(try CommandLineTests.agentmesh("submit", "--home", a.home, "--capability", "echo", "--input", input, "--wait").status == 0)
        }
        let broken = try CommandLineTests.agentmesh(
            "submit", "--home", a.home, "--capability", "broken", "--input", "{}", "--max-attempts", "2", "--wait")
        #expect(broken.status == 1, "\(broken.stderr)")
        let run = try WorkflowTests.start(a, #"{"name": "one", "steps": [{"name": "s", "capability": "echo"}]}"#)
        #expect(MeshProcessTests.waitUntil { (try? WorkflowTests.workflow(a, run))?.isFinished == true })
        Thread.sleep(forTimeInterval: 1.5)  // received-message counters are taken on a timer

        func exported(_ node: Node) throws -> Set<String> {
            let response = try node.client.request(method: "GET", path: "/metrics")
            return Set(String(decoding: response.body, as: UTF8.self).split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap { line in
                let name = line.prefix { $0 != "{" && $0 != " " }
                for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) { return String(name.dropLast(suffix.count)) }
                return String(name)
            })
        }
        let seen = try exported(a).union(try exported(b))
        let elsewhere: Set = ["agentmesh_limit_refusals_total", "agentmesh_bans_total", "agentmesh_offers_declined_total"]
        let documented = try Self.documentedMetrics()
        #expect(documented.count >= 20, "\(documented.sorted())")
        let missing = documented.subtracting(elsewhere).subtracting(seen)
        #expect(missing.isEmpty, "documented in README, exported by neither node: \(missing.sorted())")
        #expect(seen.contains("agentmesh_bans_total"), "a counter without labels is there from the start, at 0")

        // b logs JSON: one object a line, each with its time, level and message.
        let lines = (b.process?.stderr ?? "").split(separator: "\n")
        #expect(lines.count >= 3, "\(lines)")
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["time"] is String && object?["level"] is String && object?["message"] is String, "\(line)")
        }
    }

    /// A step's `attempts` and `timeout_seconds` reach its tasks: a failing step is tried that many times, and a
    /// slow one ends when its time is up rather than after the default 300 s.
    @Test func aWorkflowStepsAttemptsAndTimeoutReachItsTasks() throws {
        let root = try EverydayFlowTests.homes("a")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: ["broken=exec:false", "slow=exec:sleep 30"])
        let failing = try WorkflowTests.start(a, #"{"name": "f", "steps": [{"name": "s", "capability": "broken", "attempts": 3}]}"#)
        var run: ControlAPI.WorkflowInfo?
        #expect(MeshProcessTests.waitUntil(60) {
            run = try? WorkflowTests.workflow(a, failing)
            return run?.isFinished == true
        })
        let task = try #require(run?.steps.first?.tasks.first)
        let tried = try a.client.get("/v1/tasks/\(task)", as: ControlAPI.TaskInfo.self)
        #expect(tried.state == "failed" && tried.attempts.count == 3, "\(tried.attempts.map { $0.outcome ?? "-" })")

        let started = Date()
        let slow = try WorkflowTests.start(a, #"{"name": "t", "steps": [{"name": "s", "capability": "slow", "timeout_seconds": 2, "attempts": 1}]}"#)
        #expect(MeshProcessTests.waitUntil(25) {
            run = try? WorkflowTests.workflow(a, slow)
            return run?.isFinished == true
        })
        #expect(Date().timeIntervalSince(started) < 20, "ended by the step's 2 s, not the default 300 s")
        #expect(run?.state == "failed", "\(String(describing: run?.error))")
        let timedOut = try a.client.get("/v1/tasks/\(try #require(run?.steps.first?.tasks.first))", as: ControlAPI.TaskInfo.self)
        #expect(timedOut.state == "expired", "\(timedOut.state) \(timedOut.error ?? "")")
    }
}

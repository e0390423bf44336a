import Foundation
import MeshControl
import MeshTestKit
import MeshTransport
import Testing

/// Everyday flows a new user tried on the binary, each once broken: what they see now.
@Suite(.serialized) struct EverydayFlowTests {
    typealias Node = MeshProcessTests.Node

    static func agentmesh(_ arguments: String...) throws -> CommandLineTests.Outcome {
        try CommandLineTests.agentmesh(arguments)
    }

    /// A scratch folder with an initialised home per name (all on one network key); returns its path.
    static func homes(_ names: String...) throws -> String {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-flow-" + UUID().uuidString.prefix(8)
        try MeshProcessTests.initHomes(root, names)
        return root
    }

    static func identityLine(_ home: String) throws -> String {
        try String(contentsOfFile: "\(home)/identity.pub", encoding: .utf8)
    }

    /// After `untrust n3`, n3 leaves the running node's live members at once: `members` says it is untrusted, a
    /// task for what only n3 offers is refused at once (exit 5), and trusting it again brings it back.
    @Test func anUntrustedMemberLeavesTheLiveMembersAtOnce() throws {
        let root = try Self.homes("a", "n3")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (aLine, n3Line) = (try Self.identityLine("\(root)/a"), try Self.identityLine("\(root)/n3"))
        #expect(try Self.agentmesh("trust", "--home", "\(root)/a", n3Line).status == 0)
        #expect(try Self.agentmesh("trust", "--home", "\(root)/n3", aLine).status == 0)
        let a = Node(home: "\(root)/a")
        let n3 = Node(home: "\(root)/n3")
        defer { for node in [a, n3] { node.signal(SIGKILL) } }
        try a.start(join: nil, open: false)
        try n3.start(join: a.address, capabilities: ["sentiment=builtin:echo"], open: false)
        #expect(MeshProcessTests.waitUntil { a.status(of: "n3")?.status == "alive" })

        #expect(try Self.agentmesh("untrust", "--home", "\(root)/a", "n3").status == 0)
        #expect(MeshProcessTests.waitUntil(3) { a.status(of: "n3")?.status == "untrusted" }, "\(a.members())")
        let shown = try Self.agentmesh("members", "--home", "\(root)/a")
        #expect(shown.stdout.contains("untrusted"), "\(shown.stdout)")
        let started = Date()
        let refused = try Self.agentmesh(
            "submit", "--home", "\(root)/a", "--capability", "sentiment", "--input", "{}", "--wait", "--timeout", "20")
        #expect(refused.status == 5 && refused.stderr.contains("no live member offers sentiment"), "\(refused.stderr)")
        #expect(Date().timeIntervalSince(started) < 5, "refused at once, not after offers time out")
        Thread.sleep(forTimeInterval: 2)
        #expect(a.status(of: "n3")?.status == "untrusted", "n3's own probes and gossip do not bring it back")

        #expect(try Self.agentmesh("trust", "--home", "\(root)/a", n3Line).status == 0)
        #expect(MeshProcessTests.waitUntil(20) { a.status(of: "n3")?.status == "alive" }, "\(a.members())")
        let served = try Self.agentmesh(
            "submit", "--home", "\(root)/a", "--capability", "sentiment", "--input", "{\"x\":1}", "--wait", "--timeout", "20")
        #expect(served.status == 0 && served.stdout.contains("\"x\""), "\(served.stderr)")
    }

    /// A step for a capability nobody offers fails at once, as `submit` refuses it, and its run goes on by its
    /// `on_failure`; with `wait_for_capability` it waits and says why, and runs once a member offers it.
    @Test func aWorkflowStepForACapabilityNobodyOffersFailsAtOnceUnlessItWaits() throws {
        let root = try Self.homes("a", "b")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try a.start(join: nil, capabilities: ["echo=builtin:echo"])

        let started = Date()
        let failing = try WorkflowTests.start(a, """
            {"name": "nobody", "steps": [
              {"name": "first", "capability": "echo", "input": {"n": 1}},
              {"name": "classify", "capability": "sentiment", "after": "first", "timeout_seconds": 300}
            ]}
            """)
        var run: ControlAPI.WorkflowInfo?
        #expect(MeshProcessTests.waitUntil(20) {
            run = try? WorkflowTests.workflow(a, failing)
            return run?.isFinished == true
        })
        #expect(Date().timeIntervalSince(started) < 10, "failed at once, not after the step's 300 s")
        #expect(run?.state == "failed" && run?.steps.last?.state == "failed", "\(String(describing: run))")
        #expect(run?.error?.contains("no live member offers sentiment") == true, "\(run?.error ?? "")")

        let waiting = try WorkflowTests.start(a, """
            {"name": "patient", "steps": [
              {"name": "classify", "capability": "sentiment", "input": {"x": 1}, "wait_for_capability": true}
            ]}
            """)
        #expect(MeshProcessTests.waitUntil(10) {
            run = try? WorkflowTests.workflow(a, waiting)
            return run?.steps.first?.waiting?.contains("no live member offers sentiment") == true
        }, "\(String(describing: run))")
        let shown = try CommandLineTests.agentmesh("workflow", "show", "--home", a.home, String(waiting.prefix(8)))
        #expect(shown.stdout.contains("no live member offers sentiment"), "\(shown.stdout)")
        try b.start(join: a.address, capabilities: ["sentiment=builtin:echo"])
        #expect(MeshProcessTests.waitUntil(30) {
            run = try? WorkflowTests.workflow(a, waiting)
            return run?.isFinished == true
        })
        #expect(run?.state == "completed" && run?.steps.first?.waiting == nil, "\(String(describing: run))")
    }

    /// Three identical 1.4 s tasks were shown as 1.00 s, 2.00 s and 1.00 s: times were whole seconds.
    @Test func durationsAndTimesKeepTheirMilliseconds() throws {
        let root = try Self.homes("a")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: ["nap=exec:sleep 1.4"])
        for _ in 0..<3 {
            let submitted = try Self.agentmesh("submit", "--home", a.home, "--capability", "nap", "--input", "{}", "--wait")
            #expect(submitted.status == 0, "\(submitted.stderr)")
        }
        let listed = try Self.agentmesh("tasks", "--home", a.home)
        let durations = listed.stdout.split(separator: "\n").compactMap { line in
            line.split(separator: " ").first { $0.hasSuffix("s") && Double($0.dropLast()) != nil }.flatMap { Double($0.dropLast()) }
        }
        #expect(durations.count == 3 && durations.allSatisfy { (1.4..<2.0).contains($0) }, "\(listed.stdout)")
        let json = try Self.agentmesh("tasks", "--home", a.home, "--json")
        let times = try NSRegularExpression(pattern: #""submitted_at":"[0-9-]+T[0-9:]+\.[0-9]{3}Z""#)
        #expect(times.numberOfMatches(in: json.stdout, range: NSRange(json.stdout.startIndex..., in: json.stdout)) == 3, "\(json.stdout)")
    }

    /// `--listen 127.0.0.1:0 --advertise …` printed the advertised address everywhere and the port it got nowhere.
    @Test func theBoundPortIsShownBesideTheAdvertisedAddress() throws {
        let root = try Self.homes("a")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let node = try SpawnedProcess(
            CommandLineTests.binary, ["run", "--home", "\(root)/a", "--listen", "127.0.0.1:0", "--advertise", "10.9.8.7:7946"])
        defer { node.signal(SIGKILL) }
        let line = try #require(node.waitForLine(containing: "listening on"))
        let bound = try #require(line.components(separatedBy: "listening on ").last?.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(bound.hasPrefix("127.0.0.1:") && bound != "127.0.0.1:0", "\(line)")
        #expect(line.contains("advertised as 10.9.8.7:7946"), "\(line)")
        let status = try Self.agentmesh("status", "--home", "\(root)/a")
        #expect(status.stdout.contains("listen   \(bound), advertised as 10.9.8.7:7946"), "\(status.stdout)")
        let info = try ControlClient(socketPath: "\(root)/a/control.sock").get("/v1/node", as: ControlAPI.NodeInfo.self)
        #expect(info.listen == bound && info.advertise == "10.9.8.7:7946")
        #expect(node.stderr.contains(bound), "the log names the bound address too")
        node.signal(SIGKILL)
        node.waitForExit()

        // An advertised port of 0 takes the bound one.
        let second = try SpawnedProcess(
            CommandLineTests.binary, ["run", "--home", "\(root)/a", "--listen", "127.0.0.1:0", "--advertise", "10.9.8.7:0"])
        defer { second.signal(SIGKILL) }
        let secondLine = try #require(second.waitForLine(containing: "listening on"))
        let port = try #require(secondLine.split(separator: ":").last)
        #expect(secondLine.contains("advertised as 10.9.8.7:\(port)"), "\(secondLine)")
    }

    /// Reusing an idempotency key for a different request exited 5, the status that says no member offers the
    /// capability; it has its own status (6) and the API answers 422, as the IETF Idempotency-Key draft says.
    @Test func aReusedIdempotencyKeyHasItsOwnExitStatus() throws {
        let root = try Self.homes("a")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: ["echo=builtin:echo"])
        let first = try Self.agentmesh("submit", "--home", a.home, "--capability", "echo", "--input", "1", "--idempotency-key", "k-1")
        #expect(first.status == 0, "\(first.stderr)")
        let reused = try Self.agentmesh("submit", "--home", a.home, "--capability", "echo", "--input", "2", "--idempotency-key", "k-1")
        #expect(reused.status == 6 && reused.stderr.contains("was used for a different request"), "\(reused.status) \(reused.stderr)")
        let workflow = "\(root)/flow.json"
        try #"{"name": "w", "steps": [{"name": "s", "capability": "echo"}]}"#.write(toFile: workflow, atomically: true, encoding: .utf8)
        let byWorkflow = try Self.agentmesh("workflow", "run", "--home", a.home, workflow, "--idempotency-key", "k-1")
        #expect(byWorkflow.status == 6 && byWorkflow.stderr.contains("was used for a different request"), "\(byWorkflow.stderr)")
        let noMember = try Self.agentmesh("submit", "--home", a.home, "--capability", "nobody", "--input", "1")
        #expect(noMember.status == 5, "\(noMember.stderr)")
    }

    /// The rough edges a new user hit: the same mistake with the same status, values that start with '-', one of
    /// --wait and --follow, task --wait printing as submit --wait does, a Ctrl-C hint that works as printed, and
    /// --watch without screen codes in a pipe.
    @Test func theCLIsRoughEdges() throws {
        let root = try Self.homes("a")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let missingKey = try Self.agentmesh("init", "--home", "\(root)/b", "--network-key-file", "\(root)/no-such.key")
        #expect(missingKey.status == 64 && missingKey.stderr.contains("no-such.key"), "\(missingKey.status) \(missingKey.stderr)")
        let badName = try Self.agentmesh("init", "--home", "\(root)/c", "--name", "no spaces")
        #expect(badName.status == 64, "\(badName.stderr)")
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: ["echo=builtin:echo", "nap=exec:sleep 30"])
        let missingInput = try Self.agentmesh("submit", "--home", a.home, "--capability", "echo", "--input-file", "\(root)/none.json")
        #expect(missingInput.status == 64, "\(missingInput.stderr)")
        let both = try Self.agentmesh("submit", "--home", a.home, "--capability", "echo", "--input", "1", "--wait", "--follow")
        #expect(both.status == 64 && both.stderr.contains("give --wait or --follow"), "\(both.stderr)")
        let negative = try Self.agentmesh("submit", "--home", a.home, "--capability", "echo", "--input", "1", "--timeout", "-5")
        #expect(negative.status == 64 && negative.stderr.contains("--timeout must be more than 0"), "\(negative.stderr)")
        let minusFive = try Self.agentmesh("submit", "--home", a.home, "--capability", "echo", "--input", "-5", "--wait")
        #expect(minusFive.status == 0 && minusFive.stdout == "-5\n", "an input may start with '-': \(minusFive.stderr)")

        let id = try Self.agentmesh("submit", "--home", a.home, "--capability", "echo", "--input", "{\"x\":1}").stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let waited = try Self.agentmesh("task", "--home", a.home, String(id.prefix(8)), "--wait")
        #expect(waited.status == 0 && waited.stdout == "{\"x\":1}\n", "stdout holds the result once: \(waited.stdout)")
        #expect(waited.stderr.contains("task \(id)"), "the summary goes to stderr: \(waited.stderr)")

        let waiting = try SpawnedProcess(
            CommandLineTests.binary, ["submit", "--home", a.home, "--capability", "nap", "--input", "{}", "--wait"])
        defer { waiting.signal(SIGKILL) }
        #expect(MeshProcessTests.waitUntil(10) { waiting.stderr.contains("submitted; waiting") })
        waiting.signal(SIGINT)
        #expect(waiting.waitForExit() == 130)
        #expect(waiting.stderr.contains("agentmesh task --home \(a.home) ") && waiting.stderr.contains("agentmesh cancel --home \(a.home) "),
                "\(waiting.stderr)")

        let watching = try SpawnedProcess(CommandLineTests.binary, ["members", "--home", a.home, "--watch"])
        defer { watching.signal(SIGKILL) }
        #expect(MeshProcessTests.waitUntil(10) { watching.stdout.components(separatedBy: "(every 1 s").count > 2 })
        watching.signal(SIGKILL)
        #expect(!watching.stdout.contains("\u{1B}["), "no screen codes in a pipe")
    }

    /// What a review from a fresh clone found: filters went into URLs unencoded (`--topic 'a&topic=b'` listed topic
    /// b), Ctrl-C while following a task printed no hint, config.toml's and trust's bad input exited 1, an error
    /// echoed escape codes to the terminal, and a submission's unknown field was dropped without a word.
    @Test func whatAReviewFromAFreshCloneFound() throws {
        let root = try Self.homes("a")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: ["echo=builtin:echo", "nap=exec:sleep 30"])
        #expect(try Self.agentmesh("publish", "--home", a.home, "other", "--data", "1").status == 0)
        let injected = try Self.agentmesh("events", "--home", a.home, "--topic", "research&topic=other")
        #expect(injected.status == 64 && injected.stderr.contains("is not a topic name"), "\(injected.status) \(injected.stdout) \(injected.stderr)")
        let cut = try Self.agentmesh("events", "--home", a.home, "--topic", "other#")
        #expect(cut.status == 64 && !cut.stdout.contains("other"), "\(cut.stdout) \(cut.stderr)")
        let escape = try Self.agentmesh("publish", "--home", a.home, "a\u{1B}[31mred", "--data", "1")
        #expect(escape.status != 0 && !escape.stderr.contains("\u{1B}") && escape.stderr.contains("\\u{1b}"), "\(escape.stderr)")

        let following = try SpawnedProcess(
            CommandLineTests.binary, ["submit", "--home", a.home, "--capability", "nap", "--input", "{}", "--follow"])
        defer { following.signal(SIGKILL) }
        #expect(MeshProcessTests.waitUntil(10) { following.stderr.contains("submitted; waiting") })
        following.signal(SIGINT)
        #expect(following.waitForExit() == 130)
        #expect(following.stderr.contains("stopped waiting") && following.stderr.contains("--home \(a.home)"), "\(following.stderr)")

        let unknown = try a.client.request(method: "POST", path: "/v1/tasks", body: Array(#"{"capability":"echo","input":1,"timeout_second":5}"#.utf8))
        #expect(unknown.status == 400 && String(decoding: unknown.body, as: UTF8.self).contains("unknown field 'timeout_second'"))

        let garbage = try Self.agentmesh("trust", "--home", a.home, "garbage")
        #expect(garbage.status == 64, "\(garbage.stderr)")
        try "listen = \"127.0.0.1:0\"\nset_aside_broken_audit = \"yes\"\n".write(toFile: "\(root)/a/config.toml", atomically: true, encoding: .utf8)
        let badConfig = try Self.agentmesh("run", "--home", "\(root)/a")
        #expect(badConfig.status == 64 && badConfig.stderr.contains("set_aside_broken_audit"), "\(badConfig.stderr)")
    }
}

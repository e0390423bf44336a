import Foundation
import MeshControl
import MeshTestKit
import Testing

/// Issue 13's everyday flows on the built binary and real nodes: what a user types, what they see, and the exit
/// status a script can rely on.
@Suite(.serialized) struct EverydayUseTests {
    typealias Node = MeshProcessTests.Node

    static func agentmesh(_ arguments: String...) throws -> CommandLineTests.Outcome {
        try CommandLineTests.agentmesh(arguments)
    }

    static func task(_ home: String, _ id: String) throws -> ControlAPI.TaskInfo {
        try ControlClient(socketPath: home + "/control.sock").get("/v1/tasks/\(id)", as: ControlAPI.TaskInfo.self)
    }

    @Test func submitSaysWhatHappenedWithItsExitStatus() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-everyday-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try MeshProcessTests.initHomes(root, ["a"])
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: [
            "echo=builtin:echo", "bad=exec:sh -c 'echo broken >&2; exit 3'", "reject=exec:sh -c 'exit 65'",
            "slow=exec:sleep 30",
        ])
        let home = "\(root)/a"

        // Input from stdin; the task id goes to stderr at once, the result to stdout.
        let piped = try SpawnedProcess.run("/bin/sh", [
            "-c", "echo '{\"x\": 1}' | '\(CommandLineTests.binary)' submit --home \(home) --capability echo --input-file - --wait",
        ])
        #expect(piped.status == 0, "\(piped.stderr)")
        #expect(piped.stdout == "{\"x\":1}\n")
        #expect(piped.stderr.contains("submitted; waiting for it to end"))

        let missing = try Self.agentmesh("submit", "--home", home, "--capability", "echo", "--input-file", "/nonexistent/x.json")
        #expect(missing.status == 64)
        #expect(missing.stderr.contains("cannot read /nonexistent/x.json: no such file"), "\(missing.stderr)")
        let garbled = try Self.agentmesh("submit", "--home", home, "--capability", "echo", "--input", "{\"a\": x}")
        #expect(garbled.status == 64)
        #expect(garbled.stderr.contains("not valid JSON: Invalid value around character 6"), "\(garbled.stderr)")

        // Nobody offers it: refused at once with what is offered, unless asked to wait.
        let nobody = try Self.agentmesh("submit", "--home", home, "--capability", "nothere", "--input", "{}")
        #expect(nobody.status == 5)
        #expect(nobody.stderr.contains("no live member offers nothere; offered now: bad, echo, reject, slow"), "\(nobody.stderr)")
        let bench = try Self.agentmesh("bench", "--home", home, "--capability", "nothere", "--requests", "3")
        #expect(bench.status == 5, "bench fails fast: \(bench.stderr)")
        let queued = try Self.agentmesh(
            "submit", "--home", home, "--capability", "nothere", "--input", "{}", "--wait-for-capability", "--timeout", "1",
            "--wait")
        #expect(queued.status == 2)
        #expect(queued.stderr.contains("timed out after 1 s: no live member offers nothere"), "\(queued.stderr)")

        // A rejection is final; a failure is retried after a growing back-off.
        let rejected = try Self.agentmesh("submit", "--home", home, "--capability", "reject", "--input", "{}", "--wait")
        #expect(rejected.status == 1)
        #expect(rejected.stderr.contains("rejected the input (exit status 65)"), "\(rejected.stderr)")
        let started = Date()
        let failing = try Self.agentmesh(
            "submit", "--home", home, "--capability", "bad", "--input", "{}", "--max-attempts", "3", "--json", "--wait")
        let took = Date().timeIntervalSince(started)
        #expect(failing.status == 1)
        let failed = try ControlAPI.decoder().decode(ControlAPI.TaskInfo.self, from: Data(failing.stdout.utf8))
        #expect(failed.attempts.count == 3)
        #expect(failed.error == "sh exited with status 3: broken")
        // Back-offs of at least 0.25 s and 0.5 s (0.5 s and 1 s, less up to half of each as jitter); before the
        // fix the three attempts took a few milliseconds.
        #expect(took >= 0.75, "each retry waited its back-off: \(took) s")

        // A run past the deadline: one attempt, and the error says what happened where.
        let slow = try Self.agentmesh("submit", "--home", home, "--capability", "slow", "--input", "{}", "--timeout", "2", "--wait")
        #expect(slow.status == 2)
        #expect(slow.stderr.contains("timed out after 2 s on a"), "\(slow.stderr)")

        // Ctrl-C while waiting stops the waiting, not the task, and says how to wait again or cancel.
        let waiting = try SpawnedProcess(
            CommandLineTests.binary, ["submit", "--home", home, "--capability", "slow", "--input", "{}", "--wait"])
        #expect(MeshProcessTests.waitUntil(10) { waiting.stderr.contains("submitted; waiting") })
        waiting.signal(SIGINT)
        #expect(waiting.waitForExit() == 130)
        #expect(waiting.stderr.contains("stopped waiting; task ") && waiting.stderr.contains("--wait   waits again"))
        let goesOn = try #require(waiting.stderr.split(separator: " ").dropFirst().first { $0.count == 32 }.map(String.init))
        #expect(try Self.task(home, goesOn).state == "running")
        #expect(try Self.agentmesh("cancel", "--home", home, goesOn).status == 0)

        // Id prefixes, task --wait, cancel, and the list.
        let id = try Self.agentmesh("submit", "--home", home, "--capability", "slow", "--input", "{}").stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let shown = try Self.agentmesh("task", "--home", home, String(id.prefix(6)))
        #expect(shown.status == 0 && shown.stdout.contains("task \(id)"), "\(shown.stderr)")
        let canceled = try Self.agentmesh("cancel", "--home", home, String(id.prefix(8)))
        #expect(canceled.stdout == "task \(id) canceled\n")
        let waited = try Self.agentmesh("task", "--home", home, String(id.prefix(8)), "--wait")
        #expect(waited.status == 3)
        let tooShort = try Self.agentmesh("task", "--home", home, "abc")
        #expect(tooShort.status == 64 && tooShort.stderr.contains("at least the first 4"), "\(tooShort.stderr)")
        let unknown = try Self.agentmesh("task", "--home", home, "ffffffff")
        #expect(unknown.status == 1 && unknown.stderr.contains("no task on this node has an id starting with ffffffff"))
        let listed = try Self.agentmesh("tasks", "--home", home, "--limit", "2")
        let lines = listed.stdout.split(separator: "\n")
        #expect(lines.count == 3, "a header and the two newest: \(listed.stdout)")
        #expect(lines.first?.hasSuffix("DURATION") == true)
        #expect(lines.dropFirst().first?.hasPrefix(String(id.prefix(12))) == true, "newest first")
        let echoes = try Self.agentmesh("tasks", "--home", home, "--capability", "echo", "--since", "10m", "--json")
        let echoList = try ControlAPI.decoder().decode(ControlAPI.TaskList.self, from: Data(echoes.stdout.utf8))
        #expect(echoList.tasks.map(\.capability) == ["echo"])

        let noNode = try Self.agentmesh("submit", "--home", "\(root)/none", "--capability", "echo", "--input", "{}")
        #expect(noNode.status == 4)
        // A usage mistake is one sentence too, with where to read more, and exits 64.
        let usage = try Self.agentmesh("submit", "--capability", "echo")
        #expect(usage.status == 64)
        #expect(usage.stderr == "Error: give the input with exactly one of --input or --input-file (see 'agentmesh submit --help')\n")
    }

    /// An executor's stderr reaches the submitter while the task runs: `task ID --logs -f` prints it as it comes.
    @Test func aTasksStderrIsFollowedFromTheSubmittingNode() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-everyday-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try MeshProcessTests.initHomes(root, ["a", "b"])
        let a = Node(home: "\(root)/a")
        let b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try a.start(join: nil)
        try b.start(join: a.address, capabilities: [
            "chatty=exec:sh -c 'for i in 1 2 3; do echo \"step $i of $AGENTMESH_TASK_ID\" >&2; sleep 0.3; done; echo 7'",
        ])
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false })
        let id = try Self.agentmesh("submit", "--home", a.home, "--capability", "chatty", "--input", "{}").stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let started = Date()
        let followed = try Self.agentmesh("task", "--home", a.home, String(id.prefix(8)), "--logs", "-f")
        #expect(followed.status == 0, "\(followed.stderr)")
        #expect(followed.stdout == (1...3).map { "step \($0) of \(id)\n" }.joined(), "\(followed.stdout)")
        #expect(Date().timeIntervalSince(started) >= 0.5, "it followed the run instead of reading a finished log")
        #expect(try Self.task(a.home, id).state == "completed")
        let again = try Self.agentmesh("task", "--home", a.home, id, "--logs")
        #expect(again.stdout == followed.stdout, "kept after the run")
        // Without --logs, --follow follows progress events: this agent emitted none, so only the result is printed.
        let events = try Self.agentmesh("task", "--home", a.home, id, "--follow")
        #expect(events.status == 0 && events.stdout.split(separator: "\n").count == 1, "\(events.stdout)")
    }

    @Test func configFileNetworkKeyTextStatusAndTrustCommands() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-everyday-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try Self.agentmesh("init", "--home", "\(root)/a", "--name", "a").status == 0)

        // The network key as text, with a fingerprint both hosts can compare.
        let shown = try Self.agentmesh("id", "--home", "\(root)/a", "--network")
        let key = try #require(shown.stdout.split(separator: "\n").first?.split(separator: " ").last.map(String.init))
        let fingerprint = try #require(shown.stdout.split(separator: "\n").dropFirst().first?.split(separator: " ").last.map(String.init))
        #expect(key.count == 64 && fingerprint.count == 19)
        let joined = try Self.agentmesh("init", "--home", "\(root)/b", "--name", "b", "--network-key", key)
        #expect(joined.status == 0 && joined.stdout.contains(fingerprint), "\(joined.stdout)")
        let badKey = try Self.agentmesh("init", "--home", "\(root)/c", "--network-key", "abc")
        #expect(badKey.status != 0 && badKey.stderr.contains("is not a network key"))

        // Every run setting may live in config.toml; a typo is refused by name.
        let config = "\(root)/a/config.toml"
        try "lisen = \"127.0.0.1:0\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let typo = try Self.agentmesh("run", "--home", "\(root)/a")
        #expect(typo.status == 64 && typo.stderr.contains("unknown key 'lisen'"), "\(typo.stderr)")
        try """
            listen = "127.0.0.1:0"
            timers = "local"
            open = true
            capabilities = ["echo=builtin:echo", "shout=exec:sh -c 'tr a-z A-Z'"]

            [limits]
            offers = "50/s:50"
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let missingCommand = try Self.agentmesh("run", "--home", "\(root)/a", "--capability", "x=exec:no-such-agent-here")
        #expect(missingCommand.status == 64 && missingCommand.stderr.contains("'no-such-agent-here' is not an executable"))
        let a = try SpawnedProcess(CommandLineTests.binary, ["run", "--home", "\(root)/a"])
        defer { a.signal(SIGKILL) }
        #expect(a.waitForLine(containing: "listening on") != nil, "\(a.stderr)")
        let shouted = try Self.agentmesh("submit", "--home", "\(root)/a", "--capability", "shout", "--input", "\"hi\"", "--wait")
        #expect(shouted.stdout == "\"HI\"\n", "quotes in exec: are parsed as a shell would: \(shouted.stderr)")
        let status = try Self.agentmesh("status", "--home", "\(root)/a")
        #expect(status.stdout.contains("version  \(AgentMeshVersion.current)"))
        #expect(status.stdout.contains("store    ok") && status.stdout.contains("audit    ok"))
        #expect(status.stdout.contains("traffic  0 messages (0 bytes) received from peers"), "\(status.stdout)")
        #expect(status.stdout.contains("(open: any holder of the network key may join)"))
        let limits = try ControlClient(socketPath: "\(root)/a/control.sock").get("/v1/limits", as: ControlAPI.Limits.self)
        #expect(limits.defaults["offers"] == "50/s:50")
        let health = try ControlClient(socketPath: "\(root)/a/control.sock").get("/v1/health", as: ControlAPI.Health.self)
        #expect(health.status == "ok")
        let limitsShown = try Self.agentmesh("limits", "--home", "\(root)/a")
        #expect(limitsShown.status == 0 && limitsShown.stdout.contains("offers=50/s:50"), "config.toml's [limits]: \(limitsShown.stdout)")
        #expect(limitsShown.stdout.hasSuffix("no peer has sent anything yet\n"))
        let limitsNoNode = try Self.agentmesh("limits", "--home", "\(root)/b")
        #expect(limitsNoNode.status == 4 && limitsNoNode.stderr.contains("no node is running here"))
        // The other client commands' mistakes: no node, a bad id, an unknown task.
        for arguments in [["leave"], ["bench", "--capability", "echo"], ["cancel", "abcd1234"], ["task", "abcd1234"], ["tasks"]] {
            let outcome = try CommandLineTests.agentmesh(Array(arguments.prefix(1)) + ["--home", "\(root)/b"] + arguments.dropFirst())
            #expect(outcome.status == 4, "\(arguments): \(outcome.stderr)")
        }
        let badID = try Self.agentmesh("cancel", "--home", "\(root)/a", "not-an-id")
        #expect(badID.status == 64 && badID.stderr.contains("is not a task id"), "\(badID.stderr)")
        let unknownTask = try Self.agentmesh("cancel", "--home", "\(root)/a", String(repeating: "0", count: 32))
        #expect(unknownTask.status == 1 && unknownTask.stderr.contains("no task 000"), "\(unknownTask.stderr)")

        // peers, and untrust by name.
        let bLine = try String(contentsOfFile: "\(root)/b/identity.pub", encoding: .utf8)
        #expect(try Self.agentmesh("trust", "--home", "\(root)/a", bLine).status == 0)
        #expect(try Self.agentmesh("peers", "--home", "\(root)/a").stdout.contains("b "))
        let nope = try Self.agentmesh("untrust", "--home", "\(root)/a", "nobody")
        #expect(nope.status != 0 && nope.stderr.contains("trusted: b "), "\(nope.stderr)")
        #expect(try Self.agentmesh("untrust", "--home", "\(root)/a", "b").status == 0)
        #expect(try Self.agentmesh("peers", "--home", "\(root)/a").stdout.contains("no trusted peers"))
    }

    /// Leaving with tasks in progress: without --drain the submitter offers them elsewhere at once; with --drain
    /// the leaving node finishes them first.
    @Test func aLeavingExecutorsTasksAreOfferedElsewhereAtOnceOrFinishedWithDrain() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-everyday-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try MeshProcessTests.initHomes(root, ["a", "b", "c"])
        let nodes = ["a", "b", "c"].map { Node(home: "\(root)/\($0)") }
        defer { for node in nodes { node.signal(SIGKILL) } }
        try nodes[0].start(join: nil)
        // 4 s a run: on a loaded machine a 2 s run sometimes ended before the leave reached its node.
        for node in nodes.dropFirst() { try node.start(join: nodes[0].address, capabilities: ["work=exec:sleep 4"]) }
        #expect(MeshProcessTests.waitUntil { nodes[0].members().filter { $0.status == "alive" }.count == 3 })

        func runOn(_ id: String) -> String? {
            var ranOn: String?
            _ = MeshProcessTests.waitUntil(10) {
                ranOn = (try? Self.task("\(root)/a", id)).flatMap { $0.state == "running" ? $0.executedBy : nil }
                return ranOn != nil
            }
            return ranOn
        }

        let first = try nodes[0].submit("work", number: 1)
        let executor = try #require(runOn(first))
        let leaving = executor == "b" ? nodes[1] : nodes[2]
        let left = Date()
        #expect(try Self.agentmesh("leave", "--home", leaving.home).status == 0)
        #expect(MeshProcessTests.waitUntil(15) { (try? Self.task("\(root)/a", first))?.state == "completed" })
        let done = try Self.task("\(root)/a", first)
        #expect(done.attempts.count == 2 && done.executedBy != executor, "offered to the other member: \(done.attempts)")
        #expect(Date().timeIntervalSince(left) < 9, "at once (then its 4 s run elsewhere), not after a failure detector's timeout")

        let remaining = executor == "b" ? nodes[2] : nodes[1]
        let second = try nodes[0].submit("work", number: 2)
        #expect(runOn(second) != nil)
        let drained = try Self.agentmesh("leave", "--home", remaining.home, "--drain", "--drain-timeout", "20")
        #expect(drained.status == 0, "\(drained.stderr)")
        let finished = try Self.task("\(root)/a", second)
        #expect(finished.state == "completed" && finished.attempts.count == 1, "finished before leaving: \(finished.attempts)")
    }
}

import Foundation
import MeshCore
@testable import MeshExecutors
import Testing

/// The `exec:` executor against an agent that ignores SIGTERM: a deadline or a cancel still ends it. Such an agent
/// once kept running after a cancel, after its deadline and after its node stopped (an orphan), its slot busy.
@Suite struct ExecExecutorTests {
    static func run(pidFile: String, timeout: Duration) async -> TaskOutcome {
        var generator = SystemRandomNumberGenerator()
        let context = TaskExecution.Context(taskID: TaskID(using: &generator), attempt: 1, deadline: Date().addingTimeInterval(60))
        let stubborn = "echo $$ > \(pidFile); trap '' TERM; while :; do sleep 0.05; done"
        return await TaskExecution.run(.exec(command: "sh", arguments: ["-c", stubborn]), input: [], timeout: timeout, context: context)
    }

    static func isRunning(_ pidFile: String) -> Bool {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
        else { return false }
        return kill(pid, 0) == 0
    }

    @Test func anAgentThatIgnoresSIGTERMIsKilledAtItsDeadline() async throws {
        let pidFile = "/tmp/am-stubborn-\(UUID().uuidString.prefix(8)).pid"
        defer { try? FileManager.default.removeItem(atPath: pidFile) }
        let started = ContinuousClock.now
        let outcome = await Self.run(pidFile: pidFile, timeout: .seconds(1))
        #expect(outcome == .timedOut("timed out after 1.0 s; sh was killed"))
        // Bounded only to tell "ended" from "never" on a loaded machine: the old code never ended it.
        #expect(ContinuousClock.now - started < .seconds(60), "ended at its deadline, not when the agent chose")
        #expect(!Self.isRunning(pidFile))
    }

    @Test func anAgentThatIgnoresSIGTERMIsKilledWhenItsRunIsCanceled() async throws {
        let pidFile = "/tmp/am-stubborn-\(UUID().uuidString.prefix(8)).pid"
        defer { try? FileManager.default.removeItem(atPath: pidFile) }
        let run = Task { await Self.run(pidFile: pidFile, timeout: .seconds(120)) }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: pidFile) { try await Task.sleep(for: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(100))
        let started = ContinuousClock.now
        run.cancel()
        #expect(await run.value == .canceled)
        #expect(ContinuousClock.now - started < .seconds(60), "canceled, not waited out (120 s)")
        #expect(!Self.isRunning(pidFile))
    }
}

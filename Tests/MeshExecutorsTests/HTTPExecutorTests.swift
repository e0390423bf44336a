import Foundation
import MeshCore
@testable import MeshExecutors
import MeshTestKit
import Testing

/// The `http:` executor on its own, against an agent that takes the request and never answers.
@Suite struct HTTPExecutorTests {
    /// Prints its port, then a line each time a client hangs up.
    static let silentAgent = """
        import socket, threading
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        print(listener.getsockname()[1], flush=True)
        def hold(connection):
            while connection.recv(65536):
                pass
            print("closed", flush=True)
        while True:
            threading.Thread(target=hold, args=(listener.accept()[0],), daemon=True).start()
        """

    static func run(_ url: String, timeout: Duration) async -> TaskOutcome {
        var generator = SystemRandomNumberGenerator()
        let context = TaskExecution.Context(taskID: TaskID(using: &generator), attempt: 1, deadline: Date().addingTimeInterval(60))
        return await TaskExecution.run(.http(url: url), input: Array("{}".utf8), timeout: timeout, context: context)
    }

    @Test func anAgentThatNeverAnswersTimesOutOrIsCanceledAndItsConnectionIsClosed() async throws {
        let agent = try SpawnedProcess("/usr/bin/env", ["python3", "-c", Self.silentAgent])
        defer { agent.signal(SIGKILL) }
        let port = try #require(agent.waitForLine { !$0.isEmpty }).trimmingCharacters(in: .whitespacesAndNewlines)
        let url = "http://127.0.0.1:\(port)/run"
        let hangUpCount = { agent.stdout.split(separator: "\n").filter { $0 == "closed" }.count }
        func hangUps(reach count: Int) async -> Bool {
            for _ in 0..<500 where hangUpCount() < count { try? await Task.sleep(for: .milliseconds(10)) }
            return hangUpCount() == count
        }

        let timedOut = await Self.run(url, timeout: .seconds(1))
        #expect(timedOut == .timedOut("\(url) did not answer within 1.0 s"))
        #expect(await hangUps(reach: 1), "the connection was closed")

        let started = ContinuousClock.now
        let run = Task { await Self.run(url, timeout: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(300))
        run.cancel()
        #expect(await run.value == .canceled)
        #expect(ContinuousClock.now - started < .seconds(30), "canceled, not waited out (60 s), even on a busy machine")
        #expect(await hangUps(reach: 2), "the connection was closed")

        #expect(await Self.run("http://", timeout: .seconds(1)) == .failure("invalid URL http://"))
    }
}

import Dispatch
package import Foundation
package import MeshCore

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Runs one task with the executor its capability names. Every way an executor can go wrong (a command that does
/// not exist, a non-zero exit, a service that is down or answers garbage, a deadline) becomes a `.failure` with a
/// sentence a user can act on; cancellation stops the process or the request.
package enum TaskExecution {
    /// How much of stderr a failure carries.
    static let stderrTailLength = 2048
    /// The `exec:` exit status that rejects the input for good (`EX_DATAERR` in sysexits.h): no retry.
    package static let rejectingExitStatus: Int32 = 65

    /// What an agent is told about the run it serves: `AGENTMESH_TASK_ID`, `AGENTMESH_ATTEMPT` and
    /// `AGENTMESH_DEADLINE` (RFC 3339, UTC) in an `exec:` agent's environment, `X-AgentMesh-Task-Id`,
    /// `X-AgentMesh-Attempt` and `X-AgentMesh-Deadline` headers for an `http:` agent.
    package struct Context: Sendable {
        package let taskID: TaskID
        package let attempt: UInt32
        package let deadline: Date

        package init(taskID: TaskID, attempt: UInt32, deadline: Date) {
            self.taskID = taskID
            self.attempt = attempt
            self.deadline = deadline
        }

        var fields: [(name: String, value: String)] {
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            return [("Task-Id", self.taskID.description), ("Attempt", "\(self.attempt)"),
                    ("Deadline", formatter.string(from: self.deadline))]
        }

        var environment: [String: String] {
            Dictionary(uniqueKeysWithValues: self.fields.map {
                ("AGENTMESH_" + $0.name.uppercased().replacingOccurrences(of: "-", with: "_"), $0.value)
            })
        }
    }

    /// `stderr` receives what an `exec:` agent writes to stderr, as it writes it.
    package static func run(
        _ executor: CapabilitySpec.Executor, input: [UInt8], timeout: Duration, context: Context,
        stderr: @escaping @Sendable ([UInt8]) -> Void = { _ in }
    ) async -> TaskOutcome {
        guard timeout > .zero else { return .timedOut("the deadline passed before the task started") }
        switch executor {
        case .builtinEcho:
            return .success(input)
        case .exec(let command, let arguments):
            return await self.runProcess(
                command: command, arguments: arguments, input: input, timeout: timeout, environment: context.environment,
                stderr: stderr)
        case .http(let url):
            return await self.post(url: url, input: input, timeout: timeout, headers: context.fields)
        }
    }

    // MARK: exec

    /// Nothing here blocks a Swift concurrency thread: pipe I/O and the wait for the exit run on GCD threads, and
    /// cancellation signals the process group. (On two cores, two blocked pool threads would freeze the whole node.)
    private static func runProcess(
        command: String, arguments: [String], input: [UInt8], timeout: Duration, environment: [String: String],
        stderr: @escaping @Sendable ([UInt8]) -> Void
    ) async -> TaskOutcome {
        let process: ChildProcess
        do {
            process = try ChildProcess(command: command, arguments: arguments, input: input, environment: environment)
        } catch {
            return .failure(error.description)
        }
        async let output = process.collectOutput(
            limit: TaskMessage.maximumInputLength, tailLength: Self.stderrTailLength, onStderr: stderr)
        let ending = await withTaskCancellationHandler {
            await withTaskGroup(of: Ending.self) { group in
                group.addTask {
                    await process.waitForExit()
                    return Task.isCancelled ? .canceled : .exited
                }
                group.addTask {
                    do { try await Task.sleep(for: timeout) } catch { return .canceled }
                    return .timedOut
                }
                let first = await group.next() ?? .exited
                group.cancelAll()
                return first
            }
        } onCancel: {
            process.send(SIGTERM)
        }
        if ending != .exited {
            process.send(SIGTERM)
            for _ in 0..<40 where !process.hasExited { try? await Task.sleep(for: .milliseconds(5)) }
            process.send(SIGKILL)
            await process.waitForExit()
        }
        let termination = process.reap()
        let (stdout, stderrTail) = await output
        switch ending {
        case .canceled: return .canceled
        case .timedOut:
            return .timedOut("timed out after \(String(format: "%.1f", timeout.seconds)) s; \(command) was killed")
        case .exited: break
        }
        let tail = String(decoding: stderrTail, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let how: String
        switch termination {
        case .exited(0):
            guard let stdout else {
                return .failure("\(command) wrote more than \(TaskMessage.maximumInputLength) bytes to stdout")
            }
            return .success(stdout)
        case .exited(Self.rejectingExitStatus):
            return .rejected("\(command) rejected the input (exit status \(Self.rejectingExitStatus))"
                + (tail.isEmpty ? "" : ": \(tail)"))
        case .exited(let status): how = "exited with status \(status)"
        case .signaled(let signal): how = "was killed by signal \(signal)"
        case .unknown: how = "ended with an unknown status"
        }
        return .failure("\(command) \(how)" + (tail.isEmpty ? "" : ": \(tail)"))
    }

    private enum Ending: Sendable { case exited, timedOut, canceled }

    // MARK: http

    private static func post(
        url: String, input: [UInt8], timeout: Duration, headers: [(name: String, value: String)]
    ) async -> TaskOutcome {
        guard let endpoint = URL(string: url) else { return .failure("invalid URL \(url)") }
        var request = URLRequest(url: endpoint, timeoutInterval: Double(timeout.components.seconds) + 1)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        for header in headers { request.setValue(header.value, forHTTPHeaderField: "X-AgentMesh-" + header.name) }
        request.httpBody = Data(input)
        do {
            let (body, response) = try await URLSession.shared.data(for: request)
            let status = (response as? HTTPURLResponse)?.statusCode ?? 0
            guard (200..<300).contains(status) else {
                let text = String(decoding: body.prefix(Self.stderrTailLength), as: UTF8.self)
                let sentence = "\(url) answered HTTP \(status)" + (text.isEmpty ? "" : ": \(text)")
                // A 4xx says the request itself is wrong, except a timeout (408) and too many requests (429).
                let isFinal = (400..<500).contains(status) && status != 408 && status != 429
                return isFinal ? .rejected(sentence) : .failure(sentence)
            }
            guard (try? JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed])) != nil else {
                return .failure("\(url) answered with a body that is not JSON")
            }
            return .success(Array(body))
        } catch is CancellationError {
            return .canceled
        } catch let error as URLError where error.code == .timedOut {
            return .timedOut("\(url) did not answer within \(String(format: "%.1f", timeout.seconds)) s")
        } catch {
            if Task.isCancelled { return .canceled }
            return .failure("\(url) unreachable: \(error.localizedDescription)")
        }
    }
}

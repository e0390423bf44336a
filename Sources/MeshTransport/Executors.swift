import Dispatch
import Foundation
import MeshCore

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Runs one task with the executor its capability names. Every way an executor can go wrong (a command that does
/// not exist, a non-zero exit, a service that is down or answers garbage, a deadline) becomes a `.failure` with a
/// sentence a user can act on; cancellation stops the process or the request.
enum TaskExecution {
    /// How much of stderr a failure carries.
    static let stderrTailLength = 2048

    static func run(_ executor: CapabilitySpec.Executor, input: [UInt8], timeout: Duration) async -> TaskOutcome {
        guard timeout > .zero else { return .failure("deadline passed before the task started") }
        switch executor {
        case .builtinEcho:
            return .success(input)
        case .exec(let command, let arguments):
            return await self.runProcess(command: command, arguments: arguments, input: input, timeout: timeout)
        case .http(let url):
            return await self.post(url: url, input: input, timeout: timeout)
        }
    }

    // MARK: exec

    /// Nothing here blocks a Swift concurrency thread: pipe I/O runs on GCD threads, the exit is observed through
    /// the termination handler, and cancellation signals the process. (On two cores, two blocked pool threads
    /// would freeze the whole node.)
    private static func runProcess(command: String, arguments: [String], input: [UInt8], timeout: Duration) async
        -> TaskOutcome
    {
        let process = Process()
        if command.contains("/") {
            process.executableURL = URL(fileURLWithPath: command)
            process.arguments = arguments
        } else {
            // Resolve through PATH like a shell would, but without a shell: arguments are never re-interpreted.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [command] + arguments
        }
        let stdin = Pipe()
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        let exit = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        process.terminationHandler = { _ in
            exit.continuation.yield()
            exit.continuation.finish()
        }
        do {
            try process.run()
        } catch {
            return .failure("cannot start \(command): \(error.localizedDescription)")
        }
        let pid = process.processIdentifier
        Self.onIOThread {
            // A process that exits without reading its input closes the pipe: not an error of ours.
            signal(SIGPIPE, SIG_IGN)
            try? stdin.fileHandleForWriting.write(contentsOf: Data(input))
            try? stdin.fileHandleForWriting.close()
        }
        async let output = Self.readToEnd(stdout.fileHandleForReading)
        async let errors = Self.readToEnd(stderr.fileHandleForReading)

        let ending = await withTaskCancellationHandler {
            await withTaskGroup(of: Ending.self) { group in
                group.addTask {
                    for await _ in exit.stream { return .exited }
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
            kill(pid, SIGTERM)
        }
        if ending != .exited {
            kill(pid, SIGTERM)
            try? await Task.sleep(for: .milliseconds(200))
            if process.isRunning { kill(pid, SIGKILL) }
        }
        let (stdoutBytes, stderrBytes) = await (output, errors)
        while process.isRunning { try? await Task.sleep(for: .milliseconds(5)) }
        switch ending {
        case .canceled: return .canceled
        case .timedOut:
            return .failure("timed out after \(String(format: "%.1f", timeout.seconds)) s; \(command) was killed")
        case .exited: break
        }
        let tail = String(decoding: stderrBytes.suffix(Self.stderrTailLength), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            if process.terminationReason == .exit, process.terminationStatus == 127,
                process.executableURL?.path == "/usr/bin/env"
            {
                return .failure("\(command): command not found")
            }
            let how = process.terminationReason == .exit
                ? "exited with status \(process.terminationStatus)" : "was killed by signal \(process.terminationStatus)"
            return .failure("\(command) \(how)" + (tail.isEmpty ? "" : ": \(tail)"))
        }
        return .success(stdoutBytes)
    }

    private enum Ending: Sendable { case exited, timedOut, canceled }

    private static func onIOThread(_ work: @escaping @Sendable () -> Void) {
        DispatchQueue.global().async(execute: work)
    }

    private static func readToEnd(_ handle: FileHandle) async -> [UInt8] {
        await withCheckedContinuation { continuation in
            Self.onIOThread { continuation.resume(returning: Array((try? handle.readToEnd()) ?? Data())) }
        }
    }

    // MARK: http

    private static func post(url: String, input: [UInt8], timeout: Duration) async -> TaskOutcome {
        guard let endpoint = URL(string: url) else { return .failure("invalid URL \(url)") }
        var request = URLRequest(url: endpoint, timeoutInterval: Double(timeout.components.seconds) + 1)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = Data(input)
        do {
            let (body, response) = try await URLSession.shared.data(for: request)
            let status = (response as? HTTPURLResponse)?.statusCode ?? 0
            guard (200..<300).contains(status) else {
                let text = String(decoding: body.prefix(Self.stderrTailLength), as: UTF8.self)
                return .failure("\(url) answered HTTP \(status)" + (text.isEmpty ? "" : ": \(text)"))
            }
            guard (try? JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed])) != nil else {
                return .failure("\(url) answered with a body that is not JSON")
            }
            return .success(Array(body))
        } catch is CancellationError {
            return .canceled
        } catch {
            if Task.isCancelled { return .canceled }
            return .failure("\(url) unreachable: \(error.localizedDescription)")
        }
    }
}

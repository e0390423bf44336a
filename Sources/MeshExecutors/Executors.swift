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
        /// The conversation the task belongs to (`AGENTMESH_CONTEXT_ID`, `X-AgentMesh-Context-Id`).
        package let contextID: String?
        /// W3C trace context whose parent is the executing node's span (`TRACEPARENT`, `traceparent`).
        package let traceparent: String?
        /// Where the run's artifacts are: nil for runs that take and give none (builtin agents).
        package let artifacts: ArtifactFolders?

        package init(
            taskID: TaskID, attempt: UInt32, deadline: Date, contextID: String? = nil, traceparent: String? = nil,
            artifacts: ArtifactFolders? = nil
        ) {
            self.taskID = taskID
            self.attempt = attempt
            self.deadline = deadline
            self.contextID = contextID
            self.traceparent = traceparent
            self.artifacts = artifacts
        }

        var fields: [(name: String, value: String)] {
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            return [("Task-Id", self.taskID.description), ("Attempt", "\(self.attempt)"),
                    ("Deadline", formatter.string(from: self.deadline))]
                + (self.contextID.map { [("Context-Id", $0)] } ?? [])
        }

        var environment: [String: String] {
            var environment = Dictionary(uniqueKeysWithValues: self.fields.map {
                ("AGENTMESH_" + $0.name.uppercased().replacingOccurrences(of: "-", with: "_"), $0.value)
            })
            if let traceparent = self.traceparent { environment["TRACEPARENT"] = traceparent }
            if let artifacts = self.artifacts {
                environment["AGENTMESH_ARTIFACTS_IN"] = artifacts.input
                environment["AGENTMESH_ARTIFACTS_OUT"] = artifacts.output
            }
            return environment
        }
    }

    /// What a run reports while it goes on, and the answers it may be given.
    package struct Channels: Sendable {
        /// What an `exec:` agent writes to stderr, as it writes it.
        package var stderr: @Sendable ([UInt8]) -> Void = { _ in }
        /// Progress events (each a JSON value), as the agent emits them.
        package var progress: @Sendable ([[UInt8]]) -> Void = { _ in }
        /// The agent asks a person a question (JSON) and waits for the answer on `answers`.
        package var question: @Sendable ([UInt8]) -> Void = { _ in }
        package var answers = AgentInput()

        package init() {}
    }

    /// Runs the task. While it waits for an answer, the timeout is the caller's to enforce (by cancelling).
    package static func run(
        _ executor: CapabilitySpec.Executor, input: [UInt8], timeout: Duration, context: Context, channels: Channels = Channels()
    ) async -> TaskOutcome {
        let stderr = channels.stderr, progress = channels.progress
        guard timeout > .zero else { return .timedOut("the deadline passed before the task started") }
        switch executor {
        case .builtinEcho:
            return .success(input)
        case .builtinStream:
            return await self.stream(input: input, progress: progress)
        case .exec(let command, let arguments):
            return await self.runProcess(
                command: command, arguments: arguments, input: input, timeout: timeout, environment: context.environment,
                stderr: stderr,
                progress: { lines in
                    var events: [[UInt8]] = []
                    for line in lines {
                        if let question = Self.question(in: line) {
                            if !events.isEmpty { progress(events) }
                            events = []
                            channels.question(question)
                        } else {
                            events.append(Self.jsonEvent(line))
                        }
                    }
                    if !events.isEmpty { progress(events) }
                },
                answers: channels.answers)
        case .http(let url):
            return await self.postUntilAnswered(
                url: url, input: input, timeout: timeout, headers: context.fields, traceparent: context.traceparent,
                artifacts: context.artifacts, channels: channels)
        }
    }

    /// `{"agentmesh": "input-required", "question": …}`: the question, as JSON.
    static func question(in line: [UInt8]) -> [UInt8]? {
        guard line.count <= TaskMessage.maximumExchange,
            let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any],
            object["agentmesh"] as? String == "input-required"
        else { return nil }
        return (try? JSONSerialization.data(withJSONObject: object["question"] ?? NSNull(), options: [.fragmentsAllowed, .sortedKeys]))
            .map(Array.init)
    }

    /// An `http:` agent that answers 202 `{"input_required": QUESTION, "state": …}` waits for a person: once the
    /// answer is given it is POSTed `{"input": …, "reply": …, "state": …}` with `X-AgentMesh-Reply: 1`.
    private static func postUntilAnswered(
        url: String, input: [UInt8], timeout: Duration, headers: [(name: String, value: String)], traceparent: String?,
        artifacts: ArtifactFolders?, channels: Channels
    ) async -> TaskOutcome {
        var body = input
        var extra: [(name: String, value: String)] = []
        for _ in 0..<100 {
            let outcome = await self.post(
                url: url, input: body, timeout: timeout, headers: headers + extra, traceparent: traceparent, artifacts: artifacts,
                progress: channels.progress)
            guard case .asking(let question, let state) = outcome else { return outcome.taskOutcome }
            channels.question(question)
            guard let reply = await channels.answers.next() else { return .canceled }
            var resumed: [String: Any] = [:]
            resumed["input"] = (try? JSONSerialization.jsonObject(with: Data(input), options: [.fragmentsAllowed])) ?? NSNull()
            resumed["reply"] = (try? JSONSerialization.jsonObject(with: Data(reply), options: [.fragmentsAllowed])) ?? NSNull()
            resumed["state"] = state.flatMap { try? JSONSerialization.jsonObject(with: Data($0), options: [.fragmentsAllowed]) } ?? NSNull()
            body = (try? JSONSerialization.data(withJSONObject: resumed, options: [.sortedKeys])).map(Array.init) ?? input
            extra = [("Reply", "1")]
        }
        return .failure("\(url) asked more than 100 questions in one run")
    }

    /// A line an agent wrote as a progress event: kept as it is when it is JSON, otherwise as a JSON string.
    static func jsonEvent(_ line: [UInt8]) -> [UInt8] {
        if (try? JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed])) != nil { return line }
        let text = String(decoding: line, as: UTF8.self)
        return (try? JSONSerialization.data(withJSONObject: text, options: [.fragmentsAllowed])).map(Array.init) ?? Array("null".utf8)
    }

    // MARK: builtin:stream

    /// Emits `events` progress events (`{"event": I, "of": N}`) `interval_ms` apart, then answers `{"events": N}`:
    /// a test agent for streamed progress.
    private static func stream(input: [UInt8], progress: @escaping @Sendable ([[UInt8]]) -> Void) async -> TaskOutcome {
        let fields = (try? JSONSerialization.jsonObject(with: Data(input))) as? [String: Any] ?? [:]
        guard let count = (fields["events"] as? Int) ?? (fields.isEmpty ? 5 : nil), (0...1_000_000).contains(count),
            let interval = (fields["interval_ms"] as? Int) ?? Optional(100), (0...60_000).contains(interval)
        else { return .rejected("builtin:stream takes {\"events\": 0 to 1000000, \"interval_ms\": 0 to 60000}") }
        for index in 1...max(1, count) where count > 0 {
            if interval > 0 {
                do { try await Task.sleep(for: .milliseconds(interval)) } catch { return .canceled }
            } else if Task.isCancelled {
                return .canceled
            }
            progress([Array("{\"event\":\(index),\"of\":\(count)}".utf8)])
        }
        return .success(Array("{\"events\":\(count)}".utf8))
    }

    // MARK: exec

    /// Nothing here blocks a Swift concurrency thread: pipe I/O and the wait for the exit run on GCD threads, and
    /// cancellation signals the process group. (On two cores, two blocked pool threads would freeze the whole node.)
    private static func runProcess(
        command: String, arguments: [String], input: [UInt8], timeout: Duration, environment: [String: String],
        stderr: @escaping @Sendable ([UInt8]) -> Void, progress: @escaping @Sendable ([[UInt8]]) -> Void,
        answers: AgentInput
    ) async -> TaskOutcome {
        let process: ChildProcess
        var environment = environment
        environment["AGENTMESH_EVENTS_FD"] = "3"
        environment["AGENTMESH_INPUT_FD"] = "4"
        do {
            process = try ChildProcess(command: command, arguments: arguments, input: input, environment: environment)
        } catch {
            return .failure(error.description)
        }
        answers.attach { process.answer($0) }
        async let output = process.collectOutput(
            limit: TaskMessage.maximumInputLength, tailLength: Self.stderrTailLength, onStderr: stderr, onEvents: progress)
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

    /// POSTs the input. A JSON answer is the result; an `application/x-ndjson` or `text/event-stream` answer streams:
    /// its lines (events) are progress events until a `{"result": …}` line (an event named `result`) gives the
    /// result, or an `{"error": "…"}` line (an event named `error`) fails the run.
    private static func post(
        url: String, input: [UInt8], timeout: Duration, headers: [(name: String, value: String)], traceparent: String?,
        artifacts: ArtifactFolders?, progress: @escaping @Sendable ([[UInt8]]) -> Void
    ) async -> HTTPOutcome {
        guard let endpoint = URL(string: url) else { return .done(.failure("invalid URL \(url)")) }
        var request = URLRequest(url: endpoint, timeoutInterval: Double(timeout.components.seconds) + 1)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue(
            "application/json, application/x-ndjson, text/event-stream" + (artifacts == nil ? "" : ", multipart/form-data"),
            forHTTPHeaderField: "Accept")
        for header in headers { request.setValue(header.value, forHTTPHeaderField: "X-AgentMesh-" + header.name) }
        if let traceparent { request.setValue(traceparent, forHTTPHeaderField: "traceparent") }
        // With input artifacts the body is multipart, written to a file first and sent from it.
        var bodyFile: URL?
        if let artifacts, !artifacts.inputs.isEmpty {
            let path = artifacts.scratch + "/request"
            do {
                let boundary = try Multipart.writeRequest(to: path, json: input, inputs: artifacts.inputs)
                request.setValue("multipart/form-data; boundary=\(boundary)", forHTTPHeaderField: "Content-Type")
                bodyFile = URL(fileURLWithPath: path)
            } catch {
                return .done(.failure("cannot prepare the artifacts for \(url): \(error)"))
            }
        } else {
            request.httpBody = Data(input)
        }
        let answer = HTTPAnswer(url: url, artifacts: artifacts, progress: progress)
        let session = URLSession(configuration: .ephemeral, delegate: answer, delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        let task = bodyFile.map { session.uploadTask(with: request, fromFile: $0) } ?? session.dataTask(with: request)
        let ending: HTTPAnswer.Ending = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                answer.whenDone { continuation.resume(returning: $0) }
                task.resume()
            }
        } onCancel: {
            task.cancel()
        }
        switch ending {
        case .failed(let error):
            if Task.isCancelled || (error as? URLError)?.code == .cancelled { return .done(.canceled) }
            if let error = error as? URLError, error.code == .timedOut {
                return .done(.timedOut("\(url) did not answer within \(String(format: "%.1f", timeout.seconds)) s"))
            }
            return .done(.failure("\(url) unreachable: \(error.localizedDescription)"))
        case .answered(let outcome):
            return outcome
        }
    }
}

/// How one POST to an `http:` agent ended: with the run's outcome, or with a question for a person.
enum HTTPOutcome: Sendable {
    case done(TaskOutcome)
    /// 202 `{"input_required": QUESTION, "state": STATE}`.
    case asking(question: [UInt8], state: [UInt8]?)

    var taskOutcome: TaskOutcome {
        switch self {
        case .done(let outcome): return outcome
        case .asking: return .failure("the agent asked a question")
        }
    }
}

/// One `http:` agent's answer as it arrives: a whole JSON body, or a stream of events (NDJSON or SSE) whose events
/// are forwarded as they come.
private final class HTTPAnswer: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    enum Ending: Sendable {
        case answered(HTTPOutcome)
        case failed(any Error)
    }

    private enum Format { case whole, ndjson, sse, multipart }

    private let url: String
    private let artifacts: ArtifactFolders?
    /// A multipart answer, written to the scratch folder as it arrives.
    private var multipartBody: FileHandle?
    private var multipartBytes: UInt64 = 0
    private var multipartTooLarge = false
    private var multipartType = ""
    private let progress: @Sendable ([[UInt8]]) -> Void
    private let lock = NSLock()
    private var status = 0
    private var format = Format.whole
    private var body: [UInt8] = []
    private var overflowed = false
    /// Set when this side cut the answer off: the cancellation that follows is not the agent's failure.
    private var refusedAnswer = false
    private var lines: LineSplitter?
    /// Streams: the outcome a `result` or `error` line gave.
    private var streamed: TaskOutcome?
    /// SSE: the event being read (its name and data lines).
    private var sseEvent: (name: String, data: [String]) = ("", [])
    private var done: ((Ending) -> Void)?
    private var ending: Ending?

    init(url: String, artifacts: ArtifactFolders?, progress: @escaping @Sendable ([[UInt8]]) -> Void) {
        self.url = url
        self.artifacts = artifacts
        self.progress = progress
    }

    func whenDone(_ done: @escaping (Ending) -> Void) {
        let ended = self.lock.withLock { () -> Ending? in
            if self.ending == nil { self.done = done }
            return self.ending
        }
        if let ended { done(ended) }
    }

    func urlSession(
        _ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
        completionHandler: @escaping (URLSession.ResponseDisposition) -> Void
    ) {
        let http = response as? HTTPURLResponse
        self.status = http?.statusCode ?? 0
        let type = (http?.value(forHTTPHeaderField: "Content-Type") ?? "").lowercased()
        if (200..<300).contains(self.status) {
            if type.hasPrefix("application/x-ndjson") || type.hasPrefix("application/jsonl") {
                self.format = .ndjson
            } else if type.hasPrefix("text/event-stream") {
                self.format = .sse
            } else if type.hasPrefix("multipart/form-data"), let artifacts = self.artifacts {
                let path = artifacts.scratch + "/answer"
                _ = FileManager.default.createFile(atPath: path, contents: nil)
                self.multipartBody = FileHandle(forWritingAtPath: path)
                self.multipartType = http?.value(forHTTPHeaderField: "Content-Type") ?? ""
                self.format = .multipart
            }
        }
        if self.format == .ndjson || self.format == .sse {
            self.lines = LineSplitter(keepsBlankLines: self.format == .sse) { [weak self] lines in self?.streamed(lines) }
        }
        completionHandler(.allow)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        if let file = self.multipartBody, let artifacts = self.artifacts {
            guard !self.overflowed, !self.multipartTooLarge else { return }
            self.multipartBytes += UInt64(data.count)
            if self.multipartBytes > artifacts.maximumAnswer {
                self.multipartTooLarge = true
                self.stopReading(dataTask)
            } else if (try? file.write(contentsOf: data)) == nil {
                self.overflowed = true
                self.stopReading(dataTask)
            }
            return
        }
        if let lines = self.lines {
            lines.append(Array(data))
            return
        }
        guard !self.overflowed else { return }
        self.body += data
        if self.body.count > TaskMessage.maximumInputLength {
            self.overflowed = true
            self.body = []
            self.stopReading(dataTask)
        }
    }

    /// The answer is already refused (too large, or nowhere to keep it): the connection is closed now instead of
    /// reading the rest until the agent finishes or the task's time runs out, and the run ends with why.
    private func stopReading(_ dataTask: URLSessionDataTask) {
        self.refusedAnswer = true
        dataTask.cancel()
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: (any Error)?) {
        let ending: Ending
        if let error, !self.refusedAnswer {
            ending = .failed(error)
        } else {
            self.lines?.finish()
            if self.format == .sse { self.dispatchSSEEvent() }
            ending = .answered(self.outcome())
        }
        let done = self.lock.withLock { () -> ((Ending) -> Void)? in
            self.ending = ending
            defer { self.done = nil }
            return self.done
        }
        done?(ending)
    }

    private func outcome() -> HTTPOutcome {
        if self.status == 202, self.format == .whole,
            let object = (try? JSONSerialization.jsonObject(with: Data(self.body))) as? [String: Any],
            let question = object["input_required"]
        {
            let encode = { (value: Any) in
                (try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys])).map(Array.init)
            }
            return .asking(question: encode(question) ?? Array("null".utf8), state: object["state"].flatMap(encode))
        }
        return .done(self.taskOutcome())
    }

    private func taskOutcome() -> TaskOutcome {
        let url = self.url
        guard (200..<300).contains(self.status) else {
            let text = String(decoding: self.body.prefix(TaskExecution.stderrTailLength), as: UTF8.self)
            let sentence = "\(url) answered HTTP \(self.status)" + (text.isEmpty ? "" : ": \(text)")
            // A 4xx says the request itself is wrong, except a timeout (408) and too many requests (429).
            let isFinal = (400..<500).contains(self.status) && self.status != 408 && self.status != 429
            return isFinal ? .rejected(sentence) : .failure(sentence)
        }
        if self.format == .multipart, let artifacts = self.artifacts {
            try? self.multipartBody?.close()
            guard !self.multipartTooLarge else {
                return .failure("\(url) answered more than \(artifacts.maximumAnswer) bytes (the node's --max-artifact-bytes)")
            }
            guard !self.overflowed else { return .failure("cannot keep \(url)'s answer: \(artifacts.scratch) is not writable") }
            do {
                let result = try Multipart.readAnswer(from: artifacts.scratch + "/answer", contentType: self.multipartType, into: artifacts.output)
                guard (try? JSONSerialization.jsonObject(with: Data(result), options: [.fragmentsAllowed])) != nil else {
                    return .failure("\(url) answered a \"result\" part that is not JSON")
                }
                return .success(result)
            } catch {
                return .failure("\(url) answered a multipart body that cannot be read: \(error)")
            }
        }
        if self.format != .whole {
            return self.streamed ?? .failure("\(url) ended its event stream without a result (send {\"result\": …} last)")
        }
        if self.overflowed { return .failure("\(url) answered more than \(TaskMessage.maximumInputLength) bytes") }
        guard (try? JSONSerialization.jsonObject(with: Data(self.body), options: [.fragmentsAllowed])) != nil else {
            return .failure("\(url) answered with a body that is not JSON")
        }
        return .success(self.body)
    }

    private func streamed(_ lines: [[UInt8]]) {
        switch self.format {
        case .whole, .multipart: return
        case .ndjson:
            var events: [[UInt8]] = []
            for line in lines where self.streamed == nil {
                let object = (try? JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed])) as? [String: Any]
                if let object, object.count == 1, let result = object["result"] {
                    let bytes = try? JSONSerialization.data(withJSONObject: result, options: [.fragmentsAllowed, .sortedKeys])
                    self.streamed = .success(bytes.map(Array.init) ?? Array("null".utf8))
                } else if let object, object.count == 1, let error = object["error"] {
                    self.streamed = .failure("\(self.url): \(error)")
                } else {
                    events.append(TaskExecution.jsonEvent(line))
                }
            }
            if !events.isEmpty { self.progress(events) }
        case .sse:
            for line in lines {
                let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
                if text.isEmpty {
                    self.dispatchSSEEvent()
                } else if text.hasPrefix("event:") {
                    self.sseEvent.name = text.dropFirst(6).trimmingCharacters(in: .whitespaces)
                } else if text.hasPrefix("data:") {
                    var data = text.dropFirst(5)
                    if data.first == " " { data = data.dropFirst() }
                    self.sseEvent.data.append(String(data))
                }
            }
        }
    }

    private func dispatchSSEEvent() {
        defer { self.sseEvent = ("", []) }
        guard !self.sseEvent.data.isEmpty, self.streamed == nil else { return }
        let data = Array(self.sseEvent.data.joined(separator: "\n").utf8)
        switch self.sseEvent.name {
        case "result": self.streamed = .success(TaskExecution.jsonEvent(data))
        case "error": self.streamed = .failure("\(self.url): \(String(decoding: data, as: UTF8.self))")
        default: self.progress([TaskExecution.jsonEvent(data)])
        }
    }
}

import AsyncHTTPClient
import Dispatch
package import Foundation
package import MeshCore
import NIOCore
import NIOHTTP1

/// Runs one task with the executor its capability names. Every way an executor can go wrong (a command that does
/// not exist, a non-zero exit, a service that is down or answers garbage, a deadline) becomes a `.failure` with a
/// sentence a user can act on; cancellation stops the process or the request.
package enum TaskExecution {
    /// How much of stderr a failure carries.
    static let stderrTailLength = 2048

    /// SIGTERM to the agent's process group now, SIGKILL 200 ms later unless it has exited by then. The wait is a
    /// thread of its own: on a loaded node the global queues' threads are all blocked reading agents' pipes, and a
    /// kill queued there waited 30 s.
    private static func stop(_ process: ChildProcess) {
        process.send(SIGTERM)
        Thread.detachNewThread {
            usleep(200_000)
            process.send(SIGKILL)
        }
    }
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
                // The group ends only when the process has: one that ignores SIGTERM is killed 200 ms later (it
                // kept running, and its slot busy, after a cancel, its deadline or the node's stop).
                if first != .exited { Self.stop(process) }
                group.cancelAll()
                return first
            }
        } onCancel: {
            Self.stop(process)
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

    /// One client for every `http:` agent, configured here rather than by its defaults. Redirects are not followed:
    /// an agent's URL is the operator's choice, and a redirect would send the task's input where they did not name.
    private static let httpClient: HTTPClient = {
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow, timeout: .init(connect: .seconds(10)))
        // An agent that is down fails the attempt at once; the task's own attempts are the retries.
        configuration.connectionPool.retryConnectionEstablishment = false
        // Each capability's concurrency already bounds the runs calling an agent; the client adds no queue of its own.
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = Int(UInt16.max)
        // Below common servers' keep-alive (gunicorn 2 s, uvicorn and Node 5 s): this side closes an idle connection
        // first, so no run is sent on one the agent is closing at that moment.
        configuration.connectionPool.idleTimeout = .seconds(1)
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    /// POSTs the input. A JSON answer is the result; an `application/x-ndjson` or `text/event-stream` answer streams:
    /// its lines (events) are progress events until a `{"result": …}` line (an event named `result`) gives the
    /// result, or an `{"error": "…"}` line (an event named `error`) fails the run. The whole exchange, answer
    /// included, gets the run's timeout and a second more, so a node's own deadline (which cancels) comes first.
    private static func post(
        url: String, input: [UInt8], timeout: Duration, headers: [(name: String, value: String)], traceparent: String?,
        artifacts: ArtifactFolders?, progress: @escaping @Sendable ([[UInt8]]) -> Void
    ) async -> HTTPOutcome {
        guard let endpoint = URL(string: url), let scheme = endpoint.scheme?.lowercased(), scheme == "http" || scheme == "https",
            endpoint.host != nil
        else { return .done(.failure("invalid URL \(url)")) }
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(
            name: "Accept",
            value: "application/json, application/x-ndjson, text/event-stream" + (artifacts == nil ? "" : ", multipart/form-data"))
        for header in headers { request.headers.replaceOrAdd(name: "X-AgentMesh-" + header.name, value: header.value) }
        if let traceparent { request.headers.add(name: "traceparent", value: traceparent) }
        // With input artifacts the body is multipart, written to a file first and sent from it.
        if let artifacts, !artifacts.inputs.isEmpty {
            let path = artifacts.scratch + "/request"
            do {
                let boundary = try Multipart.writeRequest(to: path, json: input, inputs: artifacts.inputs)
                request.headers.replaceOrAdd(name: "Content-Type", value: "multipart/form-data; boundary=\(boundary)")
                let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
                request.body = .stream(FileChunks(path: path), length: .known(Int64(size)))
            } catch {
                return .done(.failure("cannot prepare the artifacts for \(url): \(error)"))
            }
        } else {
            request.body = .bytes(input)
        }
        let seconds = String(format: "%.1f", timeout.seconds)
        return await withTaskGroup(of: HTTPOutcome?.self) { [request] group in
            group.addTask { await Self.exchange(request, url: url, artifacts: artifacts, progress: progress) }
            group.addTask {
                do { try await Task.sleep(for: timeout + .seconds(1)) } catch { return nil }
                return .done(.timedOut("\(url) did not answer within \(seconds) s"))
            }
            // The first to end decides; cancelling the other closes the connection before the group returns.
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? .done(.canceled)
        }
    }

    /// Sends the request and reads the answer as it arrives, stopping as soon as it is refused.
    private static func exchange(
        _ request: HTTPClientRequest, url: String, artifacts: ArtifactFolders?, progress: @escaping @Sendable ([[UInt8]]) -> Void
    ) async -> HTTPOutcome {
        do {
            // No deadline of the client's own: `post` bounds the whole exchange, the answer's body included.
            let response = try await Self.httpClient.execute(request, deadline: .distantFuture)
            var answer = HTTPAnswer(
                url: url, status: Int(response.status.code), contentType: response.headers.first(name: "Content-Type") ?? "",
                artifacts: artifacts, progress: progress)
            // Leaving the loop early drops the body's iterator, which closes the connection.
            for try await chunk in response.body {
                guard answer.take(chunk) else { break }
            }
            if Task.isCancelled { return .done(.canceled) }
            return answer.outcome()
        } catch {
            if Task.isCancelled { return .done(.canceled) }
            // NIO's words for a refused connection are "connection reset (error set): Connection refused)".
            let reason = (error as? IOError).map { String(cString: strerror($0.errnoCode)) } ?? "\(error)"
            return .done(.failure("\(url) unreachable: \(reason)"))
        }
    }
}

/// A file read 1 MiB at a time, so a request body is never whole in memory. Reading a local file blocks only
/// briefly; the handle closes when the iterator is released.
private struct FileChunks: AsyncSequence, Sendable {
    let path: String

    func makeAsyncIterator() -> Iterator { Iterator(path: self.path, file: FileHandle(forReadingAtPath: self.path)) }

    struct Iterator: AsyncIteratorProtocol {
        let path: String
        let file: FileHandle?

        func next() async throws -> ByteBuffer? {
            guard let file = self.file else { throw Multipart.Failure(description: "cannot read \(self.path)") }
            guard let data = try file.read(upToCount: 1 << 20), !data.isEmpty else { return nil }
            return ByteBuffer(bytes: data)
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

/// One `http:` agent's answer as it arrives: a whole JSON body, a stream of events (NDJSON or SSE) whose events are
/// forwarded as they come, or a multipart body written to the scratch folder.
private struct HTTPAnswer {
    private enum Format { case whole, ndjson, sse, multipart }
    /// Why this side stopped reading before the answer ended.
    private enum Refusal { case tooLarge, multipartTooLarge, notWritable, streamTooLong }

    private let url: String
    private let status: Int
    private let contentType: String
    private let format: Format
    private let artifacts: ArtifactFolders?
    private let progress: @Sendable ([[UInt8]]) -> Void
    /// A whole answer, or the first bytes of an error's body.
    private var body: [UInt8] = []
    private var refusal: Refusal?
    /// A multipart answer's file and how much was written to it.
    private var multipartBody: FileHandle?
    private var multipartBytes: UInt64 = 0
    private var lines: LineSplitter
    /// Streams: the outcome a `result` or `error` line gave, and the bytes and events read so far.
    private var streamed: TaskOutcome?
    private var streamedBytes = 0
    private var streamedEvents = 0
    /// SSE: the event being read (its name and data lines).
    private var sseEvent: (name: String, data: [String]) = ("", [])

    init(url: String, status: Int, contentType: String, artifacts: ArtifactFolders?, progress: @escaping @Sendable ([[UInt8]]) -> Void) {
        self.url = url
        self.status = status
        self.contentType = contentType
        self.artifacts = artifacts
        self.progress = progress
        let type = contentType.lowercased()
        if !(200..<300).contains(status) {
            self.format = .whole
        } else if type.hasPrefix("application/x-ndjson") || type.hasPrefix("application/jsonl") {
            self.format = .ndjson
        } else if type.hasPrefix("text/event-stream") {
            self.format = .sse
        } else if type.hasPrefix("multipart/form-data"), let artifacts {
            self.format = .multipart
            let path = artifacts.scratch + "/answer"
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            self.multipartBody = FileHandle(forWritingAtPath: path)
            if self.multipartBody == nil { self.refusal = .notWritable }
        } else {
            self.format = .whole
        }
        self.lines = LineSplitter(keepsBlankLines: self.format == .sse)
    }

    /// Takes the next piece of the answer; false when reading should stop: the answer is refused (too large, or
    /// nowhere to keep it: the connection is closed now instead of reading on until the agent finishes or the
    /// task's time runs out), or enough of an error's body is read.
    mutating func take(_ chunk: ByteBuffer) -> Bool {
        guard self.refusal == nil else { return false }
        let bytes = chunk.readableBytesView
        guard (200..<300).contains(self.status) else {
            self.body += bytes.prefix(TaskExecution.stderrTailLength - self.body.count)
            return self.body.count < TaskExecution.stderrTailLength
        }
        switch self.format {
        case .multipart:
            self.multipartBytes += UInt64(bytes.count)
            if self.multipartBytes > self.artifacts?.maximumAnswer ?? 0 {
                self.refusal = .multipartTooLarge
            } else if (try? self.multipartBody?.write(contentsOf: Data(bytes))) == nil {
                self.refusal = .notWritable
            }
        case .ndjson, .sse:
            // Bounded like a whole answer, and in events by what a run may forward: an endless stream was read
            // until the task's deadline, and four of them held the node's cores for all of it.
            self.streamedBytes += bytes.count
            self.streamed(self.lines.lines(in: bytes))
            if self.streamedBytes > TaskMessage.maximumInputLength || self.streamedEvents > Int(TaskRunner.forwardedProgressLimit) {
                self.refusal = .streamTooLong
            }
            // The result is in: nothing after it counts.
            if self.streamed != nil { return false }
        case .whole:
            self.body += bytes
            if self.body.count > TaskMessage.maximumInputLength {
                self.body = []
                self.refusal = .tooLarge
            }
        }
        return self.refusal == nil
    }

    /// What the answer amounts to, once it ended or was refused.
    mutating func outcome() -> HTTPOutcome {
        try? self.multipartBody?.close()
        self.streamed(self.lines.finish())
        if self.format == .sse { self.dispatchSSEEvent() }
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
            let text = String(decoding: self.body, as: UTF8.self)
            let redirect = (300..<400).contains(self.status) ? " (a redirect: the node never follows them; configure the final URL)" : ""
            let sentence = "\(url) answered HTTP \(self.status)\(redirect)" + (text.isEmpty ? "" : ": \(text)")
            // A 4xx says the request itself is wrong, except a timeout (408) and too many requests (429).
            let isFinal = (400..<500).contains(self.status) && self.status != 408 && self.status != 429
            return isFinal ? .rejected(sentence) : .failure(sentence)
        }
        if self.format == .multipart, let artifacts = self.artifacts {
            switch self.refusal {
            case .multipartTooLarge:
                return .failure("\(url) answered more than \(artifacts.maximumAnswer) bytes (the node's --max-artifact-bytes)")
            case .notWritable: return .failure("cannot keep \(url)'s answer: \(artifacts.scratch) is not writable")
            case .tooLarge, .streamTooLong, nil: break
            }
            do {
                let result = try Multipart.readAnswer(from: artifacts.scratch + "/answer", contentType: self.contentType, into: artifacts.output)
                guard (try? JSONSerialization.jsonObject(with: Data(result), options: [.fragmentsAllowed])) != nil else {
                    return .failure("\(url) answered a \"result\" part that is not JSON")
                }
                return .success(result)
            } catch {
                return .failure("\(url) answered a multipart body that cannot be read: \(error)")
            }
        }
        if self.format != .whole {
            if let streamed = self.streamed { return streamed }
            if self.refusal == .streamTooLong {
                return .failure("\(url) streamed more than \(TaskMessage.maximumInputLength) bytes or \(TaskRunner.forwardedProgressLimit) events without a result")
            }
            return .failure("\(url) ended its event stream without a result (send {\"result\": …} last)")
        }
        if self.refusal == .tooLarge { return .failure("\(url) answered more than \(TaskMessage.maximumInputLength) bytes") }
        guard (try? JSONSerialization.jsonObject(with: Data(self.body), options: [.fragmentsAllowed])) != nil else {
            return .failure("\(url) answered with a body that is not JSON")
        }
        return .success(self.body)
    }

    private mutating func streamed(_ lines: [[UInt8]]) {
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
            self.streamedEvents += events.count
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

    private mutating func dispatchSSEEvent() {
        defer { self.sseEvent = ("", []) }
        guard !self.sseEvent.data.isEmpty, self.streamed == nil else { return }
        let data = Array(self.sseEvent.data.joined(separator: "\n").utf8)
        switch self.sseEvent.name {
        case "result": self.streamed = .success(TaskExecution.jsonEvent(data))
        case "error": self.streamed = .failure("\(self.url): \(String(decoding: data, as: UTF8.self))")
        default:
            self.streamedEvents += 1
            self.progress([TaskExecution.jsonEvent(data)])
        }
    }
}

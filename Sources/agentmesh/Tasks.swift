import ArgumentParser
import Foundation
import MeshControl
import MeshCore
import MeshCrypto

struct Submit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Submit a task; it runs on a member that offers the capability.",
        discussion: """
            Prints the task id, or with --wait the result. Exit statuses: 0 done, 1 failed, 2 timed out, \
            3 canceled, 4 no node running here, 5 no live member offers the capability, \
            6 the idempotency key was used for a different request, 64 bad input, \
            130 Ctrl-C while waiting (the task goes on).
            """)

    @OptionGroup var options: HomeOptions

    @Option(help: "The capability the task needs.")
    var capability: String

    // Unconditional: a value may start with '-' (the input -5, a mistaken --timeout -5), and is then judged as a value.
    @Option(parsing: .unconditional, help: ArgumentHelp("The task input as JSON.", valueName: "JSON"))
    var input: String?

    @Option(help: ArgumentHelp("A file holding the task input as JSON ('-' reads stdin).", valueName: "FILE"),
            completion: .file())
    var inputFile: String?

    @Flag(help: "Wait for the task to end and print its result (the task id goes to stderr at once).")
    var wait = false

    @Flag(name: [.long, .customShort("f")],
          help: "Wait as --wait does, printing each progress event the agent emits (one JSON line each) before the result.")
    var follow = false

    @Flag(help: "Queue the task even when no live member offers the capability now (otherwise exit 5 at once).")
    var waitForCapability = false

    @Option(parsing: .unconditional, help: "Seconds the task may take in all, retries included.")
    var timeout: Double = 60

    @Option(parsing: .unconditional, help: "Attempts before giving up (a failure is retried after a back-off; a rejection never is).")
    var maxAttempts: Int = 5

    @Option(help: ArgumentHelp(
        "POST the finished task here (a webhook), signed with the node's DIR/webhook.secret; retried with back-off.",
        valueName: "URL"))
    var callback: String?

    @Flag(help: "With --callback: POST every state change, not only the end.")
    var callbackAllStates = false

    @Option(help: ArgumentHelp(
        "Submitting again with the same key (within 24 h) returns the first task instead of running another; a different task under it is refused.",
        valueName: "KEY"))
    var idempotencyKey: String?

    @Flag(help: "Use the SHA-256 of the task (capability, input, timeout, attempts) as the idempotency key.")
    var idempotent = false

    @Option(help: ArgumentHelp(
        "The conversation the task belongs to: it prefers the member that ran the conversation's previous task, and the agent gets the id (AGENTMESH_CONTEXT_ID).",
        valueName: "ID"))
    var context: String?

    @Option(parsing: .unconditional, help: ArgumentHelp(
        "Pause the deadline while the agent waits for an answer ('agentmesh reply'), for at most this many seconds.",
        valueName: "SECONDS"))
    var inputTimeout: Double?

    @Option(name: .customLong("attach"), help: ArgumentHelp(
        "A file the task takes as an artifact (repeatable): stored on this node, pulled by the executor, given to the agent as a file.",
        valueName: "FILE"), completion: .file())
    var attachments: [String] = []

    @Option(help: ArgumentHelp("With --wait: save the result's artifacts into this folder, each under its name.", valueName: "DIR"),
            completion: .directory)
    var saveArtifacts: String?

    @Flag(help: "Print the task as JSON.")
    var json = false

    func validate() throws {
        guard self.callback != nil || !self.callbackAllStates else { throw ValidationError("--callback-all-states goes with --callback") }
        guard self.idempotencyKey == nil || !self.idempotent else { throw ValidationError("give --idempotency-key or --idempotent, not both") }
        guard (self.input == nil) != (self.inputFile == nil) else {
            throw ValidationError("give the input with exactly one of --input or --input-file")
        }
        guard !(self.wait && self.follow) else { throw ValidationError("give --wait or --follow (--follow waits too), not both") }
        guard self.timeout > 0, self.timeout <= 86_400 else {
            throw ValidationError("--timeout must be more than 0 and at most 86400 seconds, not \(self.timeout.formatted(.number.grouping(.never)))")
        }
        if let inputTimeout = self.inputTimeout, !(inputTimeout > 0 && inputTimeout <= 86_400) {
            throw ValidationError("--input-timeout must be more than 0 and at most 86400 seconds")
        }
        guard (1...100).contains(self.maxAttempts) else { throw ValidationError("--max-attempts must be 1 to 100") }
    }

    func run() throws {
        let value = try parseJSONInput(try self.readInput())
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let artifacts = try self.attachments.map { path in
            try reporting {
                let name = (path as NSString).lastPathComponent
                return try client.upload(file: path, name: name, mediaType: ArtifactRef.mediaType(ofFileNamed: name))
            }
        }
        let body = try ControlAPI.encoder().encode(ControlAPI.SubmitRequest(
            capability: self.capability, input: ControlAPI.JSONValue(value), timeoutSeconds: self.timeout,
            maxAttempts: self.maxAttempts, waitForCapability: self.waitForCapability ? true : nil, callback: self.callback,
            callbackEvents: self.callbackAllStates ? "all" : nil, context: self.context, inputTimeoutSeconds: self.inputTimeout,
            // An agent that submits a task carries its own trace on (it runs with TRACEPARENT set); a malformed one
            // is left out rather than failing the submission.
            traceparent: ProcessInfo.processInfo.environment["TRACEPARENT"].flatMap { TraceContext($0)?.description },
            artifacts: artifacts.isEmpty ? nil : artifacts))
        var headers: [String: String] = [:]
        if let key = self.idempotencyKey {
            headers["Idempotency-Key"] = key
        } else if self.idempotent {
            let canonical = try JSONSerialization.data(
                withJSONObject: ["capability": self.capability, "input": value, "timeout": self.timeout, "attempts": self.maxAttempts],
                options: [.sortedKeys, .fragmentsAllowed])
            headers["Idempotency-Key"] = "sha256:" + Hex.encode(SHA256.hash(Array(canonical)))
        }
        let task: ControlAPI.TaskInfo = try reporting {
            do {
                return try client.decode(
                    client.request(method: "POST", path: "/v1/tasks", body: Array(body), headers: headers), as: ControlAPI.TaskInfo.self)
            } catch ControlClient.Error.api(409, let message) {
                throw CLIError(message, status: .noCapability)
            } catch ControlClient.Error.api(422, let message) {
                throw CLIError(message, status: .keyReused)
            } catch ControlClient.Error.api(400, let message) {
                throw CLIError(message, status: .badInput)
            }
        }
        guard self.wait || self.follow else {
            if self.json { try printJSON(task) } else { print(task.id) }
            return
        }
        FileHandle.standardError.write(Data("task \(task.id) submitted; waiting for it to end (Ctrl-C stops waiting, not the task)\n".utf8))
        let ended = self.follow
            ? try followEvents(task, client: client, home: self.options) : try waitForEnd(task, client: client, home: self.options)
        if let folder = self.saveArtifacts { try saveResultArtifacts(of: ended, into: folder, client: client) }
        try reportEnd(of: ended, json: self.json)
    }

    private func readInput() throws -> Data {
        if let input = self.input { return Data(input.utf8) }
        let path = self.inputFile ?? "-"
        if path == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
        do {
            return try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            let reason = ((error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError).map { String(cString: strerror(Int32($0.code))) }
                ?? (FileManager.default.fileExists(atPath: path) ? "it cannot be read" : "no such file")
            throw CLIError("cannot read \(path): \(reason)", status: .badInput)
        }
    }
}

/// An artifact in one line: name, size, type and digest.
func describe(_ artifact: ControlAPI.ArtifactInfo) -> String {
    "\(artifact.name ?? "-")  \(artifact.size) bytes  \(artifact.mediaType ?? "-")  sha256:\(artifact.sha256)"
}

/// The input as a JSON value, or a sentence saying where it stops being JSON.
func parseJSONInput(_ text: Data) throws -> Any {
    do {
        return try JSONSerialization.jsonObject(with: text, options: [.fragmentsAllowed])
    } catch {
        let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
        throw CLIError("the input is not valid JSON" + (detail.map { ": \($0)" } ?? ""), status: .badInput)
    }
}

/// Ctrl-C while waiting for or following a task stops waiting (the task goes on) and says how to wait again or
/// cancel it, with the `--home` given, so the commands it prints work as they are. Cancel the source when done.
func stopWaitingOnInterrupt(for task: ControlAPI.TaskInfo, home: HomeOptions) -> any DispatchSourceSignal {
    signal(SIGINT, SIG_IGN)
    let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
    let homeArgument = home.home.map { " --home \(shellQuoted($0))" } ?? ""
    interrupt.setEventHandler {
        FileHandle.standardError.write(Data("""

            stopped waiting; task \(task.id) goes on.
              agentmesh task\(homeArgument) \(task.id.prefix(12)) --wait   waits again
              agentmesh cancel\(homeArgument) \(task.id.prefix(12))        cancels it

            """.utf8))
        exit(ExitStatus.interrupted.rawValue)
    }
    interrupt.resume()
    return interrupt
}

/// Polls until the task ends; Ctrl-C stops waiting and says how to wait again or cancel.
func waitForEnd(_ task: ControlAPI.TaskInfo, client: ControlClient, home: HomeOptions) throws -> ControlAPI.TaskInfo {
    let interrupt = stopWaitingOnInterrupt(for: task, home: home)
    defer { interrupt.cancel() }
    var task = task
    while !task.isFinished {
        task = try reporting {
            try client.decode(
                client.request(method: "GET", path: "/v1/tasks/\(task.id)?wait=30", timeout: .seconds(40)),
                as: ControlAPI.TaskInfo.self)
        }
    }
    return task
}

/// Prints each progress event (its data, one line of JSON) as the node receives it, until the task ends; returns
/// the ended task. Ctrl-C stops following, as it stops waiting.
func followEvents(_ task: ControlAPI.TaskInfo, client: ControlClient, home: HomeOptions) throws -> ControlAPI.TaskInfo {
    let interrupt = stopWaitingOnInterrupt(for: task, home: home)
    var after = 0
    while true {
        let page = try reporting {
            try client.decode(
                client.request(method: "GET", path: "/v1/tasks/\(task.id)/events?after=\(after)&wait=30", timeout: .seconds(40)),
                as: ControlAPI.TaskEvents.self)
        }
        for event in page.events {
            print(try resultText(event.data))
            if let object = event.data.value as? [String: Any], object["agentmesh"] as? String == "input-required" {
                FileHandle.standardError.write(Data("the agent asks a question; answer with: agentmesh reply \(task.id.prefix(12)) --input JSON\n".utf8))
            }
        }
        fflush(nil)
        after = page.next
        if page.finished && page.events.isEmpty { break }
    }
    interrupt.cancel()  // waitForEnd sets its own
    return try waitForEnd(task, client: client, home: home)
}

/// Prints a finished task's result (or the task as JSON) and exits with the status its end calls for.
func reportEnd(of task: ControlAPI.TaskInfo, json: Bool) throws {
    if json {
        try printJSON(task)
    } else if task.state == "completed" {
        print(try resultText(task.result))
    }
    let reason = task.error ?? "no reason given"
    switch task.state {
    case "completed": return
    case "expired": throw CLIError("task \(task.id) \(reason)", status: .timedOut)
    case "canceled": throw CLIError("task \(task.id) was canceled", status: .canceled)
    default: throw CLIError("task \(task.id) failed: \(reason)", status: .failed)
    }
}

extension ControlAPI.TaskInfo {
    var isFinished: Bool { ["completed", "failed", "canceled", "expired"].contains(self.state) }

    /// How long it took, or has taken so far.
    /// As workflows show theirs (``duration(_:)``): milliseconds under a second.
    func duration(now: Date) -> String {
        agentmesh.duration(max(0, (self.finishedAt ?? now).timeIntervalSince(self.submittedAt)))
    }
}

/// A task result as the user wants to see it: JSON, one line.
func resultText(_ result: ControlAPI.JSONValue?) throws -> String {
    guard let result else { return "null" }
    let data = try JSONSerialization.data(withJSONObject: result.value, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}

struct Tasks: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the tasks submitted to this node, newest first (or with --executing, those it runs for peers).")

    @OptionGroup var options: HomeOptions

    @Option(help: "Only tasks in this state.", completion: .list(["submitted", "offered", "running", "completed", "failed", "canceled", "expired"]))
    var state: String?

    @Option(help: "Only tasks of this capability.")
    var capability: String?

    @Option(help: "Only tasks of this conversation (submit --context).")
    var context: String?

    @Option(help: ArgumentHelp("Only tasks submitted within this long: 90s, 10m, 2h, 1d.", valueName: "DURATION"))
    var since: String?

    @Option(help: "At most this many (newest first).")
    var limit = 20

    @Flag(name: [.long, .customShort("w")], help: "Refresh every second until Ctrl-C.")
    var watch = false

    @Flag(help: "The tasks peers gave this node to run, instead of those submitted here.")
    var executing = false

    @Flag(help: "One JSON document instead of a table.")
    var json = false

    func validate() throws {
        guard (1...10_000).contains(self.limit) else { throw ValidationError("--limit must be 1 to 10000") }
        if let since { guard parseDuration(since) != nil else { throw ValidationError("--since takes a duration like 90s, 10m, 2h or 1d") } }
        guard !(self.watch && self.json) else { throw ValidationError("--watch prints tables; leave out --json") }
    }

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        try repeatEverySecond(if: self.watch) {
            self.executing ? try self.executingTable(client) : try self.submittedTable(client)
        }
    }

    private func submittedTable(_ client: ControlClient) throws -> String? {
        var query = ["limit=\(self.limit)"]
        if let state { query.append("state=\(urlPiece(state))") }
        if let capability { query.append("capability=\(urlPiece(capability))") }
        if let context { query.append("context=\(urlPiece(context))") }
        if let since, let seconds = parseDuration(since) { query.append("since=\(seconds)") }
        let list = try reporting { try client.get("/v1/tasks?" + query.joined(separator: "&"), as: ControlAPI.TaskList.self) }
        if self.json {
            try printJSON(list)
            return nil
        }
        let now = Date()
        return renderTable(
            header: ["ID", "CAPABILITY", "STATE", "ATTEMPTS", "RAN ON", "SUBMITTED", "DURATION"],
            rows: list.tasks.map { task in
                [String(task.id.prefix(12)), task.capability, task.state, "\(task.attempts.count)", task.executedBy ?? "-",
                 task.submittedAt.timeOfDay, task.duration(now: now)]
            })
    }

    private func executingTable(_ client: ControlClient) throws -> String? {
        let list = try reporting { try client.get("/v1/executing", as: ControlAPI.ExecutingTasks.self) }
        if self.json {
            try printJSON(list)
            return nil
        }
        return renderTable(
            header: ["ID", "CAPABILITY", "SUBMITTER", "ATTEMPT", "STATE", "DEADLINE"],
            rows: list.tasks.map { task in
                [String(task.id.prefix(12)), task.capability, task.submitter, "\(task.attempt)", task.state,
                 task.deadline.timeOfDay]
            })
    }
}

/// Prints what `render` returns once, or (watching) every second on a cleared screen until Ctrl-C.
func repeatEverySecond(if watching: Bool, _ render: () throws -> String?) throws {
    guard watching else {
        if let text = try render() { print(text) }
        return
    }
    // A terminal is cleared before each refresh; a pipe or file gets each one after the last, without escape codes.
    let clear = isatty(STDOUT_FILENO) == 1 ? "\u{1B}[H\u{1B}[2J" : ""
    while true {
        let text = try render() ?? ""
        print(clear + Date().timeOfDay + "  (every 1 s; Ctrl-C stops)\n\n" + text)
        fflush(nil)
        Thread.sleep(forTimeInterval: 1)
    }
}

/// "90s", "10m", "2h", "1d" or plain seconds, as seconds.
func parseDuration(_ text: String) -> Double? {
    let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
    let (number, unit) = text.last.flatMap { units[$0] }.map { (text.dropLast(), $0) } ?? (Substring(text), 1)
    guard let value = Double(number), value > 0 else { return nil }
    return value * unit
}

struct TaskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "task",
        abstract: "Show one task: state, why it waits, attempts, which peer ran it, timings, result or error.")

    @OptionGroup var options: HomeOptions

    @Argument(help: "The task id, or its first 4 or more hex digits.")
    var id: String

    @Flag(help: "Wait for the task to end; exit as 'submit --wait' does.")
    var wait = false

    @Flag(help: "Print what the executor wrote to stderr (this node keeps the last 64 KiB of each task's).")
    var logs = false

    @Flag(name: [.long, .customShort("f")],
          help: "Print the task's progress events as they come (one JSON line each), then its result; with --logs, follow the log.")
    var follow = false

    @Option(help: ArgumentHelp(
        "Save the result's artifacts into this folder, each under its name (with --wait, once the task ends).", valueName: "DIR"),
        completion: .directory)
    var saveArtifacts: String?

    @Flag(help: "Print the task as JSON.")
    var json = false

    func validate() throws {
        guard !(self.logs && (self.wait || self.json)) else { throw ValidationError("--logs prints the log; leave out --wait and --json") }
    }

    private func save(_ task: ControlAPI.TaskInfo, client: ControlClient) throws {
        guard let folder = self.saveArtifacts else { return }
        try saveResultArtifacts(of: task, into: folder, client: client)
    }
}

/// Writes each result artifact into the folder under its name; says where on stderr.
func saveResultArtifacts(of task: ControlAPI.TaskInfo, into folder: String, client: ControlClient) throws {
    guard let artifacts = task.resultArtifacts, !artifacts.isEmpty else {
        FileHandle.standardError.write(Data("the task's result has no artifacts\n".utf8))
        return
    }
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    for artifact in artifacts {
        // `--save-artifacts out/` and `out` name the same folder (it printed out//summary.md).
        let path = (folder.hasSuffix("/") && folder.count > 1 ? String(folder.dropLast()) : folder) + "/" + (artifact.name ?? artifact.sha256)
        let size = try reporting { try client.download(artifact: artifact.sha256, to: path) }
        FileHandle.standardError.write(Data("saved \(path) (\(size) bytes)\n".utf8))
    }
}

extension TaskCommand {
    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        if self.logs { return try self.printLogs(client) }
        var task = try reporting { try client.get("/v1/tasks/\(urlPiece(self.id))", as: ControlAPI.TaskInfo.self) }
        if self.follow {
            task = try followEvents(task, client: client, home: self.options)
            try self.save(task, client: client)
            return try reportEnd(of: task, json: self.json)
        }
        if self.wait {
            task = try waitForEnd(task, client: client, home: self.options)
            try self.save(task, client: client)
            // As submit --wait: the result alone on stdout (the summary goes to stderr), and the exit status.
            if !self.json { FileHandle.standardError.write(Data(try self.summary(task).utf8)) }
            return try reportEnd(of: task, json: self.json)
        } else {
            try self.save(task, client: client)
        }
        if self.json {
            try printJSON(task)
            return
        }
        print(try self.summary(task), terminator: "")
    }

    /// What `task ID` prints: state, why it waits, timings, attempts, result or error.
    private func summary(_ task: ControlAPI.TaskInfo) throws -> String {
        var lines: [String] = []
        lines.append("task \(task.id)  \(task.capability)  \(task.state)")
        if let waiting = task.waiting { lines.append("waiting: \(waiting)") }
        if let question = task.question {
            lines.append("the agent asks: \(try resultText(question))")
            lines.append("answer with: agentmesh reply \(task.id.prefix(12)) --input JSON")
        }
        if let context = task.context { lines.append("conversation: \(context)") }
        lines.append("submitted \(task.submittedAt.timeOfDay), deadline \(task.deadline.timeOfDay), "
            + (task.isFinished ? "took" : "running for") + " \(task.duration(now: Date()))"
            + (task.executedBy.map { ", ran on \($0)" } ?? ""))
        if !task.attempts.isEmpty {
            lines.append(renderTable(
                header: ["EPOCH", "PEER", "OFFERED", "ACCEPTED", "ENDED", "OUTCOME"],
                rows: task.attempts.map { attempt in
                    ["\(attempt.epoch)", attempt.peerName, attempt.offeredAt.timeOfDay,
                     attempt.acceptedAt?.timeOfDay ?? "-", attempt.endedAt?.timeOfDay ?? "-", attempt.outcome ?? "-"]
                }))
        }
        if task.state == "completed" { lines.append("result: \(try resultText(task.result))") }
        for artifact in task.artifacts ?? [] { lines.append("input artifact: \(describe(artifact))") }
        for artifact in task.resultArtifacts ?? [] { lines.append("result artifact: \(describe(artifact))") }
        if let error = task.error { lines.append("error: \(error)") }
        return lines.map { $0 + "\n" }.joined()
    }

    private func printLogs(_ client: ControlClient) throws {
        var offset = 0
        while true {
            let wait = self.follow ? "&wait=30" : ""
            let log = try reporting {
                try client.decode(
                    client.request(method: "GET", path: "/v1/tasks/\(urlPiece(self.id))/logs?after=\(offset)\(wait)", timeout: .seconds(40)),
                    as: ControlAPI.TaskLog.self)
            }
            if log.dropped > 0 {
                FileHandle.standardError.write(Data("[\(log.dropped) bytes of the log are no longer kept]\n".utf8))
            }
            FileHandle.standardOutput.write(Data(log.text.utf8))
            offset = log.to
            guard self.follow, !(log.finished && log.text.isEmpty) else { return }
        }
    }
}

struct Reply: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Answer the question of an agent that waits for a person (a task in input_required); it resumes.")

    @OptionGroup var options: HomeOptions

    @Argument(help: "The task id, or its first 4 or more hex digits.")
    var id: String

    @Option(parsing: .unconditional, help: ArgumentHelp("The answer as JSON.", valueName: "JSON"))
    var input: String

    func run() throws {
        let answer = try parseJSONInput(Data(self.input.utf8))
        let body = try JSONSerialization.data(withJSONObject: answer, options: [.fragmentsAllowed])
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let task = try reporting {
            try client.decode(client.request(method: "POST", path: "/v1/tasks/\(urlPiece(self.id))/input", body: Array(body)), as: ControlAPI.TaskInfo.self)
        }
        print("task \(task.id) \(task.state)")
    }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a task; a running executor is stopped.")

    @OptionGroup var options: HomeOptions

    @Argument(help: "The task id, or its first 4 or more hex digits.")
    var id: String

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let task = try reporting {
            try client.decode(client.request(method: "POST", path: "/v1/tasks/\(urlPiece(self.id))/cancel"), as: ControlAPI.TaskInfo.self)
        }
        print("task \(task.id) \(task.state)")
    }
}

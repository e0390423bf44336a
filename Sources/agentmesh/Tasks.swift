import ArgumentParser
import Foundation
import MeshControl

struct Submit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Submit a task; it runs on a member that offers the capability.",
        discussion: "Prints the task id, or with --wait the result (a failed task exits non-zero with its error).")

    @OptionGroup var options: HomeOptions

    @Option(help: "The capability the task needs.")
    var capability: String

    @Option(help: ArgumentHelp("The task input as JSON.", valueName: "JSON"))
    var input: String?

    @Option(help: ArgumentHelp("A file holding the task input as JSON.", valueName: "FILE"))
    var inputFile: String?

    @Flag(help: "Wait for the task to end and print its result.")
    var wait = false

    @Option(help: "Seconds the task may take in all, retries included.")
    var timeout: Double = 60

    @Option(help: "Offers to make before giving up.")
    var maxAttempts: Int = 5

    @Flag(help: "Print the task as JSON.")
    var json = false

    func validate() throws {
        guard (self.input == nil) != (self.inputFile == nil) else {
            throw ValidationError("give the input with exactly one of --input or --input-file")
        }
        guard self.timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() throws {
        let text: Data
        if let input = self.input {
            text = Data(input.utf8)
        } else {
            guard let data = FileManager.default.contents(atPath: self.inputFile!) else {
                throw CLIError("cannot read \(self.inputFile!)")
            }
            text = data
        }
        guard let value = try? JSONSerialization.jsonObject(with: text, options: [.fragmentsAllowed]) else {
            throw CLIError("the input is not valid JSON")
        }
        let body = try ControlAPI.encoder().encode(ControlAPI.SubmitRequest(
            capability: self.capability, input: ControlAPI.JSONValue(value), timeoutSeconds: self.timeout,
            maxAttempts: self.maxAttempts))
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        var task = try reporting {
            try client.decode(client.request(method: "POST", path: "/v1/tasks", body: Array(body)), as: ControlAPI.TaskInfo.self)
        }
        guard self.wait else {
            if self.json { try printJSON(task) } else { print(task.id) }
            return
        }
        while !["completed", "failed", "canceled", "expired"].contains(task.state) {
            task = try reporting {
                try client.decode(
                    client.request(method: "GET", path: "/v1/tasks/\(task.id)?wait=30", timeout: .seconds(40)),
                    as: ControlAPI.TaskInfo.self)
            }
        }
        if self.json {
            try printJSON(task)
        } else if task.state == "completed" {
            print(try resultText(task.result))
        }
        guard task.state == "completed" else {
            throw CLIError("task \(task.id) \(task.state): \(task.error ?? "no reason given")")
        }
    }
}

/// A task result as the user wants to see it: JSON, one line.
func resultText(_ result: ControlAPI.JSONValue?) throws -> String {
    guard let result else { return "null" }
    let data = try JSONSerialization.data(withJSONObject: result.value, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}

struct Tasks: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the tasks submitted to this node.")

    @OptionGroup var options: HomeOptions

    @Option(help: "Only tasks in this state: submitted, offered, running, completed, failed, canceled or expired.")
    var state: String?

    @Flag(help: "One JSON document instead of a table.")
    var json = false

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let path = "/v1/tasks" + (self.state.map { "?state=\($0)" } ?? "")
        let list = try reporting { try client.get(path, as: ControlAPI.TaskList.self) }
        if self.json {
            try printJSON(list)
            return
        }
        print(renderTable(
            header: ["ID", "CAPABILITY", "STATE", "ATTEMPTS", "RAN ON", "SUBMITTED"],
            rows: list.tasks.map { task in
                [task.id, task.capability, task.state, "\(task.attempts.count)", task.executedBy ?? "-",
                 task.submittedAt.timeOfDay]
            }))
    }
}

struct TaskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "task", abstract: "Show one task: state, attempts, which peer ran it, timings, result or error.")

    @OptionGroup var options: HomeOptions

    @Argument(help: "The task id.")
    var id: String

    @Flag(help: "Print the task as JSON.")
    var json = false

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let task = try reporting { try client.get("/v1/tasks/\(self.id)", as: ControlAPI.TaskInfo.self) }
        if self.json {
            try printJSON(task)
            return
        }
        print("task \(task.id)  \(task.capability)  \(task.state)")
        print("submitted \(task.submittedAt.timeOfDay), deadline \(task.deadline.timeOfDay)")
        if !task.attempts.isEmpty {
            print(renderTable(
                header: ["EPOCH", "PEER", "OFFERED", "ACCEPTED", "ENDED", "OUTCOME"],
                rows: task.attempts.map { attempt in
                    ["\(attempt.epoch)", attempt.peerName, attempt.offeredAt.timeOfDay,
                     attempt.acceptedAt?.timeOfDay ?? "-", attempt.endedAt?.timeOfDay ?? "-", attempt.outcome ?? "-"]
                }))
        }
        if task.state == "completed" { print("result: \(try resultText(task.result))") }
        if let error = task.error { print("error: \(error)") }
    }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a task; a running executor is stopped.")

    @OptionGroup var options: HomeOptions

    @Argument(help: "The task id.")
    var id: String

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let task = try reporting {
            try client.decode(client.request(method: "POST", path: "/v1/tasks/\(self.id)/cancel"), as: ControlAPI.TaskInfo.self)
        }
        print("task \(task.id) \(task.state)")
    }
}

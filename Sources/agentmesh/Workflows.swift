import ArgumentParser
import Foundation
import MeshControl
import Yams

struct WorkflowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workflow",
        abstract: "Run workflows: steps placed on the mesh as tasks, with fan-out, dependencies and compensations.",
        discussion: """
            A workflow is a YAML or JSON file: a name, and steps with a capability and an input that may refer to \
            the workflow's input and earlier steps' outputs ({{input.topic}}, {{steps.research.output.summary}}, \
            {{item}} in a map). The node it is submitted to owns the run, stores it, and resumes it after a restart.
            """,
        subcommands: [Run.self, List.self, Show.self, Cancel.self])

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a workflow from a YAML or JSON file; prints its id, or with --wait its output.",
            discussion: """
                Exit statuses: 0 completed, 1 failed (compensated or not), 3 canceled, 4 no node running here, \
                64 a file or workflow that is not valid.
                """)

        @OptionGroup var options: HomeOptions

        @Argument(help: "The workflow file (YAML or JSON).", completion: .file())
        var file: String

        @Option(help: ArgumentHelp("The workflow's input as JSON (default: the file's 'input').", valueName: "JSON"))
        var input: String?

        @Flag(help: "Wait for the run to end and print its output.")
        var wait = false

        @Flag(name: [.long, .customShort("f")], help: "Wait, printing each step's changes as they happen.")
        var follow = false

        @Option(help: ArgumentHelp("POST the finished run here (a webhook), signed with DIR/webhook.secret.", valueName: "URL"))
        var callback: String?

        @Option(help: ArgumentHelp("Running again with the same key (within 24 h) returns the first run.", valueName: "KEY"))
        var idempotencyKey: String?

        @Flag(help: "Print the run as JSON.")
        var json = false

        func run() throws {
            let workflow = try readWorkflowFile(self.file)
            let input = try self.input.map { try parseJSONInput(Data($0.utf8)) }
            let body = try ControlAPI.encoder().encode(ControlAPI.WorkflowRequest(
                workflow: ControlAPI.JSONValue(workflow), input: input.map(ControlAPI.JSONValue.init), callback: self.callback))
            let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
            let run = try reporting {
                do {
                    return try client.decode(
                        client.request(
                            method: "POST", path: "/v1/workflows", body: Array(body),
                            headers: self.idempotencyKey.map { ["Idempotency-Key": $0] } ?? [:]),
                        as: ControlAPI.WorkflowInfo.self)
                } catch ControlClient.Error.api(422, let message) {
                    throw CLIError(message, status: .keyReused)
                }
            }
            guard self.wait || self.follow else {
                if self.json { try printJSON(run) } else { print(run.id) }
                return
            }
            FileHandle.standardError.write(Data("workflow \(run.id) started; waiting for it to end (Ctrl-C stops waiting, not the run)\n".utf8))
            let ended = try waitForWorkflow(run, client: client, follow: self.follow)
            if self.json {
                try printJSON(ended)
            } else if ended.state == "completed" {
                print(try resultText(ended.output))
            }
            try exitStatus(of: ended)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the workflow runs this node owns, newest first.")

        @OptionGroup var options: HomeOptions

        @Flag(help: "One JSON document instead of a table.")
        var json = false

        func run() throws {
            let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
            let list = try reporting { try client.get("/v1/workflows", as: ControlAPI.WorkflowList.self) }
            if self.json { return try printJSON(list) }
            print(renderTable(
                header: ["ID", "NAME", "STATE", "STEPS DONE", "SUBMITTED", "DURATION"],
                rows: list.workflows.map { run in
                    [String(run.id.prefix(12)), run.name, run.state,
                     "\(run.steps.count { $0.state == "completed" })/\(run.steps.count)", run.submittedAt.timeOfDay,
                     duration(run.seconds)]
                }))
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Draw a workflow run's steps with their state.")

        @OptionGroup var options: HomeOptions

        @Argument(help: "The workflow id, or its first 4 or more hex digits.")
        var id: String

        @Flag(help: "Print the run as JSON.")
        var json = false

        func run() throws {
            let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
            let run = try reporting { try client.get("/v1/workflows/\(urlPiece(self.id))", as: ControlAPI.WorkflowInfo.self) }
            if self.json { return try printJSON(run) }
            print(drawWorkflow(run))
        }
    }

    struct Cancel: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel a workflow run: running steps stop and completed steps are compensated.")

        @OptionGroup var options: HomeOptions

        @Argument(help: "The workflow id, or its first 4 or more hex digits.")
        var id: String

        func run() throws {
            let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
            let run = try reporting {
                try client.decode(client.request(method: "POST", path: "/v1/workflows/\(urlPiece(self.id))/cancel"), as: ControlAPI.WorkflowInfo.self)
            }
            print("workflow \(run.id) \(run.state)")
        }
    }
}

/// The most values a workflow file's YAML may hold with its aliases expanded: anchors and aliases are welcome, but
/// not to grow (a 536-byte file of nested aliases made the CLI grow to 3 GiB and abort).
let maximumWorkflowYAMLNodes = 100_000

/// Counts `node`'s values against `budget`, stopping as soon as it runs out (so an alias bomb costs no more than
/// the budget to find).
func fitsBudget(_ node: Node, _ budget: inout Int) -> Bool {
    budget -= 1
    guard budget >= 0 else { return false }
    switch node {
    case .scalar, .alias: return true
    case .sequence(let sequence): return sequence.allSatisfy { fitsBudget($0, &budget) }
    case .mapping(let mapping): return mapping.allSatisfy { fitsBudget($0.key, &budget) && fitsBudget($0.value, &budget) }
    }
}

/// A workflow file as a JSON value: JSON if it parses as JSON, otherwise YAML.
func readWorkflowFile(_ path: String) throws -> Any {
    let data: Data
    do {
        data = try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
        throw CLIError("cannot read \(path): " + (FileManager.default.fileExists(atPath: path) ? "it cannot be read" : "no such file"), status: .badInput)
    }
    if let json = try? JSONSerialization.jsonObject(with: data) { return json }
    do {
        guard let node = try Yams.compose(yaml: String(decoding: data, as: UTF8.self)) else {
            throw CLIError("\(path) is empty", status: .badInput)
        }
        var budget = maximumWorkflowYAMLNodes
        guard fitsBudget(node, &budget) else {
            throw CLIError(
                "\(path) grows past \(maximumWorkflowYAMLNodes) YAML values once its aliases are expanded; a workflow needs far fewer",
                status: .badInput)
        }
        return node.any
    } catch let error as CLIError {
        throw error
    } catch {
        throw CLIError("\(path) is neither JSON nor YAML: \(error)", status: .badInput)
    }
}

/// Long-polls the run until it ends; with `follow`, prints a line for every step that changes.
func waitForWorkflow(_ run: ControlAPI.WorkflowInfo, client: ControlClient, follow: Bool) throws -> ControlAPI.WorkflowInfo {
    var run = run
    var shown: [String: String] = [:]
    while true {
        if follow {
            for step in run.steps {
                var line = "\(step.name): \(step.state)"
                if step.isMap { line += " (\(step.completed)/\(step.items) items" + (step.failed > 0 ? ", \(step.failed) failed" : "") + ")" }
                if let compensation = step.compensation { line += ", \(compensation)" }
                if let error = step.error, step.state == "failed" { line += ": \(error)" }
                if let waiting = step.waiting { line += " (\(waiting))" }
                if shown[step.name] != line, step.state != "pending" || shown[step.name] != nil {
                    FileHandle.standardError.write(Data("\(Date().timeOfDay)  \(line)\n".utf8))
                    shown[step.name] = line
                }
            }
        }
        if run.isFinished { return run }
        let current = run
        // Following, every change is drawn; otherwise the node answers once the run ends (a document per change of
        // a 5,000-item map would be quadratic work for nothing).
        let path = "/v1/workflows/\(current.id)?" + (follow ? "version=\(current.version)&" : "") + "wait=30"
        run = try reporting {
            try client.decode(client.request(method: "GET", path: path, timeout: .seconds(40)), as: ControlAPI.WorkflowInfo.self)
        }
    }
}

func exitStatus(of run: ControlAPI.WorkflowInfo) throws {
    switch run.state {
    case "completed": return
    case "canceled": throw CLIError("workflow \(run.id) was canceled", status: .canceled)
    default:
        var sentence = "workflow \(run.id) \(run.state.replacingOccurrences(of: "_", with: " "))"
        if let error = run.error { sentence += ": \(error)" }
        if let failed = run.compensationFailed { sentence += "; the compensation of \(failed.joined(separator: ", ")) failed" }
        throw CLIError(sentence, status: .failed)
    }
}

/// The run as `workflow show` draws it: one line per step in definition order, marked by state, with what it waits
/// for, its items, and its compensation.
func drawWorkflow(_ run: ControlAPI.WorkflowInfo) -> String {
    var lines = ["workflow \(run.id)  \(run.name)  \(run.state)  "
        + (run.isFinished ? "took " : "running for ") + duration(run.seconds)]
    if let error = run.error { lines.append("error: \(error)") }
    let marks = ["completed": "✓", "failed": "✗", "running": "▶", "pending": "·", "skipped": "-", "canceled": "⊘"]
    let rows = run.steps.map { step -> [String] in
        let items = step.isMap ? "\(step.completed)/\(step.items)" + (step.failed > 0 ? " (\(step.failed) failed)" : "") : ""
        let took = step.seconds.map(duration) ?? ""
        var note = step.error.map { "error: \($0)" } ?? ""
        if let compensation = step.compensation { note = "↺ \(compensation)" + (note.isEmpty ? "" : "; \(note)") }
        if let waiting = step.waiting { note = waiting + (note.isEmpty ? "" : "; \(note)") }
        return ["\(marks[step.state] ?? "?") \(step.name)", step.capability, step.state, items,
                step.after.isEmpty ? "" : "← " + step.after.joined(separator: ", "), took, note]
    }
    lines.append(renderTable(header: ["  STEP", "CAPABILITY", "STATE", "ITEMS", "AFTER", "TOOK", "NOTE"], rows: rows))
    if run.state == "completed", let output = run.output, let text = try? resultText(output) {
        lines.append("output: " + (text.count > 400 ? String(text.prefix(400)) + "…" : text))
    }
    return lines.joined(separator: "\n")
}

func duration(_ seconds: Double) -> String {
    seconds < 1 ? String(format: "%.0fms", seconds * 1000) : seconds < 10 ? String(format: "%.2fs", seconds) : seconds < 120 ? String(format: "%.0fs", seconds)
        : seconds < 7200 ? "\(Int(seconds) / 60)m\(Int(seconds) % 60)s" : "\(Int(seconds) / 3600)h\(Int(seconds) % 3600 / 60)m"
}

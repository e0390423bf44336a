import ArgumentParser
import Foundation
import MeshControl
import MeshCore
import MeshTransport
import MeshWorkflows

struct Publish: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publish an event: it spreads peer to peer and every subscribed node acts on it once.",
        discussion: """
            Returns once every live member has the event (or after 2 s, naming those that have not acknowledged \
            it yet; the node keeps sending it to them). Nodes subscribe with 'run --subscribe TOPIC=EXECUTOR'.
            """)

    @OptionGroup var options: HomeOptions

    @Argument(help: "The topic: 1 to 64 characters of A-Z a-z 0-9 . _ -")
    var topic: String

    @Option(help: ArgumentHelp("The event's data as JSON (at most 64 KiB).", valueName: "JSON"))
    var data: String = "null"

    @Flag(help: "Print the answer as JSON.")
    var json = false

    func run() throws {
        let data = try parseJSONInput(Data(self.data.utf8))
        let body = ControlAPI.PublishRequest(topic: self.topic, data: ControlAPI.JSONValue(data)).body
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let published = try reporting {
            try client.decode(client.request(method: "POST", path: "/v1/events", body: Array(body)), as: ControlAPI.PublishedEvent.self)
        }
        if self.json { return try printJSON(published) }
        print(published.id)
        if !published.waitingFor.isEmpty {
            FileHandle.standardError.write(Data(
                "not yet acknowledged by \(published.waitingFor.joined(separator: ", ")); this node keeps sending it\n".utf8))
        }
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The events this node has seen, oldest first, with what its subscriptions made of them.")

    @OptionGroup var options: HomeOptions

    @Option(help: ArgumentHelp("Only events of this topic, or of topics starting with a prefix ending in * (research.*).", valueName: "TOPIC"))
    var topic: String?

    @Option(help: "The newest this many.")
    var last = 20

    @Flag(name: [.long, .customShort("f")], help: "Keep printing events as they arrive, until Ctrl-C.")
    var follow = false

    @Flag(help: "One JSON document (with --follow, one JSON line per event).")
    var json = false

    func validate() throws {
        guard (1...10_000).contains(self.last) else { throw ValidationError("--last must be 1 to 10000") }
    }

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let topic = self.topic.map { "&topic=\(urlPiece($0))" } ?? ""
        var history = try reporting { try client.get("/v1/events?limit=10000\(topic)", as: ControlAPI.EventHistory.self) }
        var events = Array(history.events.suffix(self.last))
        if self.json && !self.follow { return try printJSON(ControlAPI.EventHistory(events: events, next: history.next)) }
        while true {
            for event in events { try self.print(event) }
            fflush(nil)
            guard self.follow else { return }
            let after = history.next
            history = try reporting {
                try client.decode(
                    client.request(method: "GET", path: "/v1/events?after=\(after)&wait=30\(topic)", timeout: .seconds(40)),
                    as: ControlAPI.EventHistory.self)
            }
            events = history.events
        }
    }

    private func print(_ event: ControlAPI.EventInfo) throws {
        if self.json {
            let line = try ControlAPI.encoder().encode(event)
            Swift.print(String(decoding: line, as: UTF8.self))
            return
        }
        let outcomes = (event.outcomes ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
        Swift.print("\(event.time.timeOfDay)  \(event.topic)  from \(event.origin)  \(try resultText(event.data))"
            + (outcomes.isEmpty ? "" : "  [" + outcomes.joined(separator: "; ") + "]"))
    }
}

/// `TOPIC=EXECUTOR` or `TOPIC=workflow:FILE`; the file is read and checked now.
func parseSubscription(_ text: String, source: String) throws -> EventSubscription {
    guard let equals = text.firstIndex(of: "=") else {
        throw CLIError("\(source) '\(text)' is not TOPIC=EXECUTOR or TOPIC=workflow:FILE", status: .badInput)
    }
    let topic = String(text[..<equals])
    let action = String(text[text.index(after: equals)...])
    guard EventSubscription.isValidPattern(topic) else {
        throw CLIError("\(source): topic '\(topic)' must be 1 to 64 characters of A-Z a-z 0-9 . _ - (and may end in *)", status: .badInput)
    }
    if action.hasPrefix("workflow:") {
        let path = String(action.dropFirst("workflow:".count))
        do {
            let definition = try WorkflowDefinition(parsing: JSON(foundation: try readWorkflowFile(path)))
            return EventSubscription(topic: topic, action: .workflow(path: path, definition: definition))
        } catch let error as WorkflowDefinition.DefinitionError {
            throw CLIError("\(source): \(path) is not a valid workflow: \(error.description)", status: .badInput)
        }
    }
    do {
        return EventSubscription(topic: topic, action: .executor(try CapabilitySpec(parsing: "subscriber=" + action).executor))
    } catch {
        throw CLIError("\(source) '\(text)': \(error)", status: .badInput)
    }
}

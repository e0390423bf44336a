import ArgumentParser
import Foundation
import MeshControl

struct Members: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the mesh as this node sees it.")

    @OptionGroup var options: HomeOptions

    @Flag(help: "One JSON document instead of a table.")
    var json = false

    @Flag(name: [.long, .customShort("w")], help: "Refresh every second until Ctrl-C.")
    var watch = false

    func validate() throws {
        guard !(self.watch && self.json) else { throw ValidationError("--watch prints tables; leave out --json") }
    }

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        try repeatEverySecond(if: self.watch) { try self.table(client) }
    }

    private func table(_ client: ControlClient) throws -> String? {
        let members = try reporting { try client.get("/v1/members", as: ControlAPI.Members.self) }
        if self.json {
            try printJSON(members)
            return nil
        }
        let now = Date()
        return renderTable(
            header: ["NAME", "ID", "ADDRESS", "STATUS", "INC", "CAPABILITIES", "LOAD", "LAST HEARD", "SESSION"],
            rows: members.members.map { member in
                [
                    member.name, String(member.id.prefix(12)), member.address, member.status, "\(member.incarnation)",
                    member.capabilities.isEmpty ? "-" : member.capabilities.map { "\($0.name)×\($0.capacity)" }
                        .joined(separator: ","),
                    "\(member.load)", member.connection == "self" ? "-" : ago(member.lastHeard, now: now),
                    member.connection,
                ]
            })
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the node: version, uptime, listen address, each join address and its last error, store and audit state.")

    @OptionGroup var options: HomeOptions

    @Flag(help: "One JSON document instead of text.")
    var json = false

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let node = try reporting { try client.get("/v1/node", as: ControlAPI.NodeInfo.self) }
        let members = try reporting { try client.get("/v1/members", as: ControlAPI.Members.self) }.members
        if self.json {
            try printJSON(node)
            return
        }
        // Counted as `members` lists them: this node is one of the alive.
        let counts = Dictionary(grouping: members, by: \.status).mapValues(\.count)
        print("""
            node     \(node.name) \(node.id)
            version  \(node.version), up \(ago(node.startedAt, now: Date()).replacingOccurrences(of: " ago", with: ""))
            listen   \(node.listen)\(node.advertise == node.listen ? "" : ", advertised as \(node.advertise)")\(node.open ? " (open: any holder of the network key may join)" : "")
            members  \(members.count <= 1 ? "only this node so far" : counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))
            http     \(node.http.map { "control API and A2A on http://\($0)" } ?? "off (run --http HOST:PORT)")
            traffic  \(node.messagesReceived) messages (\(node.bytesReceived) bytes) received from peers
            store    \(node.store)
            audit    \(node.auditLog)
            """)
        for join in node.joins {
            let last = join.lastError.map { " (last error\(join.lastErrorAt.map { " " + ago($0, now: Date()) } ?? ""): \($0))" } ?? ""
            print("join     \(join.address): \(join.connected ? "connected" : "not connected")\(last)")
        }
        for problem in node.restoreProblems { print("restore  \(problem)") }
    }
}

/// "4s ago", "3m ago", "2h ago".
func ago(_ date: Date, now: Date) -> String {
    let seconds = max(0, Int(now.timeIntervalSince(date)))
    switch seconds {
    case ..<120: return "\(seconds)s ago"
    case ..<7200: return "\(seconds / 60)m ago"
    default: return "\(seconds / 3600)h ago"
    }
}

struct Leave: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Leave the mesh gracefully and stop the node (members see it as 'left' at once).",
        discussion: """
            Without --drain the node stops at once: the tasks it was running are offered elsewhere by their \
            submitters straight away. With --drain it first stops taking tasks and finishes those it runs, their \
            results delivered, for at most --drain-timeout seconds.
            """)

    @OptionGroup var options: HomeOptions

    @Flag(help: "Finish the tasks this node runs for peers before leaving.")
    var drain = false

    @Option(help: "With --drain: the longest to wait for them, in seconds.")
    var drainTimeout: Double = 60

    func validate() throws {
        guard self.drainTimeout >= 0, self.drainTimeout <= 86_400 else {
            throw ValidationError("--drain-timeout must be 0 to 86400 seconds")
        }
    }

    func run() throws {
        let home = self.options.nodeHome
        let client = ControlClient(socketPath: home.controlSocketPath)
        var path = "/v1/leave"
        if self.drain { path += "?drain=\(self.drainTimeout)" }
        let response = try reporting { try client.request(method: "POST", path: path) }
        guard response.status == 202 else {
            throw CLIError("the node refused to leave (HTTP \(response.status))")
        }
        if self.drain { print("draining: the node finishes the tasks it runs (at most \(Int(self.drainTimeout)) s), then leaves") }
        // The node removes its control socket as the last step of stopping.
        let patience: Double = self.drain ? 10 + self.drainTimeout : 10
        let deadline = Date().addingTimeInterval(patience)
        while FileManager.default.fileExists(atPath: home.controlSocketPath), Date() < deadline {
            Thread.sleep(forTimeInterval: 0.1)
        }
        guard !FileManager.default.fileExists(atPath: home.controlSocketPath) else {
            throw CLIError("the node announced its leave but has not stopped after \(Int(patience)) s")
        }
        print("left the mesh; the node has stopped")
    }
}

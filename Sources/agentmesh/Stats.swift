import ArgumentParser
import Foundation
import MeshControl

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "How the tasks submitted here went, per capability and per executing peer: executions, success rate, execution time and queue wait.")

    @OptionGroup var options: HomeOptions

    @Flag(help: "One JSON document instead of tables.")
    var json = false

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let stats = try reporting { try client.get("/v1/stats", as: ControlAPI.Stats.self) }
        if self.json { return try printJSON(stats) }
        for (title, rows) in [("since the node started", stats.lifetime), ("in the last 5 minutes", stats.lastFiveMinutes)] {
            print(title)
            print(renderTable(
                header: ["CAPABILITY", "PEER", "TASKS", "SUCCESS", "EXEC p50", "p90", "p99", "MEAN", "WAIT p50", "p99"],
                rows: rows.map { row in
                    [row.capability, row.peer ?? "(all)", "\(row.executions)", String(format: "%.1f%%", row.successRate * 100),
                     Self.time(row.execution.p50), Self.time(row.execution.p90), Self.time(row.execution.p99),
                     Self.time(row.execution.mean), Self.time(row.queueWait.p50), Self.time(row.queueWait.p99)]
                }))
            print()
        }
    }

    static func time(_ seconds: Double) -> String {
        seconds < 0.001 ? String(format: "%.0fµs", seconds * 1e6)
            : seconds < 1 ? String(format: "%.1fms", seconds * 1000) : String(format: "%.2fs", seconds)
    }
}

import Foundation
import Testing

@testable import MeshTransport

/// `promtool check metrics` refused every metric: none had a `# HELP` line. Every family has its HELP and TYPE now,
/// and every name the node counts has its help text.
@Suite struct NodeMetricsTests {
    @Test func everyFamilyHasHelpAndTypeLines() {
        let metrics = NodeMetrics(enabled: true)
        metrics.increment("agentmesh_tasks_total", [("capability", "echo"), ("outcome", "completed")])
        metrics.record("agentmesh_task_duration_seconds", [("capability", "echo")], seconds: 0.25)
        metrics.record("agentmesh_store_commit_changes", value: 3)
        metrics.set("agentmesh_sessions", to: 2)
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        let lines = text.split(separator: "\n")
        var families: Set<String> = []
        for line in lines where !line.hasPrefix("#") {
            var name = String(line.prefix { $0 != "{" && $0 != " " })
            for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) && !lines.contains("# TYPE \(name) counter") {
                name = String(name.dropLast(suffix.count))
            }
            families.insert(name)
        }
        #expect(families.isSuperset(of: ["agentmesh_tasks_total", "agentmesh_task_duration_seconds", "agentmesh_sessions", "agentmesh_bans_total"]))
        for family in families {
            #expect(lines.contains { $0.hasPrefix("# HELP \(family) ") && $0.count > "# HELP \(family) ".count + 5 }, "\(family) has no help")
            #expect(lines.contains { $0.hasPrefix("# TYPE \(family) ") }, "\(family) has no type")
        }
    }

    @Test func aCounterKeptElsewhereGrowsByWhatItsTotalGrewAndNeverBack() {
        let metrics = NodeMetrics(enabled: true)
        func value() -> String? {
            String(decoding: metrics.exposition(), as: UTF8.self).split(separator: "\n")
                .first { $0.hasPrefix("agentmesh_messages_received_total ") }.map { String($0.split(separator: " ")[1]) }
        }
        metrics.increment("agentmesh_messages_received_total", toTotal: 5)
        #expect(value() == "5")
        metrics.increment("agentmesh_messages_received_total", toTotal: 12)
        #expect(value() == "12")
        metrics.increment("agentmesh_messages_received_total", toTotal: 3)  // a smaller total (a reset) subtracts nothing
        #expect(value() == "12")
    }

    @Test func everyNameTheNodeCountsHasItsHelpText() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/MeshTransport")
        let pattern = try NSRegularExpression(pattern: #"metrics\.(increment|record|set)\("(agentmesh_[a-z_]+)""#)
        var names: Set<String> = []
        for file in try FileManager.default.contentsOfDirectory(atPath: sources.path) where file.hasSuffix(".swift") {
            let text = try String(contentsOf: sources.appendingPathComponent(file), encoding: .utf8)
            for match in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                if let range = Range(match.range(at: 2), in: text) { names.insert(String(text[range])) }
            }
        }
        #expect(names.count > 15, "\(names)")
        #expect(names.subtracting(NodeMetrics.help.keys).isEmpty, "no help text: \(names.subtracting(NodeMetrics.help.keys).sorted())")
    }
}

import Foundation
import MeshCore
import Prometheus
import Synchronization

/// The node's metrics, in a Prometheus registry of its own (`GET /metrics`), every one with its `# HELP` line
/// (`promtool check metrics` refuses metrics without). Handles are made once per label set and kept, so counting
/// costs a dictionary lookup and an atomic add.
final class NodeMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let handles = Mutex<[String: AnyObject]>([:])
    /// Totals kept elsewhere, as the counters last reported them (``increment(_:toTotal:)``).
    private let totals = Mutex<[String: UInt64]>([:])
    let isEnabled: Bool

    /// Buckets for task latencies and executions, from 1 ms to 10 minutes.
    static let durationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
        .seconds(30), .seconds(60), .seconds(300), .seconds(600),
    ]
    /// Buckets for commits: 10 µs to 1 s.
    static let commitBuckets: [Duration] = [
        .microseconds(10), .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
        .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(100), .seconds(1),
    ]
    static let countBuckets: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]

    /// What each metric counts, as its `# HELP` line says (README's Metrics section says the same).
    static let help: [String: String] = [
        "agentmesh_tasks_submitted_total": "Tasks submitted to this node.",
        "agentmesh_tasks_total": "Tasks submitted to this node that ended, by outcome (completed, failed, expired, canceled).",
        "agentmesh_task_duration_seconds": "Time from a task's submission to its end.",
        "agentmesh_task_attempts_total": "Attempts of tasks submitted here, by the peer offered to and how the attempt ended.",
        "agentmesh_tasks_retried_total": "Attempts after the first, of tasks submitted here.",
        "agentmesh_offers_declined_total": "Offers of tasks submitted here that a peer declined, by reason (counted when the task ends).",
        "agentmesh_executions_total": "Runs this node executed for peers, by outcome.",
        "agentmesh_execution_seconds": "Time a run this node executed for a peer took.",
        "agentmesh_sessions": "Authenticated sessions open to peers.",
        "agentmesh_members": "Members this node knows, by status.",
        "agentmesh_handshakes_refused_total": "Handshakes this node refused, by reason.",
        "agentmesh_limit_refusals_total": "Messages or connections refused by a per-peer limit, by class.",
        "agentmesh_bans_total": "Peers banned for going past their limits.",
        "agentmesh_messages_received_total": "Messages received from peers.",
        "agentmesh_bytes_received_total": "Bytes of messages received from peers.",
        "agentmesh_store_commit_seconds": "Time one commit of the task store took.",
        "agentmesh_store_commit_changes": "Changes in one commit of the task store.",
        "agentmesh_audit_commit_seconds": "Time one write of the audit logs took.",
        "agentmesh_audit_commit_records": "Audit records in one write.",
        "agentmesh_subscription_events_dropped_total": "Events this node's subscriptions did not act on (too many waiting).",
        "agentmesh_tasks_unfinished": "Tasks submitted here that have not ended.",
        "agentmesh_workflows_running": "Workflow runs of this node that have not ended.",
        "agentmesh_artifacts_fetched_total": "Artifacts this node fetched from peers.",
        "agentmesh_artifact_bytes_fetched_total": "Bytes of artifacts this node fetched from peers.",
        "agentmesh_artifact_chunks_damaged_total": "Artifact chunks from peers that did not match their digest (asked for again).",
    ]

    init(enabled: Bool) {
        self.isEnabled = enabled
        // Counters without labels are exported from the start, at 0: a series that appears only once something went
        // wrong cannot be told apart from a node that does not count it (Prometheus's advice on missing metrics).
        for name in Self.unlabelledCounters where enabled {
            _ = self.handle(name) { self.registry.makeCounter(descriptor: Self.descriptor(name), labels: []) }
        }
    }

    static let unlabelledCounters = [
        "agentmesh_bans_total", "agentmesh_messages_received_total", "agentmesh_bytes_received_total",
        "agentmesh_subscription_events_dropped_total",
    ]

    private static func descriptor(_ name: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: Self.help[name] ?? name.replacingOccurrences(of: "_", with: " "))
    }

    private func handle<Metric: AnyObject>(_ key: String, make: () -> Metric) -> Metric {
        self.handles.withLock { handles in
            if let existing = handles[key] as? Metric { return existing }
            let made = make()
            handles[key] = made
            return made
        }
    }

    private static func key(_ name: String, _ labels: [(String, String)]) -> String {
        name + labels.map { "|\($0.0)=\($0.1)" }.joined()
    }

    func increment(_ name: String, _ labels: [(String, String)] = [], by amount: Int = 1) {
        guard self.isEnabled, amount > 0 else { return }
        self.handle(Self.key(name, labels)) { self.registry.makeCounter(descriptor: Self.descriptor(name), labels: labels) }
            .increment(by: Int64(amount))
    }

    /// Brings a counter up to `total`, a count kept elsewhere (the peers' received messages): it grows by what
    /// the total grew since the last call.
    func increment(_ name: String, toTotal total: UInt64) {
        let grown = self.totals.withLock { totals -> UInt64 in
            defer { totals[name] = max(totals[name] ?? 0, total) }
            return total > (totals[name] ?? 0) ? total - (totals[name] ?? 0) : 0
        }
        self.increment(name, by: Int(grown))
    }

    func record(_ name: String, _ labels: [(String, String)] = [], seconds: Double) {
        guard self.isEnabled else { return }
        let buckets = name == "agentmesh_store_commit_seconds" || name == "agentmesh_audit_commit_seconds"
            ? Self.commitBuckets : Self.durationBuckets
        self.handle(Self.key(name, labels)) {
            self.registry.makeDurationHistogram(descriptor: Self.descriptor(name), labels: labels, buckets: buckets)
        }.recordNanoseconds(Int64(max(0, seconds) * 1e9))
    }

    func record(_ name: String, _ labels: [(String, String)] = [], value: Int) {
        guard self.isEnabled else { return }
        self.handle(Self.key(name, labels)) {
            self.registry.makeValueHistogram(descriptor: Self.descriptor(name), labels: labels, buckets: Self.countBuckets)
        }.record(Double(value))
    }

    func set(_ name: String, _ labels: [(String, String)] = [], to value: Double) {
        guard self.isEnabled else { return }
        self.handle(Self.key(name, labels)) { self.registry.makeGauge(descriptor: Self.descriptor(name), labels: labels) }.set(to: value)
    }

    /// The Prometheus text exposition.
    func exposition() -> [UInt8] { self.registry.emitToBuffer() }
}

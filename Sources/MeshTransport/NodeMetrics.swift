import CoreMetrics
import Foundation
import MeshCore
import Prometheus
import Synchronization

/// The node's metrics, through swift-metrics into a Prometheus registry of its own (`GET /metrics`). Handles are
/// made once per label set and kept, so counting costs a dictionary lookup and an atomic add.
final class NodeMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    private let handles = Mutex<[String: AnyObject]>([:])
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

    init(enabled: Bool) {
        self.isEnabled = enabled
        var factory = PrometheusMetricsFactory(registry: self.registry)
        factory.defaultDurationHistogramBuckets = Self.durationBuckets
        factory.durationHistogramBuckets = [
            "agentmesh_store_commit_seconds": Self.commitBuckets, "agentmesh_audit_commit_seconds": Self.commitBuckets,
        ]
        factory.defaultValueHistogramBuckets = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
        self.factory = factory
        // Counters without labels are exported from the start, at 0: a series that appears only once something went
        // wrong cannot be told apart from a node that does not count it (Prometheus's advice on missing metrics).
        for name in Self.unlabelledCounters where enabled {
            _ = self.handle(name) { Counter(label: name, dimensions: [], factory: self.factory) }
        }
    }

    static let unlabelledCounters = [
        "agentmesh_bans_total", "agentmesh_messages_received_total", "agentmesh_bytes_received_total",
        "agentmesh_subscription_events_dropped_total",
    ]

    private func handle<Metric: AnyObject>(_ key: String, make: () -> Metric) -> Metric {
        self.handles.withLock { handles in
            if let existing = handles[key] as? Metric { return existing }
            let made = make()
            handles[key] = made
            return made
        }
    }

    func increment(_ name: String, _ labels: [(String, String)] = [], by amount: Int = 1) {
        guard self.isEnabled, amount > 0 else { return }
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        self.handle(key) { Counter(label: name, dimensions: labels, factory: self.factory) }.increment(by: amount)
    }

    func record(_ name: String, _ labels: [(String, String)] = [], seconds: Double) {
        guard self.isEnabled else { return }
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        self.handle(key) { Timer(label: name, dimensions: labels, preferredDisplayUnit: .seconds, factory: self.factory) }
            .recordNanoseconds(Int64(max(0, seconds) * 1e9))
    }

    func record(_ name: String, _ labels: [(String, String)] = [], value: Int) {
        guard self.isEnabled else { return }
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        self.handle(key) { Recorder(label: name, dimensions: labels, aggregate: true, factory: self.factory) }.record(value)
    }

    func set(_ name: String, _ labels: [(String, String)] = [], to value: Double) {
        guard self.isEnabled else { return }
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        self.handle(key) { Gauge(label: name, dimensions: labels, factory: self.factory) }.record(value)
    }

    /// The Prometheus text exposition.
    func exposition() -> [UInt8] { self.registry.emitToBuffer() }
}

import Foundation
import MeshControl
import MeshCore
import MeshExecutors
import MeshStorage
import MeshWorkflows

/// Metrics (`GET /metrics`, Prometheus text) and per-capability stats (`GET /v1/stats`): what the node counts as
/// tasks end, runs finish, peers are refused and commits complete.
extension MeshNode {
    func metricsTaskSubmitted(_ capability: String) {
        self.telemetry.metrics.increment("agentmesh_tasks_submitted_total", [("capability", capability)])
    }

    /// A task submitted here ended: its outcome, its latency, each attempt, and a stats sample.
    func metricsTaskFinished(_ task: TaskSubmitter.SubmittedTask) {
        let capability = task.capability
        let end = task.finishedAt ?? self.now
        self.telemetry.metrics.increment("agentmesh_tasks_total", [("capability", capability), ("outcome", task.state.rawValue)])
        self.telemetry.metrics.record("agentmesh_task_duration_seconds", [("capability", capability)], seconds: (end - task.submittedAt).seconds)
        let tried = task.triedAttempts
        self.telemetry.metrics.increment("agentmesh_tasks_retried_total", [("capability", capability)], by: max(0, tried - 1))
        for attempt in task.attempts {
            let outcome: String
            switch attempt.outcome {
            case .declined(let reason)?:
                self.telemetry.metrics.increment("agentmesh_offers_declined_total", [("reason", reason.description)])
                outcome = "declined"
            case .timedOut?: outcome = "timed_out"
            case .peerDied?: outcome = "peer_died"
            case .completed?: outcome = "completed"
            case .failed?: outcome = "failed"
            case .canceled?: outcome = "canceled"
            case .superseded?: outcome = "superseded"
            case nil: outcome = "unfinished"
            }
            self.telemetry.metrics.increment(
                "agentmesh_task_attempts_total",
                [("capability", capability), ("peer", self.displayName(attempt.peer)), ("outcome", outcome)])
        }
        let ran = task.attempts.last { $0.acceptedAt != nil }
        let execution = ran.flatMap { attempt in attempt.acceptedAt.map { ((attempt.endedAt ?? end) - $0).seconds } }
        self.taskPlane.stats.record(TaskStats.Sample(
            capability: capability, peer: ran?.peer, succeeded: task.state == .completed, execution: execution,
            wait: ((ran?.acceptedAt ?? end) - task.submittedAt).seconds, at: end))
    }

    func metricsExecutionStarted(_ id: TaskID, capability: String) {
        self.taskPlane.localRuns.starts[id] = (capability, self.now)
    }

    /// A run this node executed for a peer ended.
    func metricsExecutionFinished(_ id: TaskID, outcome: TaskOutcome) {
        guard let (capability, started) = self.taskPlane.localRuns.starts.removeValue(forKey: id) else { return }
        let name: String
        switch outcome {
        case .success: name = "completed"
        case .failure: name = "failed"
        case .rejected: name = "rejected"
        case .timedOut: name = "timed_out"
        case .canceled: name = "canceled"
        }
        self.telemetry.metrics.increment("agentmesh_executions_total", [("capability", capability), ("outcome", name)])
        self.telemetry.metrics.record("agentmesh_execution_seconds", [("capability", capability)], seconds: (self.now - started).seconds)
    }

    func metricsHandshakeRefused(_ error: any Error) {
        let reason: String
        switch error as? TransportError {
        case .handshake?: reason = "handshake"
        case .handshakeTimedOut?: reason = "timeout"
        case .closedDuringHandshake?: reason = "closed"
        case .displacedHandshake?: reason = "displaced"
        case .refusedByPeer?: reason = "refused_by_peer"
        case .frame?, .session?, .malformedMessage?, .protocolViolation?: reason = "protocol"
        default: reason = "other"
        }
        self.telemetry.metrics.increment("agentmesh_handshakes_refused_total", [("reason", reason)])
    }

    /// What accounting decided, as counters: refusals over a limit (by class) and bans.
    func metricsAccounting(_ action: PeerAccountability.Action) {
        switch action {
        case .audit(let entry, _) where entry.event == .rateLimited:
            let limitClass = entry.detail.split(separator: " ").first.map(String.init) ?? "unknown"
            self.telemetry.metrics.increment("agentmesh_limit_refusals_total", [("class", limitClass)])
        case .ban:
            self.telemetry.metrics.increment("agentmesh_bans_total")
        default:
            break
        }
    }

    /// The store's and the audit log's commits: how long each took and how many changes it carried.
    func observeCommits() {
        let metrics = self.telemetry.metrics
        guard metrics.isEnabled else { return }
        self.taskStore?.onCommit { changes, took in
            metrics.record("agentmesh_store_commit_seconds", seconds: took.seconds)
            metrics.record("agentmesh_store_commit_changes", value: changes)
        }
        self.auditLog?.onCommit { records, took in
            metrics.record("agentmesh_audit_commit_seconds", seconds: took.seconds)
            metrics.record("agentmesh_audit_commit_records", value: records)
        }
    }

    /// `GET /metrics`: the gauges read now, then the whole registry in the Prometheus text format.
    func metricsExposition() -> ControlResponse {
        guard self.telemetry.metrics.isEnabled else { return .error(404, "metrics are off on this node (run --metrics off)") }
        self.telemetry.metrics.set("agentmesh_sessions", to: Double(self.peers.connections.count))
        var statuses: [String: Int] = ["alive": 1]  // this node
        for view in self.peers.membership.view { statuses["\(view.status)", default: 0] += 1 }
        for status in ["alive", "suspect", "dead", "left"] {
            self.telemetry.metrics.set("agentmesh_members", [("status", status)], to: Double(statuses[status] ?? 0))
        }
        let received = self.peers.accountability.received
        self.telemetry.metrics.increment("agentmesh_messages_received_total", toTotal: received.messages)
        self.telemetry.metrics.increment("agentmesh_bytes_received_total", toTotal: received.bytes)
        self.telemetry.metrics.set("agentmesh_tasks_unfinished", to: Double(self.submitter.allTasks.count { !$0.state.isTerminal }))
        self.telemetry.metrics.set("agentmesh_workflows_running", to: Double(self.workflowRuns.runs.values.count { !$0.state.isTerminal }))
        var response = ControlResponse(status: 200, body: self.telemetry.metrics.exposition())
        response.contentType = "text/plain; version=0.0.4; charset=utf-8"
        return response
    }

    /// `GET /v1/stats`
    func statsReport() -> ControlAPI.Stats {
        func rows(_ summaries: [TaskStats.Key: TaskStats.Summary]) -> [ControlAPI.StatsRow] {
            summaries.map { key, summary in
                ControlAPI.StatsRow(
                    capability: key.capability, peer: key.peer.map(self.displayName), executions: summary.executions,
                    successRate: summary.successRate,
                    execution: .init(summary.execution.count, summary.execution.quantile(0.5), summary.execution.quantile(0.9),
                                     summary.execution.quantile(0.99), summary.execution.mean),
                    queueWait: .init(summary.wait.count, summary.wait.quantile(0.5), summary.wait.quantile(0.9),
                                     summary.wait.quantile(0.99), summary.wait.mean))
            }.sorted { ($0.capability, $0.peer ?? "") < ($1.capability, $1.peer ?? "") }
        }
        return ControlAPI.Stats(lifetime: rows(self.taskPlane.stats.lifetime), lastFiveMinutes: rows(self.taskPlane.stats.lastWindow(now: self.now)))
    }
}

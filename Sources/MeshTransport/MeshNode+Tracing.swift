import Foundation
import MeshCore

/// Traces: every task carries a W3C trace context from the client (or a new one) through the offer to the agent
/// (`TRACEPARENT`, `traceparent`), the audit records of its offer, and, with `--otlp-endpoint`, spans: the submitting
/// node's span for the task, and the executing node's span for each run, its child.
extension MeshNode {
    /// The submitting node's span, when the task ends.
    func traceTaskFinished(_ task: TaskSubmitter.SubmittedTask) {
        guard let tracer = self.telemetry.tracer, let context = task.options.traceparent.flatMap(TraceContext.init) else { return }
        let span = TraceContext.spanID(of: task.id)
        var attributes = [("agentmesh.task.id", task.id.description), ("agentmesh.capability", task.capability),
                          ("agentmesh.outcome", task.state.rawValue), ("agentmesh.attempts", "\(task.attempts.count)")]
        if let ran = task.attempts.last(where: { $0.acceptedAt != nil }) { attributes.append(("agentmesh.executed_by", self.displayName(ran.peer))) }
        if let context = task.options.context { attributes.append(("agentmesh.context", context)) }
        tracer.export(Span(
            traceID: context.traceID, spanID: span, parentID: context.parentID == span ? nil : context.parentID,
            name: "task \(task.capability)", kind: .client, start: self.wallClockDate(for: task.submittedAt),
            end: self.wallClockDate(for: task.finishedAt ?? self.now), attributes: attributes,
            error: task.state == .completed ? nil : (task.error ?? task.state.rawValue)))
    }

    /// The trace context an agent runs under: the offer's trace, with this node's run span as the parent.
    func executionTrace(_ task: TaskRunner.AcceptedTask) -> TraceContext? {
        task.options.traceparent.flatMap(TraceContext.init)?.child(of: TraceContext.executionSpanID(of: task.id, epoch: task.epoch))
    }

    /// The executing node's span for one run.
    func traceExecutionFinished(_ task: TaskRunner.AcceptedTask, started: Duration, outcome: TaskOutcome) {
        guard let tracer = self.telemetry.tracer, let offered = task.options.traceparent.flatMap(TraceContext.init) else { return }
        let error: String?
        switch outcome {
        case .success: error = nil
        case .failure(let why), .rejected(let why), .timedOut(let why): error = why
        case .canceled: error = "canceled"
        }
        tracer.export(Span(
            traceID: offered.traceID, spanID: TraceContext.executionSpanID(of: task.id, epoch: task.epoch),
            parentID: offered.parentID, name: "execute \(task.capability)", kind: .server,
            start: self.wallClockDate(for: started), end: self.wallClockDate(for: self.now),
            attributes: [("agentmesh.task.id", task.id.description), ("agentmesh.capability", task.capability),
                         ("agentmesh.attempt", "\(task.epoch)"), ("agentmesh.submitter", self.displayName(task.submitter))],
            error: error))
    }
}

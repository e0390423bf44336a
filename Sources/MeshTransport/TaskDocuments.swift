import Foundation
import MeshControl
import MeshCore

/// The control API's task documents (`ControlAPI.TaskInfo` on the client side), written straight from the
/// submitter's state: the document every task answer carries, so it is written by hand (see ``JSONWriter``).
struct TaskDocuments {
    /// Core time to wall-clock time.
    let date: (Duration) -> Date
    /// A member's name for display.
    let name: (NodeID) -> String
    /// Why a waiting task waits, in one sentence.
    let waiting: (TaskSubmitter.SubmittedTask) -> String?

    func task(_ task: TaskSubmitter.SubmittedTask, status: Int = 200) -> ControlResponse {
        // Room for the result up front: growing past a 10 MiB result copied it again.
        var resultCount = 0
        if case .success(let bytes)? = task.outcome { resultCount = bytes.count }
        var json = JSONWriter(capacity: resultCount + 4096)
        self.write(task, into: &json)
        return ControlResponse(status: status, body: json.line())
    }

    /// `brief`: without results (the browser view's live list, which must stay small however large they are).
    func list(_ tasks: [TaskSubmitter.SubmittedTask], brief: Bool = false) -> ControlResponse {
        var json = JSONWriter(capacity: 512 * tasks.count + 16)
        json.beginObject()
        json.key("tasks")
        json.beginArray()
        for task in tasks { self.write(task, into: &json, brief: brief) }
        json.endArray()
        json.endObject()
        return ControlResponse(status: 200, body: json.line())
    }

    /// Keys in the order `ControlAPI.encoder()` sorts them; absent values are left out, as it leaves out nil.
    func write(_ task: TaskSubmitter.SubmittedTask, into json: inout JSONWriter, brief: Bool = false) {
        json.beginObject()
        Self.artifacts(TaskPayload.artifacts(of: task.input), key: "artifacts", into: &json)
        json.key("attempts")
        json.beginArray()
        for attempt in task.attempts {
            json.beginObject()
            if let accepted = attempt.acceptedAt {
                json.key("accepted_at")
                json.date(self.date(accepted))
            }
            if let ended = attempt.endedAt {
                json.key("ended_at")
                json.date(self.date(ended))
            }
            json.key("epoch")
            json.int(Int(attempt.epoch))
            json.key("offered_at")
            json.date(self.date(attempt.offeredAt))
            if let outcome = attempt.outcome {
                json.key("outcome")
                json.string(Self.describe(outcome))
            }
            json.key("peer")
            json.string(attempt.peer.description)
            json.key("peer_name")
            json.string(self.name(attempt.peer))
            json.endObject()
        }
        json.endArray()
        json.key("capability")
        json.string(task.capability)
        if let context = task.options.context {
            json.key("context")
            json.string(context)
        }
        json.key("deadline")
        json.date(self.date(task.deadline))
        if let error = task.error {
            json.key("error")
            json.string(error + (task.timedOutWhileRunningOn.map { " on \(self.name($0))" } ?? ""))
        }
        if let ranOn = task.attempts.last(where: { $0.acceptedAt != nil }) {
            json.key("executed_by")
            json.string(self.name(ranOn.peer))
        }
        if let finished = task.finishedAt {
            json.key("finished_at")
            json.date(self.date(finished))
        }
        json.key("id")
        json.string(task.id.description)
        if task.state == .inputRequired, let question = task.question {
            json.key("question")
            json.raw(JSONText.compacted(question) ?? Array("null".utf8))
        }
        if case .success(let bytes)? = task.outcome, !brief {
            json.key("result")
            // A result that is not JSON is shown as the text it is.
            let hasArtifacts = TaskPayload.hasArtifacts(bytes)  // one search of a result that may be large
            let output = hasArtifacts ? Array(TaskPayload.json(of: bytes)) : bytes
            // A large result is checked in place and written as it is; a small one is compacted.
            if output.count > 64 * 1024, JSONText.isValue(output) {
                json.raw(output)
            } else if let compact = JSONText.compacted(output) {
                json.raw(compact)
            } else {
                json.string(String(decoding: output, as: UTF8.self))
            }
            if hasArtifacts { Self.artifacts(TaskPayload.artifacts(of: bytes), key: "result_artifacts", into: &json) }
        }
        json.key("state")
        json.string(task.state.rawValue)
        json.key("submitted_at")
        json.date(self.date(task.submittedAt))
        if let trace = task.options.traceparent.flatMap(TraceContext.init) {
            json.key("trace_id")
            json.string(trace.traceID)
        }
        if let waiting = self.waiting(task) {
            json.key("waiting")
            json.string(waiting)
        }
        json.endObject()
    }

    /// A list of artifact references (`ControlAPI.ArtifactInfo`), left out when there are none.
    static func artifacts(_ artifacts: [ArtifactRef], key: String, into json: inout JSONWriter) {
        guard !artifacts.isEmpty else { return }
        json.key(key)
        json.beginArray()
        for artifact in artifacts {
            json.beginObject()
            json.key("media_type")
            json.string(artifact.mediaType)
            json.key("name")
            json.string(artifact.name)
            json.key("sha256")
            json.string(artifact.hex)
            json.key("size")
            json.int(Int(artifact.size))
            json.endObject()
        }
        json.endArray()
    }

    static func describe(_ outcome: TaskSubmitter.AttemptOutcome) -> String {
        switch outcome {
        case .declined(let reason): return "declined: \(reason)"
        case .timedOut: return "timed out"
        case .peerDied: return "peer died"
        case .completed: return "completed"
        case .failed(let message): return "failed: \(message)"
        case .canceled: return "canceled"
        case .superseded: return "superseded"
        }
    }
}

import Foundation
import MeshControl
import MeshCore
import MeshStorage
import NIOCore

/// Streamed progress: events an executor emits while it runs travel to the submitting node, are stored with the
/// task, and reach clients live, as a long-polled JSON page or as server-sent events.
extension MeshNode {
    /// A batch from the executor running the task's current attempt (an earlier attempt's events are dropped).
    func receiveProgress(_ id: TaskID, epoch: UInt32, first: UInt32, events: [[UInt8]], from peer: NodeID) {
        guard self.submitter.acceptsLog(id, epoch: epoch, from: peer) else { return }
        var log = self.eventLog(id)
        let kept = log.receive(
            epoch: epoch, first: first, events: events, time: AuditLog.wallClockMilliseconds(), room: self.progressRoom)
        self.taskPlane.followers.progress.set(log, for: id)
        self.publishKeptEvents(id, kept)
    }

    /// An event this node adds to a task's log itself (the agent's question), numbered with the agent's.
    func recordLocalEvent(_ id: TaskID, _ data: [UInt8]) {
        var log = self.eventLog(id)
        let kept = log.note(data, time: AuditLog.wallClockMilliseconds(), room: self.progressRoom)
        self.taskPlane.followers.progress.set(log, for: id)
        self.publishKeptEvents(id, kept)
    }

    /// Bytes of progress the node-wide budgets leave for new events.
    private var progressRoom: Int { self.taskPlane.followers.progress.room(stored: self.taskStore?.storedEventBytes ?? 0) }

    private func publishKeptEvents(_ id: TaskID, _ kept: [TaskEvent]) {
        guard !kept.isEmpty else { return }
        self.taskStore?.enqueue([.taskEvents(id, kept)])
        for stream in self.taskPlane.followers.streams[id] ?? [] {
            for event in kept { stream.write(Self.serverSentEvent(event)) }
        }
        self.wake(.taskProgress, id)
    }

    /// The task's events: in memory, or read back from the store (a restarted node, an older task).
    func eventLog(_ id: TaskID) -> TaskEventLog {
        if let log = self.taskPlane.followers.progress.log(id) { return log }
        let log = TaskEventLog(events: (try? self.taskStore?.taskEvents(id)) ?? [])
        self.taskPlane.followers.progress.set(log, for: id, isFinished: self.submittedTaskState(id)?.isTerminal ?? true)
        return log
    }

    /// `GET /v1/tasks/ID/events` as JSON: the events after `after`, long-polled for up to `wait`.
    func answerEvents(_ id: TaskID, after: Int, wait: Duration, respond: @escaping Respond) {
        let send = { respond(.json(self.eventsPage(id, after: after))) }
        guard let task = self.submitter.task(id), !task.state.isTerminal, wait > .zero,
            self.eventLog(id).lastSequence <= after
        else { return send() }
        self.wait(.taskProgress, for: id, timeout: wait, wake: send)
    }

    private func eventsPage(_ id: TaskID, after: Int) -> ControlAPI.TaskEvents {
        let log = self.eventLog(id)
        let events = log.events(after: after).prefix(1_000).map { event in
            ControlAPI.TaskEventInfo(
                sequence: event.sequence, attempt: Int(event.epoch),
                time: Date(timeIntervalSince1970: Double(event.time) / 1000),
                data: ControlAPI.JSONValue((try? JSONSerialization.jsonObject(with: Data(event.data), options: [.fragmentsAllowed])) ?? NSNull()))
        }
        let next = events.last?.sequence ?? max(after, 0)
        let finished = (self.submittedTaskState(id)?.isTerminal ?? true) && next >= (log.events.last?.sequence ?? 0)
        return ControlAPI.TaskEvents(id: id.description, events: Array(events), next: next, finished: finished)
    }

    /// `GET /v1/tasks/ID/events` as server-sent events: every kept event after `after`, then each new one as it
    /// arrives, then an `end` event carrying the task document, and the stream closes.
    func streamEvents(_ id: TaskID, after: Int, respond: @escaping Respond) {
        respond(.eventStream { sink in
            self.context.loop.execute {
                self.assumeIsolated { node in node.startEventStream(id, after: after, sink: sink) }
            }
        })
    }

    private func startEventStream(_ id: TaskID, after: Int, sink: ControlStreamSink) {
        sink.write(Array("retry: 1000\n\n".utf8))
        for event in self.eventLog(id).events(after: after) { sink.write(Self.serverSentEvent(event)) }
        guard let task = self.submitter.task(id), !task.state.isTerminal else {
            return self.endEventStream(sink, task: id)
        }
        self.taskPlane.followers.streams[id, default: []].append(sink)
        let token = ObjectIdentifier(sink)
        sink.onClose { [weak self] in
            guard let self else { return }
            self.assumeIsolated { node in
                node.taskPlane.followers.streams[id]?.removeAll { ObjectIdentifier($0) == token }
                if node.taskPlane.followers.streams[id]?.isEmpty == true { node.taskPlane.followers.streams[id] = nil }
            }
        }
        self.keepEventStreamAlive(sink)
    }

    /// A comment every 15 s, so proxies and clients see the stream is alive while an agent thinks.
    private func keepEventStreamAlive(_ sink: ControlStreamSink) {
        self.context.loop.scheduleTask(in: .seconds(15)) {
            self.assumeIsolated { node in
                guard !sink.isClosed else { return }
                sink.write(Array(": keep-alive\n\n".utf8))
                node.keepEventStreamAlive(sink)
            }
        }
    }

    /// The task ended: its streams get the `end` event and close.
    func finishEventStreams(_ id: TaskID) {
        for sink in self.taskPlane.followers.streams.removeValue(forKey: id) ?? [] { self.endEventStream(sink, task: id) }
        self.wake(.taskProgress, id)
    }

    private func endEventStream(_ sink: ControlStreamSink, task id: TaskID) {
        let document = self.taskDocumentBytes(id) ?? Array("{}".utf8)
        sink.write(Array("event: end\ndata: ".utf8) + (JSONText.compacted(document) ?? Array("{}".utf8)) + Array("\n\n".utf8))
        sink.finish()
    }

    /// `id`, `event: progress` and the event as one line of JSON: `{"attempt":…,"data":…,"sequence":…,"time":…}`.
    static func serverSentEvent(_ event: TaskEvent) -> [UInt8] {
        var json = JSONWriter(capacity: event.data.count + 96)
        json.beginObject()
        json.key("attempt")
        json.int(Int(event.epoch))
        json.key("data")
        if let compact = JSONText.compacted(event.data) {
            json.raw(compact)
        } else {
            json.string(String(decoding: event.data, as: UTF8.self))
        }
        json.key("sequence")
        json.int(event.sequence)
        json.key("time")
        json.date(Date(timeIntervalSince1970: Double(event.time) / 1000))
        json.endObject()
        return Array("id: \(event.sequence)\nevent: progress\ndata: ".utf8) + json.bytes + Array("\n\n".utf8)
    }
}

import Foundation
import Logging
import MeshCrypto
import MeshControl
public import MeshCore
import MeshExecutors
import MeshStorage
public import MeshWorkflows
import NIOCore

/// What `run --subscribe TOPIC=ACTION` does with an event: run an executor (the same ones capabilities use) with the
/// event as its input, or start a workflow with the event as the run's input. `TOPIC` may end in `*` (a prefix).
public struct EventSubscription: Sendable, Equatable, CustomStringConvertible {
    public enum Action: Sendable, Equatable {
        case executor(CapabilitySpec.Executor)
        /// The workflow file's definition, read when the node starts.
        case workflow(path: String, definition: WorkflowDefinition)
    }

    public let topic: String
    public let action: Action

    public init(topic: String, action: Action) {
        self.topic = topic
        self.action = action
    }

    public var description: String {
        switch self.action {
        case .executor(let executor): return "\(self.topic)=\(executor)"
        case .workflow(let path, _): return "\(self.topic)=workflow:\(path)"
        }
    }

    public func matches(_ topic: String) -> Bool { MeshEvent.topic(topic, matches: self.topic) }

    /// A topic, or a prefix ending in `*`.
    public static func isValidPattern(_ pattern: String) -> Bool { MeshEvent.isValidPattern(pattern) }
}

/// Events: published here or received from peers, kept in a bounded history (stored as `event` documents), handed
/// once to each matching subscription of this node.
extension MeshNode {
    static let eventDocument = "event"
    /// A publish answers once every live member has the event, or after this long (delivery goes on).
    static let publishAnswerWithin: Duration = .seconds(2)
    /// Long polls of the history wait on this key.
    static let historyWaitKey = EventID(high: 0, low: 0)

    func runEventBus(_ event: (inout EventBus) -> [EventBus.Directive]) {
        for directive in event(&self.meshEvents.bus) {
            switch directive {
            case .send(let message, let peer): self.deliver(message, to: peer)
            case .store(let record): self.storeEventRecord(record)
            case .forget(let id): self.taskStore?.enqueue([.forgetDocument(kind: Self.eventDocument, id: .init(id))])
            case .deliver(let event): self.deliverToSubscribers(event)
            }
        }
    }

    func receiveEvent(_ message: TaskMessage, from peer: NodeID) {
        if case .event(let event) = message {
            // Signed by its origin: a peer that passes events on cannot put another node's name on one.
            guard event.isAuthentic else {
                return self.peerMisbehaved(peer, reason: "an event whose signature is not its origin's (\(event.origin))")
            }
            // Kept only when this node would admit its origin as a peer; acknowledged either way, so the sender
            // stops sending it.
            guard self.admitsEvents(from: event) else {
                return self.deliver(.eventAck(event.id), to: peer)
            }
        }
        let members = self.liveMemberIDs()
        self.runEventBus { $0.receive(message, from: peer, members: members, now: self.now, time: AuditLog.wallClockMilliseconds()) }
        if case .event = message {
            self.wake(.eventHistory, Self.historyWaitKey)
        } else if case .eventAck(let id) = message, self.meshEvents.bus.waiting(for: id).isEmpty {
            self.wake(.eventPublished, id)
        }
    }

    private func admitsEvents(from event: MeshEvent) -> Bool {
        guard let key = event.seal?.originKey else { return false }
        let trust = self.context.gate.trustStore.current()
        // With --open, a member this node has heard of: any key could otherwise sign events, one fresh key each,
        // and fill the history with origins that do not exist.
        return trust.trusted[key] != nil || event.origin == self.identity.nodeID
            || (trust.isOpen && self.peers.membership.member(event.origin) != nil)
    }

    func eventTick(now: Duration) {
        let alive = Set(self.liveMemberIDs())
        self.runEventBus { $0.tick(now: now, alive: alive) }
    }

    private func liveMemberIDs() -> [NodeID] {
        self.peers.membership.view.filter { $0.status == .alive }.map(\.record.nodeID)
    }

    // MARK: - Control API

    /// `POST /v1/events`: `{"topic": T, "data": …}`.
    func publishEvent(_ body: [UInt8], respond: @escaping Respond) {
        let request: ControlAPI.PublishRequest
        do {
            request = try ControlAPI.PublishRequest(parsing: body)
        } catch {
            return respond(.error(400, error.description))
        }
        let topic = request.topic
        guard MeshEvent.isValidTopic(topic) else {
            return respond(.error(400, "topic '\(topic.prefix(80))\(topic.count > 80 ? "…" : "")' must be 1 to 64 characters of A-Z a-z 0-9 . _ -"))
        }
        guard let data = try? JSONSerialization.data(withJSONObject: request.data.value, options: [.fragmentsAllowed, .sortedKeys]) else {
            return respond(.error(400, "data is not JSON"))
        }
        guard data.count <= MeshEvent.maximumData else {
            return respond(.error(413, "the event's data has \(data.count) bytes; at most \(MeshEvent.maximumData)"))
        }
        guard self.taskPlane.commitGate.isStoreWritable else {
            return respond(.error(507, "this node cannot store events now (\(self.taskStore?.path ?? "its task store") is not writable)"))
        }
        var generator = SystemRandomNumberGenerator()
        let event = MeshEvent(
            id: EventID(using: &generator), topic: topic, publishedBy: self.identity, time: AuditLog.wallClockMilliseconds(),
            data: Array(data))
        let members = self.liveMemberIDs()
        self.runEventBus { $0.publish(event, to: members, now: self.now) }
        self.wake(.eventHistory, Self.historyWaitKey)
        let sequence = self.taskStore?.lastQueued ?? 0
        let answer = {
            let waiting = self.meshEvents.bus.waiting(for: event.id)
            let published = ControlAPI.PublishedEvent(
                id: event.id.description, topic: topic, members: members.count,
                waitingFor: waiting.map(self.displayName).sorted())
            respond(.json(published, status: waiting.isEmpty ? 200 : 202))
        }
        // Answered once the event is stored here and every live member has it (or the wait ran out).
        let stored = { (error: TaskStore.StoreError?) in
            if let error { return respond(.error(507, "the event could not be stored: \(error.description)")) }
            guard !self.meshEvents.bus.waiting(for: event.id).isEmpty else { return answer() }
            self.wait(.eventPublished, for: event.id, timeout: Self.publishAnswerWithin, wake: answer)
        }
        if !self.taskPlane.commitGate.wait(forStore: sequence, stored) { stored(nil) }
    }

    /// `GET /v1/events?topic=T&after=N&limit=L&wait=S`
    func answerEventHistory(topic: String?, after: Int, limit: Int, wait: Duration?, respond: @escaping Respond) {
        let send = { respond(.json(self.eventHistory(topic: topic, after: after, limit: limit))) }
        guard let wait, wait > .zero, self.meshEvents.bus.records(after: after, topic: topic, limit: 1).isEmpty else { return send() }
        self.wait(.eventHistory, for: Self.historyWaitKey, timeout: wait, wake: send)
    }

    private func eventHistory(topic: String?, after: Int, limit: Int) -> ControlAPI.EventHistory {
        let records = self.meshEvents.bus.records(after: after, topic: topic, limit: limit)
        return ControlAPI.EventHistory(
            events: records.map { record in
                ControlAPI.EventInfo(
                    sequence: record.sequence, id: record.event.id.description, topic: record.event.topic,
                    origin: self.displayName(record.event.origin), time: Date(timeIntervalSince1970: Double(record.event.time) / 1000),
                    data: ControlAPI.JSONValue((try? JSONSerialization.jsonObject(with: Data(record.event.data), options: [.fragmentsAllowed])) ?? NSNull()),
                    outcomes: record.outcomes.isEmpty ? nil : record.outcomes)
            },
            next: records.last?.sequence ?? max(after, 0))
    }

    // MARK: - Subscriptions

    /// Each matching subscription acts on the event once: an outcome on record means it already has. After a
    /// restart, `startedAfter` leaves out subscriptions configured after the event came.
    private func deliverToSubscribers(_ event: MeshEvent, startedAfter starts: [String: Int] = [:]) {
        guard let record = self.meshEvents.bus.record(event.id) else { return }
        for subscription in self.settings.subscriptions where subscription.matches(event.topic) {
            let key = subscription.description
            guard record.outcomes[key] == nil, record.sequence > starts[key] ?? Int.min else { continue }
            switch subscription.action {
            case .workflow(_, let definition):
                switch self.meshEvents.subscribers.workflows.admit((event, key, definition)) {
                case .start(let run): self.startSubscribedWorkflow(run.event, key: run.key, definition: run.definition)
                case .queued: self.runEventBus { $0.handled(event.id, by: key, outcome: "waiting") }
                case .dropped: self.dropForSubscriber(event, key: key, waiting: self.meshEvents.subscribers.workflows.waitingCount)
                }
            case .executor(let executor):
                switch self.meshEvents.subscribers.executors.admit((event, key, executor)) {
                case .start(let run):
                    self.runEventBus { $0.handled(event.id, by: key, outcome: "running") }
                    self.startSubscriberRun(run.event, key: run.key, executor: run.executor)
                case .queued: self.runEventBus { $0.handled(event.id, by: key, outcome: "running") }
                case .dropped: self.dropForSubscriber(event, key: key, waiting: self.meshEvents.subscribers.executors.waitingCount)
                }
            }
        }
    }

    private func dropForSubscriber(_ event: MeshEvent, key: String, waiting: Int) {
        self.telemetry.metrics.increment("agentmesh_subscription_events_dropped_total")
        if let leftOut = self.meshEvents.subscribers.dropLog.admit(now: self.now) {
            self.context.logger.warning("an event was not acted on: too many wait for this node's subscribers", metadata: [
                "event": "\(event.id)", "subscription": "\(key)", "waiting": "\(waiting)", "not_logged_since": "\(leftOut)",
            ])
        }
        self.runEventBus { $0.handled(event.id, by: key, outcome: "dropped: \(EventSubscribers.maximumWaiting) events already waited") }
    }

    private func startSubscribedWorkflow(_ event: MeshEvent, key: String, definition: WorkflowDefinition) {
        let input = (try? JSON(parsing: self.envelope(event))) ?? .null
        let run = self.startWorkflow(definition, input: input, callback: nil)
        if self.workflowRuns.runs[run]?.state.isTerminal == false {
            self.meshEvents.subscribers.workflowRuns.insert(run)
        } else if let next = self.meshEvents.subscribers.workflows.finished() {
            self.startSubscribedWorkflow(next.event, key: next.key, definition: next.definition)
        }
        self.runEventBus { $0.handled(event.id, by: key, outcome: "workflow \(run)") }
    }

    /// A workflow run ended: if a subscription started it, the next event waiting for one starts its run.
    func subscribedWorkflowEnded(_ run: WorkflowID) {
        guard self.meshEvents.subscribers.workflowRuns.remove(run) != nil, let next = self.meshEvents.subscribers.workflows.finished() else { return }
        self.startSubscribedWorkflow(next.event, key: next.key, definition: next.definition)
    }

    static let subscriberTimeout: Duration = .seconds(300)

    private func startSubscriberRun(_ event: MeshEvent, key: String, executor: CapabilitySpec.Executor) {
        let input = self.envelope(event)
        let context = TaskExecution.Context(
            taskID: TaskID(event.id), attempt: 1, deadline: Date().addingTimeInterval(Self.subscriberTimeout.seconds))
        let loop = self.context.loop
        self.meshEvents.subscribers.executorRuns["\(event.id) \(key)"] = Task {
            let outcome = await TaskExecution.run(executor, input: input, timeout: Self.subscriberTimeout, context: context)
            loop.execute {
                self.assumeIsolated { node in node.subscriberFinished(event.id, key: key, outcome: outcome) }
            }
        }
    }

    private func subscriberFinished(_ id: EventID, key: String, outcome: TaskOutcome) {
        self.meshEvents.subscribers.executorRuns["\(id) \(key)"] = nil
        // Stopped with its node: the event stays "running" in the store, so the next start acts on it again (at
        // least once, as after a crash), instead of recording a cancel nobody asked for.
        if case .canceled = outcome, !self.isRunning { return }
        defer {
            if let next = self.meshEvents.subscribers.executors.finished() { self.startSubscriberRun(next.event, key: next.key, executor: next.executor) }
        }
        let text: String
        switch outcome {
        case .success: text = "ran"
        case .failure(let why), .rejected(let why), .timedOut(let why): text = "failed: \(why)"
        case .canceled: text = "canceled"
        }
        if text != "ran" {
            self.context.logger.warning("an event subscriber failed", metadata: ["event": "\(id)", "subscription": "\(key)", "why": "\(text)"])
        }
        self.runEventBus { $0.handled(id, by: key, outcome: text) }
    }

    /// What a subscriber gets: `{"id", "topic", "origin", "time", "data"}`.
    private func envelope(_ event: MeshEvent) -> [UInt8] {
        var json = JSONWriter(capacity: event.data.count + 160)
        json.beginObject()
        json.key("data")
        json.raw(JSONText.compacted(event.data) ?? Array("null".utf8))
        json.key("id")
        json.string(event.id.description)
        json.key("origin")
        json.string(self.displayName(event.origin))
        json.key("time")
        json.date(Date(timeIntervalSince1970: Double(event.time) / 1000))
        json.key("topic")
        json.string(event.topic)
        json.endObject()
        return json.bytes
    }

    // MARK: - Storage

    private struct StoredEvent: Codable {
        let sequence: Int
        let id: EventID
        let topic: String
        let origin: String
        let time: Int64
        let data: String
        let outcomes: [String: String]
        /// The publisher's key and signature, in hex (absent from events kept before events were signed).
        let originKey: String?
        let signature: String?
    }

    private func storeEventRecord(_ record: EventBus.Record) {
        let stored = StoredEvent(
            sequence: record.sequence, id: record.event.id, topic: record.event.topic, origin: record.event.origin.description,
            time: record.event.time, data: String(decoding: record.event.data, as: UTF8.self), outcomes: record.outcomes,
            originKey: record.event.seal.map { Hex.encode($0.originKey.bytes) }, signature: record.event.seal.map { Hex.encode($0.signature) })
        guard let body = try? JSONEncoder().encode(stored) else { return }
        self.taskStore?.enqueue([.document(kind: Self.eventDocument, id: .init(record.event.id), body: Array(body))])
    }

    private static func seal(key: String?, signature: String?) -> MeshEvent.Seal? {
        guard let key = key.flatMap(Hex.decode), let signature = signature.flatMap(Hex.decode),
            let originKey = try? Ed25519PublicKey(bytes: key)
        else { return nil }
        return MeshEvent.Seal(originKey: originKey, signature: signature)
    }

    /// Where each configured subscription starts in the event history, kept in the store: after a restart it acts
    /// only on events that came after it was first configured (a new `--subscribe` ran on every event the node had
    /// kept from before it existed). A subscription no longer configured is forgotten, so adding it back starts anew.
    private struct SubscriptionStart: Codable {
        let subscription: String
        /// The history's last sequence when the subscription first ran here.
        let after: Int
    }

    static let subscriptionStartDocument = "subscription-start"

    private static func subscriptionStartID(_ subscription: String) -> TaskStore.DocumentID {
        let digest = SHA256.hash(Array("agentmesh subscription \(subscription)".utf8))
        return TaskStore.DocumentID(
            high: digest[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, low: digest[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
    }

    /// `acted`: subscriptions with an outcome on some stored event (they ran here before starts were stored).
    private func subscriptionStarts(acted: Set<String>) -> [String: Int] {
        let configured = Set(self.settings.subscriptions.map(\.description))
        var starts: [String: Int] = [:]
        var changes: [TaskStore.Change] = []
        for (id, start) in self.restoredDocuments(Self.subscriptionStartDocument, as: SubscriptionStart.self, what: "subscription start") {
            if configured.contains(start.subscription) {
                starts[start.subscription] = start.after
            } else {
                changes.append(.forgetDocument(kind: Self.subscriptionStartDocument, id: id))
            }
        }
        for subscription in configured.sorted() where starts[subscription] == nil {
            let start = SubscriptionStart(subscription: subscription, after: acted.contains(subscription) ? 0 : self.meshEvents.bus.lastSequence)
            starts[subscription] = start.after
            if let body = try? JSONEncoder().encode(start) {
                changes.append(.document(kind: Self.subscriptionStartDocument, id: Self.subscriptionStartID(subscription), body: Array(body)))
            }
        }
        if !changes.isEmpty { self.taskStore?.enqueue(changes) }
        return starts
    }

    /// After a restart: the history comes back; a subscription that had not finished with an event acts on it again
    /// (at least once), and one configured since acts only on what comes after it.
    func restoreEvents() {
        var acted: Set<String> = []
        let records = self.restoredDocuments(Self.eventDocument, as: StoredEvent.self, what: "event").compactMap { id, stored -> EventBus.Record? in
            guard let origin = NodeID(hex: stored.origin) else {
                self.restoreProblem("a stored event (\(id)) names no node as its origin; it was skipped")
                return nil
            }
            acted.formUnion(stored.outcomes.keys)
            return EventBus.Record(
                sequence: stored.sequence,
                event: MeshEvent(
                    id: stored.id, topic: stored.topic, origin: origin, time: stored.time, data: Array(stored.data.utf8),
                    seal: Self.seal(key: stored.originKey, signature: stored.signature)),
                outcomes: stored.outcomes.filter { $0.value != "running" })
        }
        self.meshEvents.bus.restore(records)
        let starts = self.subscriptionStarts(acted: acted)
        for record in self.meshEvents.bus.history where self.settings.subscriptions.contains(where: {
            $0.matches(record.event.topic) && record.outcomes[$0.description] == nil && record.sequence > starts[$0.description] ?? .max
        }) {
            self.deliverToSubscribers(record.event, startedAfter: starts)
        }
    }
}

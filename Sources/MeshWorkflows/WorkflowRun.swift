public import MeshCore
import MeshCrypto

/// A task a workflow asks the node to submit: an ordinary task, whose id is derived from the workflow, the step and
/// the item, so submitting it again after a restart is the same task and never a second run.
public struct WorkflowTask: Sendable, Equatable, Codable {
    public let id: TaskID
    public let capability: String
    /// JSON, stored as its text.
    public let input: [UInt8]
    public let timeoutSeconds: Double
    public let attempts: Int
    /// Queued while no live member offers the capability (a compensation always is: an undo must not be skipped
    /// because its agent is restarting); otherwise refused at once. Items stored before it existed waited.
    public let waitForCapability: Bool

    init(id: TaskID, capability: String, input: [UInt8], timeoutSeconds: Double, attempts: Int, waitForCapability: Bool) {
        self.id = id
        self.capability = capability
        self.input = input
        self.timeoutSeconds = timeoutSeconds
        self.attempts = attempts
        self.waitForCapability = waitForCapability
    }

    private enum CodingKeys: String, CodingKey { case id, capability, input, timeoutSeconds, attempts, waitForCapability }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.id = try container.decode(TaskID.self, forKey: .id)
        self.capability = try container.decode(String.self, forKey: .capability)
        self.input = Array(try container.decode(String.self, forKey: .input).utf8)
        self.timeoutSeconds = try container.decode(Double.self, forKey: .timeoutSeconds)
        self.attempts = try container.decode(Int.self, forKey: .attempts)
        self.waitForCapability = try container.decodeIfPresent(Bool.self, forKey: .waitForCapability) ?? true
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(self.id, forKey: .id)
        try container.encode(self.capability, forKey: .capability)
        try container.encode(String(decoding: self.input, as: UTF8.self), forKey: .input)
        try container.encode(self.timeoutSeconds, forKey: .timeoutSeconds)
        try container.encode(self.attempts, forKey: .attempts)
        try container.encode(self.waitForCapability, forKey: .waitForCapability)
    }
}

/// How a step's task ended, as the workflow sees it.
public enum WorkflowTaskOutcome: Sendable, Equatable {
    case completed([UInt8])
    case failed(String)
    case canceled
}

/// One run of a workflow, owned by the node it was submitted to, as a pure state machine: it decides which steps'
/// tasks to submit (at most `concurrency` items of a map at once), collects outputs in item order, applies each
/// step's `on_failure`, and when the run aborts undoes the completed steps with their compensations, newest first,
/// one at a time. The shell stores what changed after every event (see ``storedHeader()``) and feeds it task ends;
/// nothing here does I/O.
public struct WorkflowRun: Sendable, Equatable, Codable {
    public enum State: String, Sendable, Codable {
        case running, completed, failed, compensating, compensated
        case compensationFailed = "compensation_failed"
        case canceled

        public var isTerminal: Bool { self != .running && self != .compensating }
    }

    public enum ItemState: String, Sendable, Codable { case pending, running, completed, failed, canceled }

    public enum StepState: String, Sendable, Codable { case pending, running, completed, failed, skipped, canceled }

    public struct Item: Sendable, Equatable, Codable {
        public internal(set) var state: ItemState = .pending
        public internal(set) var task: WorkflowTask?
        public internal(set) var output: JSON?
        public internal(set) var error: String?
    }

    public struct StepRun: Sendable, Equatable, Codable {
        public internal(set) var state: StepState = .pending
        /// One item, or one per element of the map's list once the step starts.
        public internal(set) var items: [Item] = []
        public internal(set) var mapItems: [JSON]?
        public internal(set) var output: JSON?
        public internal(set) var error: String?
        public internal(set) var startedAt: Int64?
        public internal(set) var endedAt: Int64?
        /// The undo of each completed item (by index), once the run aborts.
        public internal(set) var compensations: [Int: Item] = [:]
        /// The output is the items' (see ``outputOfItems(_:)``): a stored header leaves it out and rebuilds it.
        var outputFromItems: Bool?
        /// Set in a stored header only: the items and their map elements are stored apart, one document per item.
        var storedApart: StoredApart?

        public init() {}
    }

    struct StoredApart: Sendable, Equatable, Codable {
        let itemCount: Int
        let isMap: Bool
    }

    /// One item of a step (or its compensation), as the shell stores it apart from the run.
    public struct ItemKey: Sendable, Hashable, Codable {
        public let step: String
        public let index: Int
        public let undo: Bool
    }

    /// One compensation to run: a completed item of a step.
    struct Undo: Sendable, Equatable, Codable {
        let step: String
        let item: Int
    }

    public let id: WorkflowID
    public let definition: WorkflowDefinition
    public let input: JSON
    public let submittedAt: Int64
    public private(set) var state: State = .running
    public private(set) var steps: [String: StepRun]
    /// Steps in the order they completed: compensation runs in the reverse.
    public private(set) var completionOrder: [String] = []
    public private(set) var error: String?
    public private(set) var output: JSON?
    public private(set) var finishedAt: Int64?
    /// Steps whose compensation failed.
    public private(set) var compensationFailures: [String] = []
    /// Goes up with every change (clients long-poll for the next).
    public private(set) var version = 0
    private var undoQueue: [Undo] = []
    private var wasCanceled = false
    /// Items changed since the shell last took them (not stored: the shell stores the items themselves).
    private var changedItems: Set<ItemKey> = []

    private enum CodingKeys: String, CodingKey {
        case id, definition, input, submittedAt, state, steps, completionOrder, error, output, finishedAt
        case compensationFailures, version, undoQueue, wasCanceled
    }

    /// Equal runs are in the same state; which items changed since the shell last stored them is not part of it.
    public static func == (lhs: WorkflowRun, rhs: WorkflowRun) -> Bool {
        lhs.id == rhs.id && lhs.definition == rhs.definition && lhs.input == rhs.input && lhs.submittedAt == rhs.submittedAt
            && lhs.state == rhs.state && lhs.steps == rhs.steps && lhs.completionOrder == rhs.completionOrder
            && lhs.error == rhs.error && lhs.output == rhs.output && lhs.finishedAt == rhs.finishedAt
            && lhs.compensationFailures == rhs.compensationFailures && lhs.version == rhs.version
            && lhs.undoQueue == rhs.undoQueue && lhs.wasCanceled == rhs.wasCanceled
    }

    /// The items changed since the last call, to be stored.
    public mutating func takeChangedItems() -> [ItemKey] {
        defer { self.changedItems = [] }
        return self.changedItems.sorted { ($0.step, $0.index, $0.undo ? 1 : 0) < ($1.step, $1.index, $1.undo ? 1 : 0) }
    }

    private mutating func changed(_ step: String, _ index: Int, undo: Bool = false) {
        self.changedItems.insert(ItemKey(step: step, index: index, undo: undo))
    }

    public init(id: WorkflowID, definition: WorkflowDefinition, input: JSON?, time: Int64) {
        self.id = id
        self.definition = definition
        self.input = input ?? definition.defaultInput ?? .object([:])
        self.submittedAt = time
        self.steps = Dictionary(uniqueKeysWithValues: definition.steps.map { ($0.name, StepRun()) })
    }

    public enum Directive: Sendable, Equatable {
        case submit(WorkflowTask)
        case cancel(TaskID)
    }

    /// Whether the run waits for this task (without listing every task it waits for).
    public func isWaiting(for id: TaskID) -> Bool {
        self.steps.values.contains { step in
            step.items.contains { $0.state == .running && $0.task?.id == id }
                || step.compensations.values.contains { $0.state == .running && $0.task?.id == id }
        }
    }

    /// The tasks the run waits for.
    public var tasksInFlight: [WorkflowTask] {
        self.steps.values.flatMap { step in
            (step.items + step.compensations.values).filter { $0.state == .running }.compactMap(\.task)
        }
    }

    // MARK: - Events

    public mutating func start(time: Int64) -> [Directive] {
        var directives: [Directive] = []
        self.advance(time: time, into: &directives)
        return directives
    }

    public mutating func taskEnded(_ id: TaskID, _ outcome: WorkflowTaskOutcome, time: Int64) -> [Directive] {
        var directives: [Directive] = []
        for name in self.steps.keys.sorted() {
            // Changed in place, not through a copy: a copy of the step would copy all of a map's items each time.
            if let index = self.steps[name]?.items.firstIndex(where: { $0.task?.id == id && $0.state == .running }) {
                switch outcome {
                case .completed(let bytes):
                    self.steps[name]!.items[index].state = .completed
                    self.steps[name]!.items[index].output = (try? JSON(parsing: bytes)) ?? .string(String(decoding: bytes, as: UTF8.self))
                case .failed(let message):
                    self.steps[name]!.items[index].state = .failed
                    self.steps[name]!.items[index].error = message
                case .canceled:
                    self.steps[name]!.items[index].state = .canceled
                    self.steps[name]!.items[index].error = "canceled"
                }
                self.changed(name, index)
                self.itemEnded(name, index, time: time, into: &directives)
                self.advance(time: time, into: &directives)
                self.version += 1
                return directives
            }
            guard var step = self.steps[name] else { continue }
            if let index = step.compensations.first(where: { $0.value.task?.id == id && $0.value.state == .running })?.key {
                switch outcome {
                case .completed: step.compensations[index]?.state = .completed
                case .failed(let message):
                    step.compensations[index]?.state = .failed
                    step.compensations[index]?.error = message
                case .canceled:
                    step.compensations[index]?.state = .failed
                    step.compensations[index]?.error = "canceled"
                }
                self.steps[name] = step
                self.changed(name, index, undo: true)
                self.undoQueue.removeFirst()
                self.advance(time: time, into: &directives)
                self.version += 1
                return directives
            }
        }
        return directives
    }

    /// The client cancelled: running steps stop, and completed steps are compensated as on a failure.
    public mutating func cancel(time: Int64) -> [Directive] {
        guard self.state == .running else { return [] }
        var directives: [Directive] = []
        self.wasCanceled = true
        self.abort("canceled", time: time, into: &directives)
        self.advance(time: time, into: &directives)
        self.version += 1
        return directives
    }

    // MARK: - Driving

    private mutating func advance(time: Int64, into directives: inout [Directive]) {
        if self.state == .running {
            var progressed = true
            while progressed && self.state == .running {
                progressed = false
                for step in self.definition.steps where self.steps[step.name]?.state == .pending {
                    if self.startIfReady(step, time: time, into: &directives) { progressed = true }
                }
            }
            guard self.state == .running else { return self.advance(time: time, into: &directives) }
            for step in self.definition.steps where self.steps[step.name]?.state == .running {
                self.launchItems(step, time: time, into: &directives)
            }
            if self.steps.values.allSatisfy({ $0.state != .pending && $0.state != .running }) { self.complete(time: time) }
        }
        if self.state == .compensating { self.compensateNext(time: time, into: &directives) }
    }

    /// Starts a pending step whose dependencies have all ended; true if it changed state.
    private mutating func startIfReady(_ step: WorkflowDefinition.Step, time: Int64, into directives: inout [Directive]) -> Bool {
        for dependency in step.after {
            switch self.steps[dependency]?.state {
            case .completed?: continue
            case .failed?: if self.definition.step(dependency)?.onFailure == .continue { continue } else { return false }
            default: return false
            }
        }
        var run = self.steps[step.name] ?? StepRun()
        run.startedAt = time
        if let map = step.map {
            do throws(Template.RenderError) {
                guard case .array(let list) = try Template.render(.string(map), in: self.scope()) else {
                    throw Template.RenderError(description: "map \(map) is not a list")
                }
                guard list.count <= 10_000 else { throw Template.RenderError(description: "map \(map) has \(list.count) items; at most 10000") }
                run.mapItems = list
                run.items = Array(repeating: Item(), count: list.count)
                for index in list.indices { self.changed(step.name, index) }
            } catch {
                run.state = .running
                self.steps[step.name] = run
                self.stepFailed(step.name, error.description, time: time, into: &directives)
                return true
            }
        } else {
            run.items = [Item()]
            self.changed(step.name, 0)
        }
        run.state = .running
        self.steps[step.name] = run
        if run.items.isEmpty { self.stepEnded(step.name, time: time, into: &directives) }
        return true
    }

    private mutating func launchItems(_ step: WorkflowDefinition.Step, time: Int64, into directives: inout [Directive]) {
        // Taken out of the run while it changes, so its items are changed in place, not copied.
        guard self.steps[step.name]?.state == .running, var run = self.steps.removeValue(forKey: step.name) else { return }
        defer { self.steps[step.name] = run }
        var running = run.items.count { $0.state == .running }
        for index in run.items.indices where run.items[index].state == .pending && running < step.concurrency {
            var scope = self.scope()
            if let items = run.mapItems {
                scope.item = items[index]
                scope.index = index
            }
            let input: JSON
            do {
                input = try Template.render(step.input, in: scope)
            } catch {
                run.items[index].state = .failed
                run.items[index].error = error.description
                self.steps[step.name] = run
                self.changed(step.name, index)
                self.itemEnded(step.name, index, time: time, into: &directives)
                run = self.steps.removeValue(forKey: step.name)!
                guard run.state == .running, self.state == .running else { return }
                continue
            }
            let task = WorkflowTask(
                id: Self.taskID(self.id, step.name, index, undo: false), capability: step.capability, input: input.bytes,
                timeoutSeconds: step.timeoutSeconds, attempts: step.attempts, waitForCapability: step.waitForCapability == true)
            run.items[index].task = task
            run.items[index].state = .running
            self.changed(step.name, index)
            running += 1
            directives.append(.submit(task))
        }
    }

    private mutating func itemEnded(_ name: String, _ index: Int, time: Int64, into directives: inout [Directive]) {
        guard let step = self.definition.step(name), let run = self.steps[name], run.state == .running else { return }
        let item = run.items[index]
        if item.state == .failed && step.onFailure == .abort {
            let error = (run.mapItems == nil ? "" : "item \(index): ") + (item.error ?? "no reason given")
            return self.stepFailed(name, error, time: time, into: &directives)
        }
        if run.items.allSatisfy({ $0.state != .pending && $0.state != .running }) {
            self.stepEnded(name, time: time, into: &directives)
        }
    }

    /// Every item ended (with `continue`, some may have failed: their outputs are null).
    private mutating func stepEnded(_ name: String, time: Int64, into directives: inout [Directive]) {
        guard var run = self.steps[name] else { return }
        let failed = run.items.indices.filter { run.items[$0].state != .completed }
        run.output = Self.outputOfItems(run)
        run.outputFromItems = true
        run.endedAt = time
        if failed.isEmpty {
            run.state = .completed
            self.completionOrder.append(name)
        } else {
            run.state = .failed
            let first = run.items[failed[0]]
            run.error = (run.mapItems == nil ? "" : "\(failed.count) of \(run.items.count) items failed; item \(failed[0]): ")
                + (first.error ?? "no reason given")
        }
        self.steps[name] = run
    }

    /// A step's output from its items: a map's list of outputs (null for an item that did not complete), or the
    /// one item's.
    static func outputOfItems(_ run: StepRun) -> JSON {
        let outputs = run.items.map { $0.state == .completed ? ($0.output ?? .null) : .null }
        return run.mapItems == nil ? outputs.first ?? .null : .array(outputs)
    }

    private mutating func stepFailed(_ name: String, _ error: String, time: Int64, into directives: inout [Directive]) {
        guard var run = self.steps[name] else { return }
        run.state = .failed
        run.error = error
        run.endedAt = time
        self.steps[name] = run
        if self.definition.step(name)?.onFailure == .continue {
            run.output = .null
            self.steps[name] = run
            // The items still running stop: the step's outcome is settled.
            self.cancelItems(of: name, into: &directives)
            return
        }
        self.abort("step \(name) failed: \(error)", time: time, into: &directives)
    }

    /// Stops everything running, skips what has not started, and queues the compensations of completed work.
    private mutating func abort(_ error: String, time: Int64, into directives: inout [Directive]) {
        self.error = error
        for name in self.steps.keys.sorted() {
            self.cancelItems(of: name, into: &directives)
            if self.steps[name]?.state == .pending { self.steps[name]?.state = .skipped }
            if self.steps[name]?.state == .running {
                self.steps[name]?.state = .canceled
                self.steps[name]?.endedAt = time
            }
        }
        // Newest first: completed steps in reverse completion order; within a map, items in reverse.
        var queue: [Undo] = []
        for name in self.completionOrder.reversed() where self.definition.step(name)?.compensate != nil {
            let items = self.steps[name]?.items ?? []
            for index in items.indices.reversed() where items[index].state == .completed { queue.append(Undo(step: name, item: index)) }
        }
        // Completed items of a map step that did not complete are undone too.
        for step in self.definition.steps where step.compensate != nil && !self.completionOrder.contains(step.name) {
            let items = self.steps[step.name]?.items ?? []
            for index in items.indices.reversed() where items[index].state == .completed { queue.append(Undo(step: step.name, item: index)) }
        }
        self.undoQueue = queue
        self.state = .compensating
    }

    private mutating func cancelItems(of name: String, into directives: inout [Directive]) {
        guard var run = self.steps[name] else { return }
        for index in run.items.indices {
            switch run.items[index].state {
            case .running:
                if let task = run.items[index].task { directives.append(.cancel(task.id)) }
                run.items[index].state = .canceled
                run.items[index].error = "canceled"
                self.changed(name, index)
            case .pending:
                run.items[index].state = .canceled
                self.changed(name, index)
            case .completed, .failed, .canceled: break
            }
        }
        self.steps[name] = run
    }

    private mutating func compensateNext(time: Int64, into directives: inout [Directive]) {
        while let undo = self.undoQueue.first {
            guard let step = self.definition.step(undo.step), let compensation = step.compensate, var run = self.steps[undo.step]
            else { self.undoQueue.removeFirst(); continue }
            if run.compensations[undo.item]?.state == .running { return }  // waiting for it
            var scope = self.scope()
            scope.output = run.items[undo.item].output ?? .null
            if let items = run.mapItems {
                scope.item = items[undo.item]
                scope.index = undo.item
            }
            do {
                let input = try Template.render(compensation.input, in: scope)
                let task = WorkflowTask(
                    id: Self.taskID(self.id, undo.step, undo.item, undo: true), capability: compensation.capability,
                    input: input.bytes, timeoutSeconds: compensation.timeoutSeconds, attempts: compensation.attempts,
                    waitForCapability: true)
                run.compensations[undo.item] = Item(state: .running, task: task)
                self.steps[undo.step] = run
                self.changed(undo.step, undo.item, undo: true)
                directives.append(.submit(task))
                return
            } catch {
                run.compensations[undo.item] = Item(state: .failed, error: error.description)
                self.steps[undo.step] = run
                self.changed(undo.step, undo.item, undo: true)
                self.undoQueue.removeFirst()
            }
        }
        self.compensationFailures = self.definition.steps.map(\.name).filter { name in
            self.steps[name]?.compensations.values.contains { $0.state == .failed } == true
        }
        let compensated = self.steps.values.contains { !$0.compensations.isEmpty }
        self.state = self.wasCanceled ? .canceled
            : !self.compensationFailures.isEmpty ? .compensationFailed : compensated ? .compensated : .failed
        self.finishedAt = time
    }

    private mutating func complete(time: Int64) {
        self.finishedAt = time
        if let template = self.definition.output {
            do {
                self.output = try Template.render(template, in: self.scope())
            } catch {
                self.state = .failed
                self.error = "the workflow's output: \(error.description)"
                return
            }
        } else {
            self.output = .object(self.steps.compactMapValues(\.output))
        }
        self.state = .completed
    }

    private func scope() -> TemplateScope {
        TemplateScope(
            input: self.input,
            outputs: self.steps.compactMapValues { $0.state == .completed || $0.state == .failed ? ($0.output ?? .null) : nil },
            workflowID: self.id.description)
    }

    /// The id of a step item's task (or of its compensation): the same on every node restart.
    public static func taskID(_ workflow: WorkflowID, _ step: String, _ item: Int, undo: Bool) -> TaskID {
        let digest = SHA256.hash(Array("agentmesh workflow task \(workflow) \(step) \(item) \(undo ? "undo" : "run")".utf8))
        return TaskID(
            high: digest[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, low: digest[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
    }
}

// MARK: - Storage

/// A run is stored in three parts: how it started (its definition and input, written once), a header (its state
/// without its items) and one document per item, each written when it changes. Storing the whole run after every
/// change made a `map` over 500 / 2,000 / 5,000 items cost 2 / 28 / over 111 CPU-seconds and write 79 / 1,075 /
/// 3,923 MiB; the header no longer grows with the items, nor with a list in the input.
extension WorkflowRun {
    /// What never changes: written when the run starts.
    public struct StoredStart: Sendable, Codable {
        let definition: WorkflowDefinition
        let input: JSON
    }

    /// The run's state without its items, their map elements and the outputs rebuilt from them.
    public struct StoredHeader: Sendable, Codable {
        let id: WorkflowID
        let submittedAt: Int64
        let state: State
        let steps: [String: StepRun]
        let completionOrder: [String]
        let error: String?
        let output: JSON?
        let finishedAt: Int64?
        let compensationFailures: [String]
        let version: Int
        let undoQueue: [Undo]
        let wasCanceled: Bool
    }

    /// One item (or its compensation), as stored apart from its run.
    public struct StoredItem: Sendable, Codable {
        public let run: WorkflowID
        public let key: ItemKey
        let item: Item
        /// The element of the map's list the item is for.
        let mapItem: JSON?
    }

    /// An item's document id: its task's id, unique across runs and steps.
    public static func documentID(of key: ItemKey, in run: WorkflowID) -> TaskID {
        Self.taskID(run, key.step, key.index, undo: key.undo)
    }

    public var storedStart: StoredStart { StoredStart(definition: self.definition, input: self.input) }

    public func storedHeader() -> StoredHeader {
        var steps = self.steps
        for (name, step) in self.steps where !step.items.isEmpty || !step.compensations.isEmpty {
            var stripped = step
            stripped.storedApart = StoredApart(itemCount: step.items.count, isMap: step.mapItems != nil)
            stripped.items = []
            stripped.mapItems = nil
            stripped.compensations = [:]
            if step.outputFromItems == true { stripped.output = nil }
            steps[name] = stripped
        }
        return StoredHeader(
            id: self.id, submittedAt: self.submittedAt, state: self.state, steps: steps, completionOrder: self.completionOrder,
            error: self.error, output: self.output, finishedAt: self.finishedAt, compensationFailures: self.compensationFailures,
            version: self.version, undoQueue: self.undoQueue, wasCanceled: self.wasCanceled)
    }

    /// The stored form of one item, nil if the run has no such item.
    public func storedItem(_ key: ItemKey) -> StoredItem? {
        guard let step = self.steps[key.step] else { return nil }
        if key.undo {
            return step.compensations[key.index].map { StoredItem(run: self.id, key: key, item: $0, mapItem: nil) }
        }
        guard step.items.indices.contains(key.index) else { return nil }
        return StoredItem(run: self.id, key: key, item: step.items[key.index], mapItem: step.mapItems?[key.index])
    }

    /// Every item's key (to forget a run's documents).
    public var itemKeys: [ItemKey] {
        self.steps.flatMap { name, step in
            step.items.indices.map { ItemKey(step: name, index: $0, undo: false) }
                + step.compensations.keys.map { ItemKey(step: name, index: $0, undo: true) }
        }
    }

    /// A run put back together from its three parts.
    public static func restored(start: StoredStart, header: StoredHeader, items: [StoredItem]) -> WorkflowRun {
        var run = WorkflowRun(id: header.id, definition: start.definition, input: start.input, time: header.submittedAt)
        run.state = header.state
        run.completionOrder = header.completionOrder
        run.error = header.error
        run.output = header.output
        run.finishedAt = header.finishedAt
        run.compensationFailures = header.compensationFailures
        run.version = header.version
        run.undoQueue = header.undoQueue
        run.wasCanceled = header.wasCanceled
        run.steps = header.steps
        for (name, step) in header.steps {
            guard let apart = step.storedApart else { continue }
            var whole = step
            whole.storedApart = nil
            whole.items = Array(repeating: Item(), count: apart.itemCount)
            if apart.isMap { whole.mapItems = Array(repeating: .null, count: apart.itemCount) }
            run.steps[name] = whole
        }
        for stored in items {
            guard var step = run.steps.removeValue(forKey: stored.key.step) else { continue }
            if stored.key.undo {
                step.compensations[stored.key.index] = stored.item
            } else if step.items.indices.contains(stored.key.index) {
                step.items[stored.key.index] = stored.item
                if step.mapItems != nil { step.mapItems?[stored.key.index] = stored.mapItem ?? .null }
            }
            run.steps[stored.key.step] = step
        }
        for (name, step) in run.steps where step.outputFromItems == true && step.output == nil {
            run.steps[name]?.output = Self.outputOfItems(step)
        }
        return run
    }
}

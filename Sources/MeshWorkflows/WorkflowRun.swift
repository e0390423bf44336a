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

    init(id: TaskID, capability: String, input: [UInt8], timeoutSeconds: Double, attempts: Int) {
        self.id = id
        self.capability = capability
        self.input = input
        self.timeoutSeconds = timeoutSeconds
        self.attempts = attempts
    }

    private enum CodingKeys: String, CodingKey { case id, capability, input, timeoutSeconds, attempts }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.id = try container.decode(TaskID.self, forKey: .id)
        self.capability = try container.decode(String.self, forKey: .capability)
        self.input = Array(try container.decode(String.self, forKey: .input).utf8)
        self.timeoutSeconds = try container.decode(Double.self, forKey: .timeoutSeconds)
        self.attempts = try container.decode(Int.self, forKey: .attempts)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(self.id, forKey: .id)
        try container.encode(self.capability, forKey: .capability)
        try container.encode(String(decoding: self.input, as: UTF8.self), forKey: .input)
        try container.encode(self.timeoutSeconds, forKey: .timeoutSeconds)
        try container.encode(self.attempts, forKey: .attempts)
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
/// one at a time. The shell stores the whole run after every event and feeds it task ends; nothing here does I/O.
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

        public init() {}
    }

    /// One compensation to run: a completed item of a step.
    struct Undo: Sendable, Equatable, Codable {
        let step: String
        let item: Int
    }

    public let id: TaskID
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

    public init(id: TaskID, definition: WorkflowDefinition, input: JSON?, time: Int64) {
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
            guard var step = self.steps[name] else { continue }
            if let index = step.items.firstIndex(where: { $0.task?.id == id && $0.state == .running }) {
                switch outcome {
                case .completed(let bytes):
                    step.items[index].state = .completed
                    step.items[index].output = (try? JSON(parsing: bytes)) ?? .string(String(decoding: bytes, as: UTF8.self))
                case .failed(let message):
                    step.items[index].state = .failed
                    step.items[index].error = message
                case .canceled:
                    step.items[index].state = .canceled
                    step.items[index].error = "canceled"
                }
                self.steps[name] = step
                self.itemEnded(name, index, time: time, into: &directives)
                self.advance(time: time, into: &directives)
                self.version += 1
                return directives
            }
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
            } catch {
                run.state = .running
                self.steps[step.name] = run
                self.stepFailed(step.name, error.description, time: time, into: &directives)
                return true
            }
        } else {
            run.items = [Item()]
        }
        run.state = .running
        self.steps[step.name] = run
        if run.items.isEmpty { self.stepEnded(step.name, time: time, into: &directives) }
        return true
    }

    private mutating func launchItems(_ step: WorkflowDefinition.Step, time: Int64, into directives: inout [Directive]) {
        guard var run = self.steps[step.name], run.state == .running else { return }
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
                self.itemEnded(step.name, index, time: time, into: &directives)
                guard self.steps[step.name]?.state == .running, self.state == .running else { return }
                run = self.steps[step.name]!
                continue
            }
            let task = WorkflowTask(
                id: Self.taskID(self.id, step.name, index, undo: false), capability: step.capability, input: input.bytes,
                timeoutSeconds: step.timeoutSeconds, attempts: step.attempts)
            run.items[index].task = task
            run.items[index].state = .running
            running += 1
            directives.append(.submit(task))
        }
        self.steps[step.name] = run
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
        let outputs = run.items.map { $0.state == .completed ? ($0.output ?? .null) : .null }
        run.output = run.mapItems == nil ? outputs.first ?? .null : .array(outputs)
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
            case .pending:
                run.items[index].state = .canceled
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
                    input: input.bytes, timeoutSeconds: compensation.timeoutSeconds, attempts: compensation.attempts)
                run.compensations[undo.item] = Item(state: .running, task: task)
                self.steps[undo.step] = run
                directives.append(.submit(task))
                return
            } catch {
                run.compensations[undo.item] = Item(state: .failed, error: error.description)
                self.steps[undo.step] = run
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
    public static func taskID(_ workflow: TaskID, _ step: String, _ item: Int, undo: Bool) -> TaskID {
        let digest = SHA256.hash(Array("agentmesh workflow task \(workflow) \(step) \(item) \(undo ? "undo" : "run")".utf8))
        return TaskID(
            high: digest[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, low: digest[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
    }
}

/// One progress event as the submitting node keeps it: numbered from 1 across all of the task's runs, so a client
/// resumes after the last number it saw (`Last-Event-ID`).
public struct TaskEvent: Sendable, Equatable {
    public let sequence: Int
    /// The attempt (epoch) whose run emitted it.
    public let epoch: UInt32
    /// Wall-clock milliseconds since 1970 when this node received it.
    public let time: Int64
    /// The event's JSON, as the agent wrote it.
    public let data: [UInt8]

    public init(sequence: Int, epoch: UInt32, time: Int64, data: [UInt8]) {
        self.sequence = sequence
        self.epoch = epoch
        self.time = time
        self.data = data
    }
}

/// The progress events of one task: bounded in count and bytes, with how many were dropped past the bounds.
public struct TaskEventLog: Sendable {
    public static let maximumEvents = 10_000
    public static let maximumBytes = 8 * 1024 * 1024

    public private(set) var events: [TaskEvent] = []
    public private(set) var bytes = 0
    /// Events received past the bounds and not kept.
    public private(set) var dropped = 0
    /// The run that sent the newest events and how many of its events arrived, so a repeated batch is ignored.
    private var run: (epoch: UInt32, received: UInt32) = (0, 0)

    public init(events: [TaskEvent] = [], dropped: Int = 0) {
        self.events = events
        self.bytes = events.reduce(0) { $0 + $1.data.count }
        self.dropped = dropped
        self.lastSequence = (events.last?.sequence ?? 0) + dropped
        if let last = events.last { self.run = (last.epoch, UInt32(events.count { $0.epoch == last.epoch })) }
    }

    /// Every event received has a number, a dropped one too (the gap shows it): the last one given.
    public private(set) var lastSequence: Int

    /// Adds a batch the run numbered from `first`; returns the events kept (to store and to send to followers). A
    /// batch that overlaps what the run already sent is kept from where it is new; one numbered from 1 again comes
    /// from the same attempt run again (its executor restarted) and is kept whole.
    /// At most `room` bytes of them are kept (the node-wide budget, see ``TaskEventBook/room(stored:)``).
    public mutating func receive(epoch: UInt32, first: UInt32, events: [[UInt8]], time: Int64, room: Int = .max) -> [TaskEvent] {
        if epoch != self.run.epoch || first == 1 { self.run = (epoch, 0) }
        let skip = Int(self.run.received) - Int(first) + 1
        guard skip < events.count else { return [] }
        var kept: [TaskEvent] = []
        var room = room
        for data in events.dropFirst(max(0, skip)) {
            self.run.received += 1
            guard self.events.count < Self.maximumEvents, self.bytes + data.count <= Self.maximumBytes, data.count <= room else {
                self.dropped += 1
                self.lastSequence += 1
                continue
            }
            self.lastSequence += 1
            let event = TaskEvent(sequence: self.lastSequence, epoch: epoch, time: time, data: data)
            self.events.append(event)
            self.bytes += data.count
            room -= data.count
            kept.append(event)
        }
        return kept
    }

    /// An event the submitting node adds itself (not counted as the run's).
    public mutating func note(_ data: [UInt8], time: Int64, room: Int = .max) -> [TaskEvent] {
        guard self.events.count < Self.maximumEvents, self.bytes + data.count <= Self.maximumBytes, data.count <= room else {
            self.dropped += 1
            self.lastSequence += 1
            return []
        }
        self.lastSequence += 1
        let event = TaskEvent(sequence: self.lastSequence, epoch: self.run.epoch, time: time, data: data)
        self.events.append(event)
        self.bytes += data.count
        return [event]
    }

    /// The events numbered after `sequence`.
    public func events(after sequence: Int) -> ArraySlice<TaskEvent> {
        let start = self.events.firstIndex { $0.sequence > sequence } ?? self.events.endIndex
        return self.events[start...]
    }
}

/// The event logs in memory, within node-wide budgets: one task's log is bounded by ``TaskEventLog``, and all of
/// them together by bytes in memory and bytes stored. A peer running many of this node's tasks could otherwise make
/// it keep 8 MiB for each (1.4 GiB projected in memory for the 256 logs kept, and nothing bounded the disk).
///
/// Logs of finished tasks are let go first (the oldest first) once there are more than `maximumTasks` logs or
/// `maximumMemoryBytes` of them; they are read back from the store when asked for. Logs of running tasks stay, since
/// their numbering goes on; their growth is what ``room(stored:)`` bounds.
public struct TaskEventBook: Sendable {
    public struct Budget: Sendable {
        public var maximumTasks = 256
        public var maximumMemoryBytes = 64 * 1024 * 1024
        public var maximumStoredBytes = 1024 * 1024 * 1024
        public init() {}
    }

    public let budget: Budget
    private var logs: [TaskID: TaskEventLog] = [:]
    /// Oldest first.
    private var order: [TaskID] = []
    private var finished: Set<TaskID> = []
    /// Bytes of the logs in memory, and of those the logs of tasks still running.
    public private(set) var memoryBytes = 0
    public private(set) var runningBytes = 0

    public init(budget: Budget = Budget()) { self.budget = budget }

    public func log(_ id: TaskID) -> TaskEventLog? { self.logs[id] }

    /// Bytes of new events this node may keep now, with `stored` bytes of events already in its store: what is
    /// left of the stored budget and of the running tasks' share of memory.
    public func room(stored: Int) -> Int {
        max(0, min(self.budget.maximumStoredBytes - stored, self.budget.maximumMemoryBytes - self.runningBytes))
    }

    /// Puts a log in memory (received events, or one loaded from the store), then lets go of finished tasks' logs
    /// over the bounds.
    public mutating func set(_ log: TaskEventLog, for id: TaskID, isFinished: Bool = false) {
        if let old = self.logs.updateValue(log, forKey: id) {
            self.account(old, sign: -1, isFinished: self.finished.contains(id))
        } else {
            self.order.append(id)
        }
        if isFinished { self.finished.insert(id) }
        self.account(log, sign: 1, isFinished: self.finished.contains(id))
        self.evict()
    }

    /// The task ended: its log no longer grows and may be let go.
    public mutating func taskFinished(_ id: TaskID) {
        guard !self.finished.contains(id) else { return }
        if let log = self.logs[id] {
            self.runningBytes -= log.bytes
            self.finished.insert(id)
            self.evict()
        }
    }

    private mutating func account(_ log: TaskEventLog, sign: Int, isFinished: Bool) {
        self.memoryBytes += sign * log.bytes
        if !isFinished { self.runningBytes += sign * log.bytes }
    }

    private mutating func evict() {
        while self.order.count > self.budget.maximumTasks || self.memoryBytes > self.budget.maximumMemoryBytes,
            let oldest = self.order.firstIndex(where: self.finished.contains)
        {
            let id = self.order.remove(at: oldest)
            self.finished.remove(id)
            if let log = self.logs.removeValue(forKey: id) { self.memoryBytes -= log.bytes }
        }
    }
}

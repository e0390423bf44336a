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
        if let last = events.last { self.run = (last.epoch, UInt32(events.count { $0.epoch == last.epoch })) }
    }

    public var lastSequence: Int { (self.events.last?.sequence ?? 0) + self.dropped }

    /// Adds a batch the run numbered from `first`; returns the events kept (to store and to send to followers). A
    /// batch that overlaps what the run already sent is kept from where it is new; one numbered from 1 again comes
    /// from the same attempt run again (its executor restarted) and is kept whole.
    public mutating func receive(epoch: UInt32, first: UInt32, events: [[UInt8]], time: Int64) -> [TaskEvent] {
        if epoch != self.run.epoch || first == 1 { self.run = (epoch, 0) }
        let skip = Int(self.run.received) - Int(first) + 1
        guard skip < events.count else { return [] }
        var kept: [TaskEvent] = []
        for data in events.dropFirst(max(0, skip)) {
            self.run.received += 1
            guard self.events.count < Self.maximumEvents, self.bytes + data.count <= Self.maximumBytes else {
                self.dropped += 1
                continue
            }
            let event = TaskEvent(sequence: self.lastSequence + 1, epoch: epoch, time: time, data: data)
            self.events.append(event)
            self.bytes += data.count
            kept.append(event)
        }
        return kept
    }

    /// An event the submitting node adds itself (not counted as the run's).
    public mutating func note(_ data: [UInt8], time: Int64) -> [TaskEvent] {
        guard self.events.count < Self.maximumEvents, self.bytes + data.count <= Self.maximumBytes else {
            self.dropped += 1
            return []
        }
        let event = TaskEvent(sequence: self.lastSequence + 1, epoch: self.run.epoch, time: time, data: data)
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

/// The event logs of the newest `maximumTasks` tasks with events, in memory; older ones are read from the store.
public struct TaskEventBook: Sendable {
    public let maximumTasks: Int
    private var logs: [TaskID: TaskEventLog] = [:]
    private var order: [TaskID] = []

    public init(maximumTasks: Int = 256) { self.maximumTasks = maximumTasks }

    public func log(_ id: TaskID) -> TaskEventLog? { self.logs[id] }

    /// Puts a log in memory (received events, or one loaded from the store), evicting the oldest over the bound.
    public mutating func set(_ log: TaskEventLog, for id: TaskID) {
        if self.logs.updateValue(log, forKey: id) == nil {
            self.order.append(id)
            if self.order.count > self.maximumTasks {
                self.logs[self.order.removeFirst()] = nil
            }
        }
    }
}

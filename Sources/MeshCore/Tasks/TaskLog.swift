/// What an executor wrote to stderr while running one task, as its submitter keeps it: the last `capacity` bytes,
/// and how many were written in all, so a reader that follows the log resumes where it stopped.
public struct TaskLog: Sendable, Equatable {
    public static let capacity = 64 * 1024
    /// Bytes ever appended.
    public private(set) var total = 0
    /// The last bytes, at most `capacity`; the first of them is byte `total - kept.count` of the log.
    private var kept: [UInt8] = []

    public init() {}

    public mutating func append(_ chunk: [UInt8]) {
        self.total += chunk.count
        self.kept += chunk.suffix(Self.capacity)
        if self.kept.count > Self.capacity { self.kept.removeFirst(self.kept.count - Self.capacity) }
    }

    /// The bytes after `offset` that are still kept, and how many between `offset` and them were dropped.
    public func read(after offset: Int) -> (bytes: [UInt8], dropped: Int) {
        let first = self.total - self.kept.count
        let start = max(offset, first)
        guard start < self.total else { return ([], 0) }
        return (Array(self.kept[(start - first)...]), start - max(offset, 0))
    }
}

/// The logs of the tasks a node submitted, for the newest `maximumTasks` tasks that logged anything (so memory is
/// bounded: 1,024 × 64 KiB at most).
public struct TaskLogBook: Sendable {
    public let maximumTasks: Int
    private var logs: [TaskID: TaskLog] = [:]
    private var order: [TaskID] = []
    private var orderStart = 0

    public init(maximumTasks: Int = 1_024) { self.maximumTasks = maximumTasks }

    public func log(_ id: TaskID) -> TaskLog? { self.logs[id] }

    public mutating func append(_ chunk: [UInt8], to id: TaskID) {
        if self.logs[id] == nil {
            self.order.append(id)
            while self.order.count - self.orderStart > self.maximumTasks {
                self.logs[self.order[self.orderStart]] = nil
                self.orderStart += 1
            }
            if self.orderStart > 1_024, self.orderStart * 2 > self.order.count {
                self.order.removeFirst(self.orderStart)
                self.orderStart = 0
            }
        }
        self.logs[id, default: TaskLog()].append(chunk)
    }
}

public import Logging
import Synchronization

/// Collects a node's log records so integration tests can assert on what a node said and why.
public final class LogCapture: Sendable {
    public struct Record: Sendable, CustomStringConvertible {
        public let level: Logger.Level
        public let message: String
        public let metadata: [String: String]

        public var description: String {
            let fields = self.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            return "\(self.level) \(self.message) \(fields)"
        }
    }

    private let records = Mutex<[Record]>([])
    /// Echo records to stderr as well, for debugging a failing test (`AGENTMESH_TEST_LOGS=1`).
    private let echo: Bool

    public init(echo: Bool = false) { self.echo = echo }

    public func logger(label: String, level: Logger.Level = .debug) -> Logger {
        var logger = Logger(label: label) { _ in Handler(capture: self, label: label) }
        logger.logLevel = level
        return logger
    }

    public var all: [Record] { self.records.withLock { $0 } }

    /// Records whose message is `message` and whose metadata values contain every given fragment.
    public func matching(_ message: String, _ fragments: [String: String] = [:]) -> [Record] {
        self.all.filter { record in
            record.message == message
                && fragments.allSatisfy { key, fragment in record.metadata[key]?.contains(fragment) ?? false }
        }
    }

    fileprivate func append(_ record: Record, label: String) {
        if self.echo { print("[\(label)] \(record)") }
        self.records.withLock { $0.append(record) }
    }

    private struct Handler: LogHandler {
        let capture: LogCapture
        let label: String
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var fields: [String: String] = [:]
            for (key, value) in self.metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
                fields[key] = "\(value)"
            }
            self.capture.append(Record(level: event.level, message: "\(event.message)", metadata: fields), label: self.label)
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes. For integration tests that wait on real nodes; the
/// deadline only bounds a failure, it is never what a test measures.
public func eventually(
    timeout: Duration = .seconds(10), interval: Duration = .milliseconds(20), _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return try await condition()
}

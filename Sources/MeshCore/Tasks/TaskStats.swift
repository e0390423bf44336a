#if canImport(Glibc)
import Glibc
#endif

/// How the tasks a node submitted went, per capability and per executing peer: executions, success rate, and
/// execution time and queue wait as p50/p90/p99 and mean, over the node's lifetime and the last five minutes.
/// Pure: the shell records each finished task; percentiles come from log-scale buckets (within 5 %).
public struct TaskStats: Sendable {
    /// Times in seconds, in buckets growing by 5 % from 100 µs.
    public struct Distribution: Sendable, Equatable {
        static let smallest = 0.0001
        static let growth = 1.05
        private var buckets: [Int: Int] = [:]
        public private(set) var count = 0
        public private(set) var sum = 0.0

        public init() {}

        mutating func add(_ seconds: Double) {
            let index = seconds <= Self.smallest ? 0 : Int((log(seconds / Self.smallest) / log(Self.growth)).rounded(.up))
            self.buckets[index, default: 0] += 1
            self.count += 1
            self.sum += seconds
        }

        public var mean: Double { self.count == 0 ? 0 : self.sum / Double(self.count) }

        /// The upper bound of the bucket holding the `fraction` quantile.
        public func quantile(_ fraction: Double) -> Double {
            guard self.count > 0 else { return 0 }
            let rank = max(1, Int((fraction * Double(self.count)).rounded(.up)))
            var seen = 0
            for index in self.buckets.keys.sorted() {
                seen += self.buckets[index]!
                if seen >= rank { return Self.smallest * pow(Self.growth, Double(index)) }
            }
            return Self.smallest
        }
    }

    public struct Summary: Sendable, Equatable {
        public internal(set) var executions = 0
        public internal(set) var succeeded = 0
        public internal(set) var execution = Distribution()
        public internal(set) var wait = Distribution()
        public var successRate: Double { self.executions == 0 ? 0 : Double(self.succeeded) / Double(self.executions) }

        mutating func add(_ sample: Sample) {
            self.executions += 1
            if sample.succeeded { self.succeeded += 1 }
            if let seconds = sample.execution { self.execution.add(seconds) }
            self.wait.add(sample.wait)
        }
    }

    /// One finished task: where it ran, whether it succeeded, how long it ran and how long it waited first.
    public struct Sample: Sendable, Equatable {
        public let capability: String
        public let peer: NodeID?
        public let succeeded: Bool
        public let execution: Double?
        public let wait: Double
        public let at: Duration

        public init(capability: String, peer: NodeID?, succeeded: Bool, execution: Double?, wait: Double, at: Duration) {
            self.capability = capability
            self.peer = peer
            self.succeeded = succeeded
            self.execution = execution
            self.wait = wait
            self.at = at
        }
    }

    public struct Key: Hashable, Sendable {
        public let capability: String
        public let peer: NodeID?

        public init(capability: String, peer: NodeID?) {
            self.capability = capability
            self.peer = peer
        }
    }

    public static let window: Duration = .seconds(300)
    /// Samples kept for the window, at most (a busier node's window covers less than five minutes).
    public static let maximumRecent = 200_000

    public private(set) var lifetime: [Key: Summary] = [:]
    private var recent: [Sample] = []
    private var recentStart = 0

    public init() {}

    /// Counted per capability (peer nil) and per capability and executing peer.
    public mutating func record(_ sample: Sample) {
        self.lifetime[Key(capability: sample.capability, peer: nil), default: Summary()].add(sample)
        if let peer = sample.peer { self.lifetime[Key(capability: sample.capability, peer: peer), default: Summary()].add(sample) }
        self.recent.append(sample)
        if self.recent.count - self.recentStart > Self.maximumRecent { self.recentStart += 1 }
        if self.recentStart > 4_096, self.recentStart * 2 > self.recent.count {
            self.recent.removeFirst(self.recentStart)
            self.recentStart = 0
        }
    }

    /// The same summaries over the samples of the last `window`.
    public func lastWindow(now: Duration) -> [Key: Summary] {
        var summaries: [Key: Summary] = [:]
        for sample in self.recent[self.recentStart...].reversed() {
            guard now - sample.at <= Self.window else { break }
            summaries[Key(capability: sample.capability, peer: nil), default: Summary()].add(sample)
            if let peer = sample.peer { summaries[Key(capability: sample.capability, peer: peer), default: Summary()].add(sample) }
        }
        return summaries
    }
}

/// Exponential back-off with jitter for re-dialling: each failure doubles the delay up to a ceiling, and each
/// delay is drawn from its upper half so that nodes restarted together do not dial in lockstep.
public struct Backoff: Sendable {
    public let initial: Duration
    public let maximum: Duration
    public private(set) var failures = 0

    public init(initial: Duration, maximum: Duration) {
        precondition(initial > .zero && maximum >= initial, "back-off needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
    }

    /// The delay before the next attempt; counts one more failure.
    public mutating func nextDelay(using generator: inout some RandomNumberGenerator) -> Duration {
        let doublings = min(self.failures, 30)
        self.failures += 1
        let ceiling = min(self.initial * (1 << doublings), self.maximum)
        return ceiling * Double.random(in: 0.5...1.0, using: &generator)
    }

    public mutating func reset() { self.failures = 0 }
}

/// When two connections to the same peer are up at once (both sides dialled), both nodes must keep the same one
/// without talking about it: the one dialled by the node with the lower id; between two dialled by the same node,
/// the newer one (the older is likely a stale connection from before a restart).
public enum ConnectionArbiter {
    public static func keepsNewConnection(existingInitiator: NodeID, newInitiator: NodeID) -> Bool {
        if existingInitiator == newInitiator { return true }
        return newInitiator < existingInitiator
    }
}

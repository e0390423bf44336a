import Synchronization

/// The answers a person gives a running agent, handed from the node to the run: an `exec:` agent reads them as
/// lines on its descriptor 4, an `http:` agent receives each in a new POST.
package final class AgentInput: Sendable {
    private struct State {
        var pending: [[UInt8]] = []
        var waiter: CheckedContinuation<[UInt8]?, Never>?
        var sink: (@Sendable ([UInt8]) -> Void)?
        var isClosed = false
    }

    private let state = Mutex(State())

    package init() {}

    /// An answer arrived (from the node's loop).
    package func deliver(_ reply: [UInt8]) {
        let (sink, waiter) = self.state.withLock { state -> ((@Sendable ([UInt8]) -> Void)?, CheckedContinuation<[UInt8]?, Never>?) in
            if let sink = state.sink { return (sink, nil) }
            if let waiter = state.waiter {
                state.waiter = nil
                return (nil, waiter)
            }
            state.pending.append(reply)
            return (nil, nil)
        }
        sink?(reply)
        waiter?.resume(returning: reply)
    }

    /// Every answer, from now on and those already given, goes to `sink` (an `exec:` agent's descriptor 4).
    func attach(_ sink: @escaping @Sendable ([UInt8]) -> Void) {
        let pending = self.state.withLock { state -> [[UInt8]] in
            state.sink = sink
            defer { state.pending = [] }
            return state.pending
        }
        for reply in pending { sink(reply) }
    }

    /// The next answer (an `http:` agent's resumed POST); nil once the run is over.
    func next() async -> [UInt8]? {
        await withCheckedContinuation { continuation in
            let ready = self.state.withLock { state -> [UInt8]?? in
                if !state.pending.isEmpty { return .some(state.pending.removeFirst()) }
                if state.isClosed { return .some(nil) }
                state.waiter = continuation
                return .none
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// The run ended (or was cancelled): a waiting `next()` returns nil.
    package func close() {
        let waiter = self.state.withLock { state -> CheckedContinuation<[UInt8]?, Never>? in
            state.isClosed = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }
}

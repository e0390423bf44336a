import MeshCore
import Synchronization

/// Caps the handshakes in flight on a listener, so a flood of half-open connections costs bounded memory.
final class PendingHandshakes: Sendable {
    let limit: Int
    private let count = Mutex(0)

    init(limit: Int) { self.limit = limit }

    /// Takes a slot; false when all are taken.
    func tryBegin() -> Bool {
        self.count.withLock { count in
            guard count < self.limit else { return false }
            count += 1
            return true
        }
    }

    func end() { self.count.withLock { $0 -= 1 } }

    var current: Int { self.count.withLock { $0 } }
}

/// The listener's shared ``ReplayCache``, behind a lock because handshakes complete on several event loops.
final class ReplayGuard: Sendable {
    private let cache: Mutex<ReplayCache>

    init(capacity: Int) { self.cache = Mutex(ReplayCache(capacity: capacity)) }

    func receiveHello(_ hello: [UInt8], into responder: inout ResponderHandshake) -> Result<[UInt8], HandshakeError> {
        self.cache.withLock { cache in responder.receiveHello(hello, replayCache: &cache) }
    }
}

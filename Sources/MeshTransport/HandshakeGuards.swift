import Foundation
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

/// Everything that decides about a connection before its peer is authenticated, shared with the event loop's
/// channel initialisers: the credentials to answer with, the trust list, the handshake slots, the replay cache and
/// the per-address connection limits.
final class HandshakeGate: Sendable {
    let trustStore: TrustStore
    let pending: PendingHandshakes
    let replayGuard: ReplayGuard
    /// Set once the listener is bound (the advertised address needs the real port). NIO may accept a connection
    /// before that; such a connection is closed.
    private let credentialsBox = Mutex<HandshakeCredentials?>(nil)
    /// Connection attempts per source address; refuses, never bans.
    let addresses: Mutex<PeerLimiter<String>>

    init(trustStore: TrustStore, settings: NodeSettings) {
        self.trustStore = trustStore
        self.pending = PendingHandshakes(limit: settings.maximumPendingHandshakes)
        self.replayGuard = ReplayGuard(capacity: settings.replayCacheCapacity)
        var addressSettings = PeerLimiter<String>.Settings(rates: settings.limits.rates.filter { $0.key == .connections })
        addressSettings.refusalsBeforeBan = .max
        self.addresses = Mutex(PeerLimiter(settings: addressSettings))
    }

    var credentials: HandshakeCredentials? {
        get { self.credentialsBox.withLock { $0 } }
        set { self.credentialsBox.withLock { $0 = newValue } }
    }
}

/// A node's two clocks: core time (monotonic, since the node started) for every machine, and the wall-clock time
/// it corresponds to, for people and for records that outlive the process.
struct NodeClock: Sendable {
    private let origin = ContinuousClock.now
    let wallClockOrigin = Date()

    var now: Duration { ContinuousClock.now - self.origin }

    func wallClockDate(for time: Duration) -> Date { self.wallClockOrigin + time.seconds }
}

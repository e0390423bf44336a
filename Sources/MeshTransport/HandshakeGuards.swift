import Foundation
import MeshCore
import Synchronization

/// The listener's ``HandshakeSlots`` behind a lock (handshakes run on several event loops), with a way to close
/// each pending handshake when a newer one displaces it.
final class PendingHandshakes: Sendable {
    private struct State {
        var slots: HandshakeSlots
        var closers: [UInt64: @Sendable () -> Void] = [:]
    }

    private let state: Mutex<State>

    init(limit: Int) {
        self.state = Mutex(State(slots: HandshakeSlots(limit: limit)))
    }

    /// Takes a slot for a connection from `address`, closing the handshake it displaces (outside the lock: closing
    /// ends that handshake, which comes back here). Returns the ticket to end the slot with.
    func begin(from address: String, close: @escaping @Sendable () -> Void) -> UInt64 {
        let (ticket, displacedCloser) = self.state.withLock { state in
            let (ticket, displaced) = state.slots.admit(from: address)
            state.closers[ticket] = close
            return (ticket, displaced.flatMap { state.closers.removeValue(forKey: $0) })
        }
        displacedCloser?()
        return ticket
    }

    func end(_ ticket: UInt64, from address: String) {
        self.state.withLock { state in
            state.closers[ticket] = nil
            state.slots.end(ticket, from: address)
        }
    }

    /// `address` completed a handshake: it may use the reserve from now on.
    func remember(_ address: String) { self.state.withLock { $0.slots.remember(address) } }

    var current: Int { self.state.withLock { $0.slots.current } }
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

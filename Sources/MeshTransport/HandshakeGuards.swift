import Foundation
import MeshCore
import Synchronization

/// Caps the handshakes in flight on a listener, so a flood of half-open connections costs bounded memory, and
/// shares the slots out: one source address holds at most `perAddress` of them, and addresses that completed a
/// handshake before have `reserve` more that strangers cannot take.
final class PendingHandshakes: Sendable {
    let limit: Int
    let perAddress: Int
    let reserve: Int
    /// Addresses remembered as having completed a handshake (the oldest are forgotten beyond this).
    static let rememberedAddresses = 4_096

    private struct State {
        var total = 0
        var byAddress: [String: Int] = [:]
        var known: [String: UInt64] = [:]
        var uses: UInt64 = 0
    }

    private let state = Mutex(State())

    init(limit: Int, perAddress: Int? = nil, reserve: Int? = nil) {
        self.limit = limit
        self.perAddress = perAddress ?? max(1, limit / 4)
        self.reserve = reserve ?? max(1, limit / 4)
    }

    /// Takes a slot for a connection from `address`; false when its share (or every slot) is taken.
    func tryBegin(from address: String) -> Bool {
        self.state.withLock { state in
            let isKnown = state.known[address] != nil
            guard state.total < self.limit + (isKnown ? self.reserve : 0),
                state.byAddress[address, default: 0] < self.perAddress + (isKnown ? self.reserve : 0)
            else { return false }
            state.total += 1
            state.byAddress[address, default: 0] += 1
            return true
        }
    }

    func end(from address: String) {
        self.state.withLock { state in
            state.total -= 1
            let left = state.byAddress[address, default: 1] - 1
            state.byAddress[address] = left > 0 ? left : nil
        }
    }

    /// `address` completed a handshake: it may use the reserve from now on.
    func remember(_ address: String) {
        self.state.withLock { state in
            state.uses += 1
            state.known[address] = state.uses
            if state.known.count > Self.rememberedAddresses,
                let oldest = state.known.min(by: { $0.value < $1.value })?.key
            {
                state.known[oldest] = nil
            }
        }
    }

    var current: Int { self.state.withLock { $0.total } }
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

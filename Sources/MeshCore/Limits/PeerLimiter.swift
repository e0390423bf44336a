/// What a peer's traffic is counted in. Before authentication only `connections` applies, keyed by source address.
public enum LimitClass: String, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    /// Membership messages received.
    case gossip
    /// Task offers received.
    case offers
    /// Task results received.
    case results
    /// Events received (published by the peer or passed on by it).
    case events
    /// Bytes received, all messages together.
    case bytes
    /// Connection attempts and handshakes, per source address.
    case connections

    public var description: String { self.rawValue }

    public static func < (lhs: LimitClass, rhs: LimitClass) -> Bool {
        Self.allCases.firstIndex(of: lhs)! < Self.allCases.firstIndex(of: rhs)!
    }
}

/// A sustained rate and the burst allowed above it, written `RATE/s[:BURST]` (for example `20/s:40`; the burst
/// defaults to one second's worth).
public struct Rate: Sendable, Equatable, CustomStringConvertible {
    public let perSecond: Double
    public let burst: Double

    public init(perSecond: Double, burst: Double? = nil) {
        self.perSecond = perSecond
        self.burst = max(1, burst ?? perSecond)
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    public init(parsing text: String) throws(ParseError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts[0].hasSuffix("/s"),
            let rate = Self.number(parts[0].dropLast(2)), rate > 0
        else { throw ParseError(description: "'\(text)' is not a rate: write RATE/s or RATE/s:BURST, for example 20/s:40 or 64M/s:128M") }
        var burst: Double?
        if parts.count == 2 {
            guard let value = Self.number(parts[1]), value >= 1 else {
                throw ParseError(description: "'\(text)': the burst after ':' must be a number of at least 1")
            }
            burst = value
        }
        self.init(perSecond: rate, burst: burst)
    }

    /// Parses `CLASS=RATE/s[:BURST]`, the form of `run --limit` and of the `limits` table in config and descriptors.
    public static func parseLimit(_ text: String) throws(ParseError) -> (LimitClass, Rate) {
        let parts = text.split(separator: "=", maxSplits: 1)
        guard parts.count == 2, let limitClass = LimitClass(rawValue: String(parts[0])) else {
            let classes = LimitClass.allCases.map(\.rawValue).joined(separator: ", ")
            throw ParseError(description: "'\(text)' is not a limit: write CLASS=RATE/s[:BURST] with CLASS one of \(classes)")
        }
        return (limitClass, try Rate(parsing: String(parts[1])))
    }

    /// A number with an optional binary suffix: `K` (×1024), `M` (×1024²) or `G` (×1024³), handy for `bytes`.
    public static func number(_ text: Substring) -> Double? {
        let scale: Double
        var digits = text
        switch text.last {
        case "K": scale = 1024
        case "M": scale = 1024 * 1024
        case "G": scale = 1024 * 1024 * 1024
        default: scale = 1
        }
        if scale > 1 { digits = digits.dropLast() }
        guard let value = Double(digits), value.isFinite else { return nil }
        return value * scale
    }

    /// `20`, `0.5`, `64M`: the inverse of the parser's numbers.
    public static func format(_ value: Double) -> String {
        for (suffix, scale) in [("G", 1024.0 * 1024 * 1024), ("M", 1024.0 * 1024), ("K", 1024.0)]
        where value >= scale && (value / scale) == (value / scale).rounded() {
            return "\(Int(value / scale))\(suffix)"
        }
        if value == value.rounded() { return String(Int(value)) }
        return String((value * 10).rounded() / 10)
    }

    public var description: String { "\(Self.format(self.perSecond))/s:\(Self.format(self.burst))" }
}

/// Per-peer rate limits with escalation, as a pure state machine with an injected clock.
///
/// Each (peer, class) pair is a GCRA bucket: a message costs `1 / rate` seconds of "theoretical arrival time", and
/// is refused when that time would run more than `burst / rate` ahead of now. A peer refused again and again within
/// `escalationWindow`, or reported for misbehaviour `strikesBeforeBan` times, is banned: 1 minute the first time,
/// then twice as long each time (up to an hour), after which it may come back with clean buckets.
public struct PeerLimiter<Key: Hashable & Sendable>: Sendable {
    public struct Settings: Sendable {
        /// Node-wide rates; a class without one is not limited.
        public var rates: [LimitClass: Rate]
        /// Refusals within `escalationWindow` that get a peer banned.
        public var refusalsBeforeBan = 100
        public var escalationWindow: Duration = .seconds(10)
        /// Misbehaviour reports (bad signatures, stale epochs, protocol violations) within the window that ban.
        public var strikesBeforeBan = 3
        public var firstBan: Duration = .seconds(60)
        public var longestBan: Duration = .seconds(3600)

        public init(rates: [LimitClass: Rate] = Self.defaultRates) { self.rates = rates }

        /// Far above what an honest mesh sends (a submitter keeping a fast executor busy sends over a thousand offers a
        /// second), so they only ever stop a flood.
        public static var defaultRates: [LimitClass: Rate] { [
            .gossip: Rate(perSecond: 200, burst: 400),
            .offers: Rate(perSecond: 10_000, burst: 20_000),
            .results: Rate(perSecond: 10_000, burst: 20_000),
            // Events are few next to tasks; one peer's 10,000 of 64 KiB took 43 MiB to 934 within the other limits.
            .events: Rate(perSecond: 1_000, burst: 4_000),
            .bytes: Rate(perSecond: 64 * 1024 * 1024, burst: 128 * 1024 * 1024),
            .connections: Rate(perSecond: 20, burst: 40),
        ] }
    }

    public enum Verdict: Sendable, Equatable {
        case accepted
        /// Over the limit: decline or drop this one.
        case refused
        /// Over the limit for too long (or misbehaving): cut the peer off until `until`.
        case banned(until: Duration)
    }

    /// One line of `agentmesh limits`.
    public struct Usage: Sendable, Equatable {
        public let key: Key
        public let limitClass: LimitClass
        public let rate: Rate
        public let tokensLeft: Double
        public let accepted: UInt64
        public let refused: UInt64
    }

    struct Bucket: Sendable {
        var theoreticalArrival: Duration = .zero
        var accepted: UInt64 = 0
        var refused: UInt64 = 0
    }

    struct Standing: Sendable {
        var recentRefusals: [Duration] = []
        var recentStrikes: [Duration] = []
        var bans = 0
        var bannedUntil: Duration?
    }

    public let settings: Settings
    private var buckets: [Key: [LimitClass: Bucket]] = [:]
    private var standings: [Key: Standing] = [:]
    private var overrides: [Key: [LimitClass: Rate]] = [:]

    public init(settings: Settings = .init()) { self.settings = settings }

    /// Rates for one peer that replace the node-wide ones (from its descriptor).
    public mutating func setOverrides(_ rates: [LimitClass: Rate], for key: Key) {
        self.overrides[key] = rates.isEmpty ? nil : rates
    }

    public func rate(_ limitClass: LimitClass, for key: Key) -> Rate? {
        self.overrides[key]?[limitClass] ?? self.settings.rates[limitClass]
    }

    /// The end of the peer's current ban, if it is banned now.
    public func bannedUntil(_ key: Key, now: Duration) -> Duration? {
        guard let until = self.standings[key]?.bannedUntil, until > now else { return nil }
        return until
    }

    /// Counts `cost` units of `limitClass` from `key` (one message, or its length for `bytes`).
    public mutating func admit(_ key: Key, _ limitClass: LimitClass, cost: Double = 1, now: Duration) -> Verdict {
        if let until = self.bannedUntil(key, now: now) { return .banned(until: until) }
        guard let rate = self.rate(limitClass, for: key) else { return .accepted }
        var bucket = self.buckets[key]?[limitClass] ?? Bucket()
        let interval = Duration.seconds(cost / rate.perSecond)
        let horizon = Duration.seconds(rate.burst / rate.perSecond)
        let arrival = max(bucket.theoreticalArrival, now) + interval
        if arrival - now <= horizon {
            bucket.theoreticalArrival = arrival
            bucket.accepted += 1
            self.buckets[key, default: [:]][limitClass] = bucket
            return .accepted
        }
        bucket.refused += 1
        self.buckets[key, default: [:]][limitClass] = bucket
        return self.escalate(key, .refusal, now: now)
    }

    /// The peer did something an honest peer never does. Enough of these within the window ban it.
    public mutating func misbehaved(_ key: Key, now: Duration) -> Verdict {
        if let until = self.bannedUntil(key, now: now) { return .banned(until: until) }
        return self.escalate(key, .strike, now: now)
    }

    private enum Offence { case refusal, strike }

    private mutating func escalate(_ key: Key, _ offence: Offence, now: Duration) -> Verdict {
        var standing = self.standings[key] ?? Standing()
        let window = self.settings.escalationWindow
        let recent: [Duration]
        let limit: Int
        switch offence {
        case .refusal:
            recent = standing.recentRefusals.filter { now - $0 < window } + [now]
            standing.recentRefusals = recent
            limit = self.settings.refusalsBeforeBan
        case .strike:
            recent = standing.recentStrikes.filter { now - $0 < window } + [now]
            standing.recentStrikes = recent
            limit = self.settings.strikesBeforeBan
        }
        guard recent.count >= limit else {
            self.standings[key] = standing
            return .refused
        }
        // Each ban lasts twice the previous one; afterwards the peer starts over with full buckets.
        var length = self.settings.firstBan
        for _ in 0..<standing.bans where length < self.settings.longestBan { length = length * 2 }
        length = min(length, self.settings.longestBan)
        standing.bans += 1
        standing.bannedUntil = now + length
        standing.recentRefusals = []
        standing.recentStrikes = []
        self.standings[key] = standing
        self.buckets[key] = nil
        return .banned(until: now + length)
    }

    /// One peer's standing in every limited class (full buckets for classes it has not used), for `agentmesh limits`.
    public func usage(of key: Key, now: Duration) -> [Usage] {
        LimitClass.allCases.compactMap { limitClass -> Usage? in
            guard let rate = self.rate(limitClass, for: key) else { return nil }
            let bucket = self.buckets[key]?[limitClass] ?? Bucket()
            let ahead = max(.zero, bucket.theoreticalArrival - now)
            return Usage(
                key: key, limitClass: limitClass, rate: rate,
                tokensLeft: max(0, rate.burst - ahead.secondsValue * rate.perSecond), accepted: bucket.accepted,
                refused: bucket.refused)
        }
    }

    /// How many times the peer has been banned.
    public func banCount(_ key: Key) -> Int { self.standings[key]?.bans ?? 0 }

    /// Every peer the limiter has counted or banned.
    public var keys: Set<Key> { Set(self.buckets.keys).union(self.standings.keys) }

    /// Drops the state of keys that would start over the same way: every bucket full again, no ban, no recent
    /// offence. Keeps memory bounded where keys come and go (source addresses); their counters go with them.
    public mutating func forgetIdle(now: Duration, except kept: Set<Key> = []) {
        let window = self.settings.escalationWindow
        for key in self.keys where !kept.contains(key) {
            let idle = (self.buckets[key] ?? [:]).values.allSatisfy { $0.theoreticalArrival <= now }
            let standing = self.standings[key]
            let quiet = standing.map { standing in
                (standing.bannedUntil ?? .zero) <= now && standing.bans == 0
                    && (standing.recentRefusals + standing.recentStrikes).allSatisfy { now - $0 >= window }
            } ?? true
            if idle && quiet {
                self.buckets[key] = nil
                self.standings[key] = nil
                self.overrides[key] = nil
            }
        }
    }
}

extension Duration {
    fileprivate var secondsValue: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

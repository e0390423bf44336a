/// Shares out a listener's handshake slots so that a flood of half-open connections costs bounded memory and
/// cannot keep anyone out for long. One source address holds at most `perAddress` slots, and addresses that
/// completed a handshake before have `reserve` more that strangers cannot take. A new connection is always
/// admitted: when its address's share (or every slot) is taken it displaces the oldest pending handshake of its
/// own address (or of the stranger holding the most). Slow handshakes then hold a slot only until the next
/// connection arrives, and an honest handshake, which takes a few round trips, finishes between flood attempts.
public struct HandshakeSlots: Sendable {
    public let limit: Int
    public let perAddress: Int
    public let reserve: Int
    /// Addresses remembered as having completed a handshake (the least recent are forgotten beyond this).
    public static let rememberedAddresses = 4_096

    /// Pending handshakes by source address, oldest first.
    private var pending: [String: [UInt64]] = [:]
    private var known: [String: UInt64] = [:]
    private var uses: UInt64 = 0
    private var nextTicket: UInt64 = 0
    public private(set) var current = 0

    public init(limit: Int, perAddress: Int? = nil, reserve: Int? = nil) {
        self.limit = limit
        self.perAddress = perAddress ?? max(1, limit / 4)
        self.reserve = reserve ?? max(1, limit / 4)
    }

    /// Takes a slot for a connection from `address`; `displaced` is the pending handshake to close for it.
    public mutating func admit(from address: String) -> (ticket: UInt64, displaced: UInt64?) {
        let extra = self.known[address] != nil ? self.reserve : 0
        var displaced: UInt64?
        if self.pending[address, default: []].count >= self.perAddress + extra {
            displaced = self.removeOldest(of: address)
        } else if self.current >= self.limit + extra, let victim = self.busiestAddress() {
            displaced = self.removeOldest(of: victim)
        }
        self.nextTicket += 1
        self.pending[address, default: []].append(self.nextTicket)
        self.current += 1
        return (self.nextTicket, displaced)
    }

    /// The handshake ended (finished, failed or was closed); a displaced ticket is already gone.
    public mutating func end(_ ticket: UInt64, from address: String) {
        guard var tickets = self.pending[address], let index = tickets.firstIndex(of: ticket) else { return }
        tickets.remove(at: index)
        self.pending[address] = tickets.isEmpty ? nil : tickets
        self.current -= 1
    }

    /// `address` completed a handshake: it may use the reserve from now on.
    public mutating func remember(_ address: String) {
        self.uses += 1
        self.known[address] = self.uses
        if self.known.count > Self.rememberedAddresses,
            let leastRecent = self.known.min(by: { $0.value < $1.value })?.key
        {
            self.known[leastRecent] = nil
        }
    }

    public func pending(from address: String) -> Int { self.pending[address]?.count ?? 0 }

    /// The stranger holding the most slots; a known address only when no stranger holds any.
    private func busiestAddress() -> String? {
        let strangers = self.pending.filter { self.known[$0.key] == nil }
        return (strangers.isEmpty ? self.pending : strangers).max { $0.value.count < $1.value.count }?.key
    }

    private mutating func removeOldest(of address: String) -> UInt64? {
        guard var tickets = self.pending[address], !tickets.isEmpty else { return nil }
        let oldest = tickets.removeFirst()
        self.pending[address] = tickets.isEmpty ? nil : tickets
        self.current -= 1
        return oldest
    }
}

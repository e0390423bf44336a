import MeshCore
import Testing

@Suite struct HandshakeSlotsTests {
    /// One address holds at most its share; a newer connection from it displaces its oldest pending handshake.
    @Test func anAddressOverItsShareDisplacesItsOwnOldest() {
        var slots = HandshakeSlots(limit: 8)
        let first = slots.admit(from: "10.0.0.1")
        let second = slots.admit(from: "10.0.0.1")
        #expect(first.displaced == nil && second.displaced == nil)
        let third = slots.admit(from: "10.0.0.1")
        #expect(third.displaced == first.ticket, "a quarter each: the third displaces the first")
        #expect(slots.pending(from: "10.0.0.1") == 2 && slots.current == 2)
        slots.end(first.ticket, from: "10.0.0.1")
        #expect(slots.current == 2, "ending a displaced ticket changes nothing")
    }

    /// When every slot strangers may use is taken, a new stranger displaces the oldest handshake of the stranger
    /// holding the most, never a known address's while a stranger holds one.
    @Test func aFullListenerDisplacesTheBusiestStranger() {
        var slots = HandshakeSlots(limit: 8)
        slots.remember("10.0.0.9")
        let known = slots.admit(from: "10.0.0.9")
        var firstOf: [String: UInt64] = [:]
        for address in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            firstOf[address] = slots.admit(from: address).ticket
            _ = slots.admit(from: address)
        }
        let busiestFirst = slots.admit(from: "10.0.0.4").ticket
        #expect(slots.current == 8)
        let newcomer = slots.admit(from: "10.0.0.5")
        #expect(newcomer.displaced != known.ticket)
        #expect(newcomer.displaced.map { Set(firstOf.values).contains($0) } == true, "a stranger holding two")
        #expect(newcomer.displaced != busiestFirst)
        #expect(slots.current == 8)
    }

    /// Addresses that completed a handshake before have a reserve strangers cannot take.
    @Test func knownAddressesUseTheReserve() {
        var slots = HandshakeSlots(limit: 4, perAddress: 1, reserve: 2)
        for address in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] { _ = slots.admit(from: address) }
        slots.remember("10.0.0.9")
        #expect(slots.admit(from: "10.0.0.9").displaced == nil)
        #expect(slots.admit(from: "10.0.0.9").displaced == nil, "its share plus the reserve")
        #expect(slots.current == 6)
        #expect(slots.admit(from: "10.0.0.5").displaced != nil, "a stranger still finds every slot it may use taken")
        #expect(slots.current == 6)
    }
}

@Suite struct LogThrottleTests {
    @Test func linesOverTheRateAreCountedAndReportedWithTheNextOneLogged() {
        var throttle = LogThrottle(perSecond: 2)
        #expect(throttle.admit(now: .zero) == 0)
        #expect(throttle.admit(now: .milliseconds(10)) == 0)
        #expect(throttle.admit(now: .milliseconds(20)) == nil)
        #expect(throttle.admit(now: .milliseconds(999)) == nil)
        #expect(throttle.admit(now: .milliseconds(1_000)) == 2, "a new second: two lines were left out")
        #expect(throttle.admit(now: .milliseconds(1_001)) == 0)
    }
}

import MeshCore
import Testing

/// One session per peer, bounded, with queued messages for members being dialled; driven with a manual clock.
@Suite struct ConnectionTableTests {
    typealias Table = ConnectionTable<String, String>
    static let local = NodeID(high: 5, low: 5)
    static func peer(_ n: UInt64) -> NodeID { NodeID(high: n, low: n) }
    static let join = HostAndPort(host: "10.0.0.1", port: 7400)

    static func registeredNumber(_ registration: Table.Registration) -> UInt64? {
        if case .registered(let number, _, _) = registration { return number }
        return nil
    }

    @Test func aSessionIsRegisteredAndEndsOnce() {
        var table = Table(maximumConnections: 4)
        let number = Self.registeredNumber(table.register(
            peer: Self.peer(1), handle: "s1", origin: .accepted, initiator: Self.peer(1), now: .zero))
        #expect(number == 1)
        #expect(table[Self.peer(1)]?.handle == "s1")
        let ended = table.ended(1, peer: Self.peer(1))
        #expect(ended.closedHere == nil && ended.wasCurrent)
        #expect(table[Self.peer(1)] == nil)
        #expect(table.ended(1, peer: Self.peer(1)).wasCurrent == false)
    }

    /// Both ends apply the same rule, so when two nodes dial each other at once exactly one session survives.
    @Test func simultaneousDialsKeepTheSessionTheLowerNodeDialled() {
        let (low, high) = (Self.peer(1), Self.peer(9))
        // Seen from the low node: its own dial (initiator low) arrives second.
        var lowTable = Table(maximumConnections: 4)
        _ = lowTable.register(peer: high, handle: "high dialled", origin: .accepted, initiator: high, now: .zero)
        guard case .registered(_, let close, _) = lowTable.register(
            peer: high, handle: "low dialled", origin: .onDemand(high), initiator: low, now: .zero)
        else { Issue.record("the low node's own dial should win"); return }
        #expect(close.map(\.0) == ["high dialled"] && close.map(\.1) == [.duplicate])
        // The old session's end is reported as this node's doing, and it is not the current one.
        let old = lowTable.ended(1, peer: high)
        #expect(old.closedHere == "closed here: duplicate connection" && !old.wasCurrent)
        #expect(lowTable[high]?.handle == "low dialled")

        // Seen from the high node: the low node's dial arrives second and also wins; its own loses.
        var highTable = Table(maximumConnections: 4)
        _ = highTable.register(peer: low, handle: "low dialled", origin: .accepted, initiator: low, now: .zero)
        guard case .duplicate = highTable.register(
            peer: low, handle: "high dialled", origin: .onDemand(low), initiator: high, now: .zero)
        else { Issue.record("the high node's dial should lose"); return }
        #expect(highTable[low]?.handle == "low dialled")
    }

    @Test func overTheBoundTheLeastRecentlyActiveNonJoinSessionsAreShed() {
        var table = Table(maximumConnections: 3)
        _ = table.register(peer: Self.peer(1), handle: "join", origin: .dialled(Self.join), initiator: Self.local, now: .zero)
        _ = table.register(peer: Self.peer(2), handle: "old", origin: .accepted, initiator: Self.peer(2), now: .seconds(1))
        _ = table.register(peer: Self.peer(3), handle: "busy", origin: .onDemand(Self.peer(3)), initiator: Self.local, now: .seconds(2))
        table.heard(from: Self.peer(2), now: .seconds(10))  // now the most recently active
        guard case .registered(let number, let close, _) = table.register(
            peer: Self.peer(4), handle: "new", origin: .accepted, initiator: Self.peer(4), now: .seconds(11))
        else { Issue.record("registration failed"); return }
        #expect(close.map(\.0) == ["busy"], "the join session and the newest are never shed")
        #expect(close.map(\.1) == [.pruned(keepingAtMost: 3)])
        #expect(table.ended(3, peer: Self.peer(3)).closedHere == "closed here: pruned to keep at most 3 sessions")
        #expect(number == 4 && table.count == 3)
    }

    /// Issue 19: a session being closed stays listed until it ends; it must not be chosen again, or the next
    /// registration prunes nothing real (30 nodes with a bound of 4 held up to 9 sessions each).
    @Test func aSessionAlreadyClosingIsNotPrunedAgain() {
        var table = Table(maximumConnections: 2)
        _ = table.register(peer: Self.peer(1), handle: "a", origin: .accepted, initiator: Self.peer(1), now: .seconds(1))
        _ = table.register(peer: Self.peer(2), handle: "b", origin: .accepted, initiator: Self.peer(2), now: .seconds(2))
        guard case .registered(_, let first, _) = table.register(
            peer: Self.peer(3), handle: "c", origin: .accepted, initiator: Self.peer(3), now: .seconds(3))
        else { Issue.record("registration failed"); return }
        #expect(first.map(\.0) == ["a"])
        // "a" has not ended yet when "d" arrives: "b" goes now, not "a" again.
        guard case .registered(_, let second, _) = table.register(
            peer: Self.peer(4), handle: "d", origin: .accepted, initiator: Self.peer(4), now: .seconds(4))
        else { Issue.record("registration failed"); return }
        #expect(second.map(\.0) == ["b"])
    }

    @Test func messagesForAnUnconnectedMemberWaitForOneDialAndAreBounded() {
        var table = Table(maximumConnections: 4, maximumPendingSends: 2)
        let member = Self.peer(7)
        guard case .dial = table.route("m1", to: member, now: .zero) else { Issue.record("first message dials"); return }
        guard case .queued = table.route("m2", to: member, now: .zero) else { Issue.record("second waits"); return }
        guard case .dropped = table.route("m3", to: member, now: .zero) else { Issue.record("the queue is bounded"); return }
        #expect(table.hasPendingSends)
        guard case .registered(_, _, let pending) = table.register(
            peer: member, handle: "s", origin: .onDemand(member), initiator: Self.local, now: .zero)
        else { Issue.record("registration failed"); return }
        #expect(pending == ["m1", "m2"])
        #expect(!table.hasPendingSends)
        guard case .write("s") = table.route("m4", to: member, now: .seconds(1)) else { Issue.record("now written"); return }
    }

    @Test func aFailedDialDropsWhatItWasToCarryAndTheNextMessageDialsAgain() {
        var table = Table(maximumConnections: 4)
        let member = Self.peer(7)
        _ = table.route("m1", to: member, now: .zero)
        table.dialEnded(member)
        #expect(!table.hasPendingSends)
        guard case .dial = table.route("m2", to: member, now: .zero) else { Issue.record("dials again"); return }
    }

    @Test func anOnDemandDialThatReachesAnotherNodeIsRefused() {
        var table = Table(maximumConnections: 4)
        guard case .wrongPeer(let expected) = table.register(
            peer: Self.peer(8), handle: "s", origin: .onDemand(Self.peer(7)), initiator: Self.local, now: .zero)
        else { Issue.record("should be refused"); return }
        #expect(expected == Self.peer(7) && table.count == 0)
    }

    @Test func aSessionClosedForAReasonReportsIt() {
        var table = Table(maximumConnections: 4)
        _ = table.register(peer: Self.peer(1), handle: "s", origin: .accepted, initiator: Self.peer(1), now: .zero)
        table.closing(1, because: "banned for 60 s")
        #expect(table.ended(1, peer: Self.peer(1)).closedHere == "closed here: banned for 60 s")
        _ = table.register(peer: Self.peer(2), handle: "t", origin: .accepted, initiator: Self.peer(2), now: .zero)
        #expect(table.removeAll().map(\.handle) == ["t"])
        #expect(table.count == 0)
    }
}

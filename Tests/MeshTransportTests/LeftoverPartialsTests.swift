import MeshCore
import Testing

@testable import MeshTransport

/// Unfinished transfers' partial files, per peer: within a share, the oldest let go first, one resumed no longer counted.
@Suite struct LeftoverPartialsTests {
    @Test func aPeersLeftoverPartialsStayWithinItsShareOldestLetGoFirst() {
        let (b, c) = (NodeID(high: 0, low: 2), NodeID(high: 0, low: 3))
        var leftovers = LeftoverPartials()
        #expect(leftovers.stopped("1", bytes: 40, from: b, share: 100).isEmpty)
        #expect(leftovers.stopped("2", bytes: 40, from: b, share: 100).isEmpty)
        #expect(leftovers.stopped("9", bytes: 90, from: c, share: 100).isEmpty, "another peer's share is its own")
        #expect(leftovers.stopped("3", bytes: 40, from: b, share: 100) == ["1"])
        #expect(leftovers.bytes(from: b) == 80)
        leftovers.resumed("2")
        #expect(leftovers.bytes(from: b) == 40, "resumed, it is a transfer again, not a leftover")
        #expect(leftovers.stopped("4", bytes: 0, from: b, share: 100).isEmpty && leftovers.bytes(from: b) == 40)
        #expect(leftovers.stopped("5", bytes: 150, from: b, share: 100) == ["3", "5"], "even the newest goes when it alone is over")
    }
}

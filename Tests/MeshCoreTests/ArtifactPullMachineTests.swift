import MeshCore
import Testing

/// One artifact pulled from a peer, pumped in memory with 10-byte chunks under a manual clock: what is asked for,
/// what is written, and how a damaged chunk, a silent peer and a resumed file are met.
@Suite struct ArtifactPullMachineTests {
    typealias Machine = ArtifactPullMachine

    static func settings(window: Int = 4) -> Machine.Settings {
        var settings = Machine.Settings()
        settings.chunkLength = 10
        settings.window = window
        return settings
    }

    static let plenty = Double(1 << 30)

    @Test func aFreshTransferAsksForAWindowOfChunksInOrderAndThenWaits() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings())
        #expect(machine.requests(allowance: Self.plenty).isEmpty, "nothing is asked for before the file is open")
        #expect(machine.opened(received: 0, now: .zero) == .ask)
        #expect(machine.requests(allowance: Self.plenty).map(\.offset) == [0, 10, 20, 30])
        #expect(machine.requests(allowance: Self.plenty).isEmpty, "the window is full")
    }

    @Test func theLastChunkIsAskedForWithTheBytesThatAreLeft() {
        var machine = Machine(size: 25, now: .zero, settings: Self.settings())
        _ = machine.opened(received: 0, now: .zero)
        #expect(machine.requests(allowance: Self.plenty) == [
            .init(offset: 0, length: 10), .init(offset: 10, length: 10), .init(offset: 20, length: 5)])
    }

    @Test func aResumedTransferAsksFromTheBytesAlreadyOnDisk() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings(window: 2))
        _ = machine.opened(received: 60, now: .zero)
        #expect(machine.requests(allowance: Self.plenty).map(\.offset) == [60, 70])
    }

    @Test func thePeersByteAllowanceBoundsWhatIsAskedFor() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings())
        _ = machine.opened(received: 0, now: .zero)
        #expect(machine.requests(allowance: 25).map(\.offset) == [0, 10])
        // Two chunks are still owed: the allowance must also cover them before more is asked for.
        #expect(machine.requests(allowance: 25).map(\.offset) == [])
        #expect(machine.requests(allowance: 30).map(\.offset) == [20])
    }

    @Test func aDiskSlowerThanTheNetworkHoldsTheWindow() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings(window: 2))
        _ = machine.opened(received: 0, now: .zero)
        _ = machine.requests(allowance: Self.plenty)
        #expect(machine.arrived(offset: 0, length: 10) == true)
        #expect(machine.requests(allowance: Self.plenty).isEmpty, "the chunk on its way to the disk still counts")
        #expect(machine.written(offset: 0, verdict: .accepted, now: .seconds(1)) == .ask)
        #expect(machine.requests(allowance: Self.plenty).map(\.offset) == [20])
    }

    @Test func onlyTheNextChunkAskedForIsWritten() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings())
        _ = machine.opened(received: 0, now: .zero)
        _ = machine.requests(allowance: Self.plenty)
        #expect(machine.arrived(offset: 10, length: 10) == false, "out of order")
        #expect(machine.arrived(offset: 50, length: 10) == false, "never asked for")
        #expect(machine.arrived(offset: 0, length: 0) == false, "no bytes")
        #expect(machine.arrived(offset: 0, length: 200) == false, "more than the artifact has")
        #expect(machine.arrived(offset: 0, length: 10) == true)
        #expect(machine.arrived(offset: 0, length: 10) == false, "a second copy")
        #expect(machine.arrived(offset: 10, length: 10) == true)
        #expect(machine.expected == 20)
    }

    @Test func aDamagedChunkIsAskedForAgainWithEverythingAfterIt() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings())
        _ = machine.opened(received: 0, now: .zero)
        _ = machine.requests(allowance: Self.plenty)
        #expect(machine.arrived(offset: 0, length: 10) == true)
        #expect(machine.arrived(offset: 10, length: 10) == true)
        #expect(machine.written(offset: 0, verdict: .damaged, now: .seconds(1)) == .askAgainAfterDamage(offset: 0))
        // The chunk that followed was handed to the disk before the damage was known; the disk skips it.
        machine.writeSkipped()
        #expect(machine.arrived(offset: 20, length: 10) == false, "an answer to a request made before the damage")
        #expect(machine.requests(allowance: Self.plenty).map(\.offset) == [0, 10, 20, 30])
    }

    @Test func threeDamagedChunksInARowFailTheTransferButAGoodOneInBetweenDoesNot() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings(window: 1))
        _ = machine.opened(received: 0, now: .zero)
        func damage(_ offset: UInt64) -> Machine.Next {
            _ = machine.requests(allowance: Self.plenty)
            _ = machine.arrived(offset: offset, length: 10)
            return machine.written(offset: offset, verdict: .damaged, now: .seconds(1))
        }
        #expect(damage(0) == .askAgainAfterDamage(offset: 0))
        #expect(damage(0) == .askAgainAfterDamage(offset: 0))
        _ = machine.requests(allowance: Self.plenty)
        _ = machine.arrived(offset: 0, length: 10)
        #expect(machine.written(offset: 0, verdict: .accepted, now: .seconds(1)) == .ask)
        #expect(damage(10) == .askAgainAfterDamage(offset: 10))
        #expect(damage(10) == .askAgainAfterDamage(offset: 10))
        #expect(damage(10) == .failed(.damaged(times: 3)))
    }

    @Test func anEmptyArtifactWritesOneEmptyChunkAndAWrongDigestFailsAtOnce() {
        var good = Machine(size: 0, now: .zero, settings: Self.settings())
        #expect(good.opened(received: 0, now: .zero) == .writeEmptyChunk)
        #expect(good.requests(allowance: Self.plenty).isEmpty)
        #expect(good.written(offset: 0, verdict: .complete, now: .zero) == .complete)

        var wrong = Machine(size: 0, now: .zero, settings: Self.settings())
        _ = wrong.opened(received: 0, now: .zero)
        #expect(wrong.written(offset: 0, verdict: .damaged, now: .zero) == .failed(.damaged(times: 1)))
    }

    @Test func aSilentTransferAsksAgainFromItsFirstMissingChunkThenGivesUp() {
        var settings = Self.settings()
        settings.stall = .seconds(2)
        settings.giveUp = .seconds(120)
        var machine = Machine(size: 95, now: .zero, settings: settings)
        _ = machine.opened(received: 0, now: .zero)
        _ = machine.requests(allowance: Self.plenty)
        _ = machine.arrived(offset: 0, length: 10)
        #expect(machine.written(offset: 0, verdict: .accepted, now: .seconds(1)) == .ask)
        _ = machine.requests(allowance: Self.plenty)

        #expect(machine.tick(now: .seconds(2)) == .ask, "not stalled yet")
        #expect(machine.tick(now: .seconds(3) + .milliseconds(1)) == .askAgainAfterStall(offset: 10))
        #expect(machine.requests(allowance: Self.plenty).map(\.offset) == [10, 20, 30, 40])
        #expect(machine.arrived(offset: 50, length: 10) == false, "asked for before the stall, and not again yet")
        // A re-ask that also goes unanswered is repeated a stall later, not two.
        #expect(machine.tick(now: .seconds(4) + .milliseconds(2)) == .askAgainAfterStall(offset: 10))
        #expect(machine.tick(now: .seconds(121) + .milliseconds(1)) == .failed(.silent(.seconds(120))))
    }

    @Test func aTransferWithNothingOutstandingNeverStalls() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings())
        _ = machine.opened(received: 0, now: .zero)
        // The peer's allowance let nothing be asked for: nothing is missing, so nothing is re-asked.
        #expect(machine.requests(allowance: 0).isEmpty)
        #expect(machine.tick(now: .seconds(10)) == .ask)
    }

    @Test func aWholeTransferCompletes() {
        var machine = Machine(size: 95, now: .zero, settings: Self.settings())
        _ = machine.opened(received: 0, now: .zero)
        var pending = machine.requests(allowance: Self.plenty)
        var last: Machine.Next = .ask
        while let request = pending.first {
            pending.removeFirst()
            #expect(machine.arrived(offset: request.offset, length: request.length) == true)
            let verdict: Machine.Verdict = request.offset + UInt64(request.length) == 95 ? .complete : .accepted
            last = machine.written(offset: request.offset, verdict: verdict, now: .seconds(1))
            pending += machine.requests(allowance: Self.plenty)
        }
        #expect(last == .complete)
        #expect(machine.expected == 95)
    }

    @Test func onePeersTransfersAreBoundedInNumberAndInBytes() {
        // A 1,000-byte store with 300-byte artifacts at most: a peer's share is 300 bytes (a quarter is 250).
        #expect(Machine.share(storeCapacity: 1000, maximumArtifact: 300) == 300)
        #expect(Machine.mayStart(size: 100, besides: [100, 100], storeCapacity: 1000, maximumArtifact: 300))
        #expect(!Machine.mayStart(size: 101, besides: [100, 100], storeCapacity: 1000, maximumArtifact: 300))
        #expect(!Machine.mayStart(size: 1, besides: [1, 1], storeCapacity: 1000, maximumArtifact: 300, perPeer: 2))
        // Too large for the node at all: refused as such when its file opens, not as the peer's share.
        #expect(Machine.mayStart(size: 400, besides: [100], storeCapacity: 1000, maximumArtifact: 300))
    }
}

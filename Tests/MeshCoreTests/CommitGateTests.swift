import MeshCore
import Testing

/// The gate between the task machines and the network: nothing is released before both writers committed what it
/// follows, and releases keep their order.
@Suite struct CommitGateTests {
    typealias Gate = CommitGate<String, String>

    @Test func actionsWhoseChangesAreCommittedPassAtOnce() {
        var gate = Gate(storeCommitted: 3, auditCommitted: 7)
        #expect(gate.submit(["accept"], afterStore: 3, audit: 7) == ["accept"])
        #expect(gate.heldCount == 0)
    }

    @Test func actionsWaitForBothWritersAndLeaveInOrder() {
        var gate = Gate(storeCommitted: 0, auditCommitted: 0)
        #expect(gate.submit(["offer 1"], afterStore: 1, audit: 0) == [])
        #expect(gate.submit(["offer 2"], afterStore: 2, audit: 1) == [])
        // Committed already, but behind a held batch: it waits its turn.
        #expect(gate.submit(["decline-free"], afterStore: 0, audit: 0) == [])
        #expect(gate.nextReady() == nil)

        _ = gate.storeCommitted(through: 2)
        #expect(gate.nextReady() == ["offer 1"])
        #expect(gate.nextReady() == nil, "offer 2 also needs audit entry 1")
        _ = gate.auditCommitted(through: 1)
        #expect(gate.nextReady() == ["offer 2"])
        #expect(gate.nextReady() == ["decline-free"])
        #expect(gate.nextReady() == nil)
        #expect(gate.heldCount == 0)
    }

    @Test func aLateCommitReportNeverMovesBack() {
        var gate = Gate(storeCommitted: 0, auditCommitted: 0)
        _ = gate.storeCommitted(through: 5)
        _ = gate.storeCommitted(through: 3)
        #expect(gate.storeCommitted == 5)
        _ = gate.auditCommitted(through: 9)
        _ = gate.auditCommitted(through: 2)
        #expect(gate.auditCommitted == 9)
    }

    @Test func clientsWaitForTheirChangeAndHearOfAFailureAtOnce() {
        var gate = Gate(storeCommitted: 0, auditCommitted: 0)
        let waits = [gate.wait(forStore: 0, "already"), gate.wait(forStore: 1, "first"), gate.wait(forStore: 2, "second")]
        #expect(waits == [false, true, true])
        #expect(gate.storeCommitted(through: 1).waiters == ["first"])

        let failure = gate.storeFailed()
        #expect(failure.availabilityChanged)
        #expect(failure.waiters == ["second"])
        #expect(!gate.isWritable)
        #expect(gate.storeFailed().availabilityChanged == false, "a second failure changes nothing")

        let recovered = gate.storeCommitted(through: 2)
        #expect(recovered.availabilityChanged)
        #expect(recovered.waiters == [])
        #expect(gate.isWritable)
    }

    @Test func theAuditLogFailingMakesTheNodeUnwritableUntilItCommits() {
        var gate = Gate(storeCommitted: 0, auditCommitted: 0)
        #expect(gate.auditFailed().availabilityChanged)
        #expect(!gate.isWritable)
        #expect(gate.auditFailed().availabilityChanged == false)
        #expect(gate.auditCommitted(through: 1).availabilityChanged)
        #expect(gate.isWritable)
    }

    @Test func heldActionsAreListedOldestFirst() {
        var gate = Gate(storeCommitted: 0, auditCommitted: 0)
        _ = gate.submit(["start a", "send a"], afterStore: 1, audit: 0)
        _ = gate.submit(["start b"], afterStore: 2, audit: 0)
        #expect(gate.heldActions == ["start a", "send a", "start b"])
    }

    /// Many batches released one by one keep their order across the gate's internal compaction.
    @Test func thousandsOfBatchesLeaveInTheOrderTheyCame() {
        var gate = Gate(storeCommitted: 0, auditCommitted: 0)
        var released: [String] = []
        for round in 0..<5 {
            for index in 0..<1500 {
                let sequence = UInt64(round * 1500 + index + 1)
                released += gate.submit(["\(sequence)"], afterStore: sequence, audit: 0)
            }
            _ = gate.storeCommitted(through: UInt64(round * 1500 + 700))
            while let actions = gate.nextReady() { released += actions }
            _ = gate.submit(["extra \(round)"], afterStore: 0, audit: 0)
            _ = gate.storeCommitted(through: UInt64((round + 1) * 1500))
            while let actions = gate.nextReady() { released += actions }
        }
        var expected: [String] = []
        for round in 0..<5 {
            expected += (1...1500).map { "\(round * 1500 + $0)" } + ["extra \(round)"]
        }
        #expect(released == expected)
    }
}

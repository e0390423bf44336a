import Foundation
import MeshCore
import MeshCrypto
import Synchronization
import Testing

@testable import MeshStorage

/// The audit log on disk: group commit, reopening, torn tails, damage at start-up.
@Suite struct AuditLogTests {
    let directory = "/tmp/amaudit-" + Hex.encode(secureRandomBytes(5))
    let identity = NodeIdentity(name: "local")
    let peerB = NodeIdentity(name: "b").publicIdentity
    let peerC = NodeIdentity(name: "c").publicIdentity

    /// Appends and waits until the writer reports them durable.
    func appendDurably(_ log: AuditLog, _ entries: [(AuditEntry, PeerIdentity)]) async throws {
        let committed = Mutex<UInt64>(0)
        log.onProgress { progress in
            if case .committed(let through) = progress { committed.withLock { $0 = max($0, through) } }
        }
        var last: UInt64 = 0
        for (entry, peer) in entries { last = log.append(entry, peer: peer) }
        let deadline = ContinuousClock.now + .seconds(10)
        while committed.withLock({ $0 }) < last, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(committed.withLock { $0 } >= last)
    }

    func entries(_ count: Int, for peer: PeerIdentity) -> [(AuditEntry, PeerIdentity)] {
        (0..<count).map { number in
            (AuditEntry(.sent, time: Int64(number), session: 1, message: 1, task: TaskID(high: 1, low: UInt64(number)),
                        epoch: 1, digest: SHA256.hash([UInt8(number % 256)])), peer)
        }
    }

    /// More peers than open descriptors: the least recently written logs are closed and opened again when
    /// written, every chain continues, and no more than the cap is ever open (at start-up none is).
    @Test func manyPeersShareABoundedNumberOfDescriptors() async throws {
        defer { try? FileManager.default.removeItem(atPath: self.directory) }
        let peers = (0..<(AuditLog.maximumOpenLogs + 36)).map { NodeIdentity(name: "p\($0)").publicIdentity }
        do {
            let log = try AuditLog(directory: self.directory, identity: self.identity)
            for round in 0..<2 {
                try await self.appendDurably(log, peers.flatMap { self.entries(1 + round, for: $0) })
                #expect(log.openDescriptorCount <= AuditLog.maximumOpenLogs)
            }
        }
        let reopened = try AuditLog(directory: self.directory, identity: self.identity)
        #expect(reopened.recovery.logs == peers.count)
        #expect(reopened.openDescriptorCount == 0, "start-up verifies every log but keeps none open")
        try await self.appendDurably(reopened, self.entries(1, for: peers[0]))
        #expect(reopened.openDescriptorCount == 1)
        for log in AuditFolder.read(self.directory, keepRecords: true) {
            let report = try #require(log.report)
            #expect(report.problem == nil, "\(log.file): \(report.problem?.description ?? "")")
        }
        let first = try #require(AuditFolder.read(self.directory, keepRecords: true).first { $0.report?.header.peerName == "p0" }?.report)
        #expect(first.records.filter { $0.entry.event == .sent }.count == 4)
    }

    @Test func logsSurviveReopeningAndKeepTheirChain() async throws {
        defer { try? FileManager.default.removeItem(atPath: self.directory) }
        do {
            let log = try AuditLog(directory: self.directory, identity: self.identity)
            try await self.appendDurably(log, self.entries(300, for: self.peerB) + self.entries(5, for: self.peerC))
            log.requestCheckpoints()
            try await self.appendDurably(log, self.entries(1, for: self.peerC))
        }
        let reopened = try AuditLog(directory: self.directory, identity: self.identity)
        #expect(reopened.recovery.logs == 2)
        #expect(reopened.recovery.truncatedTails.isEmpty)
        try await self.appendDurably(reopened, self.entries(2, for: self.peerB))
        let logs = AuditFolder.read(self.directory, keepRecords: true)
        #expect(logs.count == 2)
        for log in logs {
            let report = try #require(log.report)
            #expect(report.problem == nil, "\(log.file): \(report.problem?.description ?? "")")
            #expect(report.header.local == self.identity.signingKey.publicKey)
        }
        let b = try #require(logs.first { $0.report?.header.peerName == "b" }?.report)
        // 302 entries and at least the checkpoint every 256 records.
        #expect(b.records.filter { $0.entry.event == .sent }.count == 302)
        #expect(b.checkpoints >= 1)
        let c = try #require(logs.first { $0.report?.header.peerName == "c" }?.report)
        #expect(c.checkpoints >= 1, "requestCheckpoints signs every log with unsigned records")
    }

    /// Issue 19: the cadence itself, not a shutdown checkpoint: 600 records with nobody asking sign exactly two.
    @Test func aCheckpointIsSignedEvery256RecordsWithoutBeingAsked() async throws {
        defer { try? FileManager.default.removeItem(atPath: self.directory) }
        let log = try AuditLog(directory: self.directory, identity: self.identity)
        try await self.appendDurably(log, self.entries(600, for: self.peerB))
        let b = try #require(AuditFolder.read(self.directory, keepRecords: true).first { $0.report?.header.peerName == "b" }?.report)
        #expect(b.problem == nil)
        #expect(b.checkpoints == 600 / AuditLog.checkpointEvery, "one per \(AuditLog.checkpointEvery) records")
        #expect(b.unsignedAtEnd == 600 % AuditLog.checkpointEvery, "the rest waits for the next")
    }

    /// A crash mid-append: the incomplete record is cut off at start-up, reported, and noted in the log itself.
    @Test func aTornTailIsCutOffAndReported() async throws {
        defer { try? FileManager.default.removeItem(atPath: self.directory) }
        do {
            let log = try AuditLog(directory: self.directory, identity: self.identity)
            try await self.appendDurably(log, self.entries(10, for: self.peerB))
        }
        let path = self.directory + "/\(self.peerB.nodeID).log"
        let handle = try #require(FileHandle(forWritingAtPath: path))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data([0, 0, 0, 90, 0xFF, 0xFF, 0xFF, 0xA5, 1, 2, 3]))
        try handle.close()

        let reopened = try AuditLog(directory: self.directory, identity: self.identity)
        #expect(reopened.recovery.truncatedTails.map(\.bytes) == [11])
        try await self.appendDurably(reopened, self.entries(1, for: self.peerB))
        let report = try #require(AuditFolder.read(self.directory, keepRecords: true).first?.report)
        #expect(report.problem == nil)
        #expect(report.incompleteTail == 0)
        #expect(report.records.contains { $0.entry.event == .tailTruncated })
        #expect(report.records.filter { $0.entry.event == .sent }.count == 11)
    }

    /// Damage that is not a torn tail stops the node with the file and the record, unless told to set it aside.
    @Test func aBrokenLogStopsStartUpUnlessSetAside() async throws {
        defer { try? FileManager.default.removeItem(atPath: self.directory) }
        do {
            let log = try AuditLog(directory: self.directory, identity: self.identity)
            try await self.appendDurably(log, self.entries(10, for: self.peerB))
        }
        let path = self.directory + "/\(self.peerB.nodeID).log"
        var bytes = try #require(FileManager.default.contents(atPath: path))
        bytes[bytes.count - 100] ^= 1
        try bytes.write(to: URL(fileURLWithPath: path))

        let error = #expect(throws: AuditLog.AuditError.self) {
            try AuditLog(directory: self.directory, identity: self.identity)
        }
        #expect(error?.description.contains(path) == true)
        #expect(error?.description.contains("record 9") == true, "\(error?.description ?? "")")

        let started = try AuditLog(directory: self.directory, identity: self.identity, setAsideBroken: true)
        #expect(started.recovery.setAside.count == 1)
        #expect(FileManager.default.fileExists(atPath: started.recovery.setAside[0].movedTo))
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func aLogWrittenByAnotherNodeIsRefused() async throws {
        defer { try? FileManager.default.removeItem(atPath: self.directory) }
        do {
            let log = try AuditLog(directory: self.directory, identity: NodeIdentity(name: "other"))
            try await self.appendDurably(log, self.entries(1, for: self.peerB))
        }
        let error = #expect(throws: AuditLog.AuditError.self) {
            try AuditLog(directory: self.directory, identity: self.identity)
        }
        #expect(error?.description.contains("another node") == true)
    }
}

import Foundation
public import MeshCore
import MeshControl
import MeshCrypto
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The node's audit logs: one append-only, hash-chained file per peer in `DIR/audit/<peer id>.log` (format:
/// ``AuditRecord``, ``AuditReader``).
///
/// Appends are group-committed like the task store: callers queue entries and get a sequence number; one writer
/// thread appends everything queued so far (one `write` and one `fdatasync` per file touched) while new entries
/// queue behind it, and signs a checkpoint every ``checkpointEvery`` records or when asked (every few seconds). An
/// entry is acknowledged once ``Progress/committed(through:)`` passes its sequence number. A failed append (a full
/// disk) cuts the file back to its last durable length, keeps the entries queued and retries; nothing is dropped.
package final class AuditLog: Sendable {
    package struct AuditError: Error, CustomStringConvertible {
        package let description: String
    }

    package enum Progress: Sendable {
        case committed(through: UInt64)
        case failed(AuditError)
    }

    /// What opening the logs found and did, for the node's log.
    package struct Recovery: Sendable {
        package var logs = 0
        package var records: UInt64 = 0
        /// Incomplete records cut off the end of a file: (file, bytes).
        package var truncatedTails: [(file: String, bytes: Int)] = []
        /// Broken logs moved aside because the node was told to start anyway: (file, new name, why).
        package var setAside: [(file: String, movedTo: String, why: String)] = []
    }

    package static let checkpointEvery = 256

    /// What appending has cost so far, for measuring the audit's share of a task (`GET /v1/node`).
    package struct Statistics: Sendable {
        package var records: UInt64 = 0
        package var bytes: UInt64 = 0
        /// `fdatasync` calls (one per file per batch).
        package var syncs: UInt64 = 0
        /// Time the writer thread spent building, hashing, signing, writing and syncing.
        package var busy: Duration = .zero
    }

    private struct Pending: Sendable {
        let peer: PeerIdentity
        let entry: AuditEntry
        let sequence: UInt64
    }

    /// Entries queued since the last append, and whether every log is to sign a checkpoint.
    private struct Appends: CommitBatch {
        var entries: [Pending] = []
        var checkpoint = false

        var isEmpty: Bool { self.entries.isEmpty && !self.checkpoint }
        var count: Int { self.entries.count }

        mutating func putBack(_ unwritten: Appends) {
            self.entries = unwritten.entries + self.entries
            self.checkpoint = self.checkpoint || unwritten.checkpoint
        }
    }

    private struct OpenLog {
        var chain: AuditChain
        /// -1 while the file is closed (only the most recently used logs keep a descriptor).
        var descriptor: Int32 = -1
        var durableLength: Int
        var lastUsed: UInt64 = 0
    }

    /// Every log this node keeps, and how many of them hold an open descriptor.
    private struct Logs {
        var byPeer: [NodeID: OpenLog] = [:]
        var openCount = 0
        var uses: UInt64 = 0
    }

    /// At most this many logs keep a descriptor open; others are opened again when written. A node that is offered
    /// handshakes by thousands of identities must not run out of descriptors.
    package static let maximumOpenLogs = 64

    package let directory: String
    private let signingKey: Ed25519SigningKey
    /// Appends run on its own thread, or (`.process` durability) where the caller says (the node's event loop).
    private let commits: GroupCommitWriter<Appends>
    /// `.process` durability: logs written since the last background sync.
    private let unsynced = Mutex<Set<NodeID>>([])
    /// Changed only by appends (on the commit executor) and in `init`; read by the background sync.
    private let logs: Mutex<Logs>
    private let counters = Mutex(Statistics())
    private let durability: Durability

    package var statistics: Statistics { self.counters.withLock { $0 } }

    /// Opens every log in `directory` (creating it if needed), verifying each one. An incomplete record at the end of
    /// a file is cut off and reported; any other damage stops the node with the file and the record's index, unless
    /// `setAsideBroken` is true, in which case the broken file is renamed and a new log started. With `.process`
    /// durability appends are not synced one by one (a background sync follows within the interval), so they are
    /// cheap enough to run where the caller says (`commitOn`, the node's event loop).
    package init(
        directory: String, identity: NodeIdentity, setAsideBroken: Bool = false,
        durability: Durability = .fsync, commitOn: CommitExecutor? = nil, retryDelay: Duration = .seconds(1)
    ) throws(AuditError) {
        self.directory = directory
        self.durability = durability
        let audit = WeakBox<AuditLog>()
        self.commits = GroupCommitWriter(label: "agentmesh.audit", executor: commitOn, retryDelay: retryDelay) { batch in
            audit.value?.commit(batch)
        }
        self.signingKey = identity.signingKey
        do {
            try FileSystem.createDirectory(directory, mode: 0o700)
        } catch {
            throw AuditError(description: "cannot create the audit folder: \(error)")
        }
        var opened: [NodeID: OpenLog] = [:]
        var recovery = Recovery()
        var tailRecords: [(PeerIdentity, AuditEntry)] = []
        for file in Self.logFiles(in: directory) {
            let path = directory + "/" + file
            do throws(AuditError) {
                let report = try Self.verifiedReport(path: path, localKey: identity.signingKey.publicKey)
                if report.incompleteTail > 0 {
                    let descriptor = open(path, O_WRONLY | O_CLOEXEC)
                    guard descriptor >= 0 else {
                        throw AuditError(description: "cannot open \(path) to repair it: \(FileSystem.lastError())")
                    }
                    defer { close(descriptor) }
                    guard ftruncate(descriptor, off_t(report.validLength)) == 0, fsync(descriptor) == 0 else {
                        throw AuditError(description: "cannot cut the incomplete tail off \(path): \(FileSystem.lastError())")
                    }
                    recovery.truncatedTails.append((path, report.incompleteTail))
                    let peer = PeerIdentity(name: report.header.peerName, identityKey: report.header.peer, staticKey: [])
                    tailRecords.append((peer, AuditEntry(
                        .tailTruncated, time: Self.wallClockMilliseconds(),
                        detail: "recovery cut \(report.incompleteTail) bytes of an incomplete record at byte \(report.validLength)")))
                }
                opened[report.header.peerID] = OpenLog(chain: AuditChain(resuming: report), durableLength: report.validLength)
                recovery.logs += 1
                recovery.records += report.recordCount
            } catch {
                guard setAsideBroken else { throw error }
                let movedTo = path + ".broken-\(Int(Date().timeIntervalSince1970))"
                guard rename(path, movedTo) == 0 else {
                    throw AuditError(description: "cannot move the broken log \(path) aside: \(FileSystem.lastError())")
                }
                recovery.setAside.append((path, movedTo, error.description))
            }
        }
        self.logs = Mutex(Logs(byPeer: opened))
        self.recovery = recovery
        audit.value = self
        for (peer, entry) in tailRecords { self.append(entry, peer: peer) }
    }

    package let recovery: Recovery

    deinit {
        self.logs.withLock { logs in for log in logs.byPeer.values where log.descriptor >= 0 { close(log.descriptor) } }
    }

    /// Called on the commit executor after every append attempt.
    /// Called after each commit that succeeded: how many records it wrote and how long it took.
    package func onCommit(_ observer: @escaping @Sendable (Int, Duration) -> Void) { self.commits.onCommit(observer) }

    package func onProgress(_ handler: @escaping @Sendable (Progress) -> Void) {
        self.commits.onProgress { progress in
            switch progress {
            case .committed(let through): handler(.committed(through: through))
            case .failed(let why): handler(.failed(AuditError(description: why)))
            }
        }
    }

    package var lastQueued: UInt64 { self.commits.lastQueued }

    /// Queues one entry for `peer`'s log; returns its sequence number.
    @discardableResult
    package func append(_ entry: AuditEntry, peer: PeerIdentity) -> UInt64 {
        self.commits.enqueue { batch, sequence in
            batch.entries.append(Pending(peer: peer, entry: entry, sequence: sequence))
        }
    }

    /// Signs a checkpoint in every log with records not yet covered by one. The request takes a sequence number
    /// like an entry, so waiting for ``lastQueued`` waits for the checkpoints too.
    package func requestCheckpoints() {
        self.commits.enqueue { batch, _ in batch.checkpoint = true }
    }

    /// Appends a batch; on failure, what was not written goes back for the retry.
    private func commit(_ batch: Appends) -> (error: String, unwritten: Appends)? {
        let started = ContinuousClock.now
        let failure = self.write(batch.entries, checkpointAll: batch.checkpoint)
        let elapsed = ContinuousClock.now - started
        self.counters.withLock { $0.busy += elapsed }
        guard let failure else { return nil }
        return (failure.error.description, Appends(entries: failure.unwritten, checkpoint: batch.checkpoint))
    }

    private struct WriteFailure {
        let error: AuditError
        let unwritten: [Pending]
    }

    /// Appends a batch, one write and one fdatasync per file. On failure, the failing file is cut back to its
    /// durable length and every entry not yet durable is returned.
    private func write(_ batch: [Pending], checkpointAll: Bool) -> WriteFailure? {
        var order: [NodeID] = []
        var byPeer: [NodeID: [Pending]] = [:]
        for pending in batch {
            let id = pending.peer.nodeID
            if byPeer[id] == nil { order.append(id) }
            byPeer[id, default: []].append(pending)
        }
        if checkpointAll {
            for id in self.logs.withLock({ Array($0.byPeer.keys) }) where byPeer[id] == nil {
                order.append(id)
                byPeer[id] = []
            }
        }
        for (position, id) in order.enumerated() {
            let entries = byPeer[id] ?? []
            do {
                try self.appendToLog(id, peer: entries.first?.peer, entries: entries.map(\.entry), checkpoint: checkpointAll)
            } catch {
                let unwritten = order[position...].flatMap { byPeer[$0] ?? [] }.sorted { $0.sequence < $1.sequence }
                return WriteFailure(error: error, unwritten: unwritten)
            }
        }
        return nil
    }

    private func appendToLog(_ id: NodeID, peer: PeerIdentity?, entries: [AuditEntry], checkpoint: Bool) throws(AuditError) {
        var log: OpenLog
        if let existing = self.logs.withLock({ $0.byPeer[id] }) {
            log = existing
        } else {
            guard let peer else { return }
            log = try self.createLog(for: peer)
            self.logs.withLock { $0.byPeer[id] = log }
        }
        var chain = log.chain
        var bytes: [UInt8] = []
        for entry in entries {
            bytes += chain.append(entry).framed()
            if chain.unsigned >= Self.checkpointEvery {
                bytes += chain.checkpoint(time: Self.wallClockMilliseconds(), signingKey: self.signingKey).framed()
            }
        }
        if checkpoint, chain.unsigned > 0 {
            bytes += chain.checkpoint(time: Self.wallClockMilliseconds(), signingKey: self.signingKey).framed()
        }
        guard !bytes.isEmpty else { return }
        let path = self.path(for: id)
        log.descriptor = try self.openDescriptor(for: id)
        let synced = self.durability == .fsync
        if let why = Self.writeAll(bytes, to: log.descriptor)
            ?? (!synced || fdatasync(log.descriptor) == 0 ? nil : FileSystem.lastError())
        {
            // Whatever part reached the file is not acknowledged: cut it off so the retry appends at a clean end.
            _ = ftruncate(log.descriptor, off_t(log.durableLength))
            throw AuditError(description: "cannot append to \(path): \(why)")
        }
        self.counters.withLock { counters in
            counters.records += chain.nextIndex - log.chain.nextIndex
            counters.bytes += UInt64(bytes.count)
            if synced { counters.syncs += 1 }
        }
        log.chain = chain
        log.durableLength += bytes.count
        self.logs.withLock { $0.byPeer[id] = log }
        if !synced { self.syncInBackground(id) }
    }

    /// `.process` durability: records reach the kernel with each batch and the disk within the sync interval.
    private func syncInBackground(_ id: NodeID) {
        let schedule = self.unsynced.withLock { unsynced -> Bool in
            let isFirst = unsynced.isEmpty
            unsynced.insert(id)
            return isFirst
        }
        guard schedule else { return }
        self.commits.timers.asyncAfter(deadline: .now() + Durability.backgroundSyncInterval.seconds) {
            let ids = self.unsynced.withLock { unsynced -> Set<NodeID> in
                defer { unsynced = [] }
                return unsynced
            }
            // A log closed since was synced when it was closed.
            let descriptors = self.logs.withLock { logs in ids.compactMap { logs.byPeer[$0]?.descriptor }.filter { $0 >= 0 } }
            for descriptor in descriptors where fdatasync(descriptor) == 0 {
                self.counters.withLock { $0.syncs += 1 }
            }
        }
    }

    /// A new log starts as a complete header written atomically (temp file, fsync, rename, fsync of the folder).
    private func createLog(for peer: PeerIdentity) throws(AuditError) -> OpenLog {
        let header = AuditHeader(local: self.signingKey.publicKey, peer: peer.identityKey, peerName: peer.name)
        let path = self.path(for: peer.nodeID)
        let bytes = header.encoded()
        do {
            try FileSystem.writeAtomically(bytes, to: path, mode: 0o600)
        } catch {
            throw AuditError(description: "cannot create \(path): \(error)")
        }
        return OpenLog(chain: AuditChain(header: header), durableLength: bytes.count)
    }

    /// The log's descriptor, opened if needed; beyond ``maximumOpenLogs`` the least recently written log is closed
    /// (synced first when its writes are not yet on the disk).
    private func openDescriptor(for id: NodeID) throws(AuditError) -> Int32 {
        let path = self.path(for: id)
        let result: Result<Int32, AuditError> = self.logs.withLock { logs in
            guard var log = logs.byPeer[id] else { return .failure(AuditError(description: "no audit log for \(id)")) }
            logs.uses += 1
            log.lastUsed = logs.uses
            if log.descriptor < 0 {
                let descriptor = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
                guard descriptor >= 0 else {
                    return .failure(AuditError(description: "cannot open \(path): \(FileSystem.lastError())"))
                }
                log.descriptor = descriptor
                logs.openCount += 1
            }
            logs.byPeer[id] = log
            if logs.openCount > Self.maximumOpenLogs,
                let (victim, oldest) = logs.byPeer.filter({ $0.value.descriptor >= 0 && $0.key != id })
                    .min(by: { $0.value.lastUsed < $1.value.lastUsed })
            {
                if self.durability == .process { _ = fdatasync(oldest.descriptor) }
                close(oldest.descriptor)
                logs.byPeer[victim]?.descriptor = -1
                logs.openCount -= 1
            }
            return .success(log.descriptor)
        }
        return try result.get()
    }

    private static func writeAll(_ bytes: [UInt8], to descriptor: Int32) -> String? {
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + written, $0.count - written) }
            if result < 0 {
                if errno == EINTR { continue }
                return FileSystem.lastError()
            }
            written += result
        }
        return nil
    }

    /// Logs holding an open descriptor now (never more than ``maximumOpenLogs``).
    package var openDescriptorCount: Int { self.logs.withLock { $0.openCount } }

    /// Whether `peer` has a log (it was audited before, in this run or an earlier one).
    package func hasLog(for peer: NodeID) -> Bool { self.logs.withLock { $0.byPeer[peer] != nil } }

    package func path(for peer: NodeID) -> String { self.directory + "/\(peer).log" }

    package static func wallClockMilliseconds() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    // MARK: - Reading (also used offline by `agentmesh audit`)

    package static func logFiles(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
    }

    package static func readFile(_ path: String) throws(AuditError) -> [UInt8] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw AuditError(description: "cannot read \(path): \(FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")")
        }
        defer { try? handle.close() }
        do {
            return Array(try handle.readToEnd() ?? Data())
        } catch {
            throw AuditError(description: "cannot read \(path): \(error.localizedDescription)")
        }
    }

    /// Reads and verifies one log of this node; any damage other than an incomplete tail is an error naming the
    /// file and the first bad record.
    private static func verifiedReport(path: String, localKey: Ed25519PublicKey) throws(AuditError) -> AuditReader.Report {
        let bytes = try Self.readFile(path)
        let report: AuditReader.Report
        do {
            report = try AuditReader.read(bytes, keepRecords: false)
        } catch {
            throw AuditError(description: "the audit log \(path) is not usable: \(error)")
        }
        guard report.header.local == localKey else {
            throw AuditError(description: "the audit log \(path) was written by another node")
        }
        guard (path as NSString).lastPathComponent == "\(report.header.peerID).log" else {
            throw AuditError(description: "the audit log \(path) is about peer \(report.header.peerID), not the one its name says")
        }
        if let problem = report.problem {
            throw AuditError(description: "the audit log \(path) is broken at \(problem)")
        }
        return report
    }
}

/// Offline access to a home's audit logs, for `agentmesh audit` (it needs no running node, so an auditor can check
/// a copied home folder).
public enum AuditFolder {
    public struct Log: Sendable {
        public let file: String
        /// The verified prefix of the log, or nil when the file could not be read as a log at all.
        public let report: AuditReader.Report?
        public let error: String?
    }

    /// Reads every `*.log` in `directory`; a missing folder is an empty list.
    public static func read(_ directory: String, keepRecords: Bool) -> [Log] {
        AuditLog.logFiles(in: directory).map { file in
            let path = directory + "/" + file
            do {
                let bytes = try AuditLog.readFile(path)
                return Log(file: path, report: try AuditReader.read(bytes, keepRecords: keepRecords), error: nil)
            } catch {
                return Log(file: path, report: nil, error: "\(error)")
            }
        }
    }
}

package import Foundation
#if canImport(Glibc)
import Glibc
#endif
import GRDB
import MeshControl
package import MeshCore
import Synchronization

/// The node's durable task state in `DIR/node.sqlite`: the tasks clients submitted here and the tasks this node
/// accepted from peers, in SQLite (WAL, `synchronous=FULL`) through GRDB.
///
/// Writes are group-committed: callers queue changes and get a sequence number; one writer thread commits
/// everything queued so far in a single transaction (one fsync) while new changes queue behind it, so a burst of
/// tasks costs one sync per batch, not per task. The node releases whatever depended on a change (an accept, an
/// answer to a client) only once ``committedThrough`` has passed its sequence number. A failed commit (a full disk)
/// keeps its changes queued and is retried; nothing is dropped.
package final class TaskStore: Sendable {
    package enum Change: Sendable {
        case submitted(TaskSubmitter.SubmittedTask)
        case accepted(TaskRunner.AcceptedTask)
        case forgetSubmitted(TaskID)
        case forgetAccepted(TaskID)
        /// Every submitted task that finished before this time (core time) is dropped, with its events.
        case forgetFinished(before: Duration)
        /// Progress events of a submitted task (dropped with it).
        case taskEvents(TaskID, [TaskEvent])
        /// A JSON document of one kind (`workflow`, `event`, `callback`), replacing the one with its id.
        /// A document the node keeps beside tasks (a workflow run, an event, an idempotency key), by kind and id.
        case document(kind: String, id: DocumentID, body: [UInt8])
        case forgetDocument(kind: String, id: DocumentID)

        fileprivate var key: Key {
            switch self {
            case .submitted(let task): return Key(table: .submitted, id: task.id)
            case .forgetSubmitted(let id): return Key(table: .submitted, id: id)
            case .accepted(let task): return Key(table: .accepted, id: task.id)
            case .forgetAccepted(let id): return Key(table: .accepted, id: id)
            case .forgetFinished: return Key(table: .retention, id: TaskID(high: 0, low: 0))
            case .taskEvents(let id, let events): return Key(table: .events, id: id, index: events.first?.sequence ?? 0)
            case .document(let kind, let id, _), .forgetDocument(let kind, let id): return Key(table: .document(kind), id: TaskID(id))
            }
        }
    }

    /// A stored document's id: the id of what it holds (a workflow run's, an event's), whatever kind that is.
    package typealias DocumentID = MeshID<DocumentIDKind>

    package enum DocumentIDKind: MeshIDKind { package static let name = "a document" }

    package struct StoreError: Error, CustomStringConvertible {
        package let description: String
    }

    /// Commit progress, reported on the writer thread after every commit attempt.
    package enum Progress: Sendable {
        case committed(through: UInt64)
        case failed(StoreError)
    }

    fileprivate struct Key: Hashable {
        enum Table: Hashable { case submitted, accepted, retention, events, document(String) }
        let table: Table
        let id: TaskID
        var index = 0
    }

    /// The newest change per task, and the sequence number that ordered it.
    fileprivate struct Changes: CommitBatch {
        var byKey: [Key: (change: Change, order: UInt64)] = [:]

        var isEmpty: Bool { self.byKey.isEmpty }
        var count: Int { self.byKey.count }

        /// In the order they were queued.
        var ordered: [Change] { self.byKey.values.sorted { $0.order < $1.order }.map(\.change) }

        /// A change queued since the failed commit is newer than the one put back, and wins.
        mutating func putBack(_ unwritten: Changes) {
            for (key, value) in unwritten.byKey where self.byKey[key] == nil { self.byKey[key] = value }
        }
    }

    package let path: String
    private let database: DatabaseQueue
    private let timeBase: TimeBase
    /// Commits run on its own thread, or (`.process` durability) where the caller says (the node's event loop).
    private let commits: GroupCommitWriter<Changes>
    /// `.process` durability: the connection that checkpoints (and so syncs) in the background.
    private let checkpointer: DatabaseQueue?
    private let isSyncScheduled = Mutex(false)
    /// Bytes of progress events in the store, counting those queued to be written: what the node's budget for
    /// stored progress is measured against.
    private let eventBytes = Mutex(0)
    private let durability: Durability

    /// Core time (a duration since the node started) to and from wall-clock seconds, which outlive the process.
    package struct TimeBase: Sendable {
        package let origin: Date
        package init(origin: Date) { self.origin = origin }
        package func wall(_ time: Duration) -> Double { self.origin.timeIntervalSince1970 + time.seconds }
        package func core(_ wall: Double) -> Duration { .milliseconds(Int64(((wall - self.origin.timeIntervalSince1970) * 1000).rounded())) }
    }

    /// Opens (creating if needed) the store. `maximumPages` caps the database size, for testing a full disk;
    /// `beforeCommit` runs on the writer before each commit, for tests that hold a commit back.
    ///
    /// With `.process` durability a commit is done once SQLite has written it to the kernel (`synchronous = NORMAL`:
    /// the WAL is not synced per commit). A second connection checkpoints in the background, which syncs the WAL,
    /// without holding up commits; the committing connection never checkpoints itself. Such commits are cheap enough
    /// to run where the caller says (`commitOn`, the node's event loop), which saves two thread hand-offs each.
    package init(
        path: String, timeBase: TimeBase, durability: Durability = .fsync, commitOn: CommitExecutor? = nil,
        retryDelay: Duration = .seconds(1), maximumPages: Int? = nil, beforeCommit: (@Sendable () -> Void)? = nil
    ) throws(StoreError) {
        self.path = path
        self.timeBase = timeBase
        self.durability = durability
        let store = WeakBox<TaskStore>()
        self.commits = GroupCommitWriter(label: "agentmesh.task-store", executor: commitOn, retryDelay: retryDelay) { batch in
            beforeCommit?()
            return store.value?.commit(batch)
        }
        var configuration = Configuration()
        configuration.journalMode = .wal
        configuration.label = "agentmesh.tasks"
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in
            switch durability {
            case .fsync: try db.execute(sql: "PRAGMA synchronous = FULL")
            case .process: try db.execute(sql: "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0")
            }
            if let maximumPages { try db.execute(sql: "PRAGMA max_page_count = \(maximumPages)") }
        }
        // Task inputs and results are the users' data: the store and its WAL (SQLite gives it the store's mode) are
        // the node's user's alone.
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if descriptor >= 0 {
            fchmod(descriptor, 0o600)
            close(descriptor)
        }
        do {
            self.database = try DatabaseQueue(path: path, configuration: configuration)
            try Self.migrator.migrate(self.database)
            if durability == .process {
                var checkpointing = Configuration()
                checkpointing.label = "agentmesh.tasks.checkpoint"
                checkpointing.busyMode = .timeout(5)
                self.checkpointer = try DatabaseQueue(path: path, configuration: checkpointing)
            } else {
                self.checkpointer = nil
            }
        } catch {
            throw StoreError(description: "cannot open the task store \(path): \(Self.explain(error))")
        }
        store.value = self
        do {
            let stored = try self.database.read { db in
                try Int.fetchOne(db, sql: "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM task_event") ?? 0
            }
            self.eventBytes.withLock { $0 = stored }
        } catch {
            throw StoreError(description: "cannot read the task store \(path): \(Self.explain(error))")
        }
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("tasks-v1") { db in
            try db.execute(sql: """
                CREATE TABLE submitted_task (
                    id TEXT PRIMARY KEY NOT NULL,
                    capability TEXT NOT NULL,
                    input BLOB NOT NULL,
                    submitted_at REAL NOT NULL,
                    deadline REAL NOT NULL,
                    max_attempts INTEGER NOT NULL,
                    state TEXT NOT NULL,
                    attempts TEXT NOT NULL,
                    outcome_kind INTEGER,
                    outcome BLOB,
                    error TEXT,
                    finished_at REAL,
                    next_offer_at REAL,
                    failures INTEGER NOT NULL
                );
                CREATE TABLE accepted_task (
                    id TEXT PRIMARY KEY NOT NULL,
                    epoch INTEGER NOT NULL,
                    submitter TEXT NOT NULL,
                    capability TEXT NOT NULL,
                    input BLOB NOT NULL,
                    deadline REAL NOT NULL,
                    outcome_kind INTEGER,
                    outcome BLOB
                );
                """)
        }
        migrator.registerMigration("events-and-documents-v2") { db in
            try db.execute(sql: """
                CREATE TABLE task_event (
                    task_id TEXT NOT NULL,
                    sequence INTEGER NOT NULL,
                    epoch INTEGER NOT NULL,
                    time INTEGER NOT NULL,
                    data BLOB NOT NULL,
                    PRIMARY KEY (task_id, sequence)
                ) WITHOUT ROWID;
                CREATE TABLE document (
                    kind TEXT NOT NULL,
                    id TEXT NOT NULL,
                    body BLOB NOT NULL,
                    PRIMARY KEY (kind, id)
                ) WITHOUT ROWID;
                """)
        }
        migrator.registerMigration("conversations-and-questions-v3") { db in
            try db.execute(sql: """
                ALTER TABLE submitted_task ADD COLUMN context TEXT;
                ALTER TABLE submitted_task ADD COLUMN input_timeout REAL;
                ALTER TABLE submitted_task ADD COLUMN question BLOB;
                ALTER TABLE submitted_task ADD COLUMN reply BLOB;
                ALTER TABLE submitted_task ADD COLUMN asked_at REAL;
                ALTER TABLE accepted_task ADD COLUMN context TEXT;
                ALTER TABLE accepted_task ADD COLUMN input_timeout REAL;
                """)
        }
        migrator.registerMigration("trace-context-v4") { db in
            try db.execute(sql: """
                ALTER TABLE submitted_task ADD COLUMN traceparent TEXT;
                ALTER TABLE accepted_task ADD COLUMN traceparent TEXT;
                """)
        }
        // Large inputs and outputs live in files of their own beside the store, written once: SQLite rewrites a
        // whole row on every update (a 10 MiB input was written again with each of its task's state changes), and
        // writes everything twice (the WAL, then the database).
        migrator.registerMigration("payloads-apart-v5") { db in
            try db.execute(sql: """
                ALTER TABLE submitted_task ADD COLUMN input_apart INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE accepted_task ADD COLUMN input_apart INTEGER NOT NULL DEFAULT 0;
                """)
        }
        return migrator
    }

    /// Called after each commit that succeeded: how many changes it wrote and how long it took.
    package func onCommit(_ observer: @escaping @Sendable (Int, Duration) -> Void) { self.commits.onCommit(observer) }

    /// Called on the writer thread after each commit attempt.
    package func onProgress(_ handler: @escaping @Sendable (Progress) -> Void) {
        self.commits.onProgress { progress in
            switch progress {
            case .committed(let through): handler(.committed(through: through))
            case .failed(let why): handler(.failed(StoreError(description: why)))
            }
        }
    }

    // MARK: - Loading

    /// Everything stored, for ``TaskSubmitter/restore(_:now:)`` and ``TaskRunner/restore(_:now:)``. A row that
    /// cannot be read is an error naming it: the node refuses to start on a store it would silently misread.
    /// Of the finished submitted tasks, only the newest `finishedLimit` are loaded; the rest stay in the store
    /// (``submittedTask(_:)`` reads one).
    package func load(finishedLimit: Int = .max, finishedBytesLimit: Int = .max) throws(StoreError)
        -> (submitted: [TaskSubmitter.SubmittedTask], accepted: [TaskRunner.AcceptedTask])
    {
        do {
            return try self.database.read { db in
                let unfinished = try Row.fetchAll(db, sql: "SELECT * FROM submitted_task WHERE finished_at IS NULL")
                let finished = try Row.fetchAll(
                    db, sql: "SELECT * FROM submitted_task WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                    arguments: [Int64(clamping: finishedLimit)])
                // The newest finished tasks, as many as fit in the byte budget (their payloads are read whole).
                var kept: [TaskSubmitter.SubmittedTask] = [], bytes = 0
                for row in finished {
                    let task = try self.submittedTask(row, db)
                    bytes += task.input.count + { if case .success(let output)? = task.outcome { output.count } else { 0 } }()
                    guard bytes <= finishedBytesLimit || kept.isEmpty else { break }
                    kept.append(task)
                }
                let submitted = (try unfinished.map { try self.submittedTask($0, db) } + kept).sorted { $0.submittedAt < $1.submittedAt }
                let accepted = try Row.fetchAll(db, sql: "SELECT * FROM accepted_task ORDER BY id").map { try self.acceptedTask($0, db) }
                return (submitted, accepted)
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(description: "cannot read the task store \(self.path): \(Self.explain(error))")
        }
    }

    /// One submitted task, read from the store (a finished task no longer kept in memory); nil if there is none.
    package func submittedTask(_ id: TaskID) throws(StoreError) -> TaskSubmitter.SubmittedTask? {
        do {
            return try self.database.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM submitted_task WHERE id = ?", arguments: [id.description])
                    .map { try self.submittedTask($0, db) }
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(description: "cannot read the task store \(self.path): \(Self.explain(error))")
        }
    }

    /// A task's stored progress events, in order.
    package func taskEvents(_ id: TaskID) throws(StoreError) -> [TaskEvent] {
        do {
            return try self.database.read { db in
                try Row.fetchAll(
                    db, sql: "SELECT sequence, epoch, time, data FROM task_event WHERE task_id = ? ORDER BY sequence",
                    arguments: [id.description]
                ).map { row in
                    TaskEvent(sequence: row["sequence"], epoch: UInt32(clamping: row["epoch"] as Int64), time: row["time"],
                              data: Array(row["data"] as Data))
                }
            }
        } catch {
            throw StoreError(description: "cannot read the task store \(self.path): \(Self.explain(error))")
        }
    }

    /// Every stored document of one kind, by id.
    package func documents(kind: String) throws(StoreError) -> [(id: DocumentID, body: [UInt8])] {
        do {
            return try self.database.read { db in
                try Row.fetchAll(db, sql: "SELECT id, body FROM document WHERE kind = ? ORDER BY id", arguments: [kind])
                    .compactMap { row in DocumentID(hex: row["id"] as String).map { ($0, Array(row["body"] as Data)) } }
            }
        } catch {
            throw StoreError(description: "cannot read the task store \(self.path): \(Self.explain(error))")
        }
    }

    /// Ids of stored submitted tasks starting with `prefix` (lowercase hex), at most `limit`.
    package func submittedTaskIDs(prefix: String, limit: Int) throws(StoreError) -> [TaskID] {
        guard prefix.allSatisfy(\.isHexDigit) else { return [] }
        do {
            return try self.database.read { db in
                try String.fetchAll(
                    db, sql: "SELECT id FROM submitted_task WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                    arguments: [prefix, prefix + "g", limit])
            }.compactMap(TaskID.init(hex:))
        } catch {
            throw StoreError(description: "cannot read the task store \(self.path): \(Self.explain(error))")
        }
    }

    /// Inputs and outputs larger than this are stored in files in `PATH.payloads/` (`input_apart`, or a success
    /// with a NULL outcome, in the task's row says so).
    static let payloadInRowLimit = 64 * 1024

    var payloadDirectory: String { self.path + ".payloads" }

    private func payloadPath(_ id: String, _ part: String) -> String { self.payloadDirectory + "/\(id).\(part)" }

    /// The bytes of a payload kept apart.
    private func payload(_ id: String, _ part: String) throws -> [UInt8] {
        guard let bytes = FileManager.default.contents(atPath: self.payloadPath(id, part)) else {
            throw StoreError(description: "task \(id)'s \(part) is missing from \(self.payloadDirectory)")
        }
        return Array(bytes)
    }

    /// Writes a payload apart: to a temporary file, synced with `.fsync` durability, then renamed, so a crash never
    /// leaves half of one under its name. Inputs and a submitted task's output are written once (they never
    /// change); an executor's output is written again, as a later attempt may have run to another one.
    private func writePayload(_ bytes: [UInt8], _ id: TaskID, _ part: String) throws {
        let target = self.payloadPath(id.description, part)
        var info = stat()
        if part != "accepted-output", stat(target, &info) == 0, Int(info.st_size) == bytes.count { return }
        if mkdir(self.payloadDirectory, 0o700) != 0, errno != EEXIST { throw Self.payloadError(self.payloadDirectory) }
        let temporary = self.payloadDirectory + "/.\(id).\(part).partial"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw Self.payloadError(temporary) }
        defer { close(descriptor) }
        if self.durability == .fsync || bytes.count >= 1 << 20 {
            // With `.fsync` the bytes must reach the device before the step counts: they go there directly instead of
            // being copied into the page cache and flushed from it (a 10 MiB echo: 176 ms before, 120 after). A large
            // payload goes there directly with `.process` too: a page cache that must grow into memory the machine
            // has not touched yet (a new virtual machine) took 10 MiB at 440 MB/s here, `O_DIRECT` at 1.9 GB/s.
            let appender = DirectAppender(descriptor: descriptor, path: temporary, at: 0)
            do {
                try appender.append(bytes)
                try appender.flush()
            } catch {
                unlink(temporary)
                throw StoreError(description: error.description)
            }
        } else {
            try Self.writeBuffered(bytes, to: descriptor, path: temporary)
        }
        if self.durability == .fsync, fsync(descriptor) != 0 {
            let error = Self.payloadError(temporary)
            unlink(temporary)
            throw error
        }
        guard rename(temporary, target) == 0 else { throw Self.payloadError(target) }
    }

    /// Into the page cache, at most 1 MiB per call: one 10 MiB write to a new file took 12-25 ms here, ten of 1 MiB
    /// took 2.5.
    private static func writeBuffered(_ bytes: [UInt8], to descriptor: Int32, path: String) throws {
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + written, min($0.count - written, 1 << 20)) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else {
                let error = Self.payloadError(path)
                unlink(path)
                throw error
            }
            written += count
        }
    }

    private static func payloadError(_ path: String) -> StoreError {
        StoreError(description: "cannot write \(path): \(String(cString: strerror(errno)))")
    }

    private func removePayloads(_ id: String, side: String) {
        for part in ["input", "output"] { unlink(self.payloadPath(id, "\(side)-\(part)")) }
    }

    private func submittedTask(_ row: Row, _ db: Database) throws -> TaskSubmitter.SubmittedTask {
        let idText: String = row["id"]
        guard let id = TaskID(hex: idText), let state = TaskState(rawValue: row["state"]),
            let attempts = try? JSONDecoder().decode([StoredAttempt].self, from: Data((row["attempts"] as String).utf8))
        else { throw StoreError(description: "submitted task \(idText) in \(self.path) is corrupted") }
        let input = row["input_apart"] as Int == 1 ? try self.payload(idText, "submitted-input") : Array(row["input"] as Data)
        return TaskSubmitter.SubmittedTask(
            id: id, capability: row["capability"], input: input,
            submittedAt: self.timeBase.core(row["submitted_at"]), deadline: self.timeBase.core(row["deadline"]),
            maximumAttempts: row["max_attempts"], state: state,
            attempts: try attempts.map { try $0.attempt(self.timeBase, task: idText) },
            outcome: try self.outcome(row, part: "submitted-output", task: idText),
            error: row["error"], finishedAt: (row["finished_at"] as Double?).map(self.timeBase.core),
            nextOfferAt: (row["next_offer_at"] as Double?).map(self.timeBase.core), failures: row["failures"],
            options: Self.options(row), question: (row["question"] as Data?).map(Array.init),
            reply: (row["reply"] as Data?).map(Array.init), askedAt: (row["asked_at"] as Double?).map(self.timeBase.core))
    }

    private func acceptedTask(_ row: Row, _ db: Database) throws -> TaskRunner.AcceptedTask {
        let idText: String = row["id"]
        guard let id = TaskID(hex: idText), let submitter = NodeID(hex: row["submitter"] as String) else {
            throw StoreError(description: "accepted task \(idText) in \(self.path) is corrupted")
        }
        let input = row["input_apart"] as Int == 1 ? try self.payload(idText, "accepted-input") : Array(row["input"] as Data)
        return TaskRunner.AcceptedTask(
            id: id, epoch: row["epoch"], submitter: submitter, capability: row["capability"],
            input: input, deadline: self.timeBase.core(row["deadline"]),
            outcome: try self.outcome(row, part: "accepted-output", task: idText), options: Self.options(row))
    }

    private static func options(_ row: Row) -> TaskOptions {
        TaskOptions(
            context: row["context"], inputTimeout: (row["input_timeout"] as Double?).map { .milliseconds(Int64($0 * 1000)) },
            traceparent: row["traceparent"])
    }

    private func outcome(_ row: Row, part: String, task: String) throws -> TaskOutcome? {
        let kind: Int? = row["outcome_kind"], bytes: Data? = row["outcome"]
        if kind == 1, bytes == nil { return .success(try self.payload(task, part)) }
        return try Self.outcome(kind: kind, bytes: bytes, task: task)
    }

    private static func outcome(kind: Int?, bytes: Data?, task: String) throws -> TaskOutcome? {
        switch kind {
        case nil: return nil
        case 1?: return .success(Array(bytes ?? Data()))
        case 2?: return .failure(String(decoding: bytes ?? Data(), as: UTF8.self))
        case 3?: return .canceled
        case 4?: return .rejected(String(decoding: bytes ?? Data(), as: UTF8.self))
        case 5?: return .timedOut(String(decoding: bytes ?? Data(), as: UTF8.self))
        default: throw StoreError(description: "task \(task) has an unknown outcome kind \(kind!)")
        }
    }

    /// The input column's value: the bytes, or, for a large input, nil (the bytes are written apart, once).
    private func inputColumn(_ input: [UInt8], of id: TaskID, part: String) throws -> Data? {
        guard input.count > Self.payloadInRowLimit else { return Data(input) }
        try self.writePayload(input, id, part)
        return nil
    }

    /// The outcome columns; a large output is written apart (once per attempt), with NULL in the row.
    private func columns(_ outcome: TaskOutcome?, of id: TaskID, part: String) throws -> (Int?, Data?) {
        guard case .success(let bytes)? = outcome, bytes.count > Self.payloadInRowLimit else { return Self.columns(outcome) }
        try self.writePayload(bytes, id, part)
        return (1, nil)
    }

    private static func columns(_ outcome: TaskOutcome?) -> (Int?, Data?) {
        switch outcome {
        case nil: return (nil, nil)
        case .success(let bytes)?: return (1, Data(bytes))
        case .failure(let message)?: return (2, Data(message.utf8))
        case .canceled?: return (3, nil)
        case .rejected(let message)?: return (4, Data(message.utf8))
        case .timedOut(let message)?: return (5, Data(message.utf8))
        }
    }

    // MARK: - Writing

    /// Bytes of progress events stored or queued (see ``eventBytes``).
    package var storedEventBytes: Int { self.eventBytes.withLock { $0 } }

    /// Queues changes for the next commit; returns the sequence number to wait for.
    @discardableResult
    package func enqueue(_ changes: [Change]) -> UInt64 {
        guard !changes.isEmpty else { return self.commits.lastQueued }
        let events = changes.reduce(0) { total, change in
            guard case .taskEvents(_, let events) = change else { return total }
            return total + events.reduce(0) { $0 + $1.data.count }
        }
        if events > 0 { self.eventBytes.withLock { $0 += events } }
        return self.commits.enqueue(count: changes.count) { batch, first in
            for (offset, change) in changes.enumerated() { batch.byKey[change.key] = (change, first + UInt64(offset)) }
        }
    }

    /// The sequence number of the newest queued change (committed or not).
    package var lastQueued: UInt64 { self.commits.lastQueued }

    /// One transaction for the whole batch; on failure all of it goes back for the retry.
    fileprivate func commit(_ batch: Changes) -> (error: String, unwritten: Changes)? {
        var forgottenEventBytes = 0
        do {
            try self.database.write { db in
                forgottenEventBytes = 0
                for change in batch.ordered { try self.apply(change, in: db, forgottenEventBytes: &forgottenEventBytes) }
            }
        } catch {
            return (Self.explain(error), batch)
        }
        if forgottenEventBytes > 0 { self.eventBytes.withLock { $0 = max(0, $0 - forgottenEventBytes) } }
        if self.durability == .process { self.scheduleBackgroundSync() }
        return nil
    }

    /// `.process` durability: commits reach the kernel at once and the disk within the sync interval. A checkpoint
    /// syncs the WAL before copying it into the database (`synchronous = NORMAL`).
    private func scheduleBackgroundSync() {
        let schedule = self.isSyncScheduled.withLock { scheduled -> Bool in
            defer { scheduled = true }
            return !scheduled
        }
        guard schedule else { return }
        self.commits.timers.asyncAfter(deadline: .now() + Durability.backgroundSyncInterval.seconds) {
            self.isSyncScheduled.withLock { $0 = false }
            // A failure (a full disk) is reported by the next commit; the sync is tried again after it.
            _ = try? self.checkpointer?.writeWithoutTransaction { try $0.execute(sql: "PRAGMA wal_checkpoint(PASSIVE)") }
        }
    }

    private func apply(_ change: Change, in db: Database, forgottenEventBytes: inout Int) throws {
        switch change {
        case .submitted(let task):
            let (kind, outcome) = try self.columns(task.outcome, of: task.id, part: "submitted-output")
            let input = try self.inputColumn(task.input, of: task.id, part: "submitted-input")
            let attempts = StoredAttempt.json(task.attempts.map { StoredAttempt($0, self.timeBase) })
            // A task's first row is inserted whole; later changes rewrite only the columns that change (an upsert,
            // not a replace: no delete and re-insert of the row and its key).
            try db.cachedStatement(sql: """
                INSERT INTO submitted_task
                (id, capability, input, submitted_at, deadline, max_attempts, state, attempts, outcome_kind, outcome,
                 error, finished_at, next_offer_at, failures, context, input_timeout, question, reply, asked_at, traceparent,
                 input_apart)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts,
                 outcome_kind = excluded.outcome_kind, outcome = excluded.outcome, error = excluded.error,
                 finished_at = excluded.finished_at, next_offer_at = excluded.next_offer_at, failures = excluded.failures,
                 deadline = excluded.deadline, question = excluded.question, reply = excluded.reply, asked_at = excluded.asked_at
                """).execute(arguments: [
                    task.id.description, task.capability, input ?? Data(), self.timeBase.wall(task.submittedAt),
                    self.timeBase.wall(task.deadline), task.maximumAttempts, task.state.rawValue,
                    String(decoding: attempts, as: UTF8.self), kind, outcome, task.error,
                    task.finishedAt.map(self.timeBase.wall), task.nextOfferAt.map(self.timeBase.wall), task.failures,
                    task.options.context, task.options.inputTimeout.map(\.seconds), task.question.map { Data($0) },
                    task.reply.map { Data($0) }, task.askedAt.map(self.timeBase.wall), task.options.traceparent,
                    input == nil ? 1 : 0,
                ])
        case .accepted(let task):
            let (kind, outcome) = try self.columns(task.outcome, of: task.id, part: "accepted-output")
            let input = try self.inputColumn(task.input, of: task.id, part: "accepted-input")
            try db.cachedStatement(sql: """
                INSERT INTO accepted_task
                (id, epoch, submitter, capability, input, deadline, outcome_kind, outcome, context, input_timeout, traceparent,
                 input_apart)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET epoch = excluded.epoch, deadline = excluded.deadline,
                 outcome_kind = excluded.outcome_kind, outcome = excluded.outcome
                """).execute(arguments: [
                    task.id.description, Int64(task.epoch), task.submitter.description, task.capability,
                    input ?? Data(), self.timeBase.wall(task.deadline), kind, outcome, task.options.context,
                    task.options.inputTimeout.map(\.seconds), task.options.traceparent, input == nil ? 1 : 0,
                ])
        case .forgetSubmitted(let id):
            try db.cachedStatement(sql: "DELETE FROM submitted_task WHERE id = ?").execute(arguments: [id.description])
            forgottenEventBytes += try Int.fetchOne(
                db, sql: "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM task_event WHERE task_id = ?", arguments: [id.description]) ?? 0
            try db.cachedStatement(sql: "DELETE FROM task_event WHERE task_id = ?").execute(arguments: [id.description])
            self.removePayloads(id.description, side: "submitted")
        case .forgetAccepted(let id):
            try db.cachedStatement(sql: "DELETE FROM accepted_task WHERE id = ?").execute(arguments: [id.description])
            self.removePayloads(id.description, side: "accepted")
        case .forgetFinished(let before):
            let apart = try String.fetchAll(db, sql: """
                SELECT id FROM submitted_task WHERE finished_at IS NOT NULL AND finished_at < ?
                AND (input_apart = 1 OR (outcome_kind = 1 AND outcome IS NULL))
                """, arguments: [self.timeBase.wall(before)])
            for id in apart { self.removePayloads(id, side: "submitted") }
            try db.cachedStatement(sql: "DELETE FROM submitted_task WHERE finished_at IS NOT NULL AND finished_at < ?")
                .execute(arguments: [self.timeBase.wall(before)])
            forgottenEventBytes += try Int.fetchOne(db, sql: """
                SELECT COALESCE(SUM(LENGTH(data)), 0) FROM task_event WHERE task_id NOT IN (SELECT id FROM submitted_task)
                """) ?? 0
            try db.cachedStatement(sql: "DELETE FROM task_event WHERE task_id NOT IN (SELECT id FROM submitted_task)")
                .execute()

        case .taskEvents(let id, let events):
            let insert = try db.cachedStatement(
                sql: "INSERT OR IGNORE INTO task_event (task_id, sequence, epoch, time, data) VALUES (?, ?, ?, ?, ?)")
            for event in events {
                try insert.execute(arguments: [id.description, event.sequence, Int64(event.epoch), event.time, Data(event.data)])
            }
        case .document(let kind, let id, let body):
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO document (kind, id, body) VALUES (?, ?, ?)")
                .execute(arguments: [kind, id.description, Data(body)])
        case .forgetDocument(let kind, let id):
            try db.cachedStatement(sql: "DELETE FROM document WHERE kind = ? AND id = ?").execute(arguments: [kind, id.description])
        }
    }

    /// SQLite's own words for the common failures, with what they mean for the node.
    private static func explain(_ error: any Error) -> String {
        guard let error = error as? DatabaseError else { return "\(error)" }
        switch error.resultCode {
        case .SQLITE_FULL: return "the disk (or the store's size limit) is full"
        case .SQLITE_CORRUPT, .SQLITE_NOTADB: return "the file is not a valid task store (\(error.message ?? "corrupt"))"
        case .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_CANTOPEN: return "no permission to write it (\(error.message ?? "read-only"))"
        case .SQLITE_BUSY, .SQLITE_LOCKED: return "another process holds it (is a node already running on this home?)"
        default: return error.message ?? "\(error)"
        }
    }
}

/// One attempt as JSON in the `attempts` column.
private struct StoredAttempt: Decodable {
    var epoch: UInt32
    var peer: String
    var offeredAt: Double
    var acceptedAt: Double?
    var endedAt: Double?
    var outcome: String?
    var detail: String?

    init(_ attempt: TaskSubmitter.Attempt, _ time: TaskStore.TimeBase) {
        self.epoch = attempt.epoch
        self.peer = attempt.peer.description
        self.offeredAt = time.wall(attempt.offeredAt)
        self.acceptedAt = attempt.acceptedAt.map(time.wall)
        self.endedAt = attempt.endedAt.map(time.wall)
        switch attempt.outcome {
        case nil: break
        case .declined(let reason)?: (self.outcome, self.detail) = ("declined", String(reason.rawValue))
        case .timedOut?: self.outcome = "timed_out"
        case .peerDied?: self.outcome = "peer_died"
        case .completed?: self.outcome = "completed"
        case .failed(let message)?: (self.outcome, self.detail) = ("failed", message)
        case .canceled?: self.outcome = "canceled"
        case .superseded?: self.outcome = "superseded"
        }
    }

    /// The `attempts` column, written by hand: this runs for every change of every task (see `JSONWriter`).
    static func json(_ attempts: [StoredAttempt]) -> [UInt8] {
        var json = JSONWriter(capacity: 160 * attempts.count + 2)
        json.beginArray()
        for attempt in attempts {
            json.beginObject()
            json.key("epoch")
            json.int(Int(attempt.epoch))
            json.key("peer")
            json.string(attempt.peer)
            json.key("offeredAt")
            json.double(attempt.offeredAt)
            if let acceptedAt = attempt.acceptedAt {
                json.key("acceptedAt")
                json.double(acceptedAt)
            }
            if let endedAt = attempt.endedAt {
                json.key("endedAt")
                json.double(endedAt)
            }
            if let outcome = attempt.outcome {
                json.key("outcome")
                json.string(outcome)
            }
            if let detail = attempt.detail {
                json.key("detail")
                json.string(detail)
            }
            json.endObject()
        }
        json.endArray()
        return json.bytes
    }

    func attempt(_ time: TaskStore.TimeBase, task: String) throws -> TaskSubmitter.Attempt {
        guard let peer = NodeID(hex: self.peer) else {
            throw TaskStore.StoreError(description: "task \(task) names a peer that is not a node id")
        }
        let outcome: TaskSubmitter.AttemptOutcome?
        switch (self.outcome, self.detail) {
        case (nil, _): outcome = nil
        case ("declined", let raw?):
            guard let reason = UInt8(raw).flatMap(DeclineReason.init(rawValue:)) else {
                throw TaskStore.StoreError(description: "task \(task) has an unknown decline reason \(raw)")
            }
            outcome = .declined(reason)
        case ("timed_out", _): outcome = .timedOut
        case ("peer_died", _): outcome = .peerDied
        case ("completed", _): outcome = .completed
        case ("failed", let message): outcome = .failed(message ?? "")
        case ("canceled", _): outcome = .canceled
        case ("superseded", _): outcome = .superseded
        case (let other?, _): throw TaskStore.StoreError(description: "task \(task) has an unknown attempt outcome \(other)")
        }
        return TaskSubmitter.Attempt(
            epoch: self.epoch, peer: peer, offeredAt: time.core(self.offeredAt), acceptedAt: self.acceptedAt.map(time.core),
            endedAt: self.endedAt.map(time.core), outcome: outcome)
    }
}

/// A reference to an owner that its writer must not keep alive (the writer's commit closure calls back into it).
final class WeakBox<Value: AnyObject & Sendable>: @unchecked Sendable {
    // Set once, right after the owner is initialised, before any commit can run.
    weak var value: Value?
}

/// A progress callback kept behind a reference. Stored directly in a `Mutex`, a closure read out with
/// `withLock { $0 }` came back wrapped in another pair of reabstraction thunks on every read (the inout write-back),
/// so each call went through all the earlier wrappers and a busy node slowed down call by call.
final class ProgressHandler<Progress>: Sendable {
    private let handler: @Sendable (Progress) -> Void

    init(_ handler: @escaping @Sendable (Progress) -> Void) { self.handler = handler }

    func call(_ progress: Progress) { self.handler(progress) }
}

import Foundation
import MeshCore
import Synchronization
import MeshTestKit
import Testing

@testable import MeshStorage

@Suite struct TaskStoreTests {
    static let timeBase = TaskStore.TimeBase(origin: Date(timeIntervalSince1970: 1_800_000_000))

    static func temporaryPath() -> String {
        let directory = "/tmp/am-store-" + UUID().uuidString.prefix(8)
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory + "/node.sqlite"
    }

    /// Waits (off the test's thread) until everything queued is committed, or reports the failure.
    static func commit(_ store: TaskStore, _ changes: [TaskStore.Change]) async -> TaskStore.Progress {
        let last = Mutex<TaskStore.Progress?>(nil)
        store.onProgress { progress in last.withLock { $0 = progress } }
        let sequence = store.enqueue(changes)
        // Generous: the whole suite runs at once on 2 cores, and a commit waits for fsync behind the others.
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            switch last.withLock({ $0 }) {
            case .committed(let through)? where through >= sequence: return .committed(through: through)
            case .failed(let error)?: return .failed(error)
            default: try? await Task.sleep(for: .milliseconds(2))
            }
        }
        return .failed(.init(description: "no commit within 60 s"))
    }

    /// Group commit, as README says: what is queued while a commit runs goes into the next one together, one
    /// transaction (and with fsync durability one sync) for the whole batch rather than one per change.
    @Test func changesQueuedDuringACommitAreCommittedTogetherInOneTransaction() async throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let held = DispatchSemaphore(value: 0)
        let first = Mutex(true)
        let store = try TaskStore(path: path, timeBase: Self.timeBase, durability: .fsync, beforeCommit: {
            // The first commit waits until the rest are queued behind it.
            if first.withLock({ let was = $0; $0 = false; return was }) { held.wait() }
        })
        let commits = Mutex<[Int]>([])
        store.onCommit { changes, _ in commits.withLock { $0.append(changes) } }
        func document(_ number: UInt64) -> TaskStore.Change {
            .document(kind: "note", id: .init(TaskID(high: 3, low: number)), body: Array("{\"n\":\(number)}".utf8))
        }
        _ = store.enqueue([document(0)])
        for number in 1...200 { _ = store.enqueue([document(UInt64(number))]) }
        held.signal()
        let deadline = ContinuousClock.now + .seconds(60)
        while commits.withLock({ $0.reduce(0, +) }) < 201, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        // The writer takes what is queued when it starts (the first few, or all if it started late), then everything
        // that came while the first commit was held.
        let sizes = commits.withLock { $0 }
        #expect((1...2).contains(sizes.count) && sizes.reduce(0, +) == 201, "at most two commits for 201 changes, not one each: \(sizes)")
        #expect(try store.documents(kind: "note").count == 201)
    }

    @Test func everyFieldSurvivesAReopen() async throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let peer = NodeID(high: 0xabc, low: 0xdef)
        let submitted = TaskSubmitter.SubmittedTask(
            id: TaskID(high: 1, low: 2), capability: "summarize", input: Array("{\"text\":\"é\"}".utf8),
            submittedAt: .milliseconds(1_500), deadline: .milliseconds(61_500), maximumAttempts: 4, state: .failed,
            attempts: [
                .init(epoch: 1, peer: peer, offeredAt: .milliseconds(1_600), endedAt: .milliseconds(1_700), outcome: .declined(.busy)),
                .init(epoch: 2, peer: peer, offeredAt: .milliseconds(1_800), acceptedAt: .milliseconds(1_810),
                      endedAt: .milliseconds(2_000), outcome: .failed("exit 3")),
            ],
            outcome: .failure("exit 3"), error: "exit 3", finishedAt: .milliseconds(2_000), nextOfferAt: nil, failures: 1)
        let waiting = TaskSubmitter.SubmittedTask(
            id: TaskID(high: 3, low: 4), capability: "echo", input: [], submittedAt: .milliseconds(-5_000),
            deadline: .milliseconds(9_000), maximumAttempts: 1, state: .submitted, attempts: [], outcome: nil, error: nil,
            finishedAt: nil, nextOfferAt: .milliseconds(3_000), failures: 0)
        let accepted = TaskRunner.AcceptedTask(
            id: TaskID(high: 5, low: 6), epoch: 7, submitter: peer, capability: "echo", input: [0, 1, 2],
            deadline: .milliseconds(30_000), outcome: .success(Array("{\"ok\":1}".utf8)))
        let canceled = TaskRunner.AcceptedTask(
            id: TaskID(high: 7, low: 8), epoch: 1, submitter: peer, capability: "echo", input: [],
            deadline: .milliseconds(30_000), outcome: .canceled)
        let rejected = TaskRunner.AcceptedTask(
            id: TaskID(high: 7, low: 9), epoch: 2, submitter: peer, capability: "echo", input: [],
            deadline: .milliseconds(30_000), outcome: .rejected("exit 65: no such field"))
        let timedOut = TaskRunner.AcceptedTask(
            id: TaskID(high: 7, low: 10), epoch: 3, submitter: peer, capability: "echo", input: [],
            deadline: .milliseconds(30_000), outcome: .timedOut("stopped at the task's deadline"))
        let forgotten = TaskRunner.AcceptedTask(
            id: TaskID(high: 9, low: 9), epoch: 1, submitter: peer, capability: "echo", input: [],
            deadline: .milliseconds(30_000), outcome: nil)

        let store = try TaskStore(path: path, timeBase: Self.timeBase)
        guard case .committed = await Self.commit(store, [
            .submitted(waiting), .submitted(submitted), .accepted(accepted), .accepted(canceled), .accepted(rejected),
            .accepted(timedOut), .accepted(forgotten),
            .forgetAccepted(forgotten.id),
        ]) else { Issue.record("the commit failed"); return }

        let reopened = try TaskStore(path: path, timeBase: Self.timeBase).load()
        #expect(reopened.submitted == [waiting, submitted])
        #expect(reopened.accepted == [accepted, canceled, rejected, timedOut])
    }

    /// Inputs and outputs over 64 KiB are kept apart from their task's row (written once, not with every state
    /// change) and come back whole; forgetting the task drops them.
    @Test func largePayloadsAreStoredApartAndSurviveAReopen() async throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let peer = NodeID(high: 0xabc, low: 0xdef)
        let big = Array(("\"" + String(repeating: "x", count: 200_000) + "\"").utf8)
        let running = TaskSubmitter.SubmittedTask(
            id: TaskID(high: 1, low: 1), capability: "echo", input: big, submittedAt: .zero, deadline: .seconds(60),
            maximumAttempts: 1, state: .submitted, attempts: [], outcome: nil, error: nil, finishedAt: nil, nextOfferAt: nil, failures: 0)
        let done = TaskSubmitter.SubmittedTask(
            id: TaskID(high: 1, low: 1), capability: "echo", input: big, submittedAt: .zero, deadline: .seconds(60),
            maximumAttempts: 1, state: .completed, attempts: [], outcome: .success(big + [0x20]), error: nil,
            finishedAt: .seconds(1), nextOfferAt: nil, failures: 0)
        let accepted = TaskRunner.AcceptedTask(
            id: TaskID(high: 1, low: 1), epoch: 1, submitter: peer, capability: "echo", input: big,
            deadline: .seconds(60), outcome: .success(big))
        let store = try TaskStore(path: path, timeBase: Self.timeBase)
        guard case .committed = await Self.commit(store, [.submitted(running), .submitted(done), .accepted(accepted)]) else {
            Issue.record("the commit failed")
            return
        }
        let reopened = try TaskStore(path: path, timeBase: Self.timeBase)
        #expect(try reopened.load().submitted == [done])
        #expect(try reopened.load().accepted == [accepted])
        // A byte budget for finished tasks loads the newest that fit (at least one).
        let later = TaskSubmitter.SubmittedTask(
            id: TaskID(high: 2, low: 2), capability: "echo", input: big, submittedAt: .seconds(2), deadline: .seconds(60),
            maximumAttempts: 1, state: .completed, attempts: [], outcome: .success(big), error: nil,
            finishedAt: .seconds(3), nextOfferAt: nil, failures: 0)
        guard case .committed = await Self.commit(reopened, [.submitted(later)]) else {
            Issue.record("the commit failed")
            return
        }
        #expect(try reopened.load(finishedBytesLimit: 500_000).submitted == [later], "the newest only: two would be 800 kB")
        #expect(try reopened.load(finishedBytesLimit: 1_000_000).submitted == [done, later])
        guard case .committed = await Self.commit(reopened, [.forgetSubmitted(later.id)]) else {
            Issue.record("the commit failed")
            return
        }
        guard case .committed = await Self.commit(reopened, [.forgetAccepted(accepted.id), .forgetSubmitted(done.id)]) else {
            Issue.record("the commit failed")
            return
        }
        let emptied = try TaskStore(path: path, timeBase: Self.timeBase).load()
        #expect(emptied.submitted.isEmpty && emptied.accepted.isEmpty)
    }

    /// Finished tasks beyond what a node keeps in memory stay readable one by one; retention drops only finished
    /// tasks older than its cut, and never an unfinished one.
    @Test func finishedTasksAreLoadedNewestFirstUpToALimitAndDroppedByRetention() async throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let store = try TaskStore(path: path, timeBase: Self.timeBase, durability: .process)
        func task(_ n: UInt64, finishedAt: Duration?) -> TaskSubmitter.SubmittedTask {
            TaskSubmitter.SubmittedTask(
                id: TaskID(high: 7, low: n), capability: "echo", input: [], submittedAt: .seconds(Int64(n)),
                deadline: .seconds(1_000), maximumAttempts: 1, state: finishedAt == nil ? .submitted : .completed,
                attempts: [], outcome: finishedAt == nil ? nil : .success([0x31]), error: nil, finishedAt: finishedAt,
                nextOfferAt: nil, failures: 0)
        }
        let finished = (1...5).map { task($0, finishedAt: .seconds(Int64(10 * $0))) }
        let waiting = task(9, finishedAt: nil)
        _ = await Self.commit(store, (finished + [waiting]).map { .submitted($0) })

        let loaded = try store.load(finishedLimit: 2).submitted.map(\.id)
        #expect(Set(loaded) == Set([waiting.id, finished[3].id, finished[4].id]))
        #expect(try store.submittedTask(finished[0].id)?.state == .completed)
        #expect(try store.submittedTask(TaskID(high: 1, low: 1)) == nil)

        // Progress counts against the node's budget from when it is queued until its task is forgotten.
        let event = { (sequence: Int) in TaskEvent(sequence: sequence, epoch: 1, time: 0, data: Array(repeating: 0x31, count: 100)) }
        _ = await Self.commit(store, [.taskEvents(finished[0].id, [event(1), event(2)]), .taskEvents(waiting.id, [event(1)])])
        #expect(store.storedEventBytes == 300)
        _ = await Self.commit(store, [.forgetFinished(before: .seconds(35))])
        let left = try store.load().submitted.map(\.id)
        #expect(Set(left) == Set([waiting.id, finished[3].id, finished[4].id]))
        #expect(store.storedEventBytes == 100, "the forgotten task's 200 bytes went with it")
        #expect(try TaskStore(path: path, timeBase: Self.timeBase).storedEventBytes == 100, "counted again on opening")
        _ = await Self.commit(store, [.forgetSubmitted(waiting.id)])
        #expect(store.storedEventBytes == 0)
    }

    /// The store holds the users' inputs and results: only the node's user may read it, WAL included.
    @Test func theStoreAndItsWALAreTheOwnersAlone() async throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let previous = umask(0o022)
        defer { umask(previous) }
        let store = try TaskStore(path: path, timeBase: Self.timeBase)
        _ = await Self.commit(store, [.forgetSubmitted(TaskID(high: 1, low: 1))])
        for file in [path, path + "-wal"] {
            let mode = try #require(try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int)
            #expect(mode & 0o077 == 0, "\(file) is mode \(String(mode, radix: 8))")
        }
    }

    @Test func aFileThatIsNotAStoreIsNamedAndRefused() throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try TaskStore(path: path, timeBase: Self.timeBase)
        } throws: { error in
            let text = "\(error)"
            return text.contains(path) && text.contains("not a valid task store")
        }
    }

    @Test func aRowThatCannotBeReadStopsTheLoadAndNamesTheTask() async throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let store = try TaskStore(path: path, timeBase: Self.timeBase)
        let task = TaskSubmitter.SubmittedTask(
            id: TaskID(high: 1, low: 1), capability: "echo", input: [], submittedAt: .zero, deadline: .seconds(1),
            maximumAttempts: 1, state: .submitted, attempts: [], outcome: nil, error: nil, finishedAt: nil,
            nextOfferAt: nil, failures: 0)
        _ = await Self.commit(store, [.submitted(task)])
        let corrupt = try SpawnedProcess.run("python3", ["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE submitted_task SET state='dancing'\"); c.commit()", path])
        #expect(corrupt.status == 0, "\(corrupt.stderr)")
        #expect {
            _ = try TaskStore(path: path, timeBase: Self.timeBase).load()
        } throws: { error in "\(error)".contains("submitted task \(task.id) in \(path) is corrupted") }
    }

    @Test func aFullStoreFailsTheCommitAndKeepsTheChangeForTheRetry() async throws {
        let path = Self.temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let store = try TaskStore(path: path, timeBase: Self.timeBase, retryDelay: .milliseconds(50), maximumPages: 12)
        let big = TaskRunner.AcceptedTask(
            id: TaskID(high: 2, low: 2), epoch: 1, submitter: NodeID(high: 1, low: 1), capability: "echo",
            input: Array(repeating: 7, count: 60_000), deadline: .seconds(5), outcome: nil)
        guard case .failed(let error) = await Self.commit(store, [.accepted(big)]) else {
            Issue.record("a 60 kB row (kept in the row: it is under the payload limit) fit in 12 pages")
            return
        }
        #expect(error.description.contains("is full"))
        // Giving the task back replaces the queued write: the retry commits and the store is usable again.
        guard case .committed = await Self.commit(store, [.forgetAccepted(big.id)]) else {
            Issue.record("the retry did not commit")
            return
        }
        #expect(try store.load().accepted.isEmpty)
    }
}

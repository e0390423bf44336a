import Dispatch
import MeshCore
import Synchronization

/// What a group-commit writer queues between commits.
protocol CommitBatch: Sendable {
    init()
    var isEmpty: Bool { get }
    /// Changes in the batch (for the batch-size metric).
    var count: Int { get }
    /// After a failed commit: `unwritten` (what it did not write) goes back ahead of `self` (what was queued
    /// meanwhile).
    mutating func putBack(_ unwritten: Self)
}

/// How a writer's commits go, reported after each attempt, in order.
enum CommitProgress: Sendable {
    case committed(through: UInt64)
    case failed(String)
}

/// Group commit, shared by the task store and the audit log: callers queue changes and get sequence numbers; one
/// commit at a time takes everything queued so far (one transaction, one sync) while new changes queue behind it, so
/// a burst costs one sync per batch. A failed commit (a full disk) puts back what it did not write and is tried
/// again after a delay; nothing is dropped. Commits run on the given executor: a thread of the writer's own, or the
/// node's event loop when a commit costs no sync.
final class GroupCommitWriter<Batch: CommitBatch>: Sendable {
    /// Writes a batch; on failure returns why and what of the batch was not written.
    typealias Commit = @Sendable (Batch) -> (error: String, unwritten: Batch)?

    private struct State {
        var pending = Batch()
        var lastQueued: UInt64 = 0
        var isWriting = false
        var isRetryScheduled = false
    }

    private let state = Mutex(State())
    private let commit: Commit
    private let executor: CommitExecutor
    /// For retries (and any delayed work of the owner): never the commit executor, which may be an event loop.
    let timers: DispatchQueue
    private let retryDelay: Duration
    private let progressHandler = Mutex<ProgressHandler<CommitProgress>?>(nil)
    /// Boxed like the progress handler: a function type as a Mutex's own value is re-abstracted on every `withLock`
    /// and came back wrapped in one more thunk each time (measured: 1.3 ms a task after 30,000 commits).
    private let commitObserver = Mutex<ProgressHandler<(changes: Int, took: Duration)>?>(nil)

    init(label: String, executor: CommitExecutor?, retryDelay: Duration, commit: @escaping Commit) {
        let timers = DispatchQueue(label: label)
        self.timers = timers
        self.executor = executor ?? { work in timers.async(execute: work) }
        self.retryDelay = retryDelay
        self.commit = commit
    }

    /// Called after every commit attempt, on the commit executor.
    func onProgress(_ handler: @escaping @Sendable (CommitProgress) -> Void) {
        self.progressHandler.withLock { $0 = ProgressHandler(handler) }
    }

    /// Called after every commit that succeeded, with its size and how long it took (metrics).
    func onCommit(_ observer: @escaping @Sendable (_ changes: Int, _ took: Duration) -> Void) {
        self.commitObserver.withLock { $0 = ProgressHandler(observer) }
    }

    /// The sequence number of the newest queued change (committed or not).
    var lastQueued: UInt64 { self.state.withLock { $0.lastQueued } }

    /// Queues `count` changes: `change` adds them to the batch, given the sequence number of the first. Returns the
    /// sequence number of the last, to wait for.
    @discardableResult
    func enqueue(count: Int = 1, _ change: (inout Batch, _ firstSequence: UInt64) -> Void) -> UInt64 {
        let (sequence, start) = self.state.withLock { state -> (UInt64, Bool) in
            change(&state.pending, state.lastQueued + 1)
            state.lastQueued += UInt64(count)
            return (state.lastQueued, Self.claim(&state))
        }
        if start { self.executor { self.drain() } }
        return sequence
    }

    private static func claim(_ state: inout State) -> Bool {
        guard !state.isWriting, !state.isRetryScheduled else { return false }
        state.isWriting = true
        return true
    }

    /// Commits batches until nothing is queued. Runs on the commit executor only.
    private func drain() {
        while true {
            let (batch, through) = self.state.withLock { state -> (Batch?, UInt64) in
                guard !state.pending.isEmpty else {
                    state.isWriting = false
                    return (nil, state.lastQueued)
                }
                defer { state.pending = Batch() }
                return (state.pending, state.lastQueued)
            }
            guard let batch else { return }
            let started = ContinuousClock.now
            guard let failure = self.commit(batch) else {
                if let observer = self.commitObserver.withLock({ $0 }) { observer.call((batch.count, ContinuousClock.now - started)) }
                self.report(.committed(through: through))
                continue
            }
            self.state.withLock { state in
                state.pending.putBack(failure.unwritten)
                state.isWriting = false
                state.isRetryScheduled = true
            }
            self.report(.failed(failure.error))
            self.timers.asyncAfter(deadline: .now() + self.retryDelay.seconds) {
                let start = self.state.withLock { state -> Bool in
                    state.isRetryScheduled = false
                    return Self.claim(&state)
                }
                if start { self.executor { self.drain() } }
            }
            return
        }
    }

    private func report(_ progress: CommitProgress) {
        self.progressHandler.withLock { $0 }?.call(progress)
    }
}

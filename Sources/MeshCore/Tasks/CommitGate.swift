/// Holds what the task machines asked for until what it depends on is stored: nothing leaves a node (an accept, an
/// offer, an acknowledgement, a client's answer) before the task store and the audit log have committed every change
/// queued before it. Both writers number their changes; the gate follows how far each has committed.
///
/// A pure value: the node feeds it sequence numbers and commit progress and performs what it releases, in order.
public struct CommitGate<Action, Waiter> {
    /// Actions queued after store change `store` and audit entry `audit`, released once both are committed.
    private struct Batch {
        let store: UInt64
        let audit: UInt64
        let actions: [Action]
    }

    public private(set) var storeCommitted: UInt64
    public private(set) var auditCommitted: UInt64
    public private(set) var isStoreWritable = true
    public private(set) var isAuditWritable = true
    /// Oldest first; a batch is never released before the one ahead of it.
    private var held: [Batch] = []
    private var heldStart = 0
    /// Clients waiting for a store change to be committed before they are answered.
    private var waiters: [(sequence: UInt64, waiter: Waiter)] = []

    /// Starts with everything up to these sequence numbers already committed (what the writers loaded at start).
    public init(storeCommitted: UInt64, auditCommitted: UInt64) {
        self.storeCommitted = storeCommitted
        self.auditCommitted = auditCommitted
    }

    /// Both writers can take changes: the node may take new work.
    public var isWritable: Bool { self.isStoreWritable && self.isAuditWritable }

    /// Every action still held, oldest first.
    public var heldActions: [Action] { self.held[self.heldStart...].flatMap(\.actions) }

    public var heldCount: Int { self.held.count - self.heldStart }

    /// Queues actions that depend on store change `store` and audit entry `audit`. Returns them at once when both
    /// are committed and nothing is held ahead of them; otherwise they are held and released by ``nextReady()``.
    public mutating func submit(_ actions: [Action], afterStore store: UInt64, audit: UInt64) -> [Action] {
        guard !actions.isEmpty else { return [] }
        if self.heldCount == 0, self.isCommitted(store: store, audit: audit) { return actions }
        self.held.append(Batch(store: store, audit: audit, actions: actions))
        return []
    }

    /// The oldest held batch, if it is ready now. Call until nil: performing a batch may submit more, which lines up
    /// behind what is already held.
    public mutating func nextReady() -> [Action]? {
        guard self.heldStart < self.held.count else { return nil }
        let batch = self.held[self.heldStart]
        guard self.isCommitted(store: batch.store, audit: batch.audit) else { return nil }
        self.heldStart += 1
        if self.heldStart == self.held.count {
            self.held.removeAll(keepingCapacity: true)
            self.heldStart = 0
        } else if self.heldStart >= 1024, self.heldStart * 2 >= self.held.count {
            self.held.removeFirst(self.heldStart)
            self.heldStart = 0
        }
        return batch.actions
    }

    /// Waits for store change `sequence`; returns false (do not wait) when it is committed already.
    public mutating func wait(forStore sequence: UInt64, _ waiter: Waiter) -> Bool {
        guard sequence > self.storeCommitted else { return false }
        self.waiters.append((sequence, waiter))
        return true
    }

    /// What a commit report changed.
    public struct Progress {
        /// The writer was failing and now takes changes again (or the reverse, for a failure).
        public var availabilityChanged = false
        /// Waiters to answer: their change is committed (or, after a failure, cannot be).
        public var waiters: [Waiter] = []
    }

    public mutating func storeCommitted(through sequence: UInt64) -> Progress {
        var progress = Progress()
        self.storeCommitted = max(self.storeCommitted, sequence)
        if !self.isStoreWritable {
            self.isStoreWritable = true
            progress.availabilityChanged = true
        }
        let committed = self.storeCommitted
        progress.waiters = self.waiters.filter { $0.sequence <= committed }.map(\.waiter)
        self.waiters.removeAll { $0.sequence <= committed }
        return progress
    }

    /// A commit failed: everyone waiting for the store hears so at once (their changes stay queued and are retried,
    /// but a client is not kept waiting on a full disk).
    public mutating func storeFailed() -> Progress {
        let progress = Progress(availabilityChanged: self.isStoreWritable, waiters: self.waiters.map(\.waiter))
        self.isStoreWritable = false
        self.waiters = []
        return progress
    }

    public mutating func auditCommitted(through sequence: UInt64) -> Progress {
        self.auditCommitted = max(self.auditCommitted, sequence)
        defer { self.isAuditWritable = true }
        return Progress(availabilityChanged: !self.isAuditWritable)
    }

    public mutating func auditFailed() -> Progress {
        defer { self.isAuditWritable = false }
        return Progress(availabilityChanged: self.isAuditWritable)
    }

    private func isCommitted(store: UInt64, audit: UInt64) -> Bool {
        store <= self.storeCommitted && audit <= self.auditCommitted
    }
}

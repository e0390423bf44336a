import MeshCore
import NIOCore

/// Every caller waiting on the node, by what it waits for: a long poll answered when its task ends, a run changes
/// or an event arrives, or when its time is up, whichever comes first. One type for all of them, so shutdown wakes
/// every one (it woke 3 of the 6 kinds before), and one way to wait and to wake.
struct Waiters {
    enum Kind: CaseIterable {
        /// A task to end (`GET /v1/tasks/ID?wait=S`, submit with `wait`).
        case taskEnd
        /// More of a task's log.
        case taskLog
        /// More of a task's progress events.
        case taskProgress
        /// A workflow run to change or end.
        case workflow
        /// New events in the mesh's history (one key for all).
        case eventHistory
        /// Every live member to acknowledge a published event.
        case eventPublished
    }

    struct Waiter {
        let wake: () -> Void
        let expiry: Scheduled<Void>
    }

    private var waiting: [Kind: [TaskID: [UInt64: Waiter]]] = [:]
    private var lastToken: UInt64 = 0

    /// Adds a waiter; `expiry` is given the token that ``remove(_:_:token:)`` takes.
    mutating func add(_ kind: Kind, _ id: TaskID, wake: @escaping () -> Void, expiry: (UInt64) -> Scheduled<Void>) {
        self.lastToken += 1
        let token = self.lastToken
        self.waiting[kind, default: [:]][id, default: [:]][token] = Waiter(wake: wake, expiry: expiry(token))
    }

    mutating func remove(_ kind: Kind, _ id: TaskID, token: UInt64) -> Waiter? {
        defer { if self.waiting[kind]?[id]?.isEmpty == true { self.waiting[kind]?[id] = nil } }
        return self.waiting[kind]?[id]?.removeValue(forKey: token)
    }

    /// The waiters on `id`, taken out to be woken (outside any access to this value: waking may wait again).
    mutating func removeAll(_ kind: Kind, _ id: TaskID) -> [Waiter] {
        Array(self.waiting[kind]?.removeValue(forKey: id)?.values ?? [:].values)
    }

    /// Every waiter of every kind, taken out to be woken.
    mutating func removeEveryone() -> [Waiter] {
        defer { self.waiting = [:] }
        return self.waiting.values.flatMap { $0.values.flatMap(\.values) }
    }
}

extension MeshNode {
    /// Calls `wake` once `id` is woken for `kind`, or after `timeout`, whichever comes first; at once on a node that
    /// is stopping (a request that came in after shutdown woke everyone must not wait out its time).
    func wait<IDKind>(_ kind: Waiters.Kind, for waitedOn: MeshID<IDKind>, timeout: Duration, wake: @escaping () -> Void) {
        guard self.isServing else { return wake() }
        // Each kind of waiter waits on one kind of id (a task's, an event's, a run's): the kinds keep them apart.
        let id = TaskID(waitedOn)
        self.taskPlane.waiters.add(kind, id, wake: wake) { token in
            self.context.loop.scheduleTask(in: TimeAmount(timeout)) {
                self.assumeIsolated { node in node.taskPlane.waiters.remove(kind, id, token: token)?.wake() } as Void
            }
        }
    }

    /// Wakes everyone waiting on `id` for `kind`.
    func wake<IDKind>(_ kind: Waiters.Kind, _ id: MeshID<IDKind>) {
        for waiter in self.taskPlane.waiters.removeAll(kind, TaskID(id)) {
            waiter.expiry.cancel()
            waiter.wake()
        }
    }

    /// Wakes every waiter of every kind (the node is stopping): each answers with what it has now.
    func wakeEveryone() {
        for waiter in self.taskPlane.waiters.removeEveryone() {
            waiter.expiry.cancel()
            waiter.wake()
        }
    }
}

/// What "stored" means before the node acknowledges a task, accepts an offer or acts on a result.
public enum Durability: String, Sendable, CaseIterable {
    /// On the disk (fsync): survives a power loss. The default.
    case fsync
    /// Written to the kernel: survives `kill -9` of the node, not a power loss or a kernel crash. The disk is
    /// synced in the background at least every ``Durability/backgroundSyncInterval``.
    case process

    public static let backgroundSyncInterval: Duration = .milliseconds(100)
}

/// Where a writer runs its commits: given the work, runs it soon, one at a time, in order.
package typealias CommitExecutor = @Sendable (@escaping @Sendable () -> Void) -> Void

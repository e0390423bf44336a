import Foundation
import Logging
import MeshCore
import Synchronization
import MeshControl

/// The node's current ``TrustPolicy``, re-read from `peers/` when the folder changes, so `agentmesh trust` takes
/// effect on a running node without a restart.
final class TrustStore: Sendable {
    private struct State {
        var policy: TrustPolicy
        var stamp: NodeHome.PeersDirectoryStamp?
        var generation: UInt64
    }

    private let home: NodeHome
    private let isOpen: Bool
    private let logger: Logger
    private let state: Mutex<State>

    init(home: NodeHome, isOpen: Bool, logger: Logger) {
        self.home = home
        self.isOpen = isOpen
        self.logger = logger
        self.state = Mutex(State(policy: TrustPolicy(isOpen: isOpen), stamp: nil, generation: 0))
        self.reload(stamp: home.peersDirectoryStamp())
    }

    var trustedCount: Int { self.state.withLock { $0.policy.trusted.count } }

    /// Counts reloads, so the node can tell when the trust list changed.
    var generation: UInt64 { self.state.withLock { $0.generation } }

    /// The policy to apply now; costs one `stat` when nothing changed.
    func current() -> TrustPolicy {
        let stamp = self.home.peersDirectoryStamp()
        if let policy = self.state.withLock({ $0.stamp == stamp ? $0.policy : nil }) { return policy }
        return self.reload(stamp: stamp)
    }

    @discardableResult
    private func reload(stamp: NodeHome.PeersDirectoryStamp?) -> TrustPolicy {
        let (descriptors, problems) = self.home.loadTrustedPeers()
        for problem in problems { self.logger.warning("\(problem)") }
        let policy = TrustPolicy(trusted: descriptors, isOpen: self.isOpen)
        self.state.withLock { $0 = State(policy: policy, stamp: stamp, generation: $0.generation + 1) }
        return policy
    }
}

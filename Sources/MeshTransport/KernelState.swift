import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshControl
import MeshStorage
import NIOCore
import Synchronization

// The kernel's own state, beside the features' (FeatureState.swift): what the node is given and shares with every
// thread, its peers, and its task plane. MeshNode holds one of each and composes the features around them.

/// What a node is given when it is made and keeps for its life, safe to read from any thread.
struct NodeContext: Sendable {
    let home: NodeHome
    let identity: NodeIdentity
    let settings: NodeSettings
    let networkKey: NetworkKey
    let logger: Logger
    /// The one event loop that runs this node: its state (the actor's executor), its peer connections and its
    /// control API. A message in, a state-machine step and a message out happen on one thread, in one turn.
    let loop: any EventLoop
    /// Core time: monotonic since the node was made, immune to wall-clock jumps.
    let clock = NodeClock()
    /// What decides about a connection before its peer is authenticated.
    let gate: HandshakeGate
    /// On-demand dials to start, and `agentmesh leave`: they reach the node's run loop from anywhere.
    let signals = Signals()

    struct Signals: Sendable {
        let dials = AsyncStream<(NodeID, HostAndPort)>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        /// A leave, with how long to drain first (nil: leave now).
        let leave = AsyncStream<Duration?>.makeStream()
    }
}

/// The peers: one session per peer (bounded, with messages waiting for on-demand dials), the SWIM machine, per-peer
/// limits, bans, audit entries and transcripts, and what else the node notes about them.
struct PeerPlane {
    var connections: MeshNode.Connections
    /// The SWIM state machine (its record gets the advertised address at bind, before any traffic).
    var membership: Membership
    var accountability: PeerAccountability
    var notes = PeerNotes()
    /// The load in this node's member record, and when it was put there.
    var advertisedLoad: (load: Int, at: Duration) = (0, .zero)
}

/// The task plane around the two task machines (which the kernel holds beside it, so that a step of one may read
/// the other and this): what keeps their promises (nothing leaves before it is durable, every long poll is
/// answered, every run here can be stopped).
struct TaskPlane {
    /// Task actions and client answers held until the store and the audit log have committed what they need.
    var commitGate = CommitGate<MeshNode.DeferredTaskAction, (TaskStore.StoreError?) -> Void>(storeCommitted: 0, auditCommitted: 0)
    /// Everyone long-polling: for a task to end, its log or progress, a workflow's change, events.
    var waiters = Waiters()
    /// Runs of agents in progress here for peers.
    var localRuns = LocalRuns()
    /// Logs, progress and streams clients follow.
    var followers: TaskFollowers
    /// Idempotency keys of recent submissions (`Idempotency-Key`), kept in the store too.
    var idempotency = IdempotencyBook()
    /// The stats of the tasks submitted here (`GET /v1/stats`).
    var stats = TaskStats()
    /// What the last start-up could not read back from the store (``MeshNode/restoredDocuments(_:as:what:)``).
    var restoreProblems: [String] = []
}

/// Metrics (`GET /metrics`) and, when `--otlp-endpoint` is set, spans of tasks and runs.
struct Telemetry: Sendable {
    let metrics: NodeMetrics
    let tracer: SpanExporter?
}

/// The artifact store (`DIR/artifacts/`), opened at bind, and the queue all its file work runs on (hashing a large
/// file would hold the event loop).
final class ArtifactFiles: Sendable {
    let holder = Mutex<ArtifactStore?>(nil)
    let queue = DispatchQueue(label: "agentmesh.artifacts")

    var store: ArtifactStore? { self.holder.withLock { $0 } }
}

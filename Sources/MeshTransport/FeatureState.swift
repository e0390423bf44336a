import Foundation
import MeshControl
import MeshCore
import MeshExecutors
import MeshWorkflows
import NIOCore

// The state each feature keeps on the node, one value per feature: the kernel (MeshNode) holds these side by side
// and owns none of their fields itself. Each feature's behaviour is in its own file next to the type it uses
// (workflows: MeshNode+Workflows.swift over WorkflowRun; events: MeshNode+Events.swift over EventBus; …).

/// The workflow runs this node owns, and which run each of their tasks belongs to.
struct WorkflowRuns {
    var runs: [WorkflowID: WorkflowRun] = [:]
    var runOfTask: [TaskID: WorkflowID] = [:]
}

/// Events: the history and what this node still re-sends (``EventBus``), and the runs events started here.
struct MeshEvents {
    var bus: EventBus
    /// Runs that events started (executors and workflows), and the events waiting for one (bounded).
    var subscribers = EventSubscribers()
}

/// Artifacts on their way here and what waits for them, and what this node has served.
struct ArtifactTransfers {
    /// Transfers to this node, by hex digest.
    var pulls: [String: ArtifactPull] = [:]
    var nextPullID: UInt64 = 0
    /// Results held until their artifacts are here.
    var heldResults: Set<TaskID> = []
    /// Partial files of transfers that stopped, per peer.
    var leftovers = LeftoverPartials()
    /// Chunks served to peers, counted for ``NodeSettings/artifactFaults``.
    var chunksServed = 0
    /// With the session-cut fault (``ArtifactFaults/cutAfterChunk``) set: the offsets served after the cut, which
    /// its test reads to tell a resumed transfer from one that started over.
    var offsetsServedAfterCut: [UInt64] = []
    var sweptAt: Duration = .zero
}

/// What clients follow of this node's tasks while they run: their stderr, their progress events, and the
/// server-sent event streams open on them.
struct TaskFollowers {
    var logs = TaskLogBook()
    /// The progress events of this node's newest tasks (all of them are in the store).
    var progress: TaskEventBook
    var streams: [TaskID: [ControlStreamSink]] = [:]
}

/// Runs of agents in progress here for peers, so a cancel or a deadline can stop them, and where their agents'
/// answers go.
struct LocalRuns {
    var tasks: [TaskID: Task<Void, Never>] = [:]
    var inputs: [TaskID: AgentInput] = [:]
    /// Each run's capability and start, for the execution metrics.
    var starts: [TaskID: (String, Duration)] = [:]
}

/// The browser view (`GET /ui` on the `--http` listener): its sign-in codes and sessions, and the open views' live
/// streams, each with the snapshot it was sent last (one snapshot is built per tick for all of them).
struct BrowserView {
    let sessions: BrowserSessions
    var streams: [(sink: ControlStreamSink, sent: [UInt8])] = []

    init(clock: NodeClock) {
        self.sessions = BrowserSessions(now: { clock.now })
    }
}

/// What the node notes about its peers beyond membership and accountability.
struct PeerNotes {
    /// When each member last sent this node a membership message (direct evidence it is alive).
    var lastHeardFrom: [NodeID: Date] = [:]
    /// The trust list this node last acted on (``TrustStore/generation``).
    var trustGeneration: UInt64 = 0
    /// Each join address: whether a session through it is up, and the last dial's error.
    var joins: [HostAndPort: (connected: Bool, error: String?, at: Date?)] = [:]
    /// Refused connections before authentication are logged at most ten a second (a flood is thousands).
    var refusedConnectionLog = LogThrottle(perSecond: 10)
    /// Members dropped from the view because the trust list refuses them, and when: `members` lists them as
    /// `untrusted` until they are trusted again or the node restarts.
    var distrusted: [NodeID: (record: MemberRecord, at: Date)] = [:]
}

public import MeshCore
public import MeshStorage

/// Everything `agentmesh run` can tune. Defaults suit a LAN; ``localTesting(listen:)`` shortens the timers for
/// tests on loopback.
public struct NodeSettings: Sendable {
    /// Where to accept peer connections. Port 0 picks a free port.
    public var listen: HostAndPort
    /// The address other members dial (defaults to the listen address with the bound port). Needed when listening
    /// on 0.0.0.0 or behind NAT.
    public var advertise: HostAndPort?
    /// Peers to dial at start-up and re-dial whenever the connection drops.
    public var joins: [HostAndPort] = []
    /// What this node offers, advertised in its signed member record.
    public var capabilities: [CapabilitySpec] = []
    /// Membership timers (probe, suspicion, gossip, push-pull).
    public var membership = MembershipSettings.lan
    /// The finest granularity of the membership timers (the shortest sleep between two runs of them).
    public var membershipTick: Duration = .milliseconds(10)
    /// Sessions kept open at once. Beyond it the least recently active on-demand or accepted session is closed
    /// (join connections are kept), so per-node traffic stays flat as the mesh grows.
    public var maximumConnections = 16
    /// Accept any peer that holds the network key, not only those in `peers/`.
    public var isOpen = false
    /// An accepted connection that has not sent its first handshake message by then is closed: it takes one round
    /// trip, so a connection that sends nothing holds a handshake slot only briefly.
    public var helloTimeout: Duration = .seconds(1)
    /// A connection that has not finished the handshake by then is closed.
    public var handshakeTimeout: Duration = .seconds(5)
    /// Handshakes in flight on the listener at once; further connections are closed at once. One source address
    /// holds at most a quarter of them; addresses that completed a handshake before have a quarter more in reserve.
    public var maximumPendingHandshakes = 64
    /// How many recent msg1 ephemeral keys are remembered to refuse replays.
    public var replayCacheCapacity = 65_536
    /// How often an idle session sends a keepalive ping.
    public var keepaliveInterval: Duration = .seconds(5)
    /// A session that receives nothing (not even a pong) for this long is closed.
    public var idleTimeout: Duration = .seconds(20)
    /// Dial timeout for one attempt.
    public var connectTimeout: Duration = .seconds(5)
    /// First and largest delay between re-dials of a join address.
    public var redialInitialDelay: Duration = .milliseconds(250)
    public var redialMaximumDelay: Duration = .seconds(30)
    /// Largest task input a client may submit, in bytes of JSON (`run --max-input-bytes`). Larger data goes as
    /// artifacts.
    public var maximumTaskInput = Self.defaultTaskInput
    public static let defaultTaskInput = 1024 * 1024
    /// The most `maximumTaskInput` may be: an offer is one message of at most 16 MiB, the input and its framing.
    public static let largestTaskInput = 15 * 1024 * 1024
    /// The largest artifact this node takes (`run --max-artifact-bytes`), and all of them together
    /// (`run --artifact-store-bytes`).
    public var maximumArtifact: UInt64 = 1 << 30
    public var artifactCapacity: UInt64 = 10 << 30
    /// Also serve the control API over HTTP on this address (keep it on loopback); every request needs the bearer
    /// token in `DIR/control.token`, created on first use.
    public var httpControl: HostAndPort?
    /// Caps the task store at this many 4 KiB pages (nil: only the disk limits it). A store that is full behaves
    /// like a full disk: new tasks are refused with a clear error and nothing stored is lost. Payloads over 64 KiB
    /// are files beside the store, which only the disk limits.
    public var taskStoreMaximumPages: Int?
    /// A test seam: called on the store's writer before each commit (a test holds it there to see what waits for
    /// the disk). Nil in the product.
    public var taskStoreBeforeCommit: (@Sendable () -> Void)?
    /// Node-wide per-peer limits (`run --limit`, `DIR/config.toml`); a peer's descriptor may override them.
    public var limits = PeerLimiter<NodeID>.Settings()
    /// Count connections from this host (127.0.0.0/8, ::1) against the per-address `connections` limit too. Off by
    /// default: every node on the host shares the address, so a local mesh would throttle itself.
    public var limitsLoopbackConnections = false
    /// How often every audit log with unsigned records gets a signed checkpoint (also every 256 records).
    public var auditCheckpointInterval: Duration = .seconds(5)
    /// Start even when an audit log is broken: the broken file is renamed `*.broken-TIME` and a new log begun.
    public var setAsideBrokenAuditLogs = false
    /// Largest message a peer may send (reassembled from frames).
    public var maximumMessageLength = SecureSession.defaultMaximumMessageLength
    /// A control connection with no request in progress that sends nothing for this long is closed (at most
    /// `ControlServer.maximumConnections` are open at once).
    public var controlIdleTimeout: Duration = .seconds(60)
    /// Finished tasks kept in memory (newest first); older ones are answered from the task store.
    public var finishedTasksInMemory = 10_000
    /// Node-wide bounds on streamed progress: logs and bytes in memory, bytes stored.
    public var progressBudget = TaskEventBook.Budget()
    /// A test seam: faults in the artifact transfers this node serves. Never set by `agentmesh run`.
    public var artifactFaults = ArtifactFaults()
    /// The event history's bounds (tests shrink them to flood it with fewer events).
    public var events = EventBus.Settings()
    /// Export spans over OTLP/HTTP (JSON) to this collector (`run --otlp-endpoint http://HOST:4318`).
    public var otlpEndpoint: String?
    /// Count metrics for `GET /metrics` (`run --metrics off` turns them off).
    public var metricsEnabled = true
    /// What this node does with events it receives (`run --subscribe TOPIC=EXECUTOR|workflow:FILE`).
    public var subscriptions: [EventSubscription] = []
    /// Let callbacks (webhooks) reach loopback, private and link-local addresses (`run --allow-private-callbacks`).
    public var allowPrivateCallbacks = false
    /// When the task store and the audit log count a change as done (`run --durability`).
    public var durability = Durability.fsync

    public init(listen: HostAndPort) { self.listen = listen }

    public typealias Durability = MeshStorage.Durability

    /// Fast timers for loopback tests.
    public static func localTesting(listen: HostAndPort = HostAndPort(host: "127.0.0.1", port: 0)) -> NodeSettings {
        var settings = NodeSettings(listen: listen)
        settings.handshakeTimeout = .seconds(2)
        settings.keepaliveInterval = .milliseconds(500)
        settings.idleTimeout = .seconds(3)
        settings.connectTimeout = .seconds(2)
        settings.redialInitialDelay = .milliseconds(50)
        settings.redialMaximumDelay = .seconds(1)
        settings.membership = .localTesting
        return settings
    }
}

import Foundation
public import Logging
public import MeshCore
public import MeshCrypto
import MeshWire
import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization
import MeshStorage
import MeshWorkflows
import MeshExecutors
public import MeshControl

/// One AgentMesh node: accepts and dials authenticated connections, keeps one session per peer, re-dials its join
/// addresses with back-off, and serves the control API. Call ``bind()`` first (it fails fast, for example when the
/// port is taken), then run it as a `Service`.
public actor MeshNode: Service {
    // The kernel: what the node was given, its lifecycle and timer, its peers and its task plane.
    nonisolated let context: NodeContext
    private var state: State = .created
    private var timer = NodeTimer()
    var peers: PeerPlane
    /// The two ends of the task protocol, apart from the rest of the task plane: a step of one reads the other and
    /// the plane (a closure that reads a value while a mutating call on it runs is an exclusivity violation).
    var submitter: TaskSubmitter
    var runner: TaskRunner
    var taskPlane: TaskPlane

    // The features, each owning its state (FeatureState.swift and the types named there).
    var workflowRuns = WorkflowRuns()
    var meshEvents: MeshEvents
    /// Webhook targets and deliveries, and the key that signs them (`DIR/webhook.secret`).
    var webhooks = WebhookBook()
    var transfers = ArtifactTransfers()
    nonisolated let artifactFiles = ArtifactFiles()
    var browser: BrowserView
    nonisolated let telemetry: Telemetry

    // Borrowed, not copied: a getter that returned the settings copied every reference in them on each read.
    public nonisolated var home: NodeHome { _read { yield self.context.home } }
    public nonisolated var identity: NodeIdentity { _read { yield self.context.identity } }
    public nonisolated var settings: NodeSettings { _read { yield self.context.settings } }

    private enum State {
        case created
        case bound(Bound)
        case running(Bound)
        case stopped(Bound)
    }

    /// What a node holds from `bind` on.
    private struct Bound {
        let listener: any Channel
        let control: ControlServer
        /// The control API over TCP (`run --http`), if asked for.
        let httpControl: ControlServer?
        /// Where the listener is bound (the port the kernel picked for port 0).
        let listening: HostAndPort
        /// The address peers dial (`--advertise`, or the bound one).
        let address: HostAndPort
        let startedAt: Date
        /// Durable task state (`DIR/node.sqlite`).
        let taskStore: TaskStore
        /// The per-peer audit logs (`DIR/audit/`).
        let auditLog: AuditLog
    }

    /// The node's one timer, due at the earliest deadline of all its machines.
    private struct NodeTimer {
        var scheduled: Scheduled<Void>?
        /// When the task machines' and accountability's timers are next due (see `timerFired`).
        var taskTimersDue: Duration = .zero
    }

    typealias Connections = ConnectionTable<PeerSession, WireMessage>
    typealias Origin = Connections.Origin
    typealias PeerConnection = Connections.Connection

    var isRunning: Bool {
        if case .running = self.state { return true }
        return false
    }
    /// Sessions are taken from `bind` on: a peer may connect between `bind` and `run`.
    var isServing: Bool {
        switch self.state {
        case .bound, .running: return true
        case .created, .stopped: return false
        }
    }
    private var bound: Bound? {
        switch self.state {
        case .bound(let bound), .running(let bound), .stopped(let bound): return bound
        case .created: return nil
        }
    }
    var taskStore: TaskStore? { self.bound?.taskStore }
    var auditLog: AuditLog? { self.bound?.auditLog }

    public init(
        home: NodeHome, identity: NodeIdentity, networkKey: NetworkKey, settings: NodeSettings, logger: Logger
    ) {
        let trustStore = TrustStore(home: home, isOpen: settings.isOpen, logger: logger)
        self.context = NodeContext(
            home: home, identity: identity, settings: settings, networkKey: networkKey, logger: logger,
            loop: MultiThreadedEventLoopGroup.singleton.next(), gate: HandshakeGate(trustStore: trustStore, settings: settings))
        var seed = SystemRandomNumberGenerator()
        var submitterSettings = TaskSubmitter.Settings()
        submitterSettings.finishedInMemory = settings.finishedTasksInMemory
        self.peers = PeerPlane(
            connections: Connections(maximumConnections: settings.maximumConnections),
            membership: Membership(
                identity: identity.publicIdentity, address: settings.listen.description,
                capabilities: settings.capabilities.map(\.capability), trust: trustStore.current(),
                signer: .ed25519(identity), settings: settings.membership, seed: seed.next(), now: .zero),
            accountability: PeerAccountability(
                limits: settings.limits, signingKey: identity.signingKey, checkpointInterval: settings.auditCheckpointInterval))
        self.submitter = TaskSubmitter(local: identity.nodeID, settings: submitterSettings, seed: seed.next())
        self.runner = TaskRunner(capacity: Dictionary(
            settings.capabilities.map { ($0.name, Int($0.concurrency)) }, uniquingKeysWith: { first, _ in first }))
        self.taskPlane = TaskPlane(followers: TaskFollowers(progress: TaskEventBook(budget: settings.progressBudget)))
        self.browser = BrowserView(clock: self.context.clock)
        self.meshEvents = MeshEvents(bus: EventBus(local: identity.nodeID, settings: settings.events))
        self.telemetry = Telemetry(
            metrics: NodeMetrics(enabled: settings.metricsEnabled),
            tracer: settings.otlpEndpoint.flatMap {
                SpanExporter(endpoint: $0, serviceName: "agentmesh", instance: "\(identity.name) \(identity.nodeID.short)", logger: logger)
            })
    }

    /// `.process` durability: the task store commits and the audit log appends on this node's loop, between
    /// events (no fsync waits there); with `.fsync` each has a thread of its own, so the loop never waits on a disk.
    private nonisolated var commitExecutor: CommitExecutor? {
        guard self.settings.durability == .process else { return nil }
        let loop = self.context.loop
        return { work in loop.execute(work) }
    }

    /// Runs `work` on this node now if this is its loop (a writer reporting from a commit it ran here), else soon.
    nonisolated func onLoop(_ work: @escaping @Sendable (isolated MeshNode) -> Void) {
        if self.context.loop.inEventLoop {
            self.assumeIsolated(work)
        } else {
            self.context.loop.execute { self.assumeIsolated(work) }
        }
    }

    public nonisolated var unownedExecutor: UnownedSerialExecutor { self.context.loop.executor.asUnownedSerialExecutor() }

    /// Core time: a monotonic duration since this node started, immune to wall-clock jumps.
    nonisolated var now: Duration { self.context.clock.now }

    /// Core time as a wall-clock date, for display only.
    nonisolated func wallClockDate(for time: Duration) -> Date { self.context.clock.wallClockDate(for: time) }

    /// The TCP port of the control API when it listens over HTTP (`run --http`).
    public var httpControlPort: Int? {
        self.bound?.httpControl?.port
    }

    public enum StartError: Error, CustomStringConvertible {
        case cannotListen(HostAndPort, String)
        case alreadyStarted
        case taskStore(String)
        case auditLog(String)
        case artifactStore(String)

        public var description: String {
            switch self {
            case .cannotListen(let address, let why): return "cannot listen on \(address): \(why)"
            case .alreadyStarted: return "the node was already started"
            case .taskStore(let why): return why
            case .auditLog(let why): return "\(why) (start with --set-aside-broken-audit to move it aside and begin a new log)"
            case .artifactStore(let why): return "cannot open the artifact store: \(why)"
            }
        }
    }

    // MARK: - Start and stop

    /// Where a bound node listens, and the address peers dial (they differ with `--advertise`).
    public struct Addresses: Sendable {
        public let listening: HostAndPort
        public let advertised: HostAndPort
    }

    /// Opens the peer listener and the control socket.
    @discardableResult
    public func bind() async throws -> Addresses {
        guard case .created = self.state else { throw StartError.alreadyStarted }
        let store: TaskStore
        let stored: (submitted: [TaskSubmitter.SubmittedTask], accepted: [TaskRunner.AcceptedTask])
        do {
            store = try TaskStore(
                path: self.home.taskStorePath, timeBase: TaskStore.TimeBase(origin: self.context.clock.wallClockOrigin), durability: self.settings.durability,
                commitOn: self.commitExecutor,
                maximumPages: self.settings.taskStoreMaximumPages, beforeCommit: self.settings.taskStoreBeforeCommit)
            stored = try store.load(
                finishedLimit: self.submitter.settings.finishedInMemory,
                finishedBytesLimit: self.submitter.settings.finishedBytesInMemory)
        } catch {
            throw StartError.taskStore(error.description)
        }
        let audit: AuditLog
        do {
            audit = try AuditLog(
                directory: self.home.auditDirectory, identity: self.identity,
                setAsideBroken: self.settings.setAsideBrokenAuditLogs, durability: self.settings.durability,
                commitOn: self.commitExecutor)
        } catch {
            throw StartError.auditLog(error.description)
        }
        do {
            let artifacts = try ArtifactStore(
                directory: self.home.artifactsDirectory, maximumArtifact: self.settings.maximumArtifact,
                capacity: self.settings.artifactCapacity, durable: self.settings.durability == .fsync)
            self.artifactFiles.holder.withLock { $0 = artifacts }
        } catch {
            throw StartError.artifactStore(error.description)
        }
        let listener: any Channel
        do {
            listener = try await self.makeListener()
        } catch let error as IOError {
            throw StartError.cannotListen(self.settings.listen, String(cString: strerror(error.errnoCode)))
        } catch {
            throw StartError.cannotListen(self.settings.listen, "\(error)")
        }
        let port = listener.localAddress?.port ?? self.settings.listen.port
        let listening = HostAndPort(host: self.settings.listen.host, port: port)
        // An advertised port of 0 means the one just bound, as for --listen.
        let address = self.settings.advertise.map { $0.port == 0 ? HostAndPort(host: $0.host, port: port) : $0 } ?? listening
        let control: ControlServer
        do {
            control = try await ControlServer.bind(
                socketPath: self.home.controlSocketPath, loop: self.context.loop, idleTimeout: self.settings.controlIdleTimeout,
                logger: self.context.logger,
                handler: self.controlHandler, uploader: self.artifactUploader)
        } catch {
            try? await listener.close()
            throw error
        }
        var httpControl: ControlServer?
        if let http = self.settings.httpControl {
            do {
                let token = try self.home.loadOrCreateControlToken()
                httpControl = try await ControlServer.bind(
                    http: http, token: token, browser: self.browser.sessions, loop: self.context.loop, idleTimeout: self.settings.controlIdleTimeout,
                    logger: self.context.logger, handler: self.controlHandler, uploader: self.artifactUploader)
            } catch {
                try? await listener.close()
                await control.close()
                throw error
            }
        }
        self.context.gate.credentials = HandshakeCredentials(
            identity: self.identity, networkKey: self.context.networkKey, listenAddress: address.description)
        self.state = .bound(Bound(
            listener: listener, control: control, httpControl: httpControl, listening: listening, address: address,
            startedAt: Date(),
            taskStore: store, auditLog: audit))
        self.peers.membership.advertise(address.description)
        // Records the writers queued while opening (a recovered log's note) gate nothing.
        self.taskPlane.commitGate = CommitGate(storeCommitted: store.lastQueued, auditCommitted: audit.lastQueued)
        self.openTaskStore(store, restoring: stored)
        self.openAuditLog(audit)
        do {
            let secret = try self.home.loadOrCreateWebhookSecret()
            if let key = Self.webhookKey(fromSecret: secret) {
                self.webhooks.secret = SecretBytes(copying: key)
            } else {
                self.context.logger.error("webhooks cannot be signed, so none will be sent", metadata: [
                    "error": "\(self.home.webhookSecretPath) starts with whsec_ but the rest is not base64"])
            }
        } catch {
            self.context.logger.error("webhooks cannot be signed, so none will be sent", metadata: ["error": "\(error)"])
        }
        self.restoreWorkflows()
        self.restoreWebhooks()
        self.restoreEvents()
        self.restoreIdempotencyKeys()
        self.observeCommits()
        self.context.logger.info("listening", metadata: [
            "address": "\(listening)", "advertised": "\(address)", "node": "\(self.identity.name) \(self.identity.nodeID.short)",
            "trusted-peers": "\(self.context.gate.trustStore.trustedCount)", "open": "\(self.settings.isOpen)",
            "http-control": "\(httpControl.map { "\(self.settings.httpControl!.host):\($0.port ?? 0) (token in \(self.home.controlTokenPath))" } ?? "off")",
        ])
        return Addresses(listening: listening, advertised: address)
    }

    public func run() async throws {
        if case .created = self.state { try await self.bind() }
        guard case .bound(let bound) = self.state else { throw StartError.alreadyStarted }
        self.state = .running(bound)
        self.scheduleTimer(after: self.settings.membershipTick)
        let joins = self.settings.joins
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await bound.control.run() }
            if let http = bound.httpControl {
                group.addTask { await http.run() }
            }
            for join in joins {
                group.addTask { await self.maintainConnection(to: join) }
            }
            group.addTask {
                await withDiscardingTaskGroup { dialling in
                    for await (peer, address) in self.context.signals.dials.stream {
                        dialling.addTask { await self.dialOnDemand(peer, at: address) }
                    }
                }
            }
            // Runs until SIGTERM/SIGINT (graceful shutdown), `agentmesh leave`, or cancellation.
            let drain = await withTaskGroup(of: Duration?.self) { waiters in
                waiters.addTask {
                    try? await gracefulShutdown()
                    return nil
                }
                waiters.addTask {
                    for await drain in self.context.signals.leave.stream { return drain }
                    return nil
                }
                let drain = await waiters.next() ?? nil
                waiters.cancelAll()
                return drain
            }
            if let drain { await self.drain(within: drain) }
            await self.announceLeave()
            await self.stop()
            self.context.signals.dials.continuation.finish()
            group.cancelAll()
        }
        self.context.logger.info("stopped")
    }

    /// `agentmesh leave`: announce the leave, then stop as on SIGTERM. With `drain`, first stop taking tasks and
    /// finish the runs in progress, their results delivered and acknowledged, for at most that long.
    public nonisolated func requestLeave(drain: Duration? = nil) {
        self.context.signals.leave.continuation.yield(drain)
    }

    private func drain(within limit: Duration) async {
        guard case .running = self.state else { return }
        self.runner.setDraining()
        // Members stop choosing this node once its record offers nothing; a late offer is declined `draining`.
        self.peers.membership.updateLocal(capabilities: [])
        self.context.logger.info("draining before leaving", metadata: [
            "tasks": "\(self.runner.allTasks.count)", "within": "\(TaskSubmitter.seconds(limit))",
        ])
        let deadline = self.now + limit
        while !self.runner.allTasks.isEmpty, self.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        if !self.runner.allTasks.isEmpty {
            self.context.logger.warning("leaving with tasks not finished; their submitters offer them elsewhere", metadata: [
                "tasks": "\(self.runner.allTasks.count)",
            ])
        }
    }

    /// Tells every live member this node is leaving, and gives the messages a moment to go out, so the mesh marks
    /// it "left" at once instead of suspecting it for seconds.
    private func announceLeave() async {
        guard case .running = self.state else { return }
        self.handle(self.peers.membership.leave(now: self.now))
        let deadline = self.now + .seconds(1)
        while self.peers.connections.hasPendingSends, self.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        try? await Task.sleep(for: .milliseconds(50))
    }

    /// Sends every peer an authenticated close, then closes the listener and the control socket.
    private func stop() async {
        guard case .running(let bound) = self.state else { return }
        self.state = .stopped(bound)
        self.timer.scheduled?.cancel()
        self.context.logger.info("shutting down", metadata: ["peers": "\(self.peers.connections.count)"])
        for execution in self.taskPlane.localRuns.tasks.values { execution.cancel() }
        for execution in self.meshEvents.subscribers.executorRuns.values { execution.cancel() }
        self.wakeAllWaiters()
        // Each peer gets this node's signature over what it sent, then the close; both are in the audit log.
        for connection in self.peers.connections.all.values.sorted(by: { $0.number < $1.number }) {
            self.perform(self.peers.accountability.signTranscript(connection.number))
            self.sessionEnded(connection.number, reason: "closed here: node is shutting down")
        }
        let closing = self.peers.connections.removeAll()
        for connection in closing {
            try? await connection.channel.triggerUserOutboundEvent(CloseRequest(.shuttingDown)).get()
            try? await connection.channel.close()
        }
        await self.flushToDisk()
        try? await bound.listener.close()
        await bound.control.close()
        await bound.httpControl?.close()
    }

    // MARK: - Connections

    private func makeListener() async throws -> any Channel {
        let logger = self.context.logger
        return try await ServerBootstrap(group: self.context.loop, childGroup: self.context.loop)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ListenerErrorHandler(logger: logger))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: Self.sessionWaterMark)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try self.prepareAcceptedChannel(channel) }
            }
            .bind(host: self.settings.listen.host, port: self.settings.listen.port)
            .get()
    }

    private nonisolated func prepareAcceptedChannel(_ channel: any Channel) throws {
        let pending = self.context.gate.pending
        guard let credentials = self.context.gate.credentials else {
            channel.close(promise: nil)
            return
        }
        guard self.admitConnection(from: channel.remoteAddress) else {
            channel.close(promise: nil)
            return
        }
        let source = channel.remoteAddress?.ipAddress ?? "?"
        let ticket = pending.begin(from: source) { channel.pipeline.fireUserInboundEventTriggered(HandshakeDisplaced()) }
        let ended: EventLoopFuture<SessionOutcome>
        do {
            ended = try self.addSessionHandlers(
                to: channel, role: .responder(ResponderHandshake(credentials: credentials), self.context.gate.replayGuard),
                origin: .accepted, releaseSlot: { pending.end(ticket, from: source) })
        } catch {
            pending.end(ticket, from: source)
            throw error
        }
        let remote = channel.remoteAddress
        ended.assumeIsolated().whenFailure { error in
            self.assumeIsolated { node in
                node.metricsHandshakeRefused(error)
                if let left = node.peers.notes.refusedConnectionLog.admit(now: node.now) {
                    var metadata: Logger.Metadata = ["remote": "\(remote.display)", "reason": "\(error)"]
                    if left > 0 { metadata["not-logged"] = "\(left)" }
                    node.context.logger.info("refused connection", metadata: metadata)
                }
                node.auditConnectionFailure(error)
            }
        }
    }

    /// The secure handler and the bridge to this node; the future completes when the connection has ended.
    private nonisolated func addSessionHandlers(
        to channel: any Channel, role: SecureChannelHandler.Role, origin: Origin, releaseSlot: (@Sendable () -> Void)?
    ) throws -> EventLoopFuture<SessionOutcome> {
        let trustStore = self.context.gate.trustStore
        let configuration = SecureChannelHandler.Configuration(
            helloTimeout: TimeAmount(self.settings.helloTimeout),
            handshakeTimeout: TimeAmount(self.settings.handshakeTimeout),
            keepaliveInterval: TimeAmount(self.settings.keepaliveInterval),
            idleTimeout: TimeAmount(self.settings.idleTimeout),
            maximumMessageLength: self.settings.maximumMessageLength)
        let ended = channel.eventLoop.makePromise(of: SessionOutcome.self)
        try channel.pipeline.syncOperations.addHandlers(
            SecureChannelHandler(
                role: role, configuration: configuration, trust: { trustStore.current() },
                releaseHandshakeSlot: releaseSlot),
            SessionBridge(node: self, origin: origin, ended: ended))
        return ended.futureResult
    }

    /// Keeps a connection to a join address: dials, serves the session until it ends, and dials again after a
    /// back-off. While the peer is connected through another connection (it dialled us), it only watches.
    private nonisolated func maintainConnection(to address: HostAndPort) async {
        var backoff = Backoff(initial: self.settings.redialInitialDelay, maximum: self.settings.redialMaximumDelay)
        var random = SystemRandomNumberGenerator()
        while !Task.isCancelled {
            do {
                let outcome = try await self.dial(address, origin: .dialled(address))
                if outcome.wasRegistered { backoff.reset() }
                await self.noteJoin(address, connected: false, error: nil)
                if outcome.closeReason?.code == SecureSession.CloseReason.pruned.code {
                    // The peer sheds connections to stay bounded; membership reaches it on demand. Re-join only
                    // if this node has lost sight of every member.
                    while !Task.isCancelled, await self.liveMemberCount() > 0 {
                        try await Task.sleep(for: self.settings.redialMaximumDelay)
                    }
                }
                if let peer = outcome.peer {
                    while !Task.isCancelled, await self.isConnected(to: peer) {
                        try await Task.sleep(for: self.settings.redialInitialDelay * 4)
                    }
                }
            } catch is CancellationError {
                return
            } catch {
                await self.auditConnectionFailure(error)
                await self.noteJoin(address, connected: false, error: "\(error)")
                var metadata: Logger.Metadata = [
                    "address": "\(address)", "reason": "\(error)", "attempt": "\(backoff.failures + 1)",
                ]
                if case .refusedByPeer(let peer, let reason)? = error as? TransportError,
                    reason.code == SecureSession.CloseReason.refusedCode
                {
                    // The fix is one command on the other node: say exactly which.
                    metadata["fix"] = "on \(peer.name), run: agentmesh trust '\(IdentityLine.render(self.identity.publicIdentity))'"
                }
                self.context.logger.notice("cannot reach join address", metadata: metadata)
            }
            do {
                try await Task.sleep(for: backoff.nextDelay(using: &random))
            } catch {
                return
            }
        }
    }

    private func noteJoin(_ address: HostAndPort, connected: Bool, error: String?) {
        let previous = self.peers.notes.joins[address]
        self.peers.notes.joins[address] = (connected, error ?? previous?.error, error != nil ? Date() : previous?.at)
    }

    /// Dials `address` and runs the connection from handshake to close. Throws the error that ended it before a
    /// session was established.
    private nonisolated func dial(_ address: HostAndPort, origin: Origin) async throws -> SessionOutcome {
        guard let credentials = self.context.gate.credentials else { throw CancellationError() }
        let ended = try await ClientBootstrap(group: self.context.loop)
            .connectTimeout(TimeAmount(self.settings.connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: Self.sessionWaterMark)
            .connect(host: address.host, port: address.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try self.addSessionHandlers(
                        to: channel, role: .initiator(InitiatorHandshake(credentials: credentials)), origin: origin,
                        releaseSlot: nil)
                }
            }
        return try await ended.get()
    }

    /// Records an authenticated session. Returns nil when it lost to an existing connection with the same peer.
    func register(_ peer: EstablishedPeer, channel: any Channel, origin: Origin) -> UInt64? {
        guard self.isServing else {
            channel.close(promise: nil)
            return nil
        }
        let peerID = peer.identity.nodeID
        guard self.admitSession(peer, channel: channel) else { return nil }
        let session = PeerSession(channel: channel, peer: peer, since: Date())
        // An address that completed a handshake may use the reserved handshake slots from now on.
        if origin.isAccepted, let source = channel.remoteAddress?.ipAddress { self.context.gate.pending.remember(source) }
        let initiator = peer.role == .initiator ? self.identity.nodeID : peerID
        let number: UInt64
        let pending: [WireMessage]
        switch self.peers.connections.register(peer: peerID, handle: session, origin: origin, initiator: initiator, now: self.now) {
        case .wrongPeer(let expected):
            self.context.logger.warning("dialled member answered with another identity", metadata: [
                "expected": "\(expected.short)", "answered": "\(peer.identity.name) \(peerID.short)",
            ])
            channel.close(promise: nil)
            return nil
        case .duplicate:
            Self.close(channel, .duplicateConnection)
            self.context.logger.debug("closed duplicate connection", metadata: ["peer": "\(peerID.short)"])
            return nil
        case .registered(let registered, let close, let queued):
            for (handle, cause) in close {
                switch cause {
                case .duplicate:
                    Self.close(handle.channel, .duplicateConnection)
                    self.context.logger.debug("closed duplicate connection", metadata: ["peer": "\(peerID.short)"])
                case .pruned:
                    Self.close(handle.channel, .pruned)
                }
            }
            (number, pending) = (registered, queued)
        }
        guard let connection = self.peers.connections[peerID] else { return nil }
        self.sessionStarted(connection)
        self.context.logger.info("peer authenticated", metadata: [
            "peer": "\(peer.identity.name) \(peerID.short)", "address": "\(peer.listenAddress)",
            "remote": "\(channel.remoteAddress.display)", "direction": "\(origin.isAccepted ? "inbound" : "outbound")",
            "trust": "\(peer.decision.label)",
        ])
        // The peer may be trusted only since a moment ago (its handshake read the new trust list).
        self.peers.membership.updateTrust(self.context.gate.trustStore.current())
        self.handle(self.peers.membership.connected(to: peerID, address: peer.listenAddress, now: self.now))
        for message in pending { self.write(message, to: connection) }
        self.taskSessionStarted(with: peerID)
        return number
    }

    /// `agentmesh untrust` on a running node: sessions with peers the trust list no longer admits end now.
    private func closeSessions(refusedBy trust: TrustPolicy) {
        for connection in self.peers.connections.all.values {
            guard case .refused(let why) = trust.decision(for: connection.handle.peer.identity) else { continue }
            self.context.logger.info("closing the session of a peer no longer trusted", metadata: [
                "peer": "\(self.memberName(connection.peer))", "why": "\(why)",
            ])
            self.peers.connections.closing(connection.number, because: "no longer trusted")
            Self.close(connection.channel, .refused("this node no longer trusts you"))
        }
    }

    /// Closes a session from this side; the close frame says why.
    static func close(_ channel: any Channel, _ reason: SecureSession.CloseReason) {
        channel.triggerUserOutboundEvent(CloseRequest(reason), promise: nil)
        channel.close(promise: nil)
    }

    /// A session ended. `cut`: it ended without the peer's close frame (a reset, an end of file, an error).
    func unregister(_ number: UInt64, peer: NodeID, reason: String, cut: Bool = false) {
        let (closedHere, wasCurrent) = self.peers.connections.ended(number, peer: peer)
        let reason = closedHere ?? reason
        self.sessionEnded(number, reason: reason)
        guard wasCurrent else { return }
        self.peers.membership.disconnected(from: peer)
        self.context.logger.info("peer disconnected", metadata: ["peer": "\(self.memberName(peer))", "reason": "\(reason)"])
        // A cut session is a hint; a refused dial to the member's listen address is evidence (see dialOnDemand).
        if cut, closedHere == nil, case .running = self.state, let member = self.peers.membership.member(peer),
            member.status == .alive || member.status == .suspect,
            let address = try? HostAndPort(parsing: member.record.address), self.peers.connections.startDial(peer)
        {
            self.context.signals.dials.continuation.yield((peer, address))
        }
    }

    private func liveMemberCount() -> Int { self.peers.membership.liveCount - 1 }

    private func isConnected(to peer: NodeID) -> Bool { self.peers.connections[peer] != nil }

    // MARK: - Membership

    /// Runs every machine's timers, then sleeps until the earliest deadline among them: at least `membershipTick`
    /// (so a deadline in the past does not spin), at most one gossip interval (news queued meanwhile waits no longer).
    /// An idle node wakes a few times a second.
    private func scheduleTimer(after delay: Duration) {
        self.timer.scheduled = self.context.loop.scheduleTask(in: TimeAmount(delay)) {
            self.assumeIsolated { $0.timerFired() }
        }
    }

    private func timerFired() {
        guard case .running = self.state else { return }
        let now = self.now
        let trust = self.context.gate.trustStore.current()
        self.peers.membership.updateTrust(trust)
        if self.context.gate.trustStore.generation != self.peers.notes.trustGeneration {
            self.peers.notes.trustGeneration = self.context.gate.trustStore.generation
            self.closeSessions(refusedBy: trust)
            self.handle(self.peers.membership.leaveOutRefusedMembers())
        }
        self.handle(self.peers.membership.tick(now: now))
        let cap = self.settings.membership.gossipInterval
        if now >= self.timer.taskTimersDue {
            self.taskTick(now: now)
            self.accountabilityTick(now: now)
            // Finding the task side's next deadline scans every open task: at most every 50 ms (they need no finer
            // grain), and at least every gossip interval (a deadline an event added meanwhile is not missed).
            let next = min(
                self.submitter.nextDeadline, self.peers.accountability.nextDeadline,
                self.runner.nextDeadline(now: now) ?? now + cap)
            self.timer.taskTimersDue = min(max(next, now + .milliseconds(50)), now + cap)
        }
        let earliest = min(self.peers.membership.nextDeadline, self.timer.taskTimersDue)
        self.scheduleTimer(after: min(max(earliest - now, self.settings.membershipTick), cap))
    }

    func receiveMembership(_ message: MembershipMessage, from peer: NodeID) {
        guard self.isServing else { return }
        self.peers.connections.heard(from: peer, now: self.now)
        self.peers.notes.lastHeardFrom[peer] = Date()
        self.handle(self.peers.membership.receive(message, from: peer, now: self.now))
    }

    /// Carries out the membership machine's directives: sends (dialling on demand), logs, misbehaviour reports.
    private func handle(_ directives: [MembershipDirective]) {
        for directive in directives {
            switch directive {
            case .send(let message, let peer, let address):
                self.send(.membership(message), to: peer, address: address)
            case .changed(let event):
                self.log(event)
            case .misbehaving(let peer, let reason):
                self.peerMisbehaved(peer, reason: reason)
            }
        }
    }

    func send(_ message: WireMessage, to peer: NodeID, address: String) {
        // A banned peer is cut off both ways until its ban ends.
        guard !self.peers.accountability.isBanned(peer, now: self.now) else { return }
        guard self.peers.connections[peer] != nil || (try? HostAndPort(parsing: address)) != nil else { return }
        switch self.peers.connections.route(message, to: peer, now: self.now) {
        case .write:
            self.write(message, to: self.peers.connections[peer]!)
        case .dial:
            if let target = try? HostAndPort(parsing: address) { self.context.signals.dials.continuation.yield((peer, target)) }
        case .queued, .dropped:
            break
        }
    }

    /// What a session queues before it counts as slow: room for a window of artifact chunks and a large result
    /// (NIO's default of 64 KiB would drop all but the first megabyte chunk of a window).
    static let sessionWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 8 << 20, high: 24 << 20)

    /// Both protocols are loss-tolerant (probes repeat, offers time out, results are re-sent until acknowledged):
    /// a session that cannot take more (a slow peer) drops the message rather than queueing without bound.
    func write(_ message: WireMessage, to connection: PeerConnection) {
        let channel = connection.channel
        guard channel.isWritable else {
            self.context.logger.debug("dropped a message to a slow peer", metadata: [
                "peer": "\(connection.peer.short)", "kind": "\(message.kind)",
            ])
            return
        }
        // Encoded once: the same bytes are sealed and, for a task message, digested for the audit log (by the session
        // as it writes a large one, part by part).
        let parts = message.encodedParts()
        guard case .task(let task) = message else {
            channel.writeAndFlush(OutboundMessage(parts: parts), promise: nil)
            return
        }
        let digest = task.digestCoversWholeMessage ? OutboundDigest() : nil
        channel.writeAndFlush(OutboundMessage(parts: parts, digest: digest), promise: nil)
        // After the write: a transcript checkpoint this may trigger must follow the message it covers.
        self.auditSent(task, digest: digest?.value ?? task.auditDigest(wireParts: parts), on: connection)
    }

    private nonisolated func dialOnDemand(_ peer: NodeID, at address: HostAndPort) async {
        do {
            _ = try await self.dial(address, origin: .onDemand(peer))
        } catch {
            if Self.isRefused(error) { await self.memberRefusedConnection(peer) }
            await self.auditConnectionFailure(error)
            self.context.logger.debug("cannot reach member", metadata: [
                "peer": "\(peer.short)", "address": "\(address)", "reason": "\(error)",
            ])
        }
        await self.dialEnded(peer)
    }

    /// Nothing listens at the member's address: it is gone (a process that stalls still accepts connections).
    private func memberRefusedConnection(_ peer: NodeID) {
        guard case .running = self.state else { return }
        self.handle(self.peers.membership.refused(peer, now: self.now))
    }

    private static func isRefused(_ error: any Error) -> Bool {
        if let error = error as? IOError { return error.errnoCode == ECONNREFUSED }
        if let error = error as? NIOConnectionError {
            return !error.connectionErrors.isEmpty
                && error.connectionErrors.allSatisfy { ($0.error as? IOError)?.errnoCode == ECONNREFUSED }
        }
        return false
    }

    private func dialEnded(_ peer: NodeID) {
        self.peers.connections.dialEnded(peer)
    }

    private func log(_ event: MembershipEvent) {
        switch event {
        case .joined(let record):
            self.peers.notes.distrusted[record.nodeID] = nil
            self.context.logger.info("member joined", metadata: [
                "member": "\(record.name) \(record.nodeID.short)", "address": "\(record.address)",
                "capabilities": "\(record.capabilities.map(\.description).joined(separator: ","))",
            ])
        case .updated(let record):
            self.context.logger.debug("member updated", metadata: [
                "member": "\(record.name) \(record.nodeID.short)", "incarnation": "\(record.incarnation)",
            ])
        case .suspected(let id, let incarnation, let accuser):
            self.context.logger.notice("member suspected", metadata: [
                "member": "\(self.memberName(id))", "incarnation": "\(incarnation)", "accuser": "\(self.memberName(accuser))",
            ])
        case .confirmed(let id, let by, let confirmations):
            self.context.logger.debug("suspicion confirmed", metadata: [
                "member": "\(self.memberName(id))", "by": "\(self.memberName(by))", "confirmations": "\(confirmations)",
            ])
        case .recovered(let id, let incarnation):
            self.context.logger.info("member alive again", metadata: [
                "member": "\(self.memberName(id))", "incarnation": "\(incarnation)",
            ])
        case .died(let id, let incarnation, let accuser):
            self.executorDied(id)
            self.context.logger.notice("member declared dead", metadata: [
                "member": "\(self.memberName(id))", "incarnation": "\(incarnation)", "accuser": "\(self.memberName(accuser))",
            ])
        case .left(let id):
            // What it was running (it stopped without draining) is offered elsewhere at once.
            self.executorDied(id)
            self.context.logger.info("member left", metadata: ["member": "\(self.memberName(id))"])
        case .distrusted(let record):
            // What it was running here is offered elsewhere at once, as when a member leaves.
            self.executorDied(record.nodeID)
            self.peers.notes.distrusted[record.nodeID] = (record, Date())
            self.context.logger.notice("member no longer trusted: left this node's view", metadata: [
                "member": "\(record.name) \(record.nodeID.short)",
            ])
        case .reaped(let id):
            self.peers.notes.lastHeardFrom[id] = nil
            self.context.logger.debug("member forgotten", metadata: ["member": "\(id.short)"])
        case .refuted(let claim, let by, let incarnation):
            self.context.logger.notice("refuted a claim against this node", metadata: [
                "claim": "\(claim)", "by": "\(self.memberName(by))", "incarnation": "\(incarnation)",
            ])
        }
    }

    func memberName(_ id: NodeID) -> String {
        if id == self.identity.nodeID { return "\(self.identity.name) \(id.short)" }
        guard let name = self.peers.membership.member(id)?.record.name ?? self.peers.accountability.peers[id]?.name else {
            return id.short
        }
        return "\(name) \(id.short)"
    }

    // MARK: - Control API

    /// This node and every member it knows, with the session to each, if any.
    public func members() -> ControlAPI.Members {
        var members: [ControlAPI.Member] = []
        let startedAt: Date
        switch self.state {
        case .bound(let bound), .running(let bound): startedAt = bound.startedAt
        case .created, .stopped: startedAt = Date()
        }
        let local = self.peers.membership.local
        members.append(ControlAPI.Member(
            id: self.identity.nodeID.description, name: self.identity.name,
            address: local.address, status: "alive",
            incarnation: local.incarnation, capabilities: local.capabilities.map(ControlAPI.CapabilityInfo.init),
            load: local.load, lastHeard: Date(), accuser: nil, remoteAddress: nil, connection: "self", trust: "self",
            since: startedAt))
        for view in self.peers.membership.view.sorted(by: { $0.record.name < $1.record.name }) {
            let connection = self.peers.connections[view.record.nodeID]
            let trust: String
            switch self.context.gate.trustStore.current().decision(for: view.record.identity) {
            case .trusted: trust = "trusted"
            case .admittedByOpenMode: trust = "open"
            case .refused: trust = "refused"
            }
            members.append(ControlAPI.Member(
                id: view.record.nodeID.description, name: view.record.name, address: view.record.address,
                status: view.status.rawValue, incarnation: view.incarnation,
                capabilities: view.record.capabilities.map(ControlAPI.CapabilityInfo.init), load: view.record.load,
                lastHeard: max(self.peers.notes.lastHeardFrom[view.record.nodeID] ?? .distantPast, self.context.clock.wallClockOrigin + view.lastChange.seconds),
                accuser: view.accuser?.description,
                remoteAddress: connection.map { $0.channel.remoteAddress.display },
                connection: connection.map { $0.origin.isAccepted ? "inbound" : "outbound" } ?? "none", trust: trust,
                since: connection?.since))
        }
        let trustList = self.context.gate.trustStore.current()
        for (record, at) in self.peers.notes.distrusted.values.sorted(by: { $0.record.name < $1.record.name })
        where self.peers.membership.member(record.nodeID) == nil {
            guard case .refused = trustList.decision(for: record.identity) else { continue }
            members.append(ControlAPI.Member(
                id: record.nodeID.description, name: record.name, address: record.address, status: "untrusted",
                incarnation: record.incarnation, capabilities: [], load: 0,
                lastHeard: self.peers.notes.lastHeardFrom[record.nodeID] ?? at, accuser: nil, remoteAddress: nil,
                connection: "none", trust: "refused", since: nil))
        }
        return ControlAPI.Members(members: members)
    }

    public func nodeInfo() -> ControlAPI.NodeInfo {
        let bound: Bound?
        switch self.state {
        case .bound(let b), .running(let b): bound = b
        case .created, .stopped: bound = nil
        }
        return ControlAPI.NodeInfo(
            id: self.identity.nodeID.description, name: self.identity.name,
            listen: bound?.listening.description ?? self.settings.listen.description,
            advertise: bound?.address.description ?? (self.settings.advertise ?? self.settings.listen).description,
            identityLine: IdentityLine.render(self.identity.publicIdentity), open: self.settings.isOpen,
            startedAt: bound?.startedAt ?? Date(),
            audit: self.auditLog.map { log in
                let statistics = log.statistics
                return ControlAPI.AuditCost(
                    records: statistics.records, bytes: statistics.bytes, syncs: statistics.syncs,
                    writerBusySeconds: statistics.busy.seconds)
            },
            joins: self.settings.joins.map { address in
                let status = self.peers.notes.joins[address]
                let connected = self.peers.connections.all.values.contains { connection in
                    connection.origin == .dialled(address)
                        || self.peers.membership.member(connection.peer)?.record.address == address.description
                }
                return ControlAPI.JoinStatus(
                    address: address.description, connected: connected, lastError: status?.error, lastErrorAt: status?.at)
            },
            store: self.taskPlane.commitGate.isStoreWritable ? "ok" : "cannot write \(self.taskStore?.path ?? "the task store")",
            auditLog: self.taskPlane.commitGate.isAuditWritable ? "ok" : "cannot write \(self.auditLog?.directory ?? "the audit log")",
            messagesReceived: self.peers.accountability.received.messages, bytesReceived: self.peers.accountability.received.bytes,
            restoreProblems: self.taskPlane.restoreProblems,
            http: self.settings.httpControl.flatMap { http in bound?.httpControl?.port.map { HostAndPort(host: http.host, port: $0).description } })
    }
}

/// What the node keeps of a session it registered.
struct PeerSession {
    let channel: any Channel
    let peer: EstablishedPeer
    let since: Date
}

extension ConnectionTable.Connection where Handle == PeerSession {
    var channel: any Channel { self.handle.channel }
    var established: EstablishedPeer { self.handle.peer }
    var since: Date { self.handle.since }
}

extension TrustPolicy.Decision {
    var label: String {
        switch self {
        case .trusted: return "trusted"
        case .admittedByOpenMode: return "open"
        case .refused: return "refused"
        }
    }
}

extension Optional where Wrapped == SocketAddress {
    /// `127.0.0.1:51234` or `[::1]:51234`, for logs and the members table.
    var display: String {
        guard let address = self, let ip = address.ipAddress, let port = address.port else { return "?" }
        return HostAndPort(host: ip, port: port).description
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        self = .nanoseconds(Int64(duration.seconds * 1e9))
    }
}

/// Sits in the listener's pipeline and keeps errors (EMFILE under a connection flood, a child channel that failed
/// to initialise) from reaching the async accept stream, where any error would end the accept loop for good.
final class ListenerErrorHandler: ChannelInboundHandler {
    typealias InboundIn = Any
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.warning("listener error (still accepting)", metadata: ["error": "\(error)"])
    }
}

@available(*, unavailable)
extension ListenerErrorHandler: Sendable {}

import ArgumentParser
import Foundation
import Logging
import MeshCore
import ServiceLifecycle
import UnixSignals
import MeshTransport
import MeshControl
import MeshStorage

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the node in the foreground (SIGINT or SIGTERM stops it cleanly).")

    @OptionGroup var options: HomeOptions

    @Option(help: ArgumentHelp("Where to accept peers; port 0 picks a free port (or 'listen' in DIR/config.toml).", valueName: "HOST:PORT"))
    var listen: String?

    @Option(help: ArgumentHelp("A peer to dial, and re-dial whenever the connection drops. Repeatable.",
                               valueName: "HOST:PORT"))
    var join: [String] = []

    @Flag(help: "Accept any node holding the network key, not only the peers in DIR/peers.")
    var open = false

    @Option(help: ArgumentHelp(
        "A capability to offer: builtin:echo, builtin:stream (a test agent that emits progress), exec:COMMAND ARGS (quoted as in a shell) or http:URL as the executor; NAME*N=… runs N at once. Repeatable.",
        valueName: "NAME=EXECUTOR"))
    var capability: [String] = []

    @Option(help: ArgumentHelp("The address other nodes dial (default: the listen address).", valueName: "HOST:PORT"))
    var advertise: String?

    @Option(help: ArgumentHelp(
        "Timer preset: lan (probe every 1 s, memberlist's LAN defaults; the default) or local (probe every 200 ms, for one host).",
        valueName: "lan|local"), completion: .list(["lan", "local"]))
    var timers: String?

    @Option(parsing: .unconditional, help: "Sessions kept open at once; beyond it the least recently active are closed (default 16).")
    var maxConnections: Int?

    @Option(help: ArgumentHelp(
        "Also serve the control API over HTTP here (keep it on loopback); requests need 'Authorization: Bearer' with the token in DIR/control.token (GET /v1/health needs none).",
        valueName: "HOST:PORT"))
    var http: String?

    @Option(help: ArgumentHelp(
        "A node-wide per-peer limit, for example offers=20/s:20 (classes: gossip, offers, results, events, bytes, connections). Repeatable; overrides DIR/config.toml.",
        valueName: "CLASS=RATE/s[:BURST]"))
    var limit: [String] = []

    @Option(help: ArgumentHelp(
        "When a task step counts as stored: fsync (on disk, survives power loss; the default) or process (written to the kernel, survives kill -9 of the node; the disk is synced every 100 ms).",
        valueName: "fsync|process"), completion: .list(["fsync", "process"]))
    var durability: String?

    @Option(parsing: .unconditional, help: "The largest inline task input (JSON) this node accepts, in bytes (default \(NodeSettings.defaultTaskInput); at most \(NodeSettings.largestTaskInput), as an offer is one message of at most \(SecureSession.defaultMaximumMessageLength >> 20) MiB). Larger data goes as artifacts.")
    var maxInputBytes: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("The largest artifact this node stores, fetches or serves (K, M, G suffixes; default 1G).", valueName: "BYTES"))
    var maxArtifactBytes: String?

    @Option(parsing: .unconditional, help: ArgumentHelp("All artifacts of this node together, at most (K, M, G suffixes; default 10G); when full, new ones are refused.", valueName: "BYTES"))
    var artifactStoreBytes: String?

    @Option(help: ArgumentHelp(
        "Act on events of a topic (TOPIC may end in * for a prefix): run an executor (as --capability takes) with the event as its input, or start a workflow. Repeatable.",
        valueName: "TOPIC=EXECUTOR|workflow:FILE"))
    var subscribe: [String] = []

    @Flag(help: "Let webhooks (submit --callback) reach loopback, private and link-local addresses; refused otherwise (SSRF).")
    var allowPrivateCallbacks = false

    @Flag(help: "Start even if an audit log is broken: rename it *.broken-TIME and begin a new one (the node says which).")
    var setAsideBrokenAudit = false

    @Option(help: "trace, debug, info, notice, warning, error or critical (default info).",
            completion: .list(["trace", "debug", "info", "notice", "warning", "error", "critical"]))
    var logLevel: String?

    @Option(help: "text (one readable line a record; the default) or json (one JSON object a line).",
            completion: .list(["text", "json"]))
    var logFormat: String?

    @Option(help: "on (the default) or off: count metrics for GET /metrics.", completion: .list(["on", "off"]))
    var metrics: String?

    @Option(help: ArgumentHelp("Export spans of tasks, runs and workflows over OTLP/HTTP (JSON) to this collector, e.g. http://127.0.0.1:4318.", valueName: "URL"))
    var otlpEndpoint: String?

    /// Flags over `DIR/config.toml` over the defaults, checked; every mistake names the flag or key.
    struct Effective {
        var settings: NodeSettings
        var logLevel: Logger.Level
        var jsonLogs = false
    }

    func effectiveSettings(_ file: RunConfiguration) throws -> Effective {
        func parsed<T>(_ text: String, _ name: String, _ parse: (String) throws -> T) throws -> T {
            do { return try parse(text) } catch { throw CLIError("\(name): \(error)", status: .badInput) }
        }
        let source = { (flag: Bool, key: String) in flag ? "--\(key.replacingOccurrences(of: "_", with: "-"))" : "config.toml \(key)" }
        guard let listenText = self.listen ?? file.listen else {
            throw CLIError("give --listen HOST:PORT (or 'listen' in DIR/config.toml)", status: .badInput)
        }
        let listen = try parsed(listenText, source(self.listen != nil, "listen"), HostAndPort.init(parsing:))
        let timers = self.timers ?? file.timers ?? "lan"
        guard ["lan", "local"].contains(timers) else {
            throw CLIError("\(source(self.timers != nil, "timers")) takes lan or local, not '\(timers)'", status: .badInput)
        }
        var settings = timers == "local" ? NodeSettings.localTesting(listen: listen) : NodeSettings(listen: listen)
        let joinFlag = !self.join.isEmpty
        settings.joins = try (joinFlag ? self.join : file.join ?? []).map {
            try parsed($0, source(joinFlag, "join"), HostAndPort.init(parsing:))
        }
        let capabilityFlag = !self.capability.isEmpty
        settings.capabilities = try (capabilityFlag ? self.capability : file.capabilities ?? []).map {
            try parsed($0, source(capabilityFlag, "capabilities"), CapabilitySpec.init(parsing:))
        }
        guard Set(settings.capabilities.map(\.name)).count == settings.capabilities.count else {
            throw CLIError("\(source(capabilityFlag, "capabilities")): each capability name may appear once", status: .badInput)
        }
        settings.advertise = try (self.advertise ?? file.advertise).map {
            try parsed($0, source(self.advertise != nil, "advertise"), HostAndPort.init(parsing:))
        }
        settings.httpControl = try (self.http ?? file.http).map { try parsed($0, source(self.http != nil, "http"), HostAndPort.init(parsing:)) }
        let durability = self.durability ?? file.durability ?? "fsync"
        guard let mode = NodeSettings.Durability(rawValue: durability) else {
            throw CLIError("\(source(self.durability != nil, "durability")) must be fsync or process, not '\(durability)'", status: .badInput)
        }
        settings.durability = mode
        settings.maximumConnections = self.maxConnections ?? file.maxConnections ?? settings.maximumConnections
        guard settings.maximumConnections >= 1 else { throw CLIError("--max-connections must be at least 1", status: .badInput) }
        for (flag, text, key, setting) in [
            (self.maxArtifactBytes, self.maxArtifactBytes ?? file.maxArtifactBytes, "max_artifact_bytes", \NodeSettings.maximumArtifact),
            (self.artifactStoreBytes, self.artifactStoreBytes ?? file.artifactStoreBytes, "artifact_store_bytes", \NodeSettings.artifactCapacity),
        ] {
            guard let text else { continue }
            guard let bytes = Rate.number(Substring(text)), bytes >= 0, bytes < 1e18 else {
                throw CLIError(
                    "\(source(flag != nil, key)): '\(text)' is not a number of bytes (K, M and G suffixes allowed)", status: .badInput)
            }
            settings[keyPath: setting] = UInt64(bytes)
        }
        settings.maximumTaskInput = self.maxInputBytes ?? file.maxInputBytes ?? settings.maximumTaskInput
        guard (1...NodeSettings.largestTaskInput).contains(settings.maximumTaskInput) else {
            throw CLIError("the input limit must be 1 to \(NodeSettings.largestTaskInput) bytes", status: .badInput)
        }
        settings.isOpen = self.open || file.open == true
        settings.allowPrivateCallbacks = self.allowPrivateCallbacks || file.allowPrivateCallbacks == true
        let subscribeFlag = !self.subscribe.isEmpty
        settings.subscriptions = try (subscribeFlag ? self.subscribe : file.subscribe ?? []).map {
            try parseSubscription($0, source: source(subscribeFlag, "subscribe"))
        }
        settings.limits.rates.merge(file.limits) { _, new in new }
        for text in self.limit {
            do {
                let (limitClass, rate) = try Rate.parseLimit(text)
                settings.limits.rates[limitClass] = rate
            } catch {
                throw CLIError("--limit: \(error)", status: .badInput)
            }
        }
        settings.setAsideBrokenAuditLogs = self.setAsideBrokenAudit || file.setAsideBrokenAudit == true
        let levelText = self.logLevel ?? file.logLevel ?? "info"
        guard let level = Logger.Level(rawValue: levelText) else {
            throw CLIError("unknown log level '\(levelText)'", status: .badInput)
        }
        let format = self.logFormat ?? file.logFormat ?? "text"
        guard ["text", "json"].contains(format) else {
            throw CLIError("\(source(self.logFormat != nil, "log_format")) must be text or json, not '\(format)'", status: .badInput)
        }
        let metrics = self.metrics ?? file.metrics ?? "on"
        guard ["on", "off"].contains(metrics) else {
            throw CLIError("\(source(self.metrics != nil, "metrics")) must be on or off, not '\(metrics)'", status: .badInput)
        }
        settings.metricsEnabled = metrics == "on"
        settings.otlpEndpoint = self.otlpEndpoint ?? file.otlpEndpoint
        if let endpoint = settings.otlpEndpoint, !(endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://")) {
            throw CLIError("\(source(self.otlpEndpoint != nil, "otlp_endpoint")) must be an http:// or https:// URL", status: .badInput)
        }
        for spec in settings.capabilities {
            if case .exec(let command, _) = spec.executor, !Self.isExecutable(command) {
                throw CLIError(
                    "capability \(spec.name): '\(command)' is not an executable file nor a command on PATH", status: .badInput)
            }
        }
        return Effective(settings: settings, logLevel: level, jsonLogs: format == "json")
    }

    /// As `posix_spawnp` will look it up: a path, or a name searched in PATH.
    static func isExecutable(_ command: String) -> Bool {
        if command.contains("/") { return FileManager.default.isExecutableFile(atPath: command) }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(command)") }
    }

    func validate() throws {
        // What needs no file: the formats of the flags given (config.toml is checked when the node starts).
        if let listen { do { _ = try HostAndPort(parsing: listen) } catch { throw ValidationError("--listen: \(error)") } }
        for text in self.join { do { _ = try HostAndPort(parsing: text) } catch { throw ValidationError("--join: \(error)") } }
        for text in self.capability {
            do { _ = try CapabilitySpec(parsing: text) } catch { throw ValidationError("--capability: \(error)") }
        }
        if let timers { guard ["lan", "local"].contains(timers) else { throw ValidationError("--timers takes lan or local") } }
        if let maxConnections { guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") } }
        if let logLevel { guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") } }
        if let durability {
            guard NodeSettings.Durability(rawValue: durability) != nil else {
                throw ValidationError("--durability must be fsync or process, not '\(durability)'")
            }
        }
        for text in self.limit { do { _ = try Rate.parseLimit(text) } catch { throw ValidationError("--limit: \(error)") } }
    }

    func run() async throws {
        // Artifact chunks and large inputs are megabytes each: served from the heap rather than a fresh mmap (page
        // faults and zeroing) every time, with up to 64 MiB kept for the next ones: a 10 MiB inline task holds about
        // five such buffers at once, and giving them back made the executor fault 50 MiB in again for every task.
        _ = glibcMallopt(-3, 32 << 20)  // M_MMAP_THRESHOLD (its largest value)
        _ = glibcMallopt(-1, 64 << 20)  // M_TRIM_THRESHOLD
        let home = self.options.nodeHome
        // A config.toml that does not parse is bad input (64), as the same mistake in a flag is.
        let file: RunConfiguration
        do {
            file = try home.loadRunConfiguration()
        } catch {
            throw CLIError(error.description, status: .badInput)
        }
        let effective = try self.effectiveSettings(file)
        let settings = effective.settings
        if effective.jsonLogs {
            LoggingSystem.bootstrap { _ in JSONLogHandler(logLevel: effective.logLevel) }
        } else {
            LoggingSystem.bootstrap { _ in LineLogHandler(logLevel: effective.logLevel) }
        }
        let logger = Logger(label: "agentmesh")
        let identity = try reporting { try home.loadIdentity() }
        let networkKey = try reporting { try home.loadNetworkKey() }
        Self.warnAboutUnreachableAdvertise(settings, logger: logger)

        let node = MeshNode(home: home, identity: identity, networkKey: networkKey, settings: settings, logger: logger)
        let addresses: MeshNode.Addresses
        do {
            addresses = try await node.bind()
        } catch {
            throw CLIError(String(describing: error))
        }
        // One line on stdout that scripts can wait for; everything else is the log on stderr. It ends with the
        // address the listener got (its port, for port 0), which scripts take as a join address.
        let advertised = addresses.advertised == addresses.listening ? "" : "advertised as \(addresses.advertised), "
        FileHandle.standardOutput.write(
            Data("agentmesh \(identity.name) \(identity.nodeID) \(advertised)listening on \(addresses.listening)\n".utf8))
        // The HTTP listener's port on a line of its own (it got one for --http HOST:0, which the log alone said).
        if let http = await node.nodeInfo().http {
            FileHandle.standardOutput.write(Data("control API and A2A on http://\(http)\n".utf8))
        }
        // `agentmesh leave` ends the node's run; that is a clean stop of the whole group, not a failure.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: node, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// Peers on other hosts cannot dial a wildcard or loopback address: say so before they fail to.
    static func warnAboutUnreachableAdvertise(_ settings: NodeSettings, logger: Logger) {
        let advertised = (settings.advertise ?? settings.listen).host
        let isLoopback = advertised == "localhost" || advertised.hasPrefix("127.") || advertised == "::1"
        let isWildcard = advertised == "0.0.0.0" || advertised == "::"
        let remoteJoin = settings.joins.first { join in
            !(join.host == "localhost" || join.host.hasPrefix("127.") || join.host == "::1")
        }
        if isWildcard {
            logger.warning("peers cannot dial \(advertised); give --advertise with this host's address", metadata: [
                "listen": "\(settings.listen)",
            ])
        } else if isLoopback, let remoteJoin {
            logger.warning("this node advertises a loopback address but joins another host; give --advertise with this host's address", metadata: [
                "advertise": "\(advertised)", "join": "\(remoteJoin)",
            ])
        }
    }
}

/// glibc's `mallopt` (from <malloc.h>, which Swift's Glibc module does not export).
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32

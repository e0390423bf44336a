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

    @Option(help: ArgumentHelp("Where to accept peers; port 0 picks a free port.", valueName: "HOST:PORT"))
    var listen: String

    @Option(help: ArgumentHelp("A peer to dial, and re-dial whenever the connection drops. Repeatable.",
                               valueName: "HOST:PORT"))
    var join: [String] = []

    @Flag(help: "Accept any node holding the network key, not only the peers in DIR/peers.")
    var open = false

    @Option(help: ArgumentHelp(
        "A capability to offer: builtin:echo, exec:COMMAND ARGS or http:URL as the executor. Repeatable.",
        valueName: "NAME=EXECUTOR"))
    var capability: [String] = []

    @Option(help: ArgumentHelp("The address other nodes dial (default: the listen address).", valueName: "HOST:PORT"))
    var advertise: String?

    @Option(help: ArgumentHelp(
        "Timer preset: lan (probe every 1 s, memberlist's LAN defaults) or local (probe every 200 ms, for one host).",
        valueName: "lan|local"))
    var timers: String = "lan"

    @Option(help: "Sessions kept open at once; beyond it the least recently active are closed.")
    var maxConnections: Int = 16

    @Option(help: ArgumentHelp(
        "Also serve the control API over HTTP here (keep it on loopback); requests need 'Authorization: Bearer' with the token in DIR/control.token.",
        valueName: "HOST:PORT"))
    var http: String?

    @Option(help: ArgumentHelp(
        "A node-wide per-peer limit, for example offers=20/s:20 (classes: gossip, offers, results, bytes, connections). Repeatable; overrides DIR/config.toml.",
        valueName: "CLASS=RATE/s[:BURST]"))
    var limit: [String] = []

    @Option(help: ArgumentHelp(
        "When a task step counts as stored: fsync (on disk, survives power loss; the default) or process (written to the kernel, survives kill -9 of the node; the disk is synced every 100 ms).",
        valueName: "fsync|process"))
    var durability: String = "fsync"

    @Flag(help: "Start even if an audit log is broken: rename it *.broken-TIME and begin a new one (the node says which).")
    var setAsideBrokenAudit = false

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        _ = try self.parsedListen()
        _ = try self.parsedJoins()
        _ = try self.parsedCapabilities()
        _ = try self.parsedDurability()
        _ = try self.parsedAdvertise()
        _ = try self.parsedHTTP()
        _ = try self.parsedLimits()
        guard ["lan", "local"].contains(self.timers) else { throw ValidationError("--timers takes lan or local") }
        guard self.maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
        guard Logger.Level(rawValue: self.logLevel) != nil else {
            throw ValidationError("unknown log level '\(self.logLevel)'")
        }
    }

    private func parsedListen() throws -> HostAndPort {
        do { return try HostAndPort(parsing: self.listen) } catch { throw ValidationError("--listen: \(error)") }
    }

    private func parsedJoins() throws -> [HostAndPort] {
        try self.join.map { text in
            do { return try HostAndPort(parsing: text) } catch { throw ValidationError("--join: \(error)") }
        }
    }

    private func parsedCapabilities() throws -> [CapabilitySpec] {
        let specs = try self.capability.map { text in
            do { return try CapabilitySpec(parsing: text) } catch { throw ValidationError("--capability: \(error)") }
        }
        guard Set(specs.map(\.name)).count == specs.count else {
            throw ValidationError("--capability: each capability name may appear once")
        }
        return specs
    }

    private func parsedAdvertise() throws -> HostAndPort? {
        guard let advertise else { return nil }
        do { return try HostAndPort(parsing: advertise) } catch { throw ValidationError("--advertise: \(error)") }
    }

    private func parsedHTTP() throws -> HostAndPort? {
        guard let http else { return nil }
        do { return try HostAndPort(parsing: http) } catch { throw ValidationError("--http: \(error)") }
    }

    private func parsedDurability() throws -> NodeSettings.Durability {
        guard let durability = NodeSettings.Durability(rawValue: self.durability) else {
            throw ValidationError("--durability must be fsync or process, not '\(self.durability)'")
        }
        return durability
    }

    private func parsedLimits() throws -> [LimitClass: Rate] {
        var limits: [LimitClass: Rate] = [:]
        for text in self.limit {
            do {
                let (limitClass, rate) = try Rate.parseLimit(text)
                limits[limitClass] = rate
            } catch {
                throw ValidationError("--limit: \(error)")
            }
        }
        return limits
    }

    func run() async throws {
        let level = Logger.Level(rawValue: self.logLevel) ?? .info
        LoggingSystem.bootstrap { _ in LineLogHandler(logLevel: level) }
        let logger = Logger(label: "agentmesh")
        let home = self.options.nodeHome
        let identity = try reporting { try home.loadIdentity() }
        let networkKey = try reporting { try home.loadNetworkKey() }
        var settings = self.timers == "local"
            ? NodeSettings.localTesting(listen: try self.parsedListen()) : NodeSettings(listen: try self.parsedListen())
        settings.maximumConnections = self.maxConnections
        settings.joins = try self.parsedJoins()
        settings.isOpen = self.open
        settings.capabilities = try self.parsedCapabilities()
        settings.advertise = try self.parsedAdvertise()
        settings.httpControl = try self.parsedHTTP()
        let configured = try reporting { try home.loadConfiguredLimits() }
        settings.limits.rates.merge(configured) { _, new in new }
        settings.limits.rates.merge(try self.parsedLimits()) { _, new in new }
        settings.setAsideBrokenAuditLogs = self.setAsideBrokenAudit
        settings.durability = try self.parsedDurability()

        let node = MeshNode(home: home, identity: identity, networkKey: networkKey, settings: settings, logger: logger)
        let address: HostAndPort
        do {
            address = try await node.bind()
        } catch {
            throw CLIError(String(describing: error))
        }
        // One line on stdout that scripts can wait for; everything else is the log on stderr.
        FileHandle.standardOutput.write(
            Data("agentmesh \(identity.name) \(identity.nodeID) listening on \(address)\n".utf8))
        // `agentmesh leave` ends the node's run; that is a clean stop of the whole group, not a failure.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: node, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

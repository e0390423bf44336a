import Foundation
public import MeshCore
public import MeshCrypto

/// The node's home folder (DESIGN.md): identity, network key, trusted peers, control socket.
/// Every path a command touches comes from here.
public struct NodeHome: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    /// `--home`, else `$AGENTMESH_HOME`, else `$HOME/.agentmesh` (the passwd entry's home only when `$HOME` is unset,
    /// so a service or container that sets `HOME` gets its own folder).
    public static func resolve(_ explicit: String?, environment: [String: String]? = nil) -> NodeHome {
        let environment = environment ?? ProcessInfo.processInfo.environment
        if let explicit, !explicit.isEmpty { return NodeHome(path: explicit) }
        if let fromEnvironment = environment["AGENTMESH_HOME"], !fromEnvironment.isEmpty {
            return NodeHome(path: fromEnvironment)
        }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return NodeHome(path: home + "/.agentmesh")
    }

    public var identityKeyPath: String { self.path + "/identity.key" }
    public var identityPublicPath: String { self.path + "/identity.pub" }
    public var networkKeyPath: String { self.path + "/network.key" }
    public var peersDirectory: String { self.path + "/peers" }
    public var controlSocketPath: String { self.path + "/control.sock" }
    public var taskStorePath: String { self.path + "/node.sqlite" }
    public var controlTokenPath: String { self.path + "/control.token" }
    public var auditDirectory: String { self.path + "/audit" }
    /// Artifacts by SHA-256 (`HEX`, with `HEX.chain` and `HEX.meta`), downloads in progress in `partial/`.
    public var artifactsDirectory: String { self.path + "/artifacts" }
    public var configPath: String { self.path + "/config.toml" }

    // MARK: - init

    /// Creates the identity (and a network key unless one is given). Refuses to touch an existing identity.
    /// Creates the identity, and the network key: copied from `networkKeyFile`, or read from `networkKeyText`
    /// (64 hex digits, as `agentmesh id --network` prints it), or new.
    public func initialize(name: String?, networkKeyFile: String?, networkKeyText: String? = nil) throws(HomeError) -> NodeIdentity {
        if FileManager.default.fileExists(atPath: self.identityKeyPath) {
            throw .identityExists(self.identityKeyPath)
        }
        var networkKey = try networkKeyFile.map { file throws(HomeError) in try Self.readNetworkKey(at: file) }
        if let networkKeyText {
            var bytes = Array(networkKeyText.utf8)
            defer { wipe(&bytes) }
            networkKey = try Self.networkKey(from: bytes, source: "--network-key")
        }
        if let name, !NodeName.isValid(name) {
            throw .invalidName(name)
        }
        let signingKey = Ed25519SigningKey()
        let identity = NodeIdentity(
            name: name ?? "node-\(NodeID(identityKey: signingKey.publicKey).description.prefix(8))", signingKey: signingKey)

        try FileSystem.createDirectory(self.path, mode: 0o700)
        try FileSystem.createDirectory(self.peersDirectory, mode: 0o700)
        if let networkKey {
            try self.writeNetworkKey(networkKey)
        } else if !FileManager.default.fileExists(atPath: self.networkKeyPath) {
            try self.writeNetworkKey(NetworkKey.generate())
        }
        var ed25519 = identity.signingKey.exportSecretKey()
        var x25519 = identity.staticKey.exportSecretKey()
        defer {
            wipe(&ed25519)
            wipe(&x25519)
        }
        let keyFile = """
            # AgentMesh node identity. SECRET: whoever holds this file can act as this node.
            name = \(TOMLDocument.quoted(identity.name))
            ed25519-secret = \(TOMLDocument.quoted(Hex.encode(ed25519)))
            x25519-secret = \(TOMLDocument.quoted(Hex.encode(x25519)))

            """
        try FileSystem.writeAtomically(Array(keyFile.utf8), to: self.identityKeyPath, mode: 0o600)
        try FileSystem.writeAtomically(
            Array((IdentityLine.render(identity.publicIdentity) + "\n").utf8), to: self.identityPublicPath, mode: 0o644)
        return identity
    }

    private func writeNetworkKey(_ key: NetworkKey) throws(HomeError) {
        var bytes = key.exportKey()
        defer { wipe(&bytes) }
        try FileSystem.writeAtomically(bytes, to: self.networkKeyPath, mode: 0o600)
    }

    // MARK: - Loading

    /// `DIR/config.toml`: every `run` setting (flags override it) and the node-wide `[limits]`; empty when the file
    /// is absent. An unknown key or table is refused with its name, so a typo never silently does nothing.
    public func loadRunConfiguration() throws(HomeError) -> RunConfiguration {
        guard FileManager.default.fileExists(atPath: self.configPath) else { return RunConfiguration() }
        let text = try FileSystem.readText(self.configPath)
        do {
            return try RunConfiguration(parsing: text)
        } catch let error as HomeError {
            throw error
        } catch {
            throw .malformed(self.configPath, "\(error)")
        }
    }

    public func loadIdentity() throws(HomeError) -> NodeIdentity {
        guard FileManager.default.fileExists(atPath: self.identityKeyPath) else { throw .noIdentity(self.path) }
        let text = try FileSystem.readText(self.identityKeyPath)
        let document: TOMLDocument
        do { document = try TOMLDocument(parsing: text) } catch {
            throw .malformed(self.identityKeyPath, error.description)
        }
        func secret(_ key: String, length: Int) throws(HomeError) -> SecretBytes {
            guard case .string(let hex)? = document["", key], let bytes = Hex.decode(hex), bytes.count == length else {
                throw .malformed(self.identityKeyPath, "'\(key)' must be \(length * 2) hex digits")
            }
            return SecretBytes(copying: bytes)
        }
        guard case .string(let name)? = document["", "name"], NodeName.isValid(name) else {
            throw .malformed(self.identityKeyPath, "'name' is missing or invalid")
        }
        do {
            return NodeIdentity(
                name: name,
                signingKey: try Ed25519SigningKey(secretKey: try secret("ed25519-secret", length: 64)),
                staticKey: try X25519KeyPair(secretKey: try secret("x25519-secret", length: 32)))
        } catch let error as HomeError {
            throw error
        } catch {
            throw .malformed(self.identityKeyPath, "the ed25519 secret key is damaged (its halves do not match)")
        }
    }

    public func loadNetworkKey() throws(HomeError) -> NetworkKey {
        guard FileManager.default.fileExists(atPath: self.networkKeyPath) else { throw .noNetworkKey(self.networkKeyPath) }
        return try Self.readNetworkKey(at: self.networkKeyPath)
    }

    /// A network key file holds 32 raw bytes; 64 hex digits (with an optional newline) are accepted too, so a key
    /// can travel through a terminal.
    static func readNetworkKey(at path: String) throws(HomeError) -> NetworkKey {
        var bytes = try FileSystem.readBytes(path)
        defer { wipe(&bytes) }
        return try Self.networkKey(from: bytes, source: path)
    }

    private static func networkKey(from raw: [UInt8], source: String) throws(HomeError) -> NetworkKey {
        var bytes = raw
        defer { wipe(&bytes) }
        if bytes.count != NetworkKey.byteCount {
            let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let decoded = Hex.decode(text), decoded.count == NetworkKey.byteCount else {
                throw .invalidNetworkKey(source, found: bytes.count)
            }
            bytes = decoded
        }
        return try! NetworkKey(key: SecretBytes(copying: bytes))  // the length was checked above
    }

    /// The network key as text (64 hex digits), to carry to another host over a channel you trust.
    public static func networkKeyText(_ key: NetworkKey) -> String {
        var bytes = key.exportKey()
        defer { wipe(&bytes) }
        return Hex.encode(bytes)
    }

    /// A short fingerprint of the network key that two hosts can read to each other to check they hold the same
    /// key, without revealing it: the first 8 bytes of a domain-separated SHA-256, in four groups.
    public static func networkKeyFingerprint(_ key: NetworkKey) -> String {
        var bytes = key.exportKey()
        defer { wipe(&bytes) }
        let digest = Hex.encode(Array(SHA256.hash(Array("agentmesh-network-key-fingerprint-v1".utf8), bytes).prefix(8)))
        return stride(from: 0, to: 16, by: 4).map { offset in
            String(digest.dropFirst(offset).prefix(4))
        }.joined(separator: "-")
    }

    /// The bearer token that guards the control API over TCP (`run --http`): read from `control.token`, or created
    /// there (32 random bytes as hex, mode 0600) on first use.
    public func loadOrCreateControlToken() throws(HomeError) -> String {
        try self.loadOrCreateSecret(self.controlTokenPath, "a control token")
    }

    public var webhookSecretPath: String { self.path + "/webhook.secret" }

    /// The secret webhook deliveries are signed with, as Standard Webhooks writes one (`whsec_` and the key in
    /// base64): read from `webhook.secret`, or created there (a 32-byte key, mode 0600) on first use. A receiver
    /// verifies deliveries with the same text and any Standard Webhooks library.
    public func loadOrCreateWebhookSecret() throws(HomeError) -> String {
        try self.loadOrCreateSecret(self.webhookSecretPath, "a webhook secret") { key in "whsec_" + Data(key).base64EncodedString() }
    }

    private func loadOrCreateSecret(
        _ path: String, _ what: String, written: ([UInt8]) -> String = { Hex.encode($0) }
    ) throws(HomeError) -> String {
        if FileManager.default.fileExists(atPath: path) {
            let secret = String(decoding: try FileSystem.readBytes(path), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            guard secret.count >= 16, secret.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
                throw .malformed(path, "\(what) is one line of at least 16 printable characters")
            }
            return secret
        }
        var generator = SystemRandomNumberGenerator()
        let secret = written((0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
        try FileSystem.writeAtomically(Array((secret + "\n").utf8), to: path, mode: 0o600)
        return secret
    }

    /// Every readable descriptor in `peers/`, plus a sentence for each file that could not be used.
    public func loadTrustedPeers() -> (descriptors: [PeerDescriptor], problems: [String]) {
        let files: [String]
        do {
            files = try FileManager.default.contentsOfDirectory(atPath: self.peersDirectory).sorted()
        } catch {
            return ([], FileManager.default.fileExists(atPath: self.peersDirectory)
                ? ["cannot list \(self.peersDirectory): \(error.localizedDescription)"] : [])
        }
        var descriptors: [PeerDescriptor] = []
        var problems: [String] = []
        for file in files where file.hasSuffix(".toml") {
            let path = self.peersDirectory + "/" + file
            do {
                descriptors.append(try PeerDescriptor(parsing: try FileSystem.readText(path)))
            } catch let error as PeerDescriptor.ParseError {
                problems.append("ignoring peer descriptor \(path): \(error)")
            } catch {
                problems.append("ignoring peer descriptor \(path): \(error)")
            }
        }
        return (descriptors, problems)
    }

    /// The modification time of `peers/`, so a running node can notice `agentmesh trust` without polling files.
    /// A plain `stat`: Foundation's attributes also look up the owner's name, reading `/etc/passwd` and
    /// `/etc/group` on every call, and the trust policy is consulted for every message.
    package func peersDirectoryStamp() -> PeersDirectoryStamp? {
        var status = stat()
        guard stat(self.peersDirectory, &status) == 0 else { return nil }
        return PeersDirectoryStamp(
            seconds: Int64(status.st_mtim.tv_sec), nanoseconds: Int64(status.st_mtim.tv_nsec), inode: UInt64(status.st_ino))
    }

    package struct PeersDirectoryStamp: Equatable, Sendable {
        let seconds: Int64
        let nanoseconds: Int64
        let inode: UInt64
    }

    // MARK: - trust

    public enum TrustOutcome: Equatable, Sendable {
        case added(path: String)
        case updated(path: String)
        case unchanged(path: String)
    }

    /// Writes a descriptor for `peer` into `peers/`.
    public func trust(_ peer: PeerIdentity) throws(HomeError) -> TrustOutcome {
        if let own = try? self.loadIdentity(), own.signingKey.publicKey == peer.identityKey {
            throw .trustingSelf
        }
        try FileSystem.createDirectory(self.peersDirectory, mode: 0o700)
        let existing = try? PeerDescriptor(parsing: FileSystem.readText(self.peersDirectory + "/\(peer.nodeID).toml"))
        // Re-trusting a peer keeps the limits written in its descriptor.
        let descriptor = PeerDescriptor(identity: peer, limits: existing?.limits ?? [:])
        let path = self.peersDirectory + "/" + descriptor.fileName
        if existing == descriptor { return .unchanged(path: path) }
        try FileSystem.writeAtomically(Array(descriptor.render().utf8), to: path, mode: 0o644)
        return existing == nil ? .added(path: path) : .updated(path: path)
    }

    /// Removes the descriptor of the one trusted peer whose name, node id or id prefix is `reference`; returns it.
    public func untrust(_ reference: String) throws(HomeError) -> PeerDescriptor {
        let trusted = self.loadTrustedPeers().descriptors
        let exact = trusted.filter { $0.identity.name == reference || $0.identity.nodeID.description == reference }
        let matches = exact.isEmpty
            ? trusted.filter { reference.count >= 4 && $0.identity.nodeID.description.hasPrefix(reference.lowercased()) }
            : exact
        guard matches.count == 1, let descriptor = matches.first else {
            throw .noSuchPeer(reference, known: trusted.map { "\($0.identity.name) \($0.identity.nodeID.short)" })
        }
        let path = self.peersDirectory + "/" + descriptor.fileName
        guard unlink(path) == 0 else { throw .writeFailed(path, String(cString: strerror(errno))) }
        return descriptor
    }
}

/// The `run` settings `DIR/config.toml` may hold (keys as `run`'s flags, with `_` for `-`; `capabilities` for the
/// repeatable `--capability`, and `[limits]` for `--limit`). A test checks them against `run`'s options.
public struct RunConfiguration: Sendable, Equatable {
    public static let keys = [
        "listen", "advertise", "join", "capabilities", "timers", "http", "durability", "max_connections", "open",
        "log_level", "max_input_bytes", "allow_private_callbacks", "subscribe", "log_format", "metrics", "otlp_endpoint",
        "max_artifact_bytes", "artifact_store_bytes", "set_aside_broken_audit",
    ]
    public var listen: String?
    public var advertise: String?
    public var join: [String]?
    public var capabilities: [String]?
    public var timers: String?
    public var http: String?
    public var durability: String?
    public var maxConnections: Int?
    public var open: Bool?
    public var logLevel: String?
    public var maxInputBytes: Int?
    public var allowPrivateCallbacks: Bool?
    public var subscribe: [String]?
    public var logFormat: String?
    public var metrics: String?
    public var otlpEndpoint: String?
    /// A number of bytes with an optional K, M or G suffix, as the flag takes it.
    public var maxArtifactBytes: String?
    public var artifactStoreBytes: String?
    public var setAsideBrokenAudit: Bool?
    public var limits: [LimitClass: Rate] = [:]

    public init() {}

    struct KeyError: Error, CustomStringConvertible {
        let description: String
    }

    /// A whole `config.toml`: the run settings at the top, `[limits]`, nothing else.
    public init(parsing text: String) throws {
        let document = try TOMLDocument(parsing: text)
        if let table = Set(document.tables.keys).subtracting(["", "limits"]).sorted().first {
            throw KeyError(description: "unknown table [\(table)]; it may hold the run settings and [limits]")
        }
        try self.init(document.tables[""] ?? [:])
        self.limits = try PeerDescriptor.parseLimits(document)
    }

    init(_ table: [String: TOMLDocument.Value]) throws {
        for key in table.keys.sorted() where !Self.keys.contains(key) {
            throw KeyError(description: "unknown key '\(key)'; known: \(Self.keys.joined(separator: ", "))")
        }
        func string(_ key: String) throws -> String? {
            guard let value = table[key] else { return nil }
            guard case .string(let text) = value else { throw KeyError(description: "\(key) must be a string") }
            return text
        }
        func strings(_ key: String) throws -> [String]? {
            guard let value = table[key] else { return nil }
            guard case .array(let values) = value else { throw KeyError(description: "\(key) must be an array of strings") }
            return try values.map { element in
                guard case .string(let text) = element else { throw KeyError(description: "\(key) must be an array of strings") }
                return text
            }
        }
        func integer(_ key: String) throws -> Int? {
            guard let value = table[key] else { return nil }
            guard case .integer(let number) = value, number > 0, number < Int64(Int32.max) else {
                throw KeyError(description: "\(key) must be a positive whole number")
            }
            return Int(number)
        }
        self.listen = try string("listen")
        self.advertise = try string("advertise")
        self.join = try strings("join")
        self.capabilities = try strings("capabilities")
        self.timers = try string("timers")
        self.http = try string("http")
        self.durability = try string("durability")
        self.maxConnections = try integer("max_connections")
        func boolean(_ key: String) throws -> Bool? {
            guard let value = table[key] else { return nil }
            guard case .boolean(let flag) = value else { throw KeyError(description: "\(key) must be true or false") }
            return flag
        }
        self.open = try boolean("open")
        self.allowPrivateCallbacks = try boolean("allow_private_callbacks")
        self.subscribe = try strings("subscribe")
        self.logFormat = try string("log_format")
        self.metrics = try string("metrics")
        self.otlpEndpoint = try string("otlp_endpoint")
        self.logLevel = try string("log_level")
        self.maxInputBytes = try integer("max_input_bytes")
        func byteCount(_ key: String) throws -> String? {
            switch table[key] {
            case nil: return nil
            case .string(let text)?: return text
            case .integer(let number)? where number >= 0: return String(number)
            default: throw KeyError(description: "\(key) must be a number of bytes, such as 1073741824 or \"1G\"")
            }
        }
        self.maxArtifactBytes = try byteCount("max_artifact_bytes")
        self.artifactStoreBytes = try byteCount("artifact_store_bytes")
        self.setAsideBrokenAudit = try boolean("set_aside_broken_audit")
    }
}

/// What can go wrong with a home folder, each worded as the one sentence the CLI prints.
public enum HomeError: Error, CustomStringConvertible, Equatable {
    case identityExists(String)
    case noIdentity(String)
    case noNetworkKey(String)
    case invalidName(String)
    case invalidNetworkKey(String, found: Int)
    case malformed(String, String)
    case unreadable(String, String)
    case writeFailed(String, String)
    case trustingSelf
    case noSuchPeer(String, known: [String])

    public var description: String {
        switch self {
        case .identityExists(let path):
            return "\(path) already exists; refusing to overwrite this node's identity"
        case .noIdentity(let home):
            return "no identity in \(home); create one with 'agentmesh init --home \(home)'"
        case .noNetworkKey(let path):
            return "no network key at \(path); copy the mesh's network.key there or run 'agentmesh init'"
        case .invalidName(let name):
            return "invalid node name '\(name)': use 1 to 64 characters from A-Z a-z 0-9 . _ -"
        case .invalidNetworkKey(let path, let found):
            return "\(path) is not a network key: expected 32 bytes or 64 hex digits, found \(found) bytes"
        case .malformed(let path, let why):
            return "\(path) is malformed: \(why)"
        case .unreadable(let path, let why):
            return "cannot read \(path): \(why)"
        case .writeFailed(let path, let why):
            return "cannot write \(path): \(why)"
        case .trustingSelf:
            return "that is this node's own identity; a node needs no descriptor for itself"
        case .noSuchPeer(let reference, let known):
            return "no one trusted peer is '\(reference)'; trusted: "
                + (known.isEmpty ? "none" : known.joined(separator: ", ")) + " (give a name or an id prefix)"
        }
    }
}

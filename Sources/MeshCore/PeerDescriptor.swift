public import MeshCrypto

/// A trusted peer, as written in `DIR/peers/<node id>.toml` (format: peers/README.md).
public struct PeerDescriptor: Sendable, Equatable {
    public let identity: PeerIdentity
    /// Limits for this peer that replace the node-wide ones (`[limits]`, `CLASS = "RATE/s[:BURST]"`).
    public let limits: [LimitClass: Rate]

    public init(identity: PeerIdentity, limits: [LimitClass: Rate] = [:]) {
        self.identity = identity
        self.limits = limits
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case syntax(TOMLDocument.ParseError)
        case missingKey(String)
        case invalidKey(String, reason: String)

        public var description: String {
            switch self {
            case .syntax(let error): return error.description
            case .missingKey(let key): return "missing '\(key)'"
            case .invalidKey(let key, let reason): return "invalid '\(key)': \(reason)"
            }
        }
    }

    public var fileName: String { "\(self.identity.nodeID).toml" }

    public func render() -> String {
        """
        # AgentMesh peer descriptor (format: peers/README.md)
        name = \(TOMLDocument.quoted(self.identity.name))
        id = \(TOMLDocument.quoted(self.identity.nodeID.description))
        ed25519 = \(TOMLDocument.quoted(Hex.encode(self.identity.identityKey.bytes)))
        x25519 = \(TOMLDocument.quoted(Hex.encode(self.identity.staticKey)))

        """ + Self.renderLimits(self.limits)
    }

    /// A `[limits]` table, or nothing when there are no limits.
    public static func renderLimits(_ limits: [LimitClass: Rate]) -> String {
        guard !limits.isEmpty else { return "" }
        return "\n[limits]\n" + limits.sorted { $0.key < $1.key }
            .map { "\($0.key) = \(TOMLDocument.quoted($0.value.description))\n" }.joined()
    }

    /// Reads a `[limits]` table: each key a limit class, each value a quoted `RATE/s[:BURST]`.
    public static func parseLimits(_ document: TOMLDocument) throws(ParseError) -> [LimitClass: Rate] {
        var limits: [LimitClass: Rate] = [:]
        for (key, value) in document.tables["limits"] ?? [:] {
            guard let limitClass = LimitClass(rawValue: key) else {
                throw .invalidKey("limits.\(key)", reason: "not a limit class (use \(LimitClass.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard case .string(let text) = value else {
                throw .invalidKey("limits.\(key)", reason: "expected a quoted rate like \"20/s:40\"")
            }
            do { limits[limitClass] = try Rate(parsing: text) } catch { throw .invalidKey("limits.\(key)", reason: error.description) }
        }
        return limits
    }

    public init(parsing text: String) throws(ParseError) {
        let document: TOMLDocument
        do { document = try TOMLDocument(parsing: text) } catch { throw .syntax(error) }
        func string(_ key: String) throws(ParseError) -> String {
            guard let value = document["", key] else { throw .missingKey(key) }
            guard case .string(let text) = value else { throw .invalidKey(key, reason: "expected a quoted string") }
            return text
        }
        let name = try string("name")
        guard NodeName.isValid(name) else {
            throw .invalidKey("name", reason: "1 to 64 characters of A-Z a-z 0-9 . _ -")
        }
        guard let keyBytes = Hex.decode(try string("ed25519")), let key = try? Ed25519PublicKey(bytes: keyBytes) else {
            throw .invalidKey("ed25519", reason: "expected 64 hex digits")
        }
        guard let staticKey = Hex.decode(try string("x25519")), staticKey.count == X25519KeyPair.byteCount else {
            throw .invalidKey("x25519", reason: "expected 64 hex digits")
        }
        let identity = PeerIdentity(name: name, identityKey: key, staticKey: staticKey)
        guard NodeID(hex: try string("id")) == identity.nodeID else {
            throw .invalidKey("id", reason: "does not match the ed25519 key")
        }
        self.identity = identity
        self.limits = try Self.parseLimits(document)
    }
}

/// Who may connect: the peers in `DIR/peers`, or in open mode anyone holding the network key.
public struct TrustPolicy: Sendable {
    public enum Decision: Equatable, Sendable {
        case trusted
        case admittedByOpenMode
        case refused(String)
    }

    public var trusted: [Ed25519PublicKey: PeerDescriptor]
    public var isOpen: Bool

    public init(trusted: [PeerDescriptor] = [], isOpen: Bool = false) {
        self.trusted = Dictionary(trusted.map { ($0.identity.identityKey, $0) }, uniquingKeysWith: { first, _ in first })
        self.isOpen = isOpen
    }

    public func decision(for peer: PeerIdentity) -> Decision {
        if let descriptor = self.trusted[peer.identityKey] {
            // The descriptor pins the Noise static key too: a peer whose identity key leaked but whose static
            // key did not cannot be impersonated with a new static key.
            guard descriptor.identity.staticKey == peer.staticKey else {
                return .refused("x25519 key differs from the one in the peer descriptor")
            }
            return .trusted
        }
        return self.isOpen ? .admittedByOpenMode : .refused("not a trusted peer (no descriptor in peers/) and the node does not run with --open")
    }
}

public import MeshCrypto

/// A node's id: the first 16 bytes of SHA-256 over a domain tag and its Ed25519 public key, in hex.
/// It is a name for humans and file names; the key itself is what the handshake authenticates.
/// Stored inline (two words) because every node keeps one per member: a 10,000-node simulation holds 10^8.
public struct NodeID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let byteCount = 16
    public let high: UInt64
    public let low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public init(identityKey: Ed25519PublicKey) {
        self.init(bytes: SHA256.hash(Array("agentmesh-node-id-v1".utf8), identityKey.bytes).prefix(Self.byteCount))!
    }

    /// Exactly 16 bytes, big-endian.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        let array = Array(bytes)
        self.high = array[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        self.low = array[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
    }

    public init?(hex: some StringProtocol) {
        guard let bytes = Hex.decode(hex) else { return nil }
        self.init(bytes: bytes)
    }

    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: self.high >> (56 - 8 * $0)) }
            + (0..<8).map { UInt8(truncatingIfNeeded: self.low >> (56 - 8 * $0)) }
    }

    public var description: String { Hex.encode(self.bytes) }
    /// The first 12 hex digits: enough to tell peers apart in a table.
    public var short: String { String(self.description.prefix(12)) }

    public static func < (lhs: NodeID, rhs: NodeID) -> Bool { (lhs.high, lhs.low) < (rhs.high, rhs.low) }
}

/// Node names: 1 to 64 characters from `[A-Za-z0-9._-]`, so they are safe in identity lines, logs and tables.
public enum NodeName {
    public static let maximumLength = 64

    public static func isValid(_ name: String) -> Bool {
        let utf8 = Array(name.utf8)
        guard (1...maximumLength).contains(utf8.count) else { return false }
        return utf8.allSatisfy { c in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: ".")
                || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
        }
    }
}

/// What every node may know about a peer: its name and public keys.
public struct PeerIdentity: Hashable, Sendable {
    public let name: String
    public let identityKey: Ed25519PublicKey
    /// The peer's Noise static X25519 public key, bound to `identityKey` by a signature in the handshake.
    public let staticKey: [UInt8]
    public var nodeID: NodeID { NodeID(identityKey: self.identityKey) }

    public init(name: String, identityKey: Ed25519PublicKey, staticKey: [UInt8]) {
        self.name = name
        self.identityKey = identityKey
        self.staticKey = staticKey
    }
}

/// This node's secret credentials: an Ed25519 identity and a separate X25519 Noise static key
/// (.github/SECURITY.md, keys: never convert one into the other).
public struct NodeIdentity: Sendable {
    public let name: String
    public let signingKey: Ed25519SigningKey
    public let staticKey: X25519KeyPair

    public init(name: String, signingKey: Ed25519SigningKey = .init(), staticKey: X25519KeyPair = .init()) {
        self.name = name
        self.signingKey = signingKey
        self.staticKey = staticKey
    }

    public var publicIdentity: PeerIdentity {
        PeerIdentity(name: self.name, identityKey: self.signingKey.publicKey, staticKey: self.staticKey.publicKey)
    }
    public var nodeID: NodeID { NodeID(identityKey: self.signingKey.publicKey) }

    /// The signature that binds the Noise static key to the identity (the libp2p Noise pattern).
    public func staticKeyBinding() -> [UInt8] {
        self.signingKey.signature(for: Self.bindingMessage(staticKey: self.staticKey.publicKey))
    }

    static func bindingMessage(staticKey: [UInt8]) -> [UInt8] {
        Array("agentmesh-noise-static-v1".utf8) + staticKey
    }
}

// MARK: - Identity line

/// The one-line, shareable form of a peer identity, printed by `agentmesh id` and read by `agentmesh trust`:
///
///     agentmesh-id/1 name=node-a id=<32 hex> ed25519=<64 hex> x25519=<64 hex>
///
/// The id is redundant on purpose: it is checked against the key, so a line damaged in copying is refused.
public enum IdentityLine {
    public static let tag = "agentmesh-id/1"

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case notAnIdentityLine
        case missingField(String)
        case invalidField(String)
        case idDoesNotMatchKey

        public var description: String {
            switch self {
            case .notAnIdentityLine: return "not an AgentMesh identity line (it should start with '\(IdentityLine.tag)')"
            case .missingField(let field): return "identity line has no '\(field)=' field"
            case .invalidField(let field): return "identity line has an invalid '\(field)' field"
            case .idDoesNotMatchKey: return "identity line's id does not match its ed25519 key (damaged or edited line)"
            }
        }
    }

    public static func render(_ identity: PeerIdentity) -> String {
        "\(tag) name=\(identity.name) id=\(identity.nodeID) ed25519=\(Hex.encode(identity.identityKey.bytes)) "
            + "x25519=\(Hex.encode(identity.staticKey))"
    }

    public static func parse(_ line: String) throws(ParseError) -> PeerIdentity {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" })
        guard words.first == Substring(tag) else { throw .notAnIdentityLine }
        var fields: [String: String] = [:]
        for word in words.dropFirst() {
            guard let equals = word.firstIndex(of: "=") else { throw .invalidField(String(word)) }
            fields[String(word[..<equals])] = String(word[word.index(after: equals)...])
        }
        func field(_ name: String) throws(ParseError) -> String {
            guard let value = fields[name] else { throw .missingField(name) }
            return value
        }
        let name = try field("name")
        guard NodeName.isValid(name) else { throw .invalidField("name") }
        guard let id = NodeID(hex: try field("id")) else { throw .invalidField("id") }
        guard let keyBytes = Hex.decode(try field("ed25519")), let key = try? Ed25519PublicKey(bytes: keyBytes) else {
            throw .invalidField("ed25519")
        }
        guard let staticKey = Hex.decode(try field("x25519")), staticKey.count == X25519KeyPair.byteCount else {
            throw .invalidField("x25519")
        }
        let identity = PeerIdentity(name: name, identityKey: key, staticKey: staticKey)
        guard identity.nodeID == id else { throw .idDoesNotMatchKey }
        return identity
    }
}

public import MeshCrypto

/// Something a member can do, with how many tasks of it may run there at once.
public struct Capability: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let maximumNameLength = 64
    public let name: String
    public let capacity: UInt16

    public init(name: String, capacity: UInt16) {
        self.name = name
        self.capacity = capacity
    }

    /// Capability names follow node names: 1 to 64 characters from `[A-Za-z0-9._-]`.
    public static func isValidName(_ name: String) -> Bool { NodeName.isValid(name) }

    public var description: String { "\(self.name)×\(self.capacity)" }
    public static func < (lhs: Capability, rhs: Capability) -> Bool { lhs.name < rhs.name }
}

/// Signs and verifies membership data. Production uses the node's Ed25519 key; the simulator, which runs thousands
/// of members in one process, uses ``unsigned`` so that the protocol logic, not the crypto, is what it measures.
public struct MembershipSigner: Sendable {
    public let sign: @Sendable ([UInt8]) -> [UInt8]
    public let verify: @Sendable (_ signature: [UInt8], _ message: [UInt8], _ key: Ed25519PublicKey) -> Bool

    public init(
        sign: @escaping @Sendable ([UInt8]) -> [UInt8],
        verify: @escaping @Sendable ([UInt8], [UInt8], Ed25519PublicKey) -> Bool
    ) {
        self.sign = sign
        self.verify = verify
    }

    public static func ed25519(_ identity: NodeIdentity) -> MembershipSigner {
        let key = identity.signingKey
        return MembershipSigner(
            sign: { key.signature(for: $0) }, verify: { signature, message, publicKey in
                publicKey.isValidSignature(signature, for: message)
            })
    }

    /// For simulation and tests only: signs nothing and accepts an empty signature.
    public static let unsigned = MembershipSigner(sign: { _ in [] }, verify: { signature, _, _ in signature.isEmpty })
}

/// What a member says about itself, signed by its own Ed25519 key: no peer can forge another's address,
/// capabilities, load or liveness. A member re-signs with a higher incarnation whenever anything changes.
public struct MemberRecord: Sendable, Equatable {
    public static let protocolVersion: UInt8 = 1
    static let signatureDomain = Array("agentmesh-member-v1".utf8)
    public static let maximumCapabilities = 64

    /// Immutable and shared: every node keeps one record per member, so the record is one word in the table.
    private final class Storage: Sendable {
        let nodeID: NodeID
        let identityKey: Ed25519PublicKey
        let staticKey: [UInt8]
        let name: String
        let address: String
        let incarnation: UInt64
        let capabilities: [Capability]
        let load: UInt32
        let protocolVersion: UInt8
        let signature: [UInt8]

        init(
            identity: PeerIdentity, address: String, incarnation: UInt64, capabilities: [Capability], load: UInt32,
            signature: [UInt8]
        ) {
            self.nodeID = identity.nodeID
            self.identityKey = identity.identityKey
            self.staticKey = identity.staticKey
            self.name = identity.name
            self.address = address
            self.incarnation = incarnation
            self.capabilities = capabilities
            self.load = load
            self.protocolVersion = MemberRecord.protocolVersion
            self.signature = signature
        }
    }

    private let storage: Storage

    public var nodeID: NodeID { self.storage.nodeID }
    public var identityKey: Ed25519PublicKey { self.storage.identityKey }
    public var staticKey: [UInt8] { self.storage.staticKey }
    public var name: String { self.storage.name }
    /// `host:port` where the member accepts connections.
    public var address: String { self.storage.address }
    public var incarnation: UInt64 { self.storage.incarnation }
    public var capabilities: [Capability] { self.storage.capabilities }
    /// Tasks running on the member now.
    public var load: UInt32 { self.storage.load }
    public var protocolVersion: UInt8 { self.storage.protocolVersion }
    public var signature: [UInt8] { self.storage.signature }

    public static func == (lhs: MemberRecord, rhs: MemberRecord) -> Bool {
        lhs.storage === rhs.storage
            || (lhs.nodeID == rhs.nodeID && lhs.incarnation == rhs.incarnation && lhs.signature == rhs.signature
                && lhs.body() == rhs.body())
    }

    public var identity: PeerIdentity { PeerIdentity(name: self.name, identityKey: self.identityKey, staticKey: self.staticKey) }

    /// A record for `identity`, signed with `signer`.
    public init(
        identity: PeerIdentity, address: String, incarnation: UInt64, capabilities: [Capability], load: UInt32,
        signer: MembershipSigner
    ) {
        self.init(
            identity: identity, address: address, incarnation: incarnation, capabilities: capabilities.sorted(),
            load: load, signature: [])
        self = MemberRecord(
            identity: identity, address: address, incarnation: incarnation, capabilities: self.capabilities, load: load,
            signature: signer.sign(Self.signatureDomain + self.body()))
    }

    private init(
        identity: PeerIdentity, address: String, incarnation: UInt64, capabilities: [Capability], load: UInt32,
        signature: [UInt8]
    ) {
        self.storage = Storage(
            identity: identity, address: address, incarnation: incarnation, capabilities: capabilities, load: load,
            signature: signature)
    }

    public func isValid(using signer: MembershipSigner) -> Bool {
        signer.verify(self.signature, Self.signatureDomain + self.body(), self.identityKey)
    }

    /// The same member with new fields and the next incarnation.
    public func updated(
        address: String? = nil, incarnation: UInt64? = nil, capabilities: [Capability]? = nil, load: UInt32? = nil,
        signer: MembershipSigner
    ) -> MemberRecord {
        MemberRecord(
            identity: self.identity, address: address ?? self.address, incarnation: incarnation ?? self.incarnation + 1,
            capabilities: capabilities ?? self.capabilities, load: load ?? self.load, signer: signer)
    }

    // MARK: Encoding

    /// Everything but the signature, canonically encoded; this is what is signed.
    func body() -> [UInt8] {
        var writer = ByteWriter(capacity: 160)
        writer.u8(self.protocolVersion)
        writer.raw(self.identityKey.bytes)
        writer.raw(self.staticKey)
        writer.u64(self.incarnation)
        writer.u32(self.load)
        writer.shortString(self.name)
        writer.shortString(self.address)
        writer.u8(UInt8(self.capabilities.count))
        for capability in self.capabilities {
            writer.shortString(capability.name)
            writer.u16(capability.capacity)
        }
        return writer.bytes
    }

    func encode(into writer: inout ByteWriter) {
        writer.raw(self.body())
        writer.u8(UInt8(self.signature.count))
        writer.raw(self.signature)
    }

    public enum DecodeError: Error, Equatable, CustomStringConvertible {
        case truncated(String)
        case unsupportedVersion(UInt8)
        case invalid(String)

        public var description: String {
            switch self {
            case .truncated(let what): return "member record: truncated \(what)"
            case .unsupportedVersion(let v): return "member record: unsupported protocol version \(v)"
            case .invalid(let what): return "member record: invalid \(what)"
            }
        }
    }

    static func decode(from reader: inout ByteReader) throws(DecodeError) -> MemberRecord {
        do {
            let version = try reader.u8("version")
            guard version == Self.protocolVersion else { throw DecodeError.unsupportedVersion(version) }
            guard let identityKey = try? Ed25519PublicKey(bytes: try reader.take(32, "identity key")) else {
                throw DecodeError.invalid("identity key")
            }
            let staticKey = Array(try reader.take(32, "static key"))
            let incarnation = try reader.u64("incarnation")
            let load = try reader.u32("load")
            let name = try reader.shortString("name")
            guard NodeName.isValid(name) else { throw DecodeError.invalid("name") }
            let address = try reader.shortString("address")
            let count = Int(try reader.u8("capability count"))
            guard count <= Self.maximumCapabilities else { throw DecodeError.invalid("capability count \(count)") }
            var capabilities: [Capability] = []
            for _ in 0..<count {
                let capabilityName = try reader.shortString("capability")
                guard Capability.isValidName(capabilityName) else { throw DecodeError.invalid("capability name") }
                capabilities.append(Capability(name: capabilityName, capacity: try reader.u16("capacity")))
            }
            let signatureLength = Int(try reader.u8("signature length"))
            let signature = Array(try reader.take(signatureLength, "signature"))
            // Canonical form only: capabilities must arrive sorted, so that one record has one encoding.
            guard capabilities == capabilities.sorted() else { throw DecodeError.invalid("capability order") }
            return MemberRecord(
                identity: PeerIdentity(name: name, identityKey: identityKey, staticKey: staticKey), address: address,
                incarnation: incarnation, capabilities: capabilities, load: load, signature: signature)
        } catch let error as DecodeError {
            throw error
        } catch {
            throw .truncated((error as? ByteReader.Truncated)?.what ?? "record")
        }
    }
}

/// A signed statement about a member's status, made by an accuser who names itself: "I suspect N at incarnation i",
/// "N is dead", or (by N itself) "I am leaving". The signature lets every node check who said it.
public struct StatusClaim: Sendable, Equatable {
    public enum Kind: UInt8, Sendable, CustomStringConvertible {
        case suspect = 1
        case dead = 2
        case left = 3

        public var description: String {
            switch self {
            case .suspect: return "suspect"
            case .dead: return "dead"
            case .left: return "left"
            }
        }
    }

    static let signatureDomain = Array("agentmesh-claim-v1".utf8)

    public let kind: Kind
    public let target: NodeID
    public let incarnation: UInt64
    public let accuser: NodeID
    public let signature: [UInt8]

    public init(kind: Kind, target: NodeID, incarnation: UInt64, accuser: NodeID, signer: MembershipSigner) {
        self.kind = kind
        self.target = target
        self.incarnation = incarnation
        self.accuser = accuser
        self.signature = signer.sign(Self.signatureDomain + Self.body(kind, target, incarnation, accuser))
    }

    private init(kind: Kind, target: NodeID, incarnation: UInt64, accuser: NodeID, signature: [UInt8]) {
        self.kind = kind
        self.target = target
        self.incarnation = incarnation
        self.accuser = accuser
        self.signature = signature
    }

    public func isValid(accuserKey: Ed25519PublicKey, using signer: MembershipSigner) -> Bool {
        signer.verify(
            self.signature, Self.signatureDomain + Self.body(self.kind, self.target, self.incarnation, self.accuser),
            accuserKey)
    }

    private static func body(_ kind: Kind, _ target: NodeID, _ incarnation: UInt64, _ accuser: NodeID) -> [UInt8] {
        var writer = ByteWriter(capacity: 41)
        writer.u8(kind.rawValue)
        writer.nodeID(target)
        writer.u64(incarnation)
        writer.nodeID(accuser)
        return writer.bytes
    }

    func encode(into writer: inout ByteWriter) {
        writer.u8(self.kind.rawValue)
        writer.nodeID(self.target)
        writer.u64(self.incarnation)
        writer.nodeID(self.accuser)
        writer.u8(UInt8(self.signature.count))
        writer.raw(self.signature)
    }

    static func decode(from reader: inout ByteReader) throws(ByteReader.Truncated) -> StatusClaim? {
        let rawKind = try reader.u8("claim kind")
        let target = try reader.nodeID("claim target")
        let incarnation = try reader.u64("claim incarnation")
        let accuser = try reader.nodeID("claim accuser")
        let signature = Array(try reader.take(Int(try reader.u8("claim signature length")), "claim signature"))
        guard let kind = Kind(rawValue: rawKind) else { return nil }
        return StatusClaim(kind: kind, target: target, incarnation: incarnation, accuser: accuser, signature: signature)
    }
}

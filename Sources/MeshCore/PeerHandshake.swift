public import MeshCrypto

/// The AgentMesh handshake: Noise XX plus three things Noise leaves to the application.
///
/// 1. **A gate on the first message.** msg1 is `version ‖ e ‖ MAC(K_gate, version ‖ e)` with `K_gate` derived
///    from the network key. The responder checks the MAC before any Diffie-Hellman, so a stranger without the
///    network key costs one HMAC and learns nothing (SSB's network capability, WireGuard's mac1).
/// 2. **Identity binding.** msg2 and msg3 carry an encrypted ``HandshakePayload``: the Ed25519 identity key and
///    its signature over the Noise static X25519 key, plus the sender's name and listen address.
/// 3. **Trust.** Each side checks the other's identity against a ``TrustPolicy`` as soon as it learns it.
///
/// The protocol version is both the first byte of msg1 (so a mismatch gets a clear reason) and part of the Noise
/// prologue (so it cannot be altered in flight).
public enum HandshakeProtocol {
    public static let version: UInt8 = 1
    public static let prologue: [UInt8] = Array("agentmesh/1".utf8)
    /// msg1: version + ephemeral key + gate MAC.
    public static let helloLength = 1 + 32 + 32
    /// An upper bound for msg2 and msg3 (the largest payload plus keys and tags), checked before a frame of that
    /// length is read, so a peer cannot make the node buffer more during the handshake.
    public static let maximumMessageLength = 32 + 48 + HandshakePayload.maximumLength + 16

    /// The key that gates msg1: a sub-key of the network key, never the network key itself.
    public static func gateKey(from networkKey: NetworkKey) -> SecretBytes {
        networkKey.derivedKey(id: 1, context: "am-gate1")
    }
}

/// Why a handshake did not produce a session. Every case comes from the peer's bytes or from policy, so every case
/// is an expected outcome: the shell logs it with the reason and closes the connection.
public enum HandshakeError: Error, Equatable, CustomStringConvertible, Sendable {
    case gateRejected
    case unsupportedVersion(UInt8)
    case replayedHello
    case unexpectedLength(Int)
    case truncatedMessage
    case decryptionFailed
    case invalidPublicKey
    case malformedPayload(String)
    case invalidBinding
    case connectedToSelf
    case refused(PeerIdentity, reason: String)
    case outOfTurn

    public var description: String {
        switch self {
        case .gateRejected: return "first message failed the network-key check (wrong network key or not AgentMesh)"
        case .unsupportedVersion(let v): return "peer speaks protocol version \(v), this node speaks \(HandshakeProtocol.version)"
        case .replayedHello: return "first message is a replay of one already seen"
        case .unexpectedLength(let n): return "handshake message has an unexpected length of \(n) bytes"
        case .truncatedMessage: return "handshake message is truncated"
        case .decryptionFailed: return "handshake message failed to decrypt (tampered, or a different network)"
        case .invalidPublicKey: return "peer sent an invalid public key"
        case .malformedPayload(let why): return "malformed identity payload: \(why)"
        case .invalidBinding: return "peer's static key is not signed by its identity key"
        case .connectedToSelf: return "connected to itself"
        case .refused(let peer, let reason): return "peer \(peer.name) (\(peer.nodeID.short)) refused: \(reason)"
        case .outOfTurn: return "handshake message out of turn"
        }
    }

    init(_ error: Noise.Error) {
        switch error {
        case .truncatedMessage: self = .truncatedMessage
        case .decryptionFailed: self = .decryptionFailed
        case .invalidPublicKey: self = .invalidPublicKey
        case .nonceExhausted, .outOfTurn: self = .outOfTurn
        }
    }
}

/// What this node says about itself inside the encrypted handshake.
public struct HandshakePayload: Equatable, Sendable {
    public static let maximumAddressLength = 255
    static let maximumLength = 1 + 32 + 64 + 1 + NodeName.maximumLength + 1 + maximumAddressLength

    public let identityKey: Ed25519PublicKey
    public let binding: [UInt8]
    public let name: String
    /// Where this node accepts connections (`host:port`), so the other side can dial it later; may be empty.
    public let listenAddress: String

    public init(identityKey: Ed25519PublicKey, binding: [UInt8], name: String, listenAddress: String) {
        self.identityKey = identityKey
        self.binding = binding
        self.name = name
        self.listenAddress = listenAddress
    }

    public func encoded() -> [UInt8] {
        let name = Array(self.name.utf8)
        let address = Array(self.listenAddress.utf8.prefix(Self.maximumAddressLength))
        return [HandshakeProtocol.version] + self.identityKey.bytes + self.binding + [UInt8(name.count)] + name
            + [UInt8(address.count)] + address
    }

    public init(decoding bytes: [UInt8]) throws(HandshakeError) {
        var rest = bytes[...]
        func take(_ count: Int, _ what: String) throws(HandshakeError) -> ArraySlice<UInt8> {
            guard rest.count >= count else { throw .malformedPayload("truncated \(what)") }
            defer { rest = rest.dropFirst(count) }
            return rest.prefix(count)
        }
        let version = try take(1, "version").first!
        guard version == HandshakeProtocol.version else { throw .unsupportedVersion(version) }
        guard let key = try? Ed25519PublicKey(bytes: try take(32, "identity key")) else {
            throw .malformedPayload("identity key")
        }
        let binding = Array(try take(64, "binding signature"))
        let nameLength = Int(try take(1, "name length").first!)
        let name = String(decoding: try take(nameLength, "name"), as: UTF8.self)
        guard NodeName.isValid(name) else { throw .malformedPayload("invalid node name") }
        let addressLength = Int(try take(1, "address length").first!)
        let address = String(decoding: try take(addressLength, "address"), as: UTF8.self)
        guard rest.isEmpty else { throw .malformedPayload("\(rest.count) trailing bytes") }
        self.init(identityKey: key, binding: binding, name: name, listenAddress: address)
    }

    static func local(_ identity: NodeIdentity, listenAddress: String) -> HandshakePayload {
        HandshakePayload(
            identityKey: identity.signingKey.publicKey, binding: identity.staticKeyBinding(), name: identity.name,
            listenAddress: listenAddress)
    }

    /// Reads msg2 or msg3: bounds its length, decrypts it, decodes the identity payload and checks its binding.
    static func read(
        _ message: [UInt8], with noise: inout Noise.HandshakeState
    ) throws(HandshakeError) -> (HandshakePayload, PeerIdentity) {
        guard message.count <= HandshakeProtocol.maximumMessageLength else { throw .unexpectedLength(message.count) }
        let bytes: [UInt8]
        do { bytes = try noise.readMessage(message) } catch { throw HandshakeError(error) }
        let payload = try HandshakePayload(decoding: bytes)
        return (payload, try payload.verifiedPeer(remoteStatic: noise.remoteStatic))
    }

    /// Checks the payload against the static key that Noise authenticated and returns the peer it proves.
    func verifiedPeer(remoteStatic: [UInt8]?) throws(HandshakeError) -> PeerIdentity {
        guard let remoteStatic else { throw .outOfTurn }
        guard self.identityKey.isValidSignature(self.binding, for: NodeIdentity.bindingMessage(staticKey: remoteStatic))
        else { throw .invalidBinding }
        return PeerIdentity(name: self.name, identityKey: self.identityKey, staticKey: remoteStatic)
    }
}

/// What the node brings to every handshake.
public struct HandshakeCredentials: Sendable {
    public let identity: NodeIdentity
    public let gateKey: SecretBytes
    /// The `host:port` advertised to peers.
    public let listenAddress: String

    public init(identity: NodeIdentity, networkKey: NetworkKey, listenAddress: String) {
        self.identity = identity
        self.gateKey = HandshakeProtocol.gateKey(from: networkKey)
        self.listenAddress = listenAddress
    }
}

/// A finished handshake: who the peer is and the two transport cipher states.
public struct EstablishedSession: Sendable {
    public let peer: PeerIdentity
    public let peerListenAddress: String
    public let decision: TrustPolicy.Decision
    public let role: Noise.Role
    public let handshakeHash: [UInt8]
    let send: Noise.CipherState
    let receive: Noise.CipherState

    func with(decision: TrustPolicy.Decision) -> EstablishedSession {
        EstablishedSession(
            peer: self.peer, peerListenAddress: self.peerListenAddress, decision: decision, role: self.role,
            handshakeHash: self.handshakeHash, send: self.send, receive: self.receive)
    }
}

// MARK: - Initiator

/// The dialling side: sends msg1 at construction, answers msg2 with msg3.
public struct InitiatorHandshake: Sendable {
    private enum State: Sendable {
        case awaitingResponse(Noise.HandshakeState)
        case finished
    }

    private var state: State
    private let credentials: HandshakeCredentials
    /// msg1, to be sent as soon as the connection is up.
    public let hello: [UInt8]

    public init(credentials: HandshakeCredentials, ephemeralKey: X25519KeyPair = .init()) {
        var noise = Noise.HandshakeState(
            role: .initiator, prologue: HandshakeProtocol.prologue, staticKey: credentials.identity.staticKey,
            ephemeralKey: ephemeralKey)
        // msg1 carries no payload: nothing is encrypted yet, and the initiator's identity stays hidden until msg3.
        let noiseMessage = try! noise.writeMessage(payload: [])  // the first message of a fresh state cannot fail
        let gated = [HandshakeProtocol.version] + noiseMessage
        self.hello = gated + MessageAuthenticator.tag(for: gated, key: credentials.gateKey)
        self.credentials = credentials
        self.state = .awaitingResponse(noise)
    }

    /// The longest msg2 this side will read.
    public var maximumResponseLength: Int { HandshakeProtocol.maximumMessageLength }

    /// Handles msg2. On success returns msg3 (to send) and the session.
    public mutating func receiveResponse(
        _ message: [UInt8], trust: TrustPolicy
    ) -> Result<(finish: [UInt8], session: EstablishedSession), HandshakeError> {
        guard case .awaitingResponse(var noise) = self.state else { return .failure(.outOfTurn) }
        self.state = .finished
        do throws(HandshakeError) {
            let (payload, peer) = try HandshakePayload.read(message, with: &noise)
            let decision = try Self.admit(peer, localIdentity: self.credentials.identity, trust: trust)
            let finish: [UInt8]
            do {
                finish = try noise.writeMessage(
                    payload: HandshakePayload.local(self.credentials.identity, listenAddress: self.credentials.listenAddress)
                        .encoded())
            } catch { throw HandshakeError(error) }
            let session = try Self.establish(noise, peer: peer, address: payload.listenAddress, decision: decision)
            return .success((finish, session))
        } catch {
            return .failure(error)
        }
    }

    static func admit(
        _ peer: PeerIdentity, localIdentity: NodeIdentity, trust: TrustPolicy
    ) throws(HandshakeError) -> TrustPolicy.Decision {
        guard peer.identityKey != localIdentity.signingKey.publicKey else { throw .connectedToSelf }
        let decision = trust.decision(for: peer)
        if case .refused(let reason) = decision { throw .refused(peer, reason: reason) }
        return decision
    }

    static func establish(
        _ noise: Noise.HandshakeState, peer: PeerIdentity, address: String, decision: TrustPolicy.Decision
    ) throws(HandshakeError) -> EstablishedSession {
        let ciphers: (send: Noise.CipherState, receive: Noise.CipherState)
        do { ciphers = try noise.split() } catch { throw HandshakeError(error) }
        return EstablishedSession(
            peer: peer, peerListenAddress: address, decision: decision, role: noise.role,
            handshakeHash: noise.handshakeHash, send: ciphers.send, receive: ciphers.receive)
    }
}

// MARK: - Responder

/// The accepting side: checks the gate on msg1, answers with msg2, and finishes on msg3.
public struct ResponderHandshake: Sendable {
    private enum State: Sendable {
        case awaitingHello
        case awaitingFinish(Noise.HandshakeState)
        case finished
    }

    private var state: State = .awaitingHello
    private let credentials: HandshakeCredentials
    private let ephemeralKey: X25519KeyPair

    public init(credentials: HandshakeCredentials, ephemeralKey: X25519KeyPair = .init()) {
        self.credentials = credentials
        self.ephemeralKey = ephemeralKey
    }

    /// The exact or largest length of the next message, so the shell can refuse a longer length prefix before it
    /// reads (or allocates for) the frame body.
    public var maximumNextMessageLength: Int {
        switch self.state {
        case .awaitingHello: return HandshakeProtocol.helloLength
        case .awaitingFinish: return HandshakeProtocol.maximumMessageLength
        case .finished: return 0
        }
    }

    /// Handles msg1: gate, replay check, then the Noise work. Returns msg2.
    public mutating func receiveHello(
        _ message: [UInt8], replayCache: inout ReplayCache
    ) -> Result<[UInt8], HandshakeError> {
        guard case .awaitingHello = self.state else { return .failure(.outOfTurn) }
        self.state = .finished
        do throws(HandshakeError) {
            guard message.count == HandshakeProtocol.helloLength else { throw .unexpectedLength(message.count) }
            let gated = Array(message[0..<33])
            let tag = Array(message[33...])
            // The MAC is checked first, before the version, so that a stranger learns nothing, not even the
            // version this node speaks.
            guard MessageAuthenticator.isValid(tag: tag, for: gated, key: self.credentials.gateKey) else {
                throw .gateRejected
            }
            guard gated[0] == HandshakeProtocol.version else { throw .unsupportedVersion(gated[0]) }
            guard replayCache.insert(Array(gated[1...])) else { throw .replayedHello }

            var noise = Noise.HandshakeState(
                role: .responder, prologue: HandshakeProtocol.prologue, staticKey: self.credentials.identity.staticKey,
                ephemeralKey: self.ephemeralKey)
            let response: [UInt8]
            do {
                _ = try noise.readMessage(Array(gated[1...]))
                response = try noise.writeMessage(
                    payload: HandshakePayload.local(self.credentials.identity, listenAddress: self.credentials.listenAddress)
                        .encoded())
            } catch { throw HandshakeError(error) }
            self.state = .awaitingFinish(noise)
            return .success(response)
        } catch {
            return .failure(error)
        }
    }

    /// Handles msg3 and returns the session.
    public mutating func receiveFinish(_ message: [UInt8], trust: TrustPolicy) -> Result<EstablishedSession, HandshakeError> {
        guard case .awaitingFinish(var noise) = self.state else { return .failure(.outOfTurn) }
        self.state = .finished
        do throws(HandshakeError) {
            let (payload, peer) = try HandshakePayload.read(message, with: &noise)
            let session = try InitiatorHandshake.establish(
                noise, peer: peer, address: payload.listenAddress, decision: .trusted)
            do {
                let decision = try InitiatorHandshake.admit(peer, localIdentity: self.credentials.identity, trust: trust)
                return .success(session.with(decision: decision))
            } catch {
                // The peer proved who it is; tell it why it is refused, sealed so that nobody else can forge it.
                var farewell = SecureSession(session)
                let why: String
                if case .refused(_, let reason) = error { why = reason } else { why = error.description }
                self.refusalNotice = try? farewell.sealClose(.refused(why))
                throw error
            }
        } catch {
            return .failure(error)
        }
    }

    /// After a refusal of an authenticated peer: a sealed close frame that tells it why. Send it, then close.
    public private(set) var refusalNotice: [UInt8]?
}

// MARK: - Replay cache

/// Remembers the ephemeral keys of recent msg1s so a recorded msg1 replayed within the window is refused before any
/// Diffie-Hellman. Bounded: the oldest entry is forgotten first. A replay older than the window still cannot produce
/// a session (the replayer lacks the ephemeral secret for msg3); it only costs the node one unfinished handshake.
public struct ReplayCache: Sendable {
    public let capacity: Int
    private var members: Set<[UInt8]> = []
    private var order: [[UInt8]] = []
    private var oldest = 0

    public init(capacity: Int = 65_536) {
        precondition(capacity > 0, "replay cache capacity must be positive")
        self.capacity = capacity
    }

    /// Inserts `key`; returns false if it was already present.
    public mutating func insert(_ key: [UInt8]) -> Bool {
        guard !self.members.contains(key) else { return false }
        if self.order.count < self.capacity {
            self.order.append(key)
        } else {
            self.members.remove(self.order[self.oldest])
            self.order[self.oldest] = key
            self.oldest = (self.oldest + 1) % self.capacity
        }
        self.members.insert(key)
        return true
    }

    public var count: Int { self.members.count }
}

public import MeshCrypto

/// Noise Protocol Framework, revision 34, restricted to what AgentMesh uses: the `XX` pattern with
/// `25519`, `ChaChaPoly` and `SHA256`. Section numbers below refer to the specification.
///
/// These are value types with no I/O. Randomness enters only through the ephemeral key handed to
/// ``HandshakeState/init(role:prologue:staticKey:ephemeralKey:)``, which is what lets the test vectors run.
public enum Noise {
    public static let protocolName = "Noise_XX_25519_ChaChaPoly_SHA256"
    static let hashLength = SHA256.byteCount
    static let dhLength = X25519KeyPair.byteCount
    static let tagLength = ChaChaPoly.tagByteCount

    public enum Role: Sendable { case initiator, responder }

    public enum Error: Swift.Error, Equatable, CustomStringConvertible {
        /// A message was shorter than its pattern requires.
        case truncatedMessage
        /// An AEAD tag did not verify: tampering, a wrong key, or a message from another session.
        case decryptionFailed
        /// A Diffie-Hellman input was a low-order point.
        case invalidPublicKey
        /// The nonce space of a cipher state is exhausted (2^64 - 1 messages); the session must be replaced.
        case nonceExhausted
        /// `writeMessage`/`readMessage` was called out of turn, or after the handshake finished.
        case outOfTurn

        public var description: String {
            switch self {
            case .truncatedMessage: return "handshake message is truncated"
            case .decryptionFailed: return "decryption failed"
            case .invalidPublicKey: return "peer sent an invalid public key"
            case .nonceExhausted: return "cipher nonce exhausted"
            case .outOfTurn: return "handshake message out of turn"
            }
        }
    }

    // MARK: - CipherState (§5.1)

    public struct CipherState: Sendable {
        private var key: SecretBytes?
        public private(set) var nonce: UInt64 = 0

        init(key: SecretBytes? = nil) { self.key = key }

        var hasKey: Bool { self.key != nil }

        public mutating func encrypt(associatedData: [UInt8], plaintext: [UInt8]) throws(Noise.Error) -> [UInt8] {
            guard let key = self.key else { return plaintext }
            // 2^64 - 1 is reserved (§5.1), so the last usable nonce is 2^64 - 2.
            guard self.nonce < UInt64.max else { throw .nonceExhausted }
            let ciphertext = ChaChaPoly.seal(
                key: key, nonce: self.nonce, associatedData: associatedData, plaintext: plaintext)
            self.nonce += 1
            return ciphertext
        }

        /// `encrypt` without associated data, in place (transport frames): the plaintext's bytes become the ciphertext,
        /// and the tag follows them.
        public mutating func encryptInPlace(_ buffer: UnsafeMutableRawBufferPointer, plaintextLength: Int) throws(Noise.Error) {
            guard let key = self.key else { preconditionFailure("transport frames are sealed with a key") }
            guard self.nonce < UInt64.max else { throw .nonceExhausted }
            ChaChaPoly.sealInPlace(key: key, nonce: self.nonce, buffer: buffer, plaintextLength: plaintextLength)
            self.nonce += 1
        }

        /// `decrypt` without associated data, for transport frames: the plaintext is read straight from where the
        /// frame arrived (no copy of the frame first).
        public mutating func decrypt(frame: UnsafeRawBufferPointer) throws(Noise.Error) -> [UInt8] {
            guard let key = self.key else { preconditionFailure("transport frames are opened with a key") }
            guard self.nonce < UInt64.max else { throw .nonceExhausted }
            guard frame.count >= ChaChaPoly.tagByteCount else { throw .decryptionFailed }
            let length = frame.count - ChaChaPoly.tagByteCount
            var opened = false
            // Not zeroed first: on success every byte is written, on failure they are wiped and dropped.
            let plaintext = [UInt8](unsafeUninitializedCapacity: max(length, 1)) { buffer, initialized in
                opened = ChaChaPoly.open(key: key, nonce: self.nonce, ciphertext: frame, into: UnsafeMutableRawPointer(buffer.baseAddress!))
                initialized = opened ? length : 0
            }
            guard opened else { throw .decryptionFailed }
            // The nonce only advances on success, so a forged frame cannot desynchronise the session (§5.1).
            self.nonce += 1
            return plaintext
        }

        public mutating func decrypt(associatedData: [UInt8], ciphertext: [UInt8]) throws(Noise.Error) -> [UInt8] {
            guard let key = self.key else { return ciphertext }
            guard self.nonce < UInt64.max else { throw .nonceExhausted }
            do {
                let plaintext = try ChaChaPoly.open(
                    key: key, nonce: self.nonce, associatedData: associatedData, ciphertext: ciphertext)
                // The nonce only advances on success, so a forged frame cannot desynchronise the session (§5.1).
                self.nonce += 1
                return plaintext
            } catch {
                throw .decryptionFailed
            }
        }
    }

    // MARK: - SymmetricState (§5.2)

    struct SymmetricState: Sendable {
        var cipher = CipherState()
        var chainingKey: SecretBytes
        var handshakeHash: [UInt8]

        init(protocolName: String) {
            var name = Array(protocolName.utf8)
            if name.count <= Noise.hashLength {
                name += [UInt8](repeating: 0, count: Noise.hashLength - name.count)
                self.handshakeHash = name
            } else {
                self.handshakeHash = SHA256.hash(name)
            }
            self.chainingKey = SecretBytes(copying: self.handshakeHash)
        }

        mutating func mixHash(_ data: [UInt8]) {
            self.handshakeHash = SHA256.hash(self.handshakeHash, data)
        }

        mutating func mixKey(_ inputKeyMaterial: SecretBytes) {
            let (chainingKey, key) = Noise.hkdf(chainingKey: self.chainingKey, inputKeyMaterial: inputKeyMaterial)
            self.chainingKey = chainingKey
            self.cipher = CipherState(key: key)
        }

        mutating func encryptAndHash(_ plaintext: [UInt8]) throws(Noise.Error) -> [UInt8] {
            let ciphertext = try self.cipher.encrypt(associatedData: self.handshakeHash, plaintext: plaintext)
            self.mixHash(ciphertext)
            return ciphertext
        }

        mutating func decryptAndHash(_ ciphertext: [UInt8]) throws(Noise.Error) -> [UInt8] {
            let plaintext = try self.cipher.decrypt(associatedData: self.handshakeHash, ciphertext: ciphertext)
            self.mixHash(ciphertext)
            return plaintext
        }

        func split() -> (CipherState, CipherState) {
            let (first, second) = Noise.hkdf(chainingKey: self.chainingKey, inputKeyMaterial: nil)
            return (CipherState(key: first), CipherState(key: second))
        }
    }

    /// HKDF with two outputs (§4.3), built from HMAC-SHA256.
    static func hkdf(chainingKey: SecretBytes, inputKeyMaterial: SecretBytes?) -> (SecretBytes, SecretBytes) {
        var ikm = inputKeyMaterial?.exportedCopy() ?? []
        defer { wipe(&ikm) }
        let tempKey = HMACSHA256.authenticate(key: chainingKey, ikm)
        let output1 = HMACSHA256.authenticate(key: tempKey, [0x01])
        var output1Bytes = output1.exportedCopy()
        defer { wipe(&output1Bytes) }
        let output2 = HMACSHA256.authenticate(key: tempKey, output1Bytes, [0x02])
        return (output1, output2)
    }

    // MARK: - HandshakeState for XX (§5.3, §7.5)

    /// ```
    /// XX:
    ///   -> e
    ///   <- e, ee, s, es
    ///   -> s, se
    /// ```
    public struct HandshakeState: Sendable {
        public let role: Role
        private var symmetric: SymmetricState
        private let staticKey: X25519KeyPair
        private let ephemeralKey: X25519KeyPair
        private var remoteEphemeral: [UInt8]?
        public private(set) var remoteStatic: [UInt8]?
        /// Index of the next message of the pattern (0, 1, 2); 3 means the handshake is complete.
        public private(set) var messageIndex = 0

        public init(role: Role, prologue: [UInt8], staticKey: X25519KeyPair, ephemeralKey: X25519KeyPair = .init()) {
            self.role = role
            self.symmetric = SymmetricState(protocolName: Noise.protocolName)
            self.staticKey = staticKey
            self.ephemeralKey = ephemeralKey
            self.symmetric.mixHash(prologue)
        }

        public var isComplete: Bool { self.messageIndex == 3 }
        public var handshakeHash: [UInt8] { self.symmetric.handshakeHash }

        private var isMyTurn: Bool {
            switch self.role {
            case .initiator: return self.messageIndex == 0 || self.messageIndex == 2
            case .responder: return self.messageIndex == 1
            }
        }

        public mutating func writeMessage(payload: [UInt8]) throws(Noise.Error) -> [UInt8] {
            guard self.isMyTurn, !self.isComplete else { throw .outOfTurn }
            var message: [UInt8] = []
            switch self.messageIndex {
            case 0:  // -> e
                message += self.ephemeralKey.publicKey
                self.symmetric.mixHash(self.ephemeralKey.publicKey)
            case 1:  // <- e, ee, s, es
                message += self.ephemeralKey.publicKey
                self.symmetric.mixHash(self.ephemeralKey.publicKey)
                try self.mixDH(self.ephemeralKey, self.remoteEphemeral)
                message += try self.symmetric.encryptAndHash(self.staticKey.publicKey)
                try self.mixDH(self.staticKey, self.remoteEphemeral)
            default:  // -> s, se
                message += try self.symmetric.encryptAndHash(self.staticKey.publicKey)
                try self.mixDH(self.staticKey, self.remoteEphemeral)
            }
            message += try self.symmetric.encryptAndHash(payload)
            self.messageIndex += 1
            return message
        }

        public mutating func readMessage(_ message: [UInt8]) throws(Noise.Error) -> [UInt8] {
            guard !self.isMyTurn, !self.isComplete else { throw .outOfTurn }
            var rest = message[...]
            switch self.messageIndex {
            case 0:  // -> e
                let remoteEphemeral = try Self.take(Noise.dhLength, from: &rest)
                self.remoteEphemeral = remoteEphemeral
                self.symmetric.mixHash(remoteEphemeral)
            case 1:  // <- e, ee, s, es
                let remoteEphemeral = try Self.take(Noise.dhLength, from: &rest)
                self.remoteEphemeral = remoteEphemeral
                self.symmetric.mixHash(remoteEphemeral)
                try self.mixDH(self.ephemeralKey, remoteEphemeral)
                let remoteStatic = try self.symmetric.decryptAndHash(
                    try Self.take(Noise.dhLength + Noise.tagLength, from: &rest))
                self.remoteStatic = remoteStatic
                try self.mixDH(self.ephemeralKey, remoteStatic)
            default:  // -> s, se
                let remoteStatic = try self.symmetric.decryptAndHash(
                    try Self.take(Noise.dhLength + Noise.tagLength, from: &rest))
                self.remoteStatic = remoteStatic
                try self.mixDH(self.ephemeralKey, remoteStatic)
            }
            if self.symmetric.cipher.hasKey, rest.count < Noise.tagLength { throw .truncatedMessage }
            let payload = try self.symmetric.decryptAndHash(Array(rest))
            self.messageIndex += 1
            return payload
        }

        /// The transport cipher states (§5.2 Split): the first encrypts initiator → responder.
        /// Returns `(send, receive)` from this side's point of view.
        public func split() throws(Noise.Error) -> (send: CipherState, receive: CipherState) {
            guard self.isComplete else { throw .outOfTurn }
            let (initiatorToResponder, responderToInitiator) = self.symmetric.split()
            switch self.role {
            case .initiator: return (initiatorToResponder, responderToInitiator)
            case .responder: return (responderToInitiator, initiatorToResponder)
            }
        }

        private mutating func mixDH(_ local: X25519KeyPair, _ remote: [UInt8]?) throws(Noise.Error) {
            guard let remote else { throw .outOfTurn }
            do {
                self.symmetric.mixKey(try local.sharedSecret(with: remote))
            } catch {
                throw .invalidPublicKey
            }
        }

        private static func take(_ count: Int, from rest: inout ArraySlice<UInt8>) throws(Noise.Error) -> [UInt8] {
            guard rest.count >= count else { throw .truncatedMessage }
            let bytes = Array(rest.prefix(count))
            rest = rest.dropFirst(count)
            return bytes
        }
    }
}

internal import CSodium

/// An X25519 key pair: the node's Noise static key, or a per-handshake ephemeral key.
public struct X25519KeyPair: Sendable {
    public static let byteCount = 32

    public let publicKey: [UInt8]
    private let secret: SecretBytes

    /// A fresh random key pair.
    public init() {
        self = try! X25519KeyPair(secretKey: SecretBytes(randomCount: Self.byteCount))  // 32 random bytes always fit
    }

    /// Restores a key pair from its 32-byte secret scalar; the public key is recomputed.
    public init(secretKey: SecretBytes) throws {
        ensureSodium()
        guard secretKey.count == Self.byteCount else {
            throw CryptoError.invalidKeyLength(expected: Self.byteCount, actual: secretKey.count)
        }
        var pk = [UInt8](repeating: 0, count: Self.byteCount)
        secretKey.withUnsafeBytes { sk in
            pk.withUnsafeMutableBufferPointer { p in
                _ = crypto_scalarmult_base(p.baseAddress!, sk.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        self.publicKey = pk
        self.secret = secretKey
    }

    /// Diffie-Hellman with a peer's public key. Throws for a low-order peer key (libsodium returns -1 when the
    /// shared secret would be all zeros), which is exactly the abort the Noise spec asks for.
    public func sharedSecret(with peerPublicKey: [UInt8]) throws -> SecretBytes {
        ensureSodium()
        guard peerPublicKey.count == Self.byteCount else {
            throw CryptoError.invalidKeyLength(expected: Self.byteCount, actual: peerPublicKey.count)
        }
        var shared = [UInt8](repeating: 0, count: Self.byteCount)
        let result = self.secret.withUnsafeBytes { sk in
            peerPublicKey.withUnsafeBufferPointer { pk in
                shared.withUnsafeMutableBufferPointer { out in
                    crypto_scalarmult(
                        out.baseAddress!, sk.baseAddress!.assumingMemoryBound(to: UInt8.self), pk.baseAddress!)
                }
            }
        }
        guard result == 0 else {
            wipe(&shared)
            throw CryptoError.weakPublicKey
        }
        return SecretBytes(consuming: &shared)
    }

    /// The secret scalar, for writing the identity file. The caller must wipe the copy.
    public func exportSecretKey() -> [UInt8] { self.secret.exportedCopy() }
}

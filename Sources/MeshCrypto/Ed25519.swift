internal import CSodium

/// An Ed25519 public key: a node's long-term identity.
public struct Ed25519PublicKey: Hashable, Sendable {
    public static let byteCount = 32
    public let bytes: [UInt8]

    public init(bytes: some Collection<UInt8>) throws {
        let array = Array(bytes)
        guard array.count == Self.byteCount else {
            throw CryptoError.invalidKeyLength(expected: Self.byteCount, actual: array.count)
        }
        self.bytes = array
    }

    /// Checks a detached signature. Returns false for any malformed input rather than throwing: a bad signature
    /// from a peer is an expected outcome, not an error in this code.
    public func isValidSignature(_ signature: some Collection<UInt8>, for message: some Collection<UInt8>) -> Bool {
        ensureSodium()
        let signature = Array(signature)
        guard signature.count == Int(crypto_sign_BYTES) else { return false }
        let message = Array(message)
        return signature.withUnsafeBufferPointer { sig in
            message.withUnsafeBufferPointer { msg in
                self.bytes.withUnsafeBufferPointer { pk in
                    crypto_sign_verify_detached(sig.baseAddress!, msg.baseAddress, UInt64(msg.count), pk.baseAddress!)
                        == 0
                }
            }
        }
    }
}

/// An Ed25519 signing key. The 64-byte libsodium secret key (seed ‖ public key) lives in ``SecretBytes``.
public struct Ed25519SigningKey: Sendable {
    public static let secretByteCount = 64
    public static let signatureByteCount = 64

    private let secret: SecretBytes
    public let publicKey: Ed25519PublicKey

    /// A fresh random key pair.
    public init() {
        ensureSodium()
        var pk = [UInt8](repeating: 0, count: Ed25519PublicKey.byteCount)
        var sk = [UInt8](repeating: 0, count: Self.secretByteCount)
        pk.withUnsafeMutableBufferPointer { pkp in
            sk.withUnsafeMutableBufferPointer { skp in _ = crypto_sign_keypair(pkp.baseAddress!, skp.baseAddress!) }
        }
        self.publicKey = try! Ed25519PublicKey(bytes: pk)  // length is fixed above
        self.secret = SecretBytes(consuming: &sk)
    }

    /// Restores a key from its 64-byte libsodium secret key, checking that the embedded public half matches the
    /// seed so a corrupted key file is caught instead of producing unverifiable signatures.
    public init(secretKey: SecretBytes) throws {
        ensureSodium()
        guard secretKey.count == Self.secretByteCount else {
            throw CryptoError.invalidKeyLength(expected: Self.secretByteCount, actual: secretKey.count)
        }
        var seed = [UInt8](repeating: 0, count: Int(crypto_sign_SEEDBYTES))
        var derivedPublic = [UInt8](repeating: 0, count: Ed25519PublicKey.byteCount)
        var derivedSecret = [UInt8](repeating: 0, count: Self.secretByteCount)
        let embeddedPublic: [UInt8] = secretKey.withUnsafeBytes { sk in
            seed.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: sk[0..<32])) }
            return Array(sk[32..<64])
        }
        seed.withUnsafeBufferPointer { s in
            derivedPublic.withUnsafeMutableBufferPointer { p in
                derivedSecret.withUnsafeMutableBufferPointer { d in
                    _ = crypto_sign_seed_keypair(p.baseAddress!, d.baseAddress!, s.baseAddress!)
                }
            }
        }
        wipe(&seed)
        wipe(&derivedSecret)
        guard constantTimeEquals(derivedPublic, embeddedPublic) else { throw CryptoError.authenticationFailed }
        self.publicKey = try Ed25519PublicKey(bytes: derivedPublic)
        self.secret = secretKey
    }

    public func signature(for message: some Collection<UInt8>) -> [UInt8] {
        ensureSodium()
        let message = Array(message)
        var signature = [UInt8](repeating: 0, count: Self.signatureByteCount)
        self.secret.withUnsafeBytes { sk in
            message.withUnsafeBufferPointer { msg in
                signature.withUnsafeMutableBufferPointer { sig in
                    _ = crypto_sign_detached(
                        sig.baseAddress!, nil, msg.baseAddress, UInt64(msg.count),
                        sk.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    )
                }
            }
        }
        return signature
    }

    /// The secret key, for writing the identity file. The caller must wipe the copy.
    public func exportSecretKey() -> [UInt8] { self.secret.exportedCopy() }
}

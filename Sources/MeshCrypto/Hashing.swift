internal import CSodium

/// SHA-256, the Noise hash function and the audit chain's hash.
public enum SHA256 {
    public static let byteCount = 32

    public static func hash(_ parts: [UInt8]...) -> [UInt8] {
        ensureSodium()
        var state = crypto_hash_sha256_state()
        crypto_hash_sha256_init(&state)
        for part in parts {
            part.withUnsafeBufferPointer { _ = crypto_hash_sha256_update(&state, $0.baseAddress, UInt64($0.count)) }
        }
        var out = [UInt8](repeating: 0, count: byteCount)
        out.withUnsafeMutableBufferPointer { _ = crypto_hash_sha256_final(&state, $0.baseAddress!) }
        return out
    }
}

/// HMAC-SHA-256 (RFC 2104), from which the Noise HKDF is built; libsodium 1.0.18 has no `crypto_kdf_hkdf`.
public enum HMACSHA256 {
    public static let byteCount = 32

    /// HMAC over the concatenation of `parts`, keyed by `key` (any length).
    public static func authenticate(key: SecretBytes, _ parts: [UInt8]...) -> SecretBytes {
        ensureSodium()
        precondition(key.count > 0, "HMAC keys in this protocol are never empty")
        var state = crypto_auth_hmacsha256_state()
        key.withUnsafeBytes { k in
            _ = crypto_auth_hmacsha256_init(&state, k.baseAddress!.assumingMemoryBound(to: UInt8.self), k.count)
        }
        for part in parts {
            part.withUnsafeBufferPointer {
                _ = crypto_auth_hmacsha256_update(&state, $0.baseAddress, UInt64($0.count))
            }
        }
        var out = [UInt8](repeating: 0, count: byteCount)
        out.withUnsafeMutableBufferPointer { _ = crypto_auth_hmacsha256_final(&state, $0.baseAddress!) }
        withUnsafeMutableBytes(of: &state) { sodium_memzero($0.baseAddress, $0.count) }
        return SecretBytes(consuming: &out)
    }
}

/// The mesh-wide network key and what is derived from it. The raw key is never used directly: each job gets its
/// own sub-key from `crypto_kdf_derive_from_key`, so a key used to gate handshakes cannot be confused with another.
public struct NetworkKey: Sendable {
    public static let byteCount = 32
    private let key: SecretBytes

    public init(key: SecretBytes) throws {
        guard key.count == Self.byteCount else {
            throw CryptoError.invalidKeyLength(expected: Self.byteCount, actual: key.count)
        }
        self.key = key
    }

    /// A new random network key.
    public static func generate() -> NetworkKey {
        try! NetworkKey(key: SecretBytes(randomCount: byteCount))  // the length is right by construction
    }

    /// A 32-byte sub-key for one purpose. `context` must be exactly 8 bytes (libsodium's KDF context).
    public func derivedKey(id: UInt64, context: StaticString) -> SecretBytes {
        ensureSodium()
        precondition(context.utf8CodeUnitCount == Int(crypto_kdf_CONTEXTBYTES), "KDF context must be 8 bytes")
        var out = [UInt8](repeating: 0, count: 32)
        self.key.withUnsafeBytes { k in
            context.withUTF8Buffer { ctx in
                ctx.withMemoryRebound(to: CChar.self) { c in
                    out.withUnsafeMutableBufferPointer { o in
                        _ = crypto_kdf_derive_from_key(
                            o.baseAddress!, 32, id, c.baseAddress!, k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    }
                }
            }
        }
        return SecretBytes(consuming: &out)
    }

    /// The raw key, for writing `network.key`. The caller must wipe the copy.
    public func exportKey() -> [UInt8] { self.key.exportedCopy() }
}

/// `crypto_auth` (HMAC-SHA-512-256): a fast MAC, used to gate the first handshake message with a network sub-key.
public enum MessageAuthenticator {
    public static let byteCount = Int(crypto_auth_BYTES)

    public static func tag(for message: [UInt8], key: SecretBytes) -> [UInt8] {
        ensureSodium()
        precondition(key.count == Int(crypto_auth_KEYBYTES), "crypto_auth keys are 32 bytes")
        var tag = [UInt8](repeating: 0, count: byteCount)
        key.withUnsafeBytes { k in
            message.withUnsafeBufferPointer { m in
                tag.withUnsafeMutableBufferPointer { t in
                    _ = crypto_auth(
                        t.baseAddress!, m.baseAddress, UInt64(m.count), k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
        }
        return tag
    }

    public static func isValid(tag: [UInt8], for message: [UInt8], key: SecretBytes) -> Bool {
        ensureSodium()
        guard tag.count == byteCount, key.count == Int(crypto_auth_KEYBYTES) else { return false }
        return key.withUnsafeBytes { k in
            message.withUnsafeBufferPointer { m in
                tag.withUnsafeBufferPointer { t in
                    crypto_auth_verify(
                        t.baseAddress!, m.baseAddress, UInt64(m.count), k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                        == 0
                }
            }
        }
    }
}

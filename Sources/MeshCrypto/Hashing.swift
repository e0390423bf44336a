internal import CSodium
internal import CLibCrypto

/// SHA-256: the Noise hash function, the audit chain's hash and the name of an artifact. OpenSSL's libcrypto
/// computes it with the CPU's SHA extensions where there are some (about 1.8 GB/s here against libsodium's 0.35).
public enum SHA256 {
    public static let byteCount = 32
    /// SHA-256 works on 64-byte blocks: between blocks its whole state is the 32-byte chaining value.
    public static let blockLength = 64

    public static func hash(_ parts: [UInt8]...) -> [UInt8] {
        var hasher = Hasher()
        for part in parts { hasher.update(part) }
        return hasher.finalize()
    }

    /// Incremental SHA-256 (a value type: a copy is a checkpoint to go back to).
    public struct Hasher: Sendable {
        private var context = SHA256_CTX()

        public init() {
            SHA256_Init(&self.context)
        }

        public mutating func update(_ bytes: [UInt8]) {
            bytes.withUnsafeBytes { self.update($0) }
        }

        public mutating func update(_ bytes: UnsafeRawBufferPointer) {
            guard let base = bytes.baseAddress, bytes.count > 0 else { return }
            SHA256_Update(&self.context, base, bytes.count)
        }

        /// Bytes hashed so far.
        public var count: UInt64 { (UInt64(self.context.Nh) << 32 | UInt64(self.context.Nl)) >> 3 }

        /// The chaining value after the bytes so far, or nil unless they fill whole blocks: an artifact's owner
        /// records it at each chunk's end, so a receiver can tell which chunk went wrong without hashing twice.
        public var chainingValue: [UInt8]? {
            guard self.count % UInt64(SHA256.blockLength) == 0 else { return nil }
            return withUnsafeBytes(of: self.context.h) { words in
                (0..<8).flatMap { index -> [UInt8] in
                    let word = words.load(fromByteOffset: index * 4, as: UInt32.self)
                    return [UInt8(word >> 24), UInt8(word >> 16 & 0xFF), UInt8(word >> 8 & 0xFF), UInt8(word & 0xFF)]
                }
            }
        }

        public func finalize() -> [UInt8] {
            var context = self.context
            var out = [UInt8](repeating: 0, count: SHA256.byteCount)
            out.withUnsafeMutableBufferPointer { _ = SHA256_Final($0.baseAddress!, &context) }
            return out
        }
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

internal import CSodium

/// libsodium must be initialised once before any other call; `sodium_init` is idempotent and thread-safe,
/// and a global `let` is initialised lazily and exactly once.
private let sodiumInitResult: Int32 = sodium_init()

@inline(__always)
func ensureSodium() {
    // 0: initialised now, 1: already initialised. -1 means the library cannot be used at all, which is a broken
    // installation rather than anything a peer could cause.
    precondition(sodiumInitResult >= 0, "libsodium failed to initialise")
}

/// Errors from the crypto layer. None of them is caused by a programming mistake in the caller alone: a peer's
/// bytes or a user's file can trigger each, so they are thrown, never trapped.
public enum CryptoError: Error, Equatable, CustomStringConvertible {
    case invalidKeyLength(expected: Int, actual: Int)
    case invalidSignatureLength(actual: Int)
    case weakPublicKey
    case authenticationFailed

    public var description: String {
        switch self {
        case .invalidKeyLength(let expected, let actual):
            return "key has \(actual) bytes, expected \(expected)"
        case .invalidSignatureLength(let actual):
            return "signature has \(actual) bytes, expected 64"
        case .weakPublicKey:
            return "public key is a low-order point (Diffie-Hellman result is all zero)"
        case .authenticationFailed:
            return "message authentication failed"
        }
    }
}

/// Cryptographically secure random bytes from libsodium.
public func secureRandomBytes(_ count: Int) -> [UInt8] {
    ensureSodium()
    var bytes = [UInt8](repeating: 0, count: count)
    guard count > 0 else { return bytes }
    bytes.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
    return bytes
}

/// Constant-time equality for secrets and MACs.
public func constantTimeEquals(_ lhs: some Collection<UInt8>, _ rhs: some Collection<UInt8>) -> Bool {
    ensureSodium()
    let left = Array(lhs)
    let right = Array(rhs)
    guard left.count == right.count else { return false }
    if left.isEmpty { return true }
    return left.withUnsafeBytes { l in
        right.withUnsafeBytes { r in sodium_memcmp(l.baseAddress, r.baseAddress, l.count) == 0 }
    }
}

/// Overwrites a buffer with zeros in a way the optimiser cannot remove.
public func wipe(_ bytes: inout [UInt8]) {
    ensureSodium()
    guard !bytes.isEmpty else { return }
    bytes.withUnsafeMutableBytes { sodium_memzero($0.baseAddress!, $0.count) }
}

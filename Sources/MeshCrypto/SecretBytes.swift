internal import CSodium
import Synchronization

/// Secret key material that is wiped with `sodium_memzero` when the last reference goes away.
///
/// The bytes never leave this box as an array: callers borrow them with ``withUnsafeBytes(_:)``. The mutex makes
/// the class `Sendable` without unchecked escapes; it is uncontended in practice, because each secret belongs to
/// one connection or one identity.
public final class SecretBytes: Sendable {
    private let storage: Mutex<[UInt8]>
    public let count: Int

    /// Takes ownership of `bytes` and wipes the caller's copy.
    public init(consuming bytes: inout [UInt8]) {
        self.count = bytes.count
        self.storage = Mutex(bytes)
        wipe(&bytes)
    }

    /// Copies `bytes`; use for material whose original the caller cannot wipe (test vectors, file contents).
    public init(copying bytes: some Collection<UInt8>) {
        let array = Array(bytes)
        self.count = array.count
        self.storage = Mutex(array)
    }

    /// `count` fresh random bytes.
    public convenience init(randomCount count: Int) {
        var bytes = secureRandomBytes(count)
        self.init(consuming: &bytes)
    }

    public func withUnsafeBytes<R: Sendable>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try self.storage.withLock { bytes in try bytes.withUnsafeBytes(body) }
    }

    /// A copy of the secret, for writing it to a key file. The caller must wipe it.
    public func exportedCopy() -> [UInt8] {
        self.storage.withLock { Array($0) }
    }

    deinit {
        self.storage.withLock { wipe(&$0) }
    }
}

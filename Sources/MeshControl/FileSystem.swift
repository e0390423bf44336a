import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Durable file writes: temp file, fsync, rename, fsync of the directory, so a crash leaves either the old file or
/// the new one, never a torn one (.github/SECURITY.md, keys and files).
package enum FileSystem {
    /// `mode`: permission bits, such as 0o600 (UInt32, as `mode_t` is on Linux; the C type would need a package import).
    package static func writeAtomically(_ bytes: [UInt8], to path: String, mode: UInt32) throws(HomeError) {
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = directory + "/." + (path as NSString).lastPathComponent + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw .writeFailed(path, lastError()) }
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if result < 0 {
                if errno == EINTR { continue }
                let why = lastError()
                close(fd)
                unlink(temporary)
                throw .writeFailed(path, why)
            }
            written += result
        }
        // Mode is set explicitly: open() honours the umask, and a secret must not end up group-readable.
        guard fchmod(fd, mode) == 0, fsync(fd) == 0 else {
            let why = lastError()
            close(fd)
            unlink(temporary)
            throw .writeFailed(path, why)
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let why = lastError()
            unlink(temporary)
            throw .writeFailed(path, why)
        }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }

    package static func createDirectory(_ path: String, mode: UInt32) throws(HomeError) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw .writeFailed(path, "it exists and is not a directory") }
            return
        }
        do {
            try FileManager.default.createDirectory(
                atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: mode])
        } catch {
            throw .writeFailed(path, error.localizedDescription)
        }
    }

    package static func readBytes(_ path: String, limit: Int = 1 << 20) throws(HomeError) -> [UInt8] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .unreadable(path, FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")
        }
        defer { try? handle.close() }
        do {
            let data = try handle.read(upToCount: limit + 1) ?? Data()
            guard data.count <= limit else { throw HomeError.unreadable(path, "larger than \(limit) bytes") }
            return Array(data)
        } catch let error as HomeError {
            throw error
        } catch {
            throw .unreadable(path, error.localizedDescription)
        }
    }

    package static func readText(_ path: String) throws(HomeError) -> String {
        String(decoding: try readBytes(path), as: UTF8.self)
    }

    package static func lastError() -> String { String(cString: strerror(errno)) }
}

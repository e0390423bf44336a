// `mesh-baseline floor MIB DIR`: what the least work of a MIB-sized inline task costs on this machine, step by step,
// with the primitives the node uses. scripts/bulk prints it beside the measured task, so a target can be judged
// against what the machine allows.
import Foundation
import MeshControl
import MeshCrypto
import MeshStorage

#if canImport(Glibc)
import Glibc
#endif

/// The cheapest run of each step, in milliseconds, over `rounds` tries.
struct FloorReport: Encodable {
    let mib: Int
    /// One pass through a local socket (the kernel copies in and out).
    let socketPassMs: Double
    let sealMs: Double
    /// The same frames through libsodium 1.0.18 (its copying seal), which the node uses below 4 KiB.
    let sealLibsodiumMs: Double
    let openMs: Double
    let sha256Ms: Double
    let jsonCheckMs: Double
    /// Into a new file, kept: the cheaper of the page cache (1 MiB per call, as `--durability process` writes) and
    /// `O_DIRECT` (as `--durability fsync` writes, without its fsync).
    let fileWriteMs: Double
    let fileWriteBufferedMs: Double
    let fileWriteDirectMs: Double
    /// A payload file as `--durability fsync` writes it before the task takes its next step: `O_DIRECT`, then fsync.
    let fileWriteDurableMs: Double
    /// The inline echo's least work, one step after another: 4 socket passes (client → a → b → a → client),
    /// 2 seals and 2 opens, 4 audit digests (each message on both nodes), 3 JSON checks (the submission, the result
    /// on b, the result on a) and 4 payload files (input and result, on both nodes).
    let serialMs: Double
    /// The same work spread perfectly over every core.
    let perfectlyParallelMs: Double
    /// The node's write-ahead rule (a step of a task is taken only once what it depends on is durable) puts the four
    /// durable payload files one after another on the task's path, with nothing of the task beside them; the rest
    /// of the work spread perfectly over every core. Under `--durability fsync` (`writeAheadMs`, each file
    /// `fileWriteDurableMs`) and under `--durability process` (each file with `O_DIRECT`, unsynced, as the node
    /// writes a payload of a megabyte or more).
    let writeAheadMs: Double
    let writeAheadProcessMs: Double
    let cores: Int

    enum CodingKeys: String, CodingKey {
        case mib, cores
        case socketPassMs = "socket_pass_ms", sealMs = "seal_ms", sealLibsodiumMs = "seal_libsodium_ms", openMs = "open_ms"
        case sha256Ms = "sha256_ms", jsonCheckMs = "json_check_ms", fileWriteMs = "file_write_ms"
        case fileWriteBufferedMs = "file_write_buffered_ms", fileWriteDirectMs = "file_write_direct_ms", serialMs = "serial_ms"
        case fileWriteDurableMs = "file_write_durable_ms", writeAheadMs = "write_ahead_ms", writeAheadProcessMs = "write_ahead_process_ms"
        case perfectlyParallelMs = "perfectly_parallel_ms"
    }
}

func measureFloor(mib: Int, directory: String) throws {
    let count = mib << 20
    let rounds = 5
    func cheapest(_ body: (Int) throws -> Void) rethrows -> Double {
        var best = Double.infinity
        for round in 0..<rounds {
            let started = ContinuousClock.now
            try body(round)
            best = min(best, (ContinuousClock.now - started).seconds * 1000)
        }
        return best
    }

    // A JSON string of `count` bytes, as the inline task carries.
    var payload = [UInt8](repeating: UInt8(ascii: "x"), count: count)
    payload[0] = UInt8(ascii: "\"")
    payload[count - 1] = UInt8(ascii: "\"")

    let socket = try cheapest { _ in try socketPass(payload) }

    // Transport frames of 64 KiB, sealed and opened in place as the session does.
    let key = SecretBytes(randomCount: ChaChaPoly.keyByteCount)
    let frame = 65_535 - 1 - ChaChaPoly.tagByteCount
    var frames = [UInt8](repeating: 0, count: count + (count / frame + 1) * ChaChaPoly.tagByteCount)
    let seal = cheapest { _ in
        frames.withUnsafeMutableBytes { buffer in
            var offset = 0
            var nonce: UInt64 = 0
            while offset + frame + ChaChaPoly.tagByteCount <= buffer.count {
                let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + frame + ChaChaPoly.tagByteCount)])
                ChaChaPoly.sealInPlace(key: key, nonce: nonce, buffer: slice, plaintextLength: frame)
                offset += frame + ChaChaPoly.tagByteCount
                nonce += 1
            }
        }
    }
    let sealed = frames
    let plainFrame = [UInt8](repeating: UInt8(ascii: "x"), count: frame)
    let sealLibsodium = cheapest { _ in
        for nonce in 0..<UInt64(count / frame) {
            _ = ChaChaPoly.seal(key: key, nonce: nonce, associatedData: [], plaintext: plainFrame)
        }
    }
    var plaintext = [UInt8](repeating: 0, count: frames.count)
    let open = cheapest { _ in
        sealed.withUnsafeBytes { ciphertext in
            plaintext.withUnsafeMutableBytes { output in
                var offset = 0
                var nonce: UInt64 = 0
                while offset + frame + ChaChaPoly.tagByteCount <= ciphertext.count {
                    let slice = UnsafeRawBufferPointer(rebasing: ciphertext[offset..<(offset + frame + ChaChaPoly.tagByteCount)])
                    _ = ChaChaPoly.open(key: key, nonce: nonce, ciphertext: slice, into: output.baseAddress! + offset)
                    offset += frame + ChaChaPoly.tagByteCount
                    nonce += 1
                }
            }
        }
    }

    let sha = cheapest { _ in _ = SHA256.hash(payload) }
    let json = cheapest { _ in precondition(JSONText.isValue(payload)) }
    let buffered = try cheapest { round in try writeNewFile(payload, to: "\(directory)/buffered-\(round)", direct: false) }
    let direct = try cheapest { round in try writeNewFile(payload, to: "\(directory)/direct-\(round)", direct: true) }
    let write = min(buffered, direct)
    let durable = try cheapest { round in try writeNewFile(payload, to: "\(directory)/durable-\(round)", direct: true, sync: true) }

    let serial = 4 * socket + 2 * seal + 2 * open + 4 * sha + 3 * json + 4 * write
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let report = FloorReport(
        mib: mib, socketPassMs: socket, sealMs: seal, sealLibsodiumMs: sealLibsodium, openMs: open, sha256Ms: sha,
        jsonCheckMs: json, fileWriteMs: write, fileWriteBufferedMs: buffered, fileWriteDirectMs: direct,
        fileWriteDurableMs: durable, serialMs: serial, perfectlyParallelMs: serial / Double(cores),
        writeAheadMs: 4 * durable + (serial - 4 * write) / Double(cores),
        writeAheadProcessMs: 4 * direct + (serial - 4 * write) / Double(cores), cores: cores)
    print(String(decoding: try JSONEncoder().encode(report), as: UTF8.self))
}

/// `bytes` written into one end of a Unix socket pair and read out of the other by a second thread.
private func socketPass(_ bytes: [UInt8]) throws {
    var ends: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0 else { throw FloorError.system("socketpair") }
    defer { close(ends[0]); close(ends[1]) }
    let reader = ends[1]
    let total = bytes.count
    let finished = DispatchSemaphore(value: 0)
    Thread {
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var got = 0
        while got < total {
            let count = buffer.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            got += count
        }
        finished.signal()
    }.start()
    var sent = 0
    while sent < total {
        let count = bytes.withUnsafeBytes { write(ends[0], $0.baseAddress! + sent, $0.count - sent) }
        guard count > 0 else { throw FloorError.system("write to the socket") }
        sent += count
    }
    finished.wait()
}

private func writeNewFile(_ bytes: [UInt8], to path: String, direct: Bool, sync: Bool = false) throws {
    unlink(path)
    let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard descriptor >= 0 else { throw FloorError.system("open \(path)") }
    defer { close(descriptor) }
    if direct {
        let appender = DirectAppender(descriptor: descriptor, path: path, at: 0)
        try appender.append(bytes)
        try appender.flush()
        if sync, fsync(descriptor) != 0 { throw FloorError.system("fsync \(path)") }
        return
    }
    var written = 0
    while written < bytes.count {
        let count = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + written, min($0.count - written, 1 << 20)) }
        guard count > 0 else { throw FloorError.system("write \(path)") }
        written += count
    }
}

enum FloorError: Error, CustomStringConvertible {
    case system(String)
    var description: String {
        switch self {
        case .system(let what): "\(what): \(String(cString: strerror(errno)))"
        }
    }
}

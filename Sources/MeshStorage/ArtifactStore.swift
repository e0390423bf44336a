public import Foundation
public import MeshCore
import MeshCrypto
import Synchronization

/// Why the store cannot take or give an artifact, as a sentence for the person who asked.
public struct ArtifactError: Error, Equatable, CustomStringConvertible {
    public let description: String
    /// A limit of this node refused it (its size or the store's room): asking another peer would not help.
    public let isLimit: Bool

    public init(_ description: String, isLimit: Bool = false) {
        self.description = description
        self.isLimit = isLimit
    }
}

/// The node's artifacts, one file per SHA-256 in `DIR/artifacts/`. Beside each: `HEX.chain`, the SHA-256 chaining
/// value at the end of every chunk (so a receiver can tell which chunk went wrong), and `HEX.meta`, its media type
/// and the name it came with. Every file operation here blocks: the node calls them on its artifact queue, never on
/// its event loop. Bytes are counted against a per-node capacity: an upload's from the moment it starts, so a full
/// store refuses before it stores anything; a download's as they arrive (see ``Download``).
public final class ArtifactStore: Sendable {
    /// Transfers move and check artifacts in chunks of this many bytes (a multiple of the SHA-256 block).
    public static let chunkLength = TaskMessage.maximumArtifactChunk

    public let directory: String
    /// The largest artifact this node takes (`run --max-artifact-bytes`).
    public let maximumArtifact: UInt64
    /// All artifacts together, at most (`run --artifact-store-bytes`).
    public let capacity: UInt64
    private let durable: Bool
    private let used: Mutex<UInt64>
    /// Artifacts whose bytes were last seen to match their digest, with the file as it was then: one whose file
    /// changed since (another size, inode, or change time) is hashed again before it is served.
    private let verified = Mutex<[[UInt8]: FileStamp]>([:])

    struct FileStamp: Equatable {
        let size: Int
        let inode: UInt
        let changed: (seconds: Int, nanoseconds: Int)

        init(_ info: stat) {
            self.size = Int(info.st_size)
            self.inode = UInt(info.st_ino)
            self.changed = (info.st_ctim.tv_sec, info.st_ctim.tv_nsec)
        }

        static func == (lhs: Self, rhs: Self) -> Bool {
            lhs.size == rhs.size && lhs.inode == rhs.inode && lhs.changed == rhs.changed
        }
    }

    public init(directory: String, maximumArtifact: UInt64, capacity: UInt64, durable: Bool) throws(ArtifactError) {
        self.directory = directory
        self.maximumArtifact = maximumArtifact
        self.capacity = capacity
        self.durable = durable
        for folder in [directory, directory + "/partial", directory + "/incoming"] {
            guard mkdir(folder, 0o700) == 0 || errno == EEXIST else {
                throw ArtifactError("cannot create \(folder): \(String(cString: strerror(errno)))")
            }
        }
        // Uploads and agent outputs cut off by a crash are not resumable: nothing refers to them yet.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory + "/incoming")) ?? [] {
            unlink(directory + "/incoming/" + name)
        }
        var total: UInt64 = 0
        for folder in [directory, directory + "/partial"] {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] where name.count == 64 {
                var info = stat()
                if stat(folder + "/" + name, &info) == 0 { total += UInt64(info.st_size) }
            }
        }
        self.used = Mutex(total)
    }

    public var usedBytes: UInt64 { self.used.withLock { $0 } }

    public func path(of digest: [UInt8]) -> String { self.directory + "/" + Hex.encode(digest) }

    /// The artifact's size when this node has it whole.
    public func size(of digest: [UInt8]) -> UInt64? {
        var info = stat()
        guard digest.count == SHA256.byteCount, stat(self.path(of: digest), &info) == 0 else { return nil }
        return UInt64(info.st_size)
    }

    /// The media type and name it was stored with.
    public func metadata(of digest: [UInt8]) -> (mediaType: String, name: String)? {
        guard let text = try? String(contentsOfFile: self.path(of: digest) + ".meta", encoding: .utf8) else { return nil }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 2 else { return nil }
        return (lines[0], lines[1])
    }

    /// Counts `size` bytes against the capacity, or says which limit they would break and how to raise it.
    public func reserve(_ size: UInt64) throws(ArtifactError) {
        guard size <= self.maximumArtifact else {
            throw ArtifactError(
                "the artifact has \(size) bytes; this node takes at most \(self.maximumArtifact) (run --max-artifact-bytes)", isLimit: true)
        }
        let refused: UInt64? = self.used.withLock { used in
            guard used + size <= self.capacity else { return used }
            used += size
            return nil
        }
        if let used = refused {
            throw ArtifactError(
                "the artifact store is full: \(used) of \(self.capacity) bytes used, \(size) more asked for (run --artifact-store-bytes)",
                isLimit: true)
        }
    }

    /// Whether `size` more bytes would fit now, without counting them: a download checks the whole artifact when it
    /// starts and counts its bytes as they arrive.
    public func checkRoom(_ size: UInt64, artifactSize: UInt64) throws(ArtifactError) {
        guard artifactSize <= self.maximumArtifact else {
            throw ArtifactError(
                "the artifact has \(artifactSize) bytes; this node takes at most \(self.maximumArtifact) (run --max-artifact-bytes)", isLimit: true)
        }
        let used = self.usedBytes
        guard used + size <= self.capacity else {
            throw ArtifactError(
                "the artifact store is full: \(used) of \(self.capacity) bytes used, \(size) more asked for (run --artifact-store-bytes)",
                isLimit: true)
        }
    }

    public func release(_ size: UInt64) {
        self.used.withLock { $0 -= min($0, size) }
    }

    // MARK: - Taking artifacts in

    /// Bytes written in order (an upload, an agent's result file), hashed as they come; `finish` files them under
    /// their digest. The size is reserved up front.
    public final class Writer {
        private let store: ArtifactStore
        private let temporary: String
        private let descriptor: Int32
        private let reserved: UInt64
        private let appender: DirectAppender
        private var hasher = ChunkHasher()
        private var written: UInt64 = 0

        public init(store: ArtifactStore, size: UInt64) throws(ArtifactError) {
            try store.reserve(size)
            self.store = store
            self.reserved = size
            self.temporary = store.directory + "/incoming/" + Hex.encode((0..<8).map { _ in UInt8.random(in: 0...255) })
            self.descriptor = open(self.temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard self.descriptor >= 0 else {
                let why = String(cString: strerror(errno))
                store.release(size)
                throw ArtifactError("cannot create \(self.temporary): \(why)")
            }
            self.appender = DirectAppender(descriptor: self.descriptor, path: self.temporary, at: 0)
        }

        public var count: UInt64 { self.written }

        public func write(_ bytes: UnsafeRawBufferPointer) throws(ArtifactError) {
            guard self.written + UInt64(bytes.count) <= self.reserved else {
                throw ArtifactError("the artifact is longer than the \(self.reserved) bytes announced")
            }
            try self.appender.append(bytes)
            self.hasher.update(bytes)
            self.written += UInt64(bytes.count)
        }

        public func write(_ bytes: [UInt8]) throws(ArtifactError) {
            try withBytes(bytes) { raw throws(ArtifactError) in try self.write(raw) }
        }

        /// Files the bytes under their digest (a copy already there wins; this one is dropped).
        public func finish(name: String, mediaType: String) throws(ArtifactError) -> ArtifactRef {
            defer { close(self.descriptor) }
            guard self.written == self.reserved else {
                self.abort()
                throw ArtifactError("the artifact ended after \(self.written) of the \(self.reserved) bytes announced")
            }
            do {
                try self.appender.flush()
            } catch {
                self.abort()
                throw error
            }
            let digest = self.hasher.hasher.finalize()
            if self.store.durable { fsync(self.descriptor) }
            try self.store.file(self.temporary, digest: digest, size: self.written, chain: self.hasher.chain, mediaType: mediaType, name: name)
            return ArtifactRef(digest: digest, size: self.written, mediaType: mediaType, name: name)
        }

        public func abort() {
            close(self.descriptor)
            unlink(self.temporary)
            self.store.release(self.reserved)
        }
    }

    /// A file the node was handed (an agent's result, in a folder on the store's file system): hashed where it is,
    /// then moved into the store, so its bytes are read once and never copied.
    public func ingest(file path: String, name: String, mediaType: String) throws(ArtifactError) -> ArtifactRef {
        // Not through a symbolic link: what the agent left in the folder, nothing it points at.
        let input = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard input >= 0 else { throw ArtifactError("cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { close(input) }
        var info = stat()
        guard fstat(input, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { throw ArtifactError("\(path) is not a regular file") }
        let size = UInt64(info.st_size)
        try self.reserve(size)
        var hasher = ChunkHasher()
        var buffer = [UInt8](repeating: 0, count: Self.chunkLength)
        while hasher.hasher.count < size {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(input, $0.baseAddress, $0.count) }
            guard count > 0 else {
                self.release(size)
                throw ArtifactError("cannot read \(path): \(count < 0 ? String(cString: strerror(errno)) : "it shrank while it was read")")
            }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
        }
        let digest = hasher.hasher.finalize()
        if self.durable { fsync(input) }
        try self.file(path, digest: digest, size: size, chain: hasher.chain, mediaType: mediaType, name: name)
        return ArtifactRef(digest: digest, size: size, mediaType: mediaType, name: name)
    }

    private func file(
        _ temporary: String, digest: [UInt8], size: UInt64, chain: [UInt8], mediaType: String, name: String
    ) throws(ArtifactError) {
        let final = self.path(of: digest)
        if self.size(of: digest) != nil {
            // Already here: the reservation for this copy goes back.
            unlink(temporary)
            self.release(size)
            return
        }
        do {
            try Data(chain).write(to: URL(fileURLWithPath: final + ".chain"), options: .atomic)
            try Data("\(mediaType)\n\(name)\n".utf8).write(to: URL(fileURLWithPath: final + ".meta"), options: .atomic)
        } catch {
            unlink(temporary)
            self.release(size)
            throw ArtifactError("cannot write beside \(final): \(error.localizedDescription)")
        }
        guard rename(temporary, final) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(temporary)
            self.release(size)
            throw ArtifactError("cannot file \(final): \(why)")
        }
        // Hashed on its way in: verified as it is now.
        var info = stat()
        if stat(final, &info) == 0 { self.verified.withLock { $0[digest] = FileStamp(info) } }
    }

    // MARK: - Serving

    /// Checks that the stored bytes still hash to their digest before anything serves them: a file changed on disk
    /// (by another process, or the disk) is removed, not served under a digest it no longer has. Hashes only when
    /// the file changed since it was last checked; otherwise it costs one `stat`.
    public func verify(_ digest: [UInt8]) throws(ArtifactError) {
        let path = self.path(of: digest)
        let input = open(path, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw ArtifactError("no such artifact") }
        defer { close(input) }
        var info = stat()
        guard fstat(input, &info) == 0 else { throw ArtifactError("cannot read the artifact: \(String(cString: strerror(errno)))") }
        let stamp = FileStamp(info)
        if self.verified.withLock({ $0[digest] }) == stamp { return }
        var hasher = SHA256.Hasher()
        var buffer = [UInt8](repeating: 0, count: Self.chunkLength)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(input, $0.baseAddress, $0.count) }
            guard count >= 0 else { throw ArtifactError("cannot read the artifact: \(String(cString: strerror(errno)))") }
            if count == 0 { break }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
        }
        guard hasher.finalize() == digest else {
            self.remove(digest, size: UInt64(info.st_size))
            throw ArtifactError("the stored artifact sha256:\(Hex.encode(digest)) no longer matches its digest (its file was changed on disk); it was removed")
        }
        self.verified.withLock { $0[digest] = stamp }
    }

    /// Marks an artifact as just used (retention counts from its last task), keeping what was verified verified:
    /// the new change time is this node's own.
    public func touch(_ digest: [UInt8]) {
        let path = self.path(of: digest)
        var before = stat()
        guard stat(path, &before) == 0 else { return }
        let wasVerified = self.verified.withLock { $0[digest] } == FileStamp(before)
        var after = stat()
        guard utime(path, nil) == 0, wasVerified, stat(path, &after) == 0 else { return }
        self.verified.withLock { $0[digest] = FileStamp(after) }
    }

    private func remove(_ digest: [UInt8], size: UInt64) {
        let path = self.path(of: digest)
        self.verified.withLock { $0[digest] = nil }
        guard unlink(path) == 0 else { return }
        unlink(path + ".chain")
        unlink(path + ".meta")
        self.release(size)
    }

    /// `length` bytes from `offset` (a chunk boundary), with the chaining value after them unless they end the
    /// artifact; verified first (see ``verify(_:)``).
    public func read(_ digest: [UInt8], offset: UInt64, length: Int) throws(ArtifactError) -> (bytes: [UInt8], chainingValue: [UInt8]) {
        try self.verify(digest)
        guard let size = self.size(of: digest) else { throw ArtifactError("no such artifact") }
        guard offset % UInt64(Self.chunkLength) == 0, offset < size || (offset == 0 && size == 0) else {
            throw ArtifactError("offset \(offset) is not a chunk of the artifact")
        }
        let count = Int(min(UInt64(length), size - offset))
        let descriptor = open(self.path(of: digest), O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ArtifactError("cannot open the artifact: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var failure: ArtifactError?
        // Not zeroed first: every byte is read over.
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            var done = 0
            while done < count {
                let got = pread(descriptor, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                guard got > 0 else {
                    failure = ArtifactError("cannot read the artifact: \(got < 0 ? String(cString: strerror(errno)) : "it is shorter than it was")")
                    break
                }
                done += got
            }
            initialized = done
        }
        if let failure { throw failure }
        let end = offset + UInt64(count)
        guard end < size else { return (bytes, []) }
        guard end % UInt64(Self.chunkLength) == 0 else { throw ArtifactError("a chunk must end on a chunk boundary") }
        let index = Int(end / UInt64(Self.chunkLength)) - 1
        guard let chain = FileManager.default.contents(atPath: self.path(of: digest) + ".chain"), chain.count >= (index + 1) * 32 else {
            throw ArtifactError("the artifact's chaining values are missing")
        }
        return (bytes, Array(chain[index * 32..<(index + 1) * 32]))
    }

    // MARK: - Fetching from a peer

    /// An artifact arriving chunk by chunk in `partial/HEX`. Reopening one that a dropped session or a crash cut
    /// off resumes from its last whole chunk: the bytes before it are hashed again to restore the running digest.
    /// Its bytes count against the store as they arrive, not when it starts: a peer whose result claimed gigabytes
    /// and sent nothing held the store's room from every upload until its pulls gave up.
    public final class Download {
        public let artifact: ArtifactRef
        private let store: ArtifactStore
        private let partial: String
        private let descriptor: Int32
        private var appender: DirectAppender!
        private var hasher = SHA256.Hasher()
        private var chain: [UInt8] = []
        public private(set) var received: UInt64 = 0

        public init(store: ArtifactStore, artifact: ArtifactRef) throws(ArtifactError) {
            self.store = store
            self.artifact = artifact
            self.partial = store.directory + "/partial/" + artifact.hex
            var info = stat()
            let existing = stat(self.partial, &info) == 0 ? UInt64(info.st_size) : 0
            // The partial file's bytes already count; the rest must fit now, and is counted as it arrives.
            try store.checkRoom(artifact.size - min(existing, artifact.size), artifactSize: artifact.size)
            self.descriptor = open(self.partial, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard self.descriptor >= 0 else {
                throw ArtifactError("cannot create \(self.partial): \(String(cString: strerror(errno)))")
            }
            let whole = min(existing, artifact.size) / UInt64(ArtifactStore.chunkLength) * UInt64(ArtifactStore.chunkLength)
            ftruncate(self.descriptor, off_t(whole))
            if existing > whole { store.release(existing - whole) }
            var buffer = [UInt8](repeating: 0, count: ArtifactStore.chunkLength)
            while self.received < whole {
                let got = buffer.withUnsafeMutableBytes { pread(self.descriptor, $0.baseAddress, $0.count, off_t(self.received)) }
                guard got == ArtifactStore.chunkLength else { break }
                self.hasher.update(buffer)
                self.chain += self.hasher.chainingValue ?? []
                self.received += UInt64(got)
            }
            if self.received < whole { ftruncate(self.descriptor, off_t(self.received)) }
            self.appender = DirectAppender(descriptor: self.descriptor, path: self.partial, at: self.received)
        }

        deinit { close(self.descriptor) }

        public enum Verdict: Equatable, Sendable {
            case accepted
            /// The chunk's bytes do not give the owner's chaining value: nothing of it was kept; ask for it again.
            case damaged
            /// Every byte is here and the whole digest matches: the artifact is filed.
            case complete
        }

        /// The next chunk, in order: checked against the owner's chaining value, then written.
        public func append(_ bytes: [UInt8], chainingValue: [UInt8]) throws(ArtifactError) -> Verdict {
            try self.append(bytes[...], chainingValue: chainingValue)
        }

        public func append(_ bytes: ArraySlice<UInt8>, chainingValue: [UInt8]) throws(ArtifactError) -> Verdict {
            let end = self.received + UInt64(bytes.count)
            guard end <= self.artifact.size else { throw ArtifactError("the owner sent more bytes than the artifact has") }
            var next = self.hasher
            bytes.withUnsafeBytes { next.update($0) }
            if end < self.artifact.size {
                guard bytes.count == ArtifactStore.chunkLength, next.chainingValue == chainingValue else { return .damaged }
            } else {
                guard next.finalize() == self.artifact.digest else { return .damaged }
            }
            // Each chunk is whole on disk before the next is asked for, so a crash resumes after it.
            try self.store.reserve(UInt64(bytes.count))
            do throws(ArtifactError) {
                try withBytes(bytes) { raw throws(ArtifactError) in try self.appender.append(raw) }
                try self.appender.flush()
            } catch {
                // The partial file is cut back to its last whole chunk when the download is opened again.
                self.store.release(UInt64(bytes.count))
                throw error
            }
            self.hasher = next
            if end < self.artifact.size { self.chain += chainingValue }
            self.received = end
            guard end == self.artifact.size else { return .accepted }
            if self.store.durable { fsync(self.descriptor) }
            try self.store.file(
                self.partial, digest: self.artifact.digest, size: self.artifact.size, chain: self.chain,
                mediaType: self.artifact.mediaType, name: self.artifact.name)
            return .complete
        }

        /// Gives up the download: its bytes are dropped and their room given back.
        public func discard() {
            unlink(self.partial)
            self.store.release(self.received)
        }
    }

    /// Removes the partial file of a transfer that will not be resumed, giving back its room.
    public func discardPartial(_ hex: String) {
        let path = self.directory + "/partial/" + hex
        var info = stat()
        guard hex.count == 64, stat(path, &info) == 0, unlink(path) == 0 else { return }
        self.release(UInt64(info.st_size))
    }

    // MARK: - Retention

    /// Removes every artifact not in `keep` (hex digests) that was stored before `cutoff`, and partial downloads
    /// nobody continued since `partialsBefore` (a failed pull's bytes are worth keeping only for a retry soon);
    /// returns how many bytes went.
    @discardableResult
    public func sweep(keeping keep: Set<String>, storedBefore cutoff: Date, partialsBefore: Date? = nil) -> UInt64 {
        var freed: UInt64 = 0
        for (folder, before) in [(self.directory, cutoff), (self.directory + "/partial", partialsBefore ?? cutoff)] {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] where name.count == 64 && !keep.contains(name) {
                let path = folder + "/" + name
                var info = stat()
                guard stat(path, &info) == 0, Double(info.st_mtim.tv_sec) < before.timeIntervalSince1970 else { continue }
                if unlink(path) == 0 {
                    freed += UInt64(info.st_size)
                    unlink(path + ".chain")
                    unlink(path + ".meta")
                }
            }
        }
        self.release(freed)
        return freed
    }
}

/// The bytes of an array to a body that throws only ``ArtifactError``.
private func withBytes<T>(_ bytes: some ContiguousBytes, _ body: (UnsafeRawBufferPointer) throws(ArtifactError) -> T) throws(ArtifactError) -> T {
    let result: Result<T, ArtifactError> = bytes.withUnsafeBytes { raw in Result { () throws(ArtifactError) -> T in try body(raw) } }
    return try result.get()
}

/// SHA-256 over an artifact, noting the chaining value at the end of every chunk.
private struct ChunkHasher {
    var hasher = SHA256.Hasher()
    var chain: [UInt8] = []

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var rest = bytes
        while !rest.isEmpty {
            let room = ArtifactStore.chunkLength - Int(self.hasher.count % UInt64(ArtifactStore.chunkLength))
            let part = UnsafeRawBufferPointer(rebasing: rest.prefix(room))
            self.hasher.update(part)
            if part.count == room, let value = self.hasher.chainingValue { self.chain += value }
            rest = UnsafeRawBufferPointer(rebasing: rest.dropFirst(part.count))
        }
    }
}

extension ArtifactStore {
    /// Copies `source` to a new file `destination` (mode 0600) with `copy_file_range`, which the kernel does without
    /// passing the bytes through this process (and clones where the file system can); nil, or why it failed.
    package static func copyFile(_ source: String, to destination: String) -> String? {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { return "cannot open \(source): \(String(cString: strerror(errno)))" }
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard output >= 0 else { return "cannot create \(destination): \(String(cString: strerror(errno)))" }
        defer { close(output) }
        var status = stat()
        guard fstat(input, &status) == 0 else { return "cannot read \(source): \(String(cString: strerror(errno)))" }
        var remaining = Int(status.st_size)
        while remaining > 0 {
            let copied = glibcCopyFileRange(input, nil, output, nil, min(remaining, 1 << 30), 0)
            if copied < 0, errno == EINTR { continue }
            guard copied > 0 else {
                return copied == 0 ? "\(source) ended early" : "cannot copy \(source): \(String(cString: strerror(errno)))"
            }
            remaining -= copied
        }
        return nil
    }
}

/// glibc's `copy_file_range` (declared only under _GNU_SOURCE, which Swift's Glibc module does not set).
@_silgen_name("copy_file_range")
private func glibcCopyFileRange(
    _ input: Int32, _ inputOffset: UnsafeMutablePointer<Int64>?, _ output: Int32, _ outputOffset: UnsafeMutablePointer<Int64>?,
    _ length: Int, _ flags: UInt32
) -> Int

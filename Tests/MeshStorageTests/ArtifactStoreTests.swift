import Foundation
import MeshCore
import MeshCrypto
import Testing

@testable import MeshStorage

/// The artifact store, the payload framing, the artifact messages and the multipart reader, without nodes.
@Suite struct ArtifactStoreTests {
    static func store(maximum: UInt64 = 1 << 30, capacity: UInt64 = 1 << 30) throws -> ArtifactStore {
        let directory = "/tmp/am-artifacts-" + UUID().uuidString.prefix(8)
        return try ArtifactStore(directory: directory, maximumArtifact: maximum, capacity: capacity, durable: false)
    }

    /// 2.5 chunks of bytes that differ from chunk to chunk.
    static let bytes = (0..<(ArtifactStore.chunkLength * 5 / 2)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 20) }

    static func stored(in store: ArtifactStore) throws -> ArtifactRef {
        let writer = try ArtifactStore.Writer(store: store, size: UInt64(Self.bytes.count))
        // Written in uneven pieces: chaining values must still land on chunk ends.
        var offset = 0
        for piece in [1, 63, 700_000, 2_000_000, Self.bytes.count] where offset < Self.bytes.count {
            let end = min(offset + piece, Self.bytes.count)
            try writer.write(Array(Self.bytes[offset..<end]))
            offset = end
        }
        return try writer.finish(name: "data.bin", mediaType: "application/octet-stream")
    }

    /// Whole megabytes go to the device directly, the rest through the page cache: every byte lands where it
    /// belongs for sizes around the block and the alignment, from an unaligned start, and on tmpfs, which refuses
    /// `O_DIRECT`.
    @Test(arguments: ["/tmp", "/dev/shm"])
    func theDirectAppenderWritesEveryByteInPlace(_ folder: String) throws {
        let block = DirectAppender.blockLength
        for (start, sizes) in [(0, [0, 1, 4095, 4096, 4097, block - 1, block, block + 1, 2 * block + 12_345]), (100, [block + 7])] {
            for size in sizes {
                let path = "\(folder)/am-direct-" + UUID().uuidString.prefix(8)
                defer { unlink(path) }
                let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
                #expect(descriptor >= 0)
                defer { close(descriptor) }
                let head = [UInt8](repeating: 0xEE, count: start)
                _ = head.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
                let appender = DirectAppender(descriptor: descriptor, path: path, at: UInt64(start))
                let bytes = Array(Self.bytes.prefix(size))
                // In uneven pieces, as an upload arrives.
                var offset = 0
                for piece in [3, 5000, block, Int.max] where offset < bytes.count {
                    let end = offset + min(piece, bytes.count - offset)
                    try bytes[offset..<end].withUnsafeBytes { try appender.append($0) }
                    offset = end
                }
                try appender.flush()
                #expect(appender.offset == UInt64(start + size))
                let contents = FileManager.default.contents(atPath: path).map { [UInt8]($0) }
                #expect(contents == head + bytes, "\(folder) from \(start), \(size) bytes")
            }
        }
    }

    @Test func storedBytesAreReadBackByChunkWithTheChainingValuesADownloadChecks() throws {
        let source = try Self.store(), target = try Self.store()
        let artifact = try Self.stored(in: source)
        #expect(artifact.digest == SHA256.hash(Self.bytes) && artifact.size == UInt64(Self.bytes.count))
        #expect(source.usedBytes == artifact.size && source.metadata(of: artifact.digest)?.name == "data.bin")
        let download = try ArtifactStore.Download(store: target, artifact: artifact)
        var offset: UInt64 = 0
        var verdicts: [ArtifactStore.Download.Verdict] = []
        while offset < artifact.size {
            let chunk = try source.read(artifact.digest, offset: offset, length: ArtifactStore.chunkLength)
            #expect(chunk.chainingValue.count == (offset + UInt64(chunk.bytes.count) < artifact.size ? 32 : 0))
            verdicts.append(try download.append(chunk.bytes, chainingValue: chunk.chainingValue))
            offset += UInt64(chunk.bytes.count)
        }
        #expect(verdicts == [.accepted, .accepted, .complete])
        #expect(target.size(of: artifact.digest) == artifact.size)
        #expect(throws: ArtifactError.self) { try source.read(artifact.digest, offset: 5, length: 10) }
    }

    @Test func aDamagedChunkIsNotKeptAndADownloadResumesFromItsLastWholeChunk() throws {
        let source = try Self.store(), target = try Self.store()
        let artifact = try Self.stored(in: source)
        let first = try source.read(artifact.digest, offset: 0, length: ArtifactStore.chunkLength)
        var download: ArtifactStore.Download? = try ArtifactStore.Download(store: target, artifact: artifact)
        var damaged = first.bytes
        damaged[100] ^= 1
        #expect(try download?.append(damaged, chainingValue: first.chainingValue) == .damaged)
        #expect(download?.received == 0)
        #expect(try download?.append(first.bytes, chainingValue: first.chainingValue) == .accepted)
        // The process dies here: a new download of the same artifact goes on after the first chunk.
        download = nil
        let resumed = try ArtifactStore.Download(store: target, artifact: artifact)
        #expect(resumed.received == UInt64(ArtifactStore.chunkLength))
        var offset = resumed.received
        var verdict = ArtifactStore.Download.Verdict.accepted
        while offset < artifact.size {
            let chunk = try source.read(artifact.digest, offset: offset, length: ArtifactStore.chunkLength)
            verdict = try resumed.append(chunk.bytes, chainingValue: chunk.chainingValue)
            offset += UInt64(chunk.bytes.count)
        }
        #expect(verdict == .complete && target.size(of: artifact.digest) == artifact.size)
        // A last chunk that does not give the whole digest is damaged too.
        let other = try Self.store()
        let lying = try ArtifactStore.Download(store: other, artifact: ArtifactRef(digest: SHA256.hash([1]), size: 1, mediaType: "a/b", name: "x"))
        #expect(try lying.append([2], chainingValue: []) == .damaged)
    }

    /// Bytes changed on disk after they were stored are never served under the old digest: the store checks a file
    /// that changed since it last hashed it, and removes it (its room given back). Its own touch is not a change.
    @Test func anArtifactChangedOnDiskIsRemovedInsteadOfServed() throws {
        let store = try Self.store()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        let artifact = try Self.stored(in: store)
        store.touch(artifact.digest)
        try store.verify(artifact.digest)
        #expect(try store.read(artifact.digest, offset: 0, length: ArtifactStore.chunkLength).bytes == Array(Self.bytes[0..<ArtifactStore.chunkLength]))
        let used = store.usedBytes
        let file = try #require(FileHandle(forUpdatingAtPath: store.path(of: artifact.digest)))
        try file.seek(toOffset: 5)
        file.write(Data([Self.bytes[5] ^ 1]))
        try file.close()
        #expect(throws: ArtifactError.self) { try store.read(artifact.digest, offset: 0, length: ArtifactStore.chunkLength) }
        #expect(store.size(of: artifact.digest) == nil && store.usedBytes == used - artifact.size)
        #expect(!FileManager.default.fileExists(atPath: store.path(of: artifact.digest) + ".chain"))
    }

    @Test func theCapsRefuseBeforeAnythingIsWrittenAndGiveTheRoomBack() throws {
        let store = try Self.store(maximum: 1000, capacity: 1500)
        #expect(throws: ArtifactError("the artifact has 1001 bytes; this node takes at most 1000 (run --max-artifact-bytes)", isLimit: true)) {
            try ArtifactStore.Writer(store: store, size: 1001)
        }
        let writer = try ArtifactStore.Writer(store: store, size: 1000)
        #expect(throws: ArtifactError.self) { try ArtifactStore.Writer(store: store, size: 600) }
        writer.abort()
        #expect(store.usedBytes == 0)
        let short = try ArtifactStore.Writer(store: store, size: 10)
        try short.write([1, 2, 3])
        #expect(throws: ArtifactError.self) { try short.finish(name: "x", mediaType: "a/b") }
        #expect(store.usedBytes == 0)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: store.directory + "/incoming"))?.isEmpty == true)
    }

    /// A download counts its bytes as they arrive: one that a peer announced and never sends holds no room (a result
    /// claiming gigabytes held the whole store from every upload), and one that meets a full store mid-way stops
    /// with the store's reason and keeps what it has.
    @Test func aDownloadHoldsOnlyTheRoomOfTheBytesThatArrived() throws {
        let source = try Self.store()
        defer { try? FileManager.default.removeItem(atPath: source.directory) }
        let artifact = try Self.stored(in: source)
        let store = try Self.store(capacity: UInt64(ArtifactStore.chunkLength * 3))
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        let download = try ArtifactStore.Download(store: store, artifact: artifact)
        #expect(store.usedBytes == 0, "announced, nothing arrived: nothing held")
        let upload = try ArtifactStore.Writer(store: store, size: UInt64(ArtifactStore.chunkLength * 2))
        let chunk = try source.read(artifact.digest, offset: 0, length: ArtifactStore.chunkLength)
        #expect(try download.append(chunk.bytes, chainingValue: chunk.chainingValue) == .accepted)
        #expect(store.usedBytes == UInt64(ArtifactStore.chunkLength * 3))
        let next = try source.read(artifact.digest, offset: UInt64(ArtifactStore.chunkLength), length: ArtifactStore.chunkLength)
        #expect(throws: ArtifactError.self, "the store is full now") { try download.append(next.bytes, chainingValue: next.chainingValue) }
        #expect(download.received == UInt64(ArtifactStore.chunkLength) && store.usedBytes == UInt64(ArtifactStore.chunkLength * 3))
        upload.abort()
        #expect(try download.append(next.bytes, chainingValue: next.chainingValue) == .accepted, "room again: it goes on")
        download.discard()
        #expect(store.usedBytes == 0)
    }

    @Test func aDiscardedPartialGivesBackItsRoom() throws {
        let store = try Self.store()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        let bytes = [UInt8](repeating: 7, count: ArtifactStore.chunkLength + 10)
        let artifact = ArtifactRef(digest: SHA256.hash(bytes), size: UInt64(bytes.count), mediaType: "a/b", name: "x")
        let download = try ArtifactStore.Download(store: store, artifact: artifact)
        var hasher = SHA256.Hasher()
        hasher.update(Array(bytes[..<ArtifactStore.chunkLength]))
        _ = try download.append(Array(bytes[..<ArtifactStore.chunkLength]), chainingValue: hasher.chainingValue ?? [])
        #expect(store.usedBytes == UInt64(ArtifactStore.chunkLength))
        store.discardPartial(artifact.hex)
        #expect(store.usedBytes == 0 && !FileManager.default.fileExists(atPath: store.directory + "/partial/" + artifact.hex))
    }

    @Test func retentionRemovesWhatNoTaskKeeps() throws {
        let store = try Self.store()
        let artifact = try Self.stored(in: store)
        #expect(store.sweep(keeping: [artifact.hex], storedBefore: Date().addingTimeInterval(60)) == 0)
        #expect(store.sweep(keeping: [], storedBefore: Date().addingTimeInterval(-60)) == 0, "too new to go")
        #expect(store.sweep(keeping: [], storedBefore: Date().addingTimeInterval(60)) == artifact.size)
        #expect(store.size(of: artifact.digest) == nil && store.usedBytes == 0)
    }

    /// A failed pull's partial file lives an hour, not the day finished artifacts do; a damaged one goes at once.
    @Test func partialsHaveAShortLifeAndADamagedOneIsDropped() throws {
        let store = try Self.store()
        let bytes = [UInt8](repeating: 7, count: ArtifactStore.chunkLength + 10)
        let artifact = ArtifactRef(digest: SHA256.hash(bytes), size: UInt64(bytes.count), mediaType: "a/b", name: "x")
        let download = try ArtifactStore.Download(store: store, artifact: artifact)
        var hasher = SHA256.Hasher()
        hasher.update(Array(bytes[..<ArtifactStore.chunkLength]))
        #expect(try download.append(Array(bytes[..<ArtifactStore.chunkLength]), chainingValue: hasher.chainingValue ?? []) == .accepted)
        #expect(store.usedBytes == UInt64(ArtifactStore.chunkLength), "the first chunk counts, and only it")
        let partial = store.directory + "/partial/" + artifact.hex
        #expect(FileManager.default.fileExists(atPath: partial))
        #expect(store.sweep(keeping: [], storedBefore: Date().addingTimeInterval(-86_400), partialsBefore: Date().addingTimeInterval(-60)) == 0)
        #expect(store.sweep(keeping: [], storedBefore: Date().addingTimeInterval(-86_400), partialsBefore: Date().addingTimeInterval(60))
            == UInt64(ArtifactStore.chunkLength))
        #expect(!FileManager.default.fileExists(atPath: partial) && store.usedBytes == 0)

        let damaged = try ArtifactStore.Download(store: store, artifact: artifact)
        #expect(try damaged.append(Array(repeating: 8, count: ArtifactStore.chunkLength), chainingValue: hasher.chainingValue ?? []) == .damaged)
        damaged.discard()
        #expect(!FileManager.default.fileExists(atPath: partial) && store.usedBytes == 0)
    }
}

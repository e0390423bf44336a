#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MeshCrypto

/// A named byte blob a task takes or gives (a PDF, an image, a JSON file), stored once per node under its SHA-256
/// and referenced from the task by digest, size and media type. The bytes move only to the node that needs them.
public struct ArtifactRef: Sendable, Hashable, CustomStringConvertible {
    public let digest: [UInt8]
    public let size: UInt64
    public let mediaType: String
    public let name: String

    public init(digest: [UInt8], size: UInt64, mediaType: String, name: String) {
        self.digest = digest
        self.size = size
        self.mediaType = mediaType
        self.name = name
    }

    public var hex: String { Hex.encode(self.digest) }
    public var description: String { "\(self.name) (sha256:\(self.hex.prefix(12)), \(self.size) bytes)" }

    /// A file name an agent can be given as is: no folders, no hidden or special names, at most 128 bytes.
    public static func isValidName(_ name: String) -> Bool {
        (1...128).contains(name.utf8.count) && !name.hasPrefix(".") && name.unicodeScalars.allSatisfy {
            $0.value >= 0x20 && $0.value != 0x7F && $0 != "/" && $0 != "\\"
        }
    }

    /// `type/subtype` with optional parameters, printable ASCII, at most 128 bytes.
    public static func isValidMediaType(_ type: String) -> Bool {
        (3...128).contains(type.utf8.count) && type.utf8.allSatisfy { (0x20...0x7E).contains($0) }
            && type.split(separator: ";").first.map { $0.split(separator: "/").count == 2 } == true
    }

    /// The media type of a file, from its name's extension (the common ones; anything else is octet-stream).
    public static func mediaType(ofFileNamed name: String) -> String {
        let types = [
            "json": "application/json", "txt": "text/plain", "md": "text/markdown", "csv": "text/csv", "html": "text/html",
            "pdf": "application/pdf", "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
            "webp": "image/webp", "svg": "image/svg+xml", "wav": "audio/wav", "mp3": "audio/mpeg", "mp4": "video/mp4",
            "zip": "application/zip", "gz": "application/gzip", "jsonl": "application/x-ndjson", "yaml": "application/yaml",
        ]
        let dot = name.lastIndex(of: ".").map { name.index(after: $0) }
        return dot.flatMap { types[name[$0...].lowercased()] } ?? "application/octet-stream"
    }

    /// Artifacts one task may carry on one side (input or result).
    public static let maximumPerTask = 64
}

/// A task's input or result as the task protocol carries it: the JSON value, then, when the task has artifacts,
/// a NUL byte and their references. JSON text never holds a raw NUL, so the split is unambiguous, and a task without
/// artifacts is its JSON alone: nothing changes for the state machines, the store or the audit log.
public struct TaskPayload: Sendable, Equatable {
    public var json: [UInt8]
    public var artifacts: [ArtifactRef]

    public init(json: [UInt8], artifacts: [ArtifactRef] = []) {
        self.json = json
        self.artifacts = artifacts
    }

    public struct DecodeError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Splits stored or received bytes; bytes without a NUL are JSON alone.
    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        guard let split = Self.separator(in: bytes) else {
            self.init(json: bytes)
            return
        }
        var reader = ByteReader(Array(bytes[(split + 1)...]))
        var artifacts: [ArtifactRef] = []
        do {
            let count = Int(try reader.u8("artifact count"))
            guard (1...ArtifactRef.maximumPerTask).contains(count) else {
                throw DecodeError(description: "a task carries 1 to \(ArtifactRef.maximumPerTask) artifacts, not \(count)")
            }
            for _ in 0..<count {
                let digest = Array(try reader.take(SHA256.byteCount, "artifact digest"))
                let size = try reader.u64("artifact size")
                let mediaType = try reader.shortString("media type")
                let name = try reader.shortString("artifact name")
                guard ArtifactRef.isValidName(name), ArtifactRef.isValidMediaType(mediaType) else {
                    throw DecodeError(description: "an artifact's name or media type is not valid")
                }
                artifacts.append(ArtifactRef(digest: digest, size: size, mediaType: mediaType, name: name))
            }
        } catch let error as DecodeError {
            throw error
        } catch {
            throw DecodeError(description: "malformed artifact references: \(error)")
        }
        guard reader.isAtEnd else { throw DecodeError(description: "\(reader.remaining) bytes after the artifact references") }
        guard Set(artifacts.map(\.name)).count == artifacts.count else {
            throw DecodeError(description: "two artifacts of one task share a name")
        }
        self.init(json: Array(bytes[..<split]), artifacts: artifacts)
    }

    /// The JSON of bytes that may carry artifact references (for readers that need the value only).
    public static func json(of bytes: [UInt8]) -> ArraySlice<UInt8> {
        Self.separator(in: bytes).map { bytes[..<$0] } ?? bytes[...]
    }

    /// Whether bytes carry artifact references after their JSON.
    public static func hasArtifacts(_ bytes: [UInt8]) -> Bool { Self.separator(in: bytes) != nil }

    /// The NUL after the JSON, found with `memchr`: a generic search read a 10 MiB result at a byte per cycle.
    static func separator(in bytes: [UInt8]) -> Int? {
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress, let found = memchr(base, 0, raw.count) else { return nil }
            return base.distance(to: UnsafeRawPointer(found))
        }
    }

    /// The artifacts referenced by bytes that may carry them; none when they are malformed.
    public static func artifacts(of bytes: [UInt8]) -> [ArtifactRef] {
        guard Self.hasArtifacts(bytes) else { return [] }
        return (try? TaskPayload(decoding: bytes).artifacts) ?? []
    }

    public func encoded() -> [UInt8] {
        guard !self.artifacts.isEmpty else { return self.json }
        var writer = ByteWriter(capacity: self.json.count + 1 + self.artifacts.count * 96)
        writer.raw(self.json)
        writer.u8(0)
        writer.u8(UInt8(self.artifacts.count))
        for artifact in self.artifacts {
            writer.raw(artifact.digest)
            writer.u64(artifact.size)
            writer.shortString(artifact.mediaType)
            writer.shortString(artifact.name)
        }
        return writer.bytes
    }
}

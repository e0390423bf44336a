public import MeshCrypto

/// What one audit record says happened between this node and the log's peer.
public enum AuditEvent: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// A session was authenticated (`extra`: the Noise handshake hash that names the session).
    case connected = 1
    case disconnected = 2
    /// A handshake with this peer was refused, by either side.
    case handshakeRefused = 3
    /// A task message this node wrote to the peer (`message` is its tag, `digest` the hash of its wire bytes).
    case sent = 4
    /// A task message the peer sent (recorded before the node acts on it).
    case received = 5
    /// Over a limit: the offer was declined `rate_limited`, or the message dropped (`detail` says which class).
    case rateLimited = 6
    case banned = 7
    /// Something an honest peer never does (bad signature, forged claim, a transcript that does not match).
    case misbehaved = 8
    /// This node's signature over the chain so far (`extra`: Ed25519 signature).
    case checkpoint = 9
    /// The peer's signature over the running hash of the task messages it sent in a session (`extra`: see
    /// ``TranscriptCheckpoint``), kept as evidence of what it said.
    case peerCheckpoint = 10
    /// Recovery found an incomplete record at the end of the file (a crash mid-append) and cut it off.
    case tailTruncated = 11

    public var description: String {
        switch self {
        case .connected: return "connected"
        case .disconnected: return "disconnected"
        case .handshakeRefused: return "handshake refused"
        case .sent: return "sent"
        case .received: return "received"
        case .rateLimited: return "rate limited"
        case .banned: return "banned"
        case .misbehaved: return "misbehaved"
        case .checkpoint: return "checkpoint"
        case .peerCheckpoint: return "peer checkpoint"
        case .tailTruncated: return "tail truncated"
        }
    }
}

/// The content of one record, before it is placed in the chain.
public struct AuditEntry: Sendable, Equatable {
    public var event: AuditEvent
    /// Wall-clock milliseconds since 1970 (for people reading the log; order comes from the index).
    public var time: Int64
    /// This node's number for the session the event belongs to (0: none).
    public var session: UInt64
    /// The task message's tag (1 offer … 8 resume) for `sent`/`received`/`rateLimited`, else 0.
    public var message: UInt8
    public var task: TaskID?
    public var epoch: UInt32
    /// SHA-256 of the message's wire bytes, or empty.
    public var digest: [UInt8]
    /// A short human-readable note: a reason, an address, a limit.
    public var detail: String
    /// Event-specific bytes (a handshake hash, a signature).
    public var extra: [UInt8]

    public init(
        _ event: AuditEvent, time: Int64, session: UInt64 = 0, message: UInt8 = 0, task: TaskID? = nil,
        epoch: UInt32 = 0, digest: [UInt8] = [], detail: String = "", extra: [UInt8] = []
    ) {
        self.event = event
        self.time = time
        self.session = session
        self.message = message
        self.task = task
        self.epoch = epoch
        self.digest = digest
        self.detail = detail
        self.extra = extra
    }
}

/// One record as stored: its place in the chain and the entry.
///
/// On disk: `u32 length ‖ u32 ~length ‖ body ‖ hash`, where `body` is the version, index, previous hash and the
/// entry, and `hash = SHA-256(previous ‖ u64 index ‖ SHA-256(body))` (all integers big-endian). The complemented
/// length makes a damaged length field an error instead of something that looks like a torn tail.
public struct AuditRecord: Sendable, Equatable {
    public static let version: UInt8 = 1
    /// No record is larger; a length field above it is damage, not a record.
    public static let maximumBodyLength = 64 * 1024
    public static let frameOverhead = 8 + SHA256.byteCount

    public let index: UInt64
    public let previous: [UInt8]
    public let entry: AuditEntry
    public let hash: [UInt8]

    public init(index: UInt64, previous: [UInt8], entry: AuditEntry) {
        self.index = index
        self.previous = previous
        self.entry = entry
        self.hash = Self.chainHash(previous: previous, index: index, body: Self.body(index: index, previous: previous, entry: entry))
    }

    static func chainHash(previous: [UInt8], index: UInt64, body: [UInt8]) -> [UInt8] {
        var position = ByteWriter(capacity: 8)
        position.u64(index)
        return SHA256.hash(previous, position.bytes, SHA256.hash(body))
    }

    static func body(index: UInt64, previous: [UInt8], entry: AuditEntry) -> [UInt8] {
        var writer = ByteWriter(capacity: 160 + entry.detail.utf8.count + entry.extra.count)
        writer.u8(Self.version)
        writer.u64(index)
        writer.raw(previous)
        writer.u8(entry.event.rawValue)
        writer.u64(UInt64(bitPattern: entry.time))
        writer.u64(entry.session)
        writer.u8(entry.message)
        writer.u8(entry.task == nil ? 0 : 1)
        writer.u64(entry.task?.high ?? 0)
        writer.u64(entry.task?.low ?? 0)
        writer.u32(entry.epoch)
        writer.u8(UInt8(entry.digest.count))
        writer.raw(entry.digest)
        let detail = Array(entry.detail.utf8.prefix(1024))
        writer.u16(UInt16(detail.count))
        writer.raw(detail)
        writer.u16(UInt16(entry.extra.count))
        writer.raw(entry.extra)
        return writer.bytes
    }

    /// The record framed for the file.
    public func framed() -> [UInt8] {
        let body = Self.body(index: self.index, previous: self.previous, entry: self.entry)
        var writer = ByteWriter(capacity: body.count + Self.frameOverhead)
        writer.u32(UInt32(body.count))
        writer.u32(~UInt32(body.count))
        writer.raw(body)
        writer.raw(self.hash)
        return writer.bytes
    }

    struct MalformedBody: Error {
        let why: String
    }

    /// Decodes a body; the caller checks its place in the chain.
    static func decode(body: [UInt8], storedHash: [UInt8]) throws(MalformedBody) -> AuditRecord {
        var reader = ByteReader(body)
        do {
            guard try reader.u8("version") == Self.version else { throw MalformedBody(why: "unknown record version") }
            let index = try reader.u64("index")
            let previous = Array(try reader.take(SHA256.byteCount, "previous hash"))
            guard let event = AuditEvent(rawValue: try reader.u8("event")) else {
                throw MalformedBody(why: "unknown event")
            }
            let time = Int64(bitPattern: try reader.u64("time"))
            let session = try reader.u64("session")
            let message = try reader.u8("message")
            let hasTask = try reader.u8("task flag")
            let task = TaskID(high: try reader.u64("task"), low: try reader.u64("task"))
            let epoch = try reader.u32("epoch")
            let digest = Array(try reader.take(Int(try reader.u8("digest length")), "digest"))
            let detail = String(decoding: try reader.take(Int(try reader.u16("detail length")), "detail"), as: UTF8.self)
            let extra = Array(try reader.take(Int(try reader.u16("extra length")), "extra"))
            guard reader.isAtEnd, hasTask <= 1 else { throw MalformedBody(why: "trailing bytes") }
            let entry = AuditEntry(
                event, time: time, session: session, message: message, task: hasTask == 1 ? task : nil, epoch: epoch,
                digest: digest, detail: detail, extra: extra)
            guard Self.chainHash(previous: previous, index: index, body: body) == storedHash else {
                throw MalformedBody(why: "its hash does not match its content")
            }
            // Bytes the fields do not use (a task id after a zero flag) must be zero: one entry, one encoding.
            guard Self.body(index: index, previous: previous, entry: entry) == body else {
                throw MalformedBody(why: "it is not in canonical form")
            }
            return AuditRecord(index: index, previous: previous, entry: entry)
        } catch let error as MalformedBody {
            throw error
        } catch {
            throw MalformedBody(why: "\(error)")
        }
    }
}

/// The first bytes of every audit file: whose log it is. The chain starts from the hash of the header, so a
/// header swapped from another log breaks record 0.
public struct AuditHeader: Sendable, Equatable {
    static let magic = Array("AMAUDIT1".utf8)

    /// The node that keeps the log and signs its checkpoints.
    public let local: Ed25519PublicKey
    /// The peer the log is about.
    public let peer: Ed25519PublicKey
    public let peerName: String

    public init(local: Ed25519PublicKey, peer: Ed25519PublicKey, peerName: String) {
        self.local = local
        self.peer = peer
        self.peerName = peerName
    }

    public var peerID: NodeID { NodeID(identityKey: self.peer) }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(capacity: 80 + self.peerName.utf8.count)
        writer.raw(Self.magic)
        writer.raw(self.local.bytes)
        writer.raw(self.peer.bytes)
        writer.shortString(self.peerName)
        return writer.bytes
    }

    /// The hash the chain starts from.
    public var genesis: [UInt8] { SHA256.hash(Array("agentmesh-audit-v1".utf8), self.encoded()) }
}

/// A peer's signed statement: "in the session with handshake hash H, I sent you `count` task messages whose
/// running hash is `transcript`". The running hash is `t = SHA-256(t ‖ SHA-256(message wire bytes))` from 32 zero
/// bytes, so the log's `received` records (which keep each digest) let anyone recompute and check it.
public struct TranscriptCheckpoint: Sendable, Equatable {
    public static let encodedLength = 32 + 8 + 32 + 64

    public let handshakeHash: [UInt8]
    public let count: UInt64
    public let transcript: [UInt8]
    public let signature: [UInt8]

    public init(handshakeHash: [UInt8], count: UInt64, transcript: [UInt8], signature: [UInt8]) {
        self.handshakeHash = handshakeHash
        self.count = count
        self.transcript = transcript
        self.signature = signature
    }

    public init(signing transcript: Transcript, handshakeHash: [UInt8], with key: Ed25519SigningKey) {
        self.handshakeHash = handshakeHash
        self.count = transcript.count
        self.transcript = transcript.hash
        self.signature = key.signature(
            for: Self.signedBytes(handshakeHash: handshakeHash, count: transcript.count, transcript: transcript.hash))
    }

    static func signedBytes(handshakeHash: [UInt8], count: UInt64, transcript: [UInt8]) -> [UInt8] {
        var writer = ByteWriter(capacity: 100)
        writer.raw(Array("agentmesh-transcript-v1".utf8))
        writer.raw(handshakeHash)
        writer.u64(count)
        writer.raw(transcript)
        return writer.bytes
    }

    public func isSigned(by key: Ed25519PublicKey) -> Bool {
        key.isValidSignature(
            self.signature,
            for: Self.signedBytes(handshakeHash: self.handshakeHash, count: self.count, transcript: self.transcript))
    }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(capacity: Self.encodedLength)
        writer.raw(self.handshakeHash)
        writer.u64(self.count)
        writer.raw(self.transcript)
        writer.raw(self.signature)
        return writer.bytes
    }

    public init?(decoding bytes: [UInt8]) {
        guard bytes.count == Self.encodedLength else { return nil }
        var reader = ByteReader(bytes)
        guard let handshakeHash = try? reader.take(32, "handshake hash"), let count = try? reader.u64("count"),
            let transcript = try? reader.take(32, "transcript"), let signature = try? reader.take(64, "signature")
        else { return nil }
        self.init(handshakeHash: Array(handshakeHash), count: count, transcript: Array(transcript), signature: Array(signature))
    }
}

/// The running hash of the task messages one side sent in one session.
public struct Transcript: Sendable, Equatable {
    public private(set) var count: UInt64 = 0
    public private(set) var hash = [UInt8](repeating: 0, count: SHA256.byteCount)

    public init() {}

    public mutating func append(digest: [UInt8]) {
        self.count += 1
        self.hash = SHA256.hash(self.hash, digest)
    }
}

/// This node's signature over its own chain at a checkpoint record: the peer it is about, the checkpoint's index
/// and the hash of the record before it.
public enum AuditSignature {
    public static func signedBytes(peer: Ed25519PublicKey, index: UInt64, previous: [UInt8]) -> [UInt8] {
        var writer = ByteWriter(capacity: 100)
        writer.raw(Array("agentmesh-audit-checkpoint-v1".utf8))
        writer.raw(peer.bytes)
        writer.u64(index)
        writer.raw(previous)
        return writer.bytes
    }
}

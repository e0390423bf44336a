public import MeshCrypto

/// The appending end of one peer's audit log: numbers records, chains them, and signs checkpoints. Pure; the node's
/// shell writes the framed bytes it returns.
public struct AuditChain: Sendable {
    public let header: AuditHeader
    public private(set) var nextIndex: UInt64 = 0
    public private(set) var lastHash: [UInt8]
    /// Records appended since the last checkpoint.
    public private(set) var unsigned = 0

    public init(header: AuditHeader) {
        self.header = header
        self.lastHash = header.genesis
    }

    /// Continues a log read back from disk.
    public init(resuming report: AuditReader.Report) {
        self.header = report.header
        self.nextIndex = report.recordCount
        self.lastHash = report.lastHash
        self.unsigned = report.unsignedAtEnd
    }

    public mutating func append(_ entry: AuditEntry) -> AuditRecord {
        let record = AuditRecord(index: self.nextIndex, previous: self.lastHash, entry: entry)
        self.nextIndex += 1
        self.lastHash = record.hash
        self.unsigned = entry.event == .checkpoint ? 0 : self.unsigned + 1
        return record
    }

    /// A record carrying this node's signature over everything before it.
    public mutating func checkpoint(time: Int64, signingKey: Ed25519SigningKey) -> AuditRecord {
        let signature = signingKey.signature(
            for: AuditSignature.signedBytes(peer: self.header.peer, index: self.nextIndex, previous: self.lastHash))
        return self.append(AuditEntry(.checkpoint, time: time, detail: "\(self.unsigned) records", extra: signature))
    }
}

/// Reads and verifies one audit file: framing, sequence, chain, this node's checkpoint signatures and the peer's
/// transcript signatures. Stops at the first bad record and names it; an incomplete record at the very end (a
/// crash mid-append) is reported separately, since recovery may cut it off.
public enum AuditReader {
    public struct Problem: Sendable, Equatable, CustomStringConvertible {
        /// The index the bad record has (or should have) in the chain.
        public let index: UInt64
        /// Its byte offset in the file.
        public let offset: Int
        public let why: String

        public var description: String { "record \(self.index) (byte \(self.offset)): \(self.why)" }
    }

    public struct Report: Sendable {
        public let header: AuditHeader
        /// The records read and verified, oldest first (empty when the caller did not ask to keep them).
        public let records: [AuditRecord]
        public let recordCount: UInt64
        public let lastHash: [UInt8]
        /// Bytes of header and good records; everything after them is a torn tail or damage.
        public let validLength: Int
        /// Bytes of an incomplete record at the end, if any.
        public let incompleteTail: Int
        public let problem: Problem?
        /// Records after the last checkpoint (covered by the chain but not yet by a signature).
        public let unsignedAtEnd: Int
        public let checkpoints: Int
        public let peerCheckpoints: Int
    }

    public struct NotAnAuditLog: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    public static func read(_ bytes: [UInt8], keepRecords: Bool = true) throws(NotAnAuditLog) -> Report {
        var reader = ByteReader(bytes)
        let header: AuditHeader
        do {
            guard Array(try reader.take(AuditHeader.magic.count, "magic")) == AuditHeader.magic else {
                throw NotAnAuditLog(description: "it does not start with the audit log magic 'AMAUDIT1'")
            }
            let local = try Ed25519PublicKey(bytes: try reader.take(32, "local key"))
            let peer = try Ed25519PublicKey(bytes: try reader.take(32, "peer key"))
            header = AuditHeader(local: local, peer: peer, peerName: try reader.shortString("peer name"))
        } catch let error as NotAnAuditLog {
            throw error
        } catch {
            throw NotAnAuditLog(description: "its header is damaged (\(error))")
        }

        var verifier = Verifier(header: header)
        var records: [AuditRecord] = []
        var offset = reader.offset
        var problem: Problem?
        var tail = 0
        while offset < bytes.count {
            let remaining = bytes.count - offset
            guard remaining >= 8 else {
                tail = remaining
                break
            }
            let length = Int(Self.u32(bytes, offset))
            guard UInt32(length) == ~Self.u32(bytes, offset + 4), length <= AuditRecord.maximumBodyLength else {
                problem = Problem(index: verifier.nextIndex, offset: offset, why: "its length field is damaged")
                break
            }
            guard remaining >= length + AuditRecord.frameOverhead else {
                tail = remaining
                break
            }
            let body = Array(bytes[(offset + 8)..<(offset + 8 + length)])
            let hash = Array(bytes[(offset + 8 + length)..<(offset + length + AuditRecord.frameOverhead)])
            do {
                let record = try AuditRecord.decode(body: body, storedHash: hash)
                try verifier.accept(record)
                if keepRecords { records.append(record) }
            } catch let error as AuditRecord.MalformedBody {
                problem = Problem(index: verifier.nextIndex, offset: offset, why: error.why)
                break
            } catch {
                problem = Problem(index: verifier.nextIndex, offset: offset, why: "\(error)")
                break
            }
            offset += length + AuditRecord.frameOverhead
        }
        return Report(
            header: header, records: records, recordCount: verifier.nextIndex, lastHash: verifier.lastHash,
            validLength: offset, incompleteTail: problem == nil ? tail : 0, problem: problem,
            unsignedAtEnd: verifier.unsigned, checkpoints: verifier.checkpoints, peerCheckpoints: verifier.peerCheckpoints)
    }

    private static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        bytes[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    struct Broken: Error, CustomStringConvertible {
        let description: String
    }

    /// Checks each record's place in the chain and the signatures it carries.
    private struct Verifier {
        let header: AuditHeader
        var nextIndex: UInt64 = 0
        var lastHash: [UInt8]
        var unsigned = 0
        var checkpoints = 0
        var peerCheckpoints = 0
        /// Per session: its handshake hash and the running hash of the task messages received in it.
        var sessions: [UInt64: (handshakeHash: [UInt8], received: Transcript)] = [:]

        init(header: AuditHeader) {
            self.header = header
            self.lastHash = header.genesis
        }

        mutating func accept(_ record: AuditRecord) throws(Broken) {
            guard record.index == self.nextIndex else {
                throw Broken(description: "it says it is record \(record.index) (a record is missing, moved or repeated)")
            }
            guard record.previous == self.lastHash else {
                throw Broken(description: "it does not follow the record before it (the chain is broken)")
            }
            let entry = record.entry
            switch entry.event {
            case .checkpoint:
                let signed = AuditSignature.signedBytes(peer: self.header.peer, index: record.index, previous: record.previous)
                guard self.header.local.isValidSignature(entry.extra, for: signed) else {
                    throw Broken(description: "its checkpoint signature is not this node's")
                }
                self.checkpoints += 1
            case .connected:
                guard entry.extra.count == SHA256.byteCount else { throw Broken(description: "it lacks the session's handshake hash") }
                self.sessions[entry.session] = (entry.extra, Transcript())
            case .received:
                guard entry.digest.count == SHA256.byteCount else { throw Broken(description: "it lacks the message digest") }
                self.sessions[entry.session]?.received.append(digest: entry.digest)
            case .peerCheckpoint:
                guard let checkpoint = TranscriptCheckpoint(decoding: entry.extra) else {
                    throw Broken(description: "its transcript checkpoint is malformed")
                }
                guard let session = self.sessions[entry.session], session.handshakeHash == checkpoint.handshakeHash else {
                    throw Broken(description: "its transcript checkpoint names a session this log does not have")
                }
                guard checkpoint.count == session.received.count, checkpoint.transcript == session.received.hash else {
                    throw Broken(description: "the peer's signed transcript does not match the messages recorded before it")
                }
                guard checkpoint.isSigned(by: self.header.peer) else {
                    throw Broken(description: "the transcript signature is not the peer's")
                }
                self.peerCheckpoints += 1
            case .disconnected, .handshakeRefused, .sent, .rateLimited, .banned, .misbehaved, .tailTruncated:
                break
            }
            self.unsigned = entry.event == .checkpoint ? 0 : self.unsigned + 1
            self.nextIndex += 1
            self.lastHash = record.hash
        }
    }
}

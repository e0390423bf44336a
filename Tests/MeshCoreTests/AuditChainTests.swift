import MeshCore
import MeshCrypto
import Testing

/// The audit log format: every kind of damage is caught and named by index; a torn tail is reported, not fatal.
@Suite struct AuditChainTests {
    static let local = Ed25519SigningKey()
    static let peer = Ed25519SigningKey()
    static let handshakeHash = SHA256.hash(Array("session".utf8))

    struct Log {
        var bytes: [UInt8]
        /// Where each record starts.
        var offsets: [Int]
    }

    /// A realistic log: a session, messages both ways, the peer's transcript checkpoint, this node's checkpoint,
    /// a limit decision and a disconnect.
    static func makeLog() -> Log {
        var chain = AuditChain(header: AuditHeader(local: local.publicKey, peer: peer.publicKey, peerName: "peer"))
        var bytes = chain.header.encoded()
        var offsets: [Int] = []
        func add(_ record: AuditRecord) {
            offsets.append(bytes.count)
            bytes += record.framed()
        }
        var transcript = Transcript()
        add(chain.append(AuditEntry(.connected, time: 1, session: 1, detail: "inbound", extra: handshakeHash)))
        for number in 0..<4 {
            let task = TaskID(high: 7, low: UInt64(number))
            let digest = SHA256.hash([UInt8(number)])
            transcript.append(digest: digest)
            add(chain.append(AuditEntry(.received, time: 2, session: 1, message: 1, task: task, epoch: 1, digest: digest)))
            add(chain.append(AuditEntry(.sent, time: 3, session: 1, message: 2, task: task, epoch: 1, digest: SHA256.hash([9]))))
        }
        let signed = TranscriptCheckpoint(signing: transcript, handshakeHash: handshakeHash, with: peer)
        add(chain.append(AuditEntry(.peerCheckpoint, time: 4, session: 1, extra: signed.encoded())))
        add(chain.checkpoint(time: 5, signingKey: local))
        add(chain.append(AuditEntry(.rateLimited, time: 6, session: 1, message: 1, detail: "offers over 20/s:20")))
        add(chain.append(AuditEntry(.disconnected, time: 7, session: 1, detail: "peer closed")))
        return Log(bytes: bytes, offsets: offsets)
    }

    @Test func aCleanLogVerifiesWithItsSignatures() throws {
        let log = Self.makeLog()
        let report = try AuditReader.read(log.bytes)
        #expect(report.problem == nil)
        #expect(report.incompleteTail == 0)
        #expect(report.recordCount == UInt64(log.offsets.count))
        #expect(report.checkpoints == 1)
        #expect(report.peerCheckpoints == 1)
        #expect(report.unsignedAtEnd == 2)
        #expect(report.records.map(\.entry.event).first == .connected)
        #expect(report.header.peerName == "peer")
    }

    /// Any flipped byte, anywhere in the file, is either a header error or a bad record; never a clean log and
    /// never mistaken for a torn tail.
    @Test func flippingAnyByteIsCaught() throws {
        let log = Self.makeLog()
        for offset in log.bytes.indices {
            var damaged = log.bytes
            damaged[offset] ^= 0x20
            guard let report = try? AuditReader.read(damaged) else { continue }  // the header no longer reads
            #expect(report.problem != nil, "flip at byte \(offset) of \(log.bytes.count) went unnoticed")
            #expect(report.incompleteTail == 0, "flip at byte \(offset) looked like a torn tail")
            if offset >= log.offsets[0], let problem = report.problem {
                let record = log.offsets.lastIndex { $0 <= offset }!
                #expect(problem.index <= UInt64(record), "flip in record \(record) blamed on \(problem.index)")
            }
        }
    }

    @Test func deletingARecordNamesIt() throws {
        let log = Self.makeLog()
        var bytes = log.bytes
        bytes.removeSubrange(log.offsets[3]..<log.offsets[4])
        #expect(try AuditReader.read(bytes).problem?.index == 3)
    }

    @Test func swappingTwoRecordsNamesTheFirst() throws {
        let log = Self.makeLog()
        let third = Array(log.bytes[log.offsets[2]..<log.offsets[3]])
        let fourth = Array(log.bytes[log.offsets[3]..<log.offsets[4]])
        var bytes = Array(log.bytes[..<log.offsets[2]])
        bytes += fourth + third + log.bytes[log.offsets[4]...]
        #expect(try AuditReader.read(bytes).problem?.index == 2)
    }

    /// A crash mid-append leaves part of the last record: at every cut the records before it survive and the
    /// rest is reported as an incomplete tail.
    @Test func truncatingTheLastRecordAtEveryOffsetIsATornTail() throws {
        let log = Self.makeLog()
        let last = log.offsets.last!
        for end in (last + 1)..<log.bytes.count {
            let report = try AuditReader.read(Array(log.bytes[..<end]))
            #expect(report.problem == nil, "cut at \(end)")
            #expect(report.recordCount == UInt64(log.offsets.count - 1))
            #expect(report.incompleteTail == end - last)
            #expect(report.validLength == last)
        }
    }

    @Test func aForgedCheckpointSignatureIsCaught() throws {
        var chain = AuditChain(header: AuditHeader(local: Self.local.publicKey, peer: Self.peer.publicKey, peerName: "peer"))
        var bytes = chain.header.encoded()
        bytes += chain.append(AuditEntry(.connected, time: 1, session: 1, extra: Self.handshakeHash)).framed()
        bytes += chain.checkpoint(time: 2, signingKey: Ed25519SigningKey()).framed()  // not this node's key
        let problem = try #require(try AuditReader.read(bytes).problem)
        #expect(problem.index == 1)
        #expect(problem.why.contains("checkpoint signature"))
    }

    /// The peer's signature must cover exactly the messages recorded as received from it in that session.
    @Test func aPeerTranscriptThatDoesNotMatchTheRecordsIsCaught() throws {
        var chain = AuditChain(header: AuditHeader(local: Self.local.publicKey, peer: Self.peer.publicKey, peerName: "peer"))
        var bytes = chain.header.encoded()
        bytes += chain.append(AuditEntry(.connected, time: 1, session: 1, extra: Self.handshakeHash)).framed()
        bytes += chain.append(AuditEntry(.received, time: 2, session: 1, message: 4, digest: SHA256.hash([1]))).framed()
        var other = Transcript()
        other.append(digest: SHA256.hash([2]))
        let signed = TranscriptCheckpoint(signing: other, handshakeHash: Self.handshakeHash, with: Self.peer)
        bytes += chain.append(AuditEntry(.peerCheckpoint, time: 3, session: 1, extra: signed.encoded())).framed()
        let problem = try #require(try AuditReader.read(bytes).problem)
        #expect(problem.index == 2)
        #expect(problem.why.contains("does not match"))
    }

    @Test func aFileThatIsNotAnAuditLogIsRefused() {
        #expect(throws: AuditReader.NotAnAuditLog.self) { try AuditReader.read(Array("hello, world".utf8)) }
        #expect(throws: AuditReader.NotAnAuditLog.self) { try AuditReader.read([]) }
    }

    /// A log continued after reading it back chains on from where it stopped.
    @Test func aResumedChainContinuesTheLog() throws {
        let log = Self.makeLog()
        var chain = AuditChain(resuming: try AuditReader.read(log.bytes))
        let bytes = log.bytes + chain.append(AuditEntry(.connected, time: 9, session: 2, extra: Self.handshakeHash)).framed()
        let report = try AuditReader.read(bytes)
        #expect(report.problem == nil)
        #expect(report.recordCount == UInt64(log.offsets.count + 1))
    }
}

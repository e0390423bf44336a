@testable import MeshCore
import MeshCrypto
import MeshTestKit
import Testing

/// Tampering in transit: flip, drop, duplicate, reorder, truncate. Every one is detected; nothing altered is delivered.
@Suite struct SecureSessionTests {
    static func pair(
        senderLimit: Int = SecureSession.defaultMaximumMessageLength,
        receiverLimit: Int = SecureSession.defaultMaximumMessageLength
    ) throws -> (SecureSession, SecureSession) {
        let network = NetworkKey.generate()
        let a = NodeIdentity(name: "a")
        let b = NodeIdentity(name: "b")
        var cache = ReplayCache()
        var initiator = InitiatorHandshake(credentials: HandshakeCredentials(identity: a, networkKey: network, listenAddress: ""))
        var responder = ResponderHandshake(credentials: HandshakeCredentials(identity: b, networkKey: network, listenAddress: ""))
        let msg2 = try responder.receiveHello(initiator.hello, replayCache: &cache).get()
        let (msg3, sa) = try initiator.receiveResponse(msg2, trust: TrustPolicy(isOpen: true)).get()
        let sb = try responder.receiveFinish(msg3, trust: TrustPolicy(isOpen: true)).get()
        return (SecureSession(sa, maximumMessageLength: senderLimit), SecureSession(sb, maximumMessageLength: receiverLimit))
    }

    @Test(arguments: [0, 1, SecureSession.maximumChunkLength, SecureSession.maximumChunkLength + 1, 200_000])
    func messagesOfAnySizeRoundTrip(size: Int) throws {
        var (a, b) = try Self.pair()
        var rng = SeededGenerator(seed: UInt64(size))
        let message = rng.bytes(size)
        let frames = try a.seal(message: message)
        #expect(frames.allSatisfy { $0.count <= SecureSession.maximumFrameLength })
        #expect(frames.count == max(1, (size + SecureSession.maximumChunkLength - 1) / SecureSession.maximumChunkLength))
        var delivered: [SecureSession.Inbound] = []
        for frame in frames { if let inbound = try b.open(frame: frame) { delivered.append(inbound) } }
        #expect(delivered == [.message(message)])
    }

    /// A large message goes out a part at a time (its session flushes each part as soon as it is sealed), and is
    /// given as pieces (its large payload apart from the bytes around it): the parts, in order, are the same bytes
    /// as the whole message sealed at once, wherever the pieces meet.
    @Test(arguments: [1, 2, 16])
    func aMessageSealedInPartsIsTheMessageSealedWhole(framesPerPart: Int) throws {
        var (whole, _) = try Self.pair()
        var parted = whole, pieced = whole
        var rng = SeededGenerator(seed: 7)
        let message = rng.bytes(16 * SecureSession.maximumChunkLength + 1000)
        var expected = [UInt8](repeating: 0, count: SecureSession.framedLength(of: message.count))
        try expected.withUnsafeMutableBytes { buffer in Result { () throws(SecureSession.Error) in try whole.seal(message: message, into: buffer) } }.get()
        let frames = SecureSession.frameCount(of: message.count)
        #expect(frames == 17)
        let pieces = [message[..<1], message[1..<70_000], message[70_000..<70_001], message[70_001...]]
        var joined: [UInt8] = [], joinedFromPieces: [UInt8] = []
        for start in stride(from: 0, to: frames, by: framesPerPart) {
            let part = start..<min(start + framesPerPart, frames)
            var bytes = [UInt8](repeating: 0, count: SecureSession.framedLength(of: message.count, frames: part))
            try bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(SecureSession.Error) in try parted.seal(parts: [message[...]], frames: part, into: buffer) }
            }.get()
            joined += bytes
            try bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(SecureSession.Error) in try pieced.seal(parts: pieces, frames: part, into: buffer) }
            }.get()
            joinedFromPieces += bytes
        }
        #expect(joined == expected)
        #expect(joinedFromPieces == expected)
    }

    /// A session told to digest a chunked message hashes it frame by frame as it arrives: the digest is the
    /// SHA-256 of the whole message. Messages it is not told to digest, and single-frame ones, come without.
    @Test func aMessageAskedForIsDigestedAsItArrives() throws {
        var (a, b) = try Self.pair()
        b.digestsWhileArriving = { first in first.first == 42 }
        var rng = SeededGenerator(seed: 8)
        let digested = [42] + rng.bytes(3 * SecureSession.maximumChunkLength)
        let skipped = [41] + rng.bytes(3 * SecureSession.maximumChunkLength)
        for (message, digest) in [(digested, SHA256.hash(digested)), (skipped, nil), ([42, 1, 2], nil), (digested, SHA256.hash(digested))] {
            var delivered: [SecureSession.Inbound] = []
            for frame in try a.seal(message: message) { if let inbound = try b.open(frame: frame) { delivered.append(inbound) } }
            #expect(delivered == [.message(message, digest: digest)])
        }
    }

    @Test func aBitFlipAnywhereClosesTheSession() throws {
        let frameLength = 1 + "important".utf8.count + 16
        for byte in 0..<frameLength {
            var (sender, receiver) = try Self.pair()
            var tampered = try sender.seal(message: Array("important".utf8))[0]
            tampered[byte] ^= 0x40
            #expect(throws: SecureSession.Error.decryptionFailed) { try receiver.open(frame: tampered) }
            #expect(receiver.isClosed)
        }
    }

    @Test func droppedFrameIsDetected() throws {
        var (a, b) = try Self.pair()
        _ = try a.seal(message: [1])
        let second = try a.seal(message: [2])[0]
        #expect(throws: SecureSession.Error.decryptionFailed) { try b.open(frame: second) }
    }

    @Test func duplicatedFrameIsDetected() throws {
        var (a, b) = try Self.pair()
        let frame = try a.seal(message: [1])[0]
        let outcome1 = try b.open(frame: frame)
        #expect(outcome1 == .message([1]))
        #expect(throws: SecureSession.Error.decryptionFailed) { try b.open(frame: frame) }
    }

    @Test func reorderedFramesAreDetected() throws {
        var (a, b) = try Self.pair()
        _ = try a.seal(message: [1])  // sent first, delivered second
        let second = try a.seal(message: [2])[0]
        #expect(throws: SecureSession.Error.decryptionFailed) { try b.open(frame: second) }
    }

    @Test func truncatedFrameIsDetected() throws {
        var (a, b) = try Self.pair()
        let frame = try a.seal(message: Array("payload".utf8))[0]
        #expect(throws: SecureSession.Error.decryptionFailed) { try b.open(frame: Array(frame.dropLast())) }
        var (_, d) = try Self.pair()
        #expect(throws: SecureSession.Error.frameTooShort(3)) { try d.open(frame: [1, 2, 3]) }
    }

    @Test func framesFromTheOtherDirectionDoNotOpen() throws {
        var (a, _) = try Self.pair()
        let frame = try a.seal(message: [9])[0]
        // `a` must not accept its own frame reflected back: each direction has its own key.
        #expect(throws: SecureSession.Error.decryptionFailed) { try a.open(frame: frame) }
    }

    @Test func closeIsAuthenticatedAndFinal() throws {
        var (a, b) = try Self.pair()
        let close = try a.sealClose(.shuttingDown)
        let outcome2 = try b.open(frame: close)
        #expect(outcome2 == .closed(.shuttingDown))
        #expect(b.isClosed)
        #expect(throws: SecureSession.Error.sessionClosed) { try a.seal(message: [1]) }
    }

    @Test func reassemblyIsBoundedByTheReceiversMessageLimit() throws {
        var (sender, receiver) = try Self.pair(senderLimit: 200_000, receiverLimit: 100_000)
        let frames = try sender.seal(message: [UInt8](repeating: 1, count: 150_000))
        #expect(frames.count == 3)
        let outcome3 = try receiver.open(frame: frames[0])
        #expect(outcome3 == nil)
        #expect(throws: SecureSession.Error.messageTooLarge(limit: 100_000)) { try receiver.open(frame: frames[1]) }
        #expect(receiver.isClosed)
    }

    /// A peer that sends a message a byte per chunk frame (which would cost the receiver an array per byte) is cut
    /// off at its first short chunk; whole chunks and a short last frame are what an honest sender writes.
    @Test func aChunkShorterThanWholeClosesTheSession() throws {
        var (sender, receiver) = try Self.pair()
        #expect(try receiver.open(frame: try sender.sealFrame(.chunk, [UInt8](repeating: 7, count: SecureSession.maximumChunkLength)[...])) == nil)
        #expect(try receiver.open(frame: try sender.sealFrame(.final, [8][...])) != nil)
        #expect(throws: SecureSession.Error.shortChunk(1)) { try receiver.open(frame: try sender.sealFrame(.chunk, [9][...])) }
        #expect(receiver.isClosed)
    }

    @Test func closeReasonArrivesAndNothingOpensAfterIt() throws {
        var (sender, receiver) = try Self.pair()
        let close = try sender.sealClose(SecureSession.CloseReason(code: 9, text: "bye"))
        let outcome4 = try receiver.open(frame: close)
        #expect(outcome4 == .closed(SecureSession.CloseReason(code: 9, text: "bye")))
        #expect(throws: SecureSession.Error.sessionClosed) { try receiver.open(frame: close) }
    }
}

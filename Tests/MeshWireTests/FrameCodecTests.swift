import MeshCore
import MeshTestKit
import MeshWire
import NIOCore
import Testing

@Suite struct FrameCodecTests {
    static func stream(_ frames: [[UInt8]]) -> [UInt8] {
        var buffer = ByteBuffer()
        for frame in frames { FrameCodec.write(frame: frame, to: &buffer) }
        return Array(buffer.readableBytesView)
    }

    /// Feeds `bytes` in the given pieces and returns every frame decoded.
    static func decode(_ pieces: [ArraySlice<UInt8>], maximumLength: Int = FrameCodec.maximumFrameLength) throws -> [[UInt8]] {
        var decoder = FrameDecoder()
        var frames: [[UInt8]] = []
        for piece in pieces {
            var bytes = ByteBuffer(bytes: piece)
            decoder.append(&bytes)
            while let frame = try decoder.nextFrame(maximumLength: maximumLength) {
                frames.append(Array(frame.readableBytesView))
            }
        }
        #expect(decoder.bufferedBytes == 0)
        return frames
    }

    @Test func framesSplitAtEveryOffsetDecodeTheSame() throws {
        var rng = SeededGenerator(seed: 7)
        let frames = [rng.bytes(1), rng.bytes(65), rng.bytes(300), rng.bytes(2)]
        let bytes = Self.stream(frames)
        for split in 0...bytes.count {
            #expect(try Self.decode([bytes[..<split], bytes[split...]]) == frames, "split at \(split)")
        }
        #expect(try Self.decode(bytes.indices.map { bytes[$0...$0] }) == frames, "byte by byte")
    }

    /// The limit is the caller's per frame: a short one while the handshake runs, the whole range after it, and a
    /// prefix over the limit is refused before its body arrives.
    @Test func theLimitFollowsThePhaseAndIsCheckedOnThePrefix() throws {
        var decoder = FrameDecoder()
        var bytes = ByteBuffer(bytes: Self.stream([[UInt8](repeating: 1, count: 32), [UInt8](repeating: 2, count: 1_000)]))
        decoder.append(&bytes)
        #expect(try decoder.nextFrame(maximumLength: 48)?.readableBytes == 32)
        #expect(throws: FrameCodec.Error.frameTooLong(length: 1_000, maximum: 48)) { try decoder.nextFrame(maximumLength: 48) }
        #expect(try decoder.nextFrame(maximumLength: FrameCodec.maximumFrameLength)?.readableBytes == 1_000)

        var prefixOnly = ByteBuffer(bytes: [0xFF, 0xFF])
        var fresh = FrameDecoder()
        fresh.append(&prefixOnly)
        #expect(throws: FrameCodec.Error.frameTooLong(length: 65_535, maximum: 100)) { try fresh.nextFrame(maximumLength: 100) }
        fresh.reset()
        #expect(fresh.bufferedBytes == 0)
    }

    @Test func largestFrameRoundTrips() throws {
        let frame = [UInt8](repeating: 0xab, count: FrameCodec.maximumFrameLength)
        let bytes = Self.stream([frame])
        #expect(try Self.decode([bytes[...]]) == [frame])
    }

    @Test func overLongPrefixIsRefusedBeforeTheBodyArrives() {
        var buffer = ByteBuffer(bytes: [0x01, 0x00])  // 256, and no body yet
        #expect(throws: FrameCodec.Error.frameTooLong(length: 256, maximum: 65)) {
            try FrameCodec.nextFrame(from: &buffer, maximumLength: 65)
        }
    }

    @Test func emptyFrameIsRefused() {
        var buffer = ByteBuffer(bytes: [0, 0, 1])
        #expect(throws: FrameCodec.Error.emptyFrame) { try FrameCodec.nextFrame(from: &buffer, maximumLength: 100) }
    }

    @Test func incompletePrefixNeedsMoreData() throws {
        var buffer = ByteBuffer(bytes: [0])
        #expect(try FrameCodec.nextFrame(from: &buffer, maximumLength: 100) == nil)
        #expect(buffer.readableBytes == 1)
    }
}

@Suite struct WireMessageTests {
    @Test(arguments: [WireMessage.ping(nonce: 0), .ping(nonce: .max), .pong(nonce: 0x0102_0304_0506_0708), .welcome])
    func messagesRoundTrip(message: WireMessage) throws {
        #expect(try WireMessage(decoding: message.encoded()) == message)
    }

    @Test func malformedMessagesAreErrorsNotTraps() {
        #expect(throws: WireMessage.DecodeError.empty) { try WireMessage(decoding: []) }
        #expect(throws: WireMessage.DecodeError.unknownKind(200)) { try WireMessage(decoding: [200]) }
        #expect(throws: WireMessage.DecodeError.malformed(.ping)) { try WireMessage(decoding: [1, 2, 3]) }
        #expect(throws: WireMessage.DecodeError.malformed(.welcome)) { try WireMessage(decoding: [3, 0]) }
        var rng = SeededGenerator(seed: 99)
        for _ in 0..<10_000 {
            let bytes = rng.bytes(Int.random(in: 0...12, using: &rng))
            if let message = try? WireMessage(decoding: bytes) {
                #expect(message.encoded() == bytes, "decoding is not canonical for \(bytes)")
            }
        }
    }
}

public import NIOCore

/// The outer framing of every AgentMesh connection: a 2-byte big-endian length, then that many bytes
/// (a handshake message, or a transport ciphertext). See .github/SECURITY.md and Noise §13.
public enum FrameCodec {
    public static let lengthPrefixSize = 2
    public static let maximumFrameLength = Int(UInt16.max)

    public enum Error: Swift.Error, Equatable, CustomStringConvertible {
        /// A length prefix larger than the current state allows, refused before the body is read.
        case frameTooLong(length: Int, maximum: Int)
        case emptyFrame

        public var description: String {
            switch self {
            case .frameTooLong(let length, let maximum):
                return "frame length \(length) exceeds the \(maximum) allowed at this point"
            case .emptyFrame: return "empty frame"
            }
        }
    }

    /// Takes the next whole frame off the front of `buffer`, or returns nil when more bytes are needed.
    /// `maximumLength` is checked as soon as the prefix is visible, so an over-long prefix costs nothing.
    public static func nextFrame(
        from buffer: inout ByteBuffer, maximumLength: Int
    ) throws(FrameCodec.Error) -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self).map(Int.init) else {
            return nil
        }
        guard length > 0 else { throw .emptyFrame }
        guard length <= maximumLength else { throw .frameTooLong(length: length, maximum: maximumLength) }
        guard buffer.readableBytes >= lengthPrefixSize + length else { return nil }
        buffer.moveReaderIndex(forwardBy: lengthPrefixSize)
        return buffer.readSlice(length: length)
    }

    /// Appends one frame. The caller guarantees `1...65_535` bytes (the session and handshake never produce more).
    public static func write(frame: [UInt8], to buffer: inout ByteBuffer) {
        precondition((1...maximumFrameLength).contains(frame.count), "frame length out of range")
        buffer.writeInteger(UInt16(frame.count))
        buffer.writeBytes(frame)
    }
}

/// Gathers a connection's bytes into frames. The caller says, per frame, how long one may be at this point of the
/// conversation (a handshake message is short; a transport frame may use the whole 16-bit range), so an over-long
/// length prefix is refused before its body is waited for.
public struct FrameDecoder {
    private var buffer: ByteBuffer?

    public init() {}

    /// Bytes read from the connection.
    public mutating func append(_ bytes: inout ByteBuffer) {
        if self.buffer == nil {
            self.buffer = bytes
        } else {
            self.buffer!.writeBuffer(&bytes)
        }
    }

    /// The next whole frame, or nil until more bytes arrive.
    public mutating func nextFrame(maximumLength: Int) throws(FrameCodec.Error) -> ByteBuffer? {
        guard self.buffer != nil else { return nil }
        let frame = try FrameCodec.nextFrame(from: &self.buffer!, maximumLength: maximumLength)
        if self.buffer!.readableBytes == 0 {
            self.buffer = nil
        } else if frame == nil {
            // Waiting for the rest of a frame: keep only the unread bytes.
            self.buffer!.discardReadBytes()
        }
        return frame
    }

    /// Drops whatever was buffered (the connection is closing).
    public mutating func reset() { self.buffer = nil }

    /// Bytes received but not yet part of a whole frame.
    public var bufferedBytes: Int { self.buffer?.readableBytes ?? 0 }
}

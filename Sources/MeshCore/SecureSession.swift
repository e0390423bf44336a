import MeshCrypto

/// The transport phase of a connection: every frame is sealed with the sending cipher state and opened with the
/// receiving one (one per direction, from Noise `Split`).
///
/// A frame on the wire is a 2-byte big-endian length and a ciphertext of at most 65,535 bytes (Noise §13). The
/// plaintext of a frame is one type byte and data:
///
/// | type | meaning |
/// |------|---------|
/// | 0 | a chunk of a message; more chunks follow |
/// | 1 | the last (or only) chunk of a message |
/// | 2 | close: one reason code byte and a UTF-8 reason |
///
/// Messages longer than one frame are chunked; reassembly is capped by ``maximumMessageLength``. A frame that fails
/// to open is fatal for the session. The close frame is authenticated, so a truncated stream (a reset or an EOF
/// without it) is never mistaken for a clean close.
public struct SecureSession: Sendable {
    public static let maximumFrameLength = 65_535
    public static let frameOverhead = Noise.tagLength + 1
    public static let maximumChunkLength = maximumFrameLength - frameOverhead
    public static let defaultMaximumMessageLength = 16 * 1024 * 1024

    enum FrameType: UInt8 {
        case chunk = 0
        case final = 1
        case close = 2
    }

    public enum Inbound: Equatable, Sendable {
        /// A whole message, and its SHA-256 when ``digestsWhileArriving`` asked for it.
        case message([UInt8], digest: [UInt8]? = nil)
        /// The peer closed the session cleanly.
        case closed(CloseReason)
    }

    public struct CloseReason: Equatable, Sendable, CustomStringConvertible {
        public let code: UInt8
        public let text: String

        public static let normal = CloseReason(code: 0, text: "closing")
        public static let shuttingDown = CloseReason(code: 1, text: "node is shutting down")
        public static let duplicateConnection = CloseReason(code: 2, text: "duplicate connection")
        public static let protocolViolation = CloseReason(code: 3, text: "protocol violation")
        public static let refusedCode: UInt8 = 4
        /// Closed to keep the node's connection count bounded; the peer should not re-dial at once.
        public static let pruned = CloseReason(code: 5, text: "connection pruned to keep connections bounded")
        public static let bannedCode: UInt8 = 6
        /// The peer went over its limits (or misbehaved) and is cut off for a while; `why` says until when.
        public static func banned(_ why: String) -> CloseReason { CloseReason(code: bannedCode, text: why) }

        /// The responder refused an authenticated initiator (trust policy); `why` is shown to that peer.
        public static func refused(_ why: String) -> CloseReason { CloseReason(code: refusedCode, text: why) }

        public init(code: UInt8, text: String) {
            self.code = code
            self.text = String(text.utf8.prefix(200)) ?? String(text.prefix(200))
        }

        public var description: String { "\(self.text) (code \(self.code))" }
    }

    public enum Error: Swift.Error, Equatable, CustomStringConvertible {
        case decryptionFailed
        case frameTooShort(Int)
        case unknownFrameType(UInt8)
        case messageTooLarge(limit: Int)
        case shortChunk(Int)
        case sessionClosed
        case nonceExhausted

        public var description: String {
            switch self {
            case .decryptionFailed: return "frame failed to decrypt (tampered, reordered or replayed)"
            case .frameTooShort(let n): return "frame of \(n) bytes is shorter than its tag"
            case .unknownFrameType(let t): return "unknown frame type \(t)"
            case .messageTooLarge(let limit): return "message exceeds the \(limit)-byte limit"
            case .shortChunk(let n):
                return "a chunk frame carried \(n) bytes; every chunk but a message's last carries \(SecureSession.maximumChunkLength)"
            case .sessionClosed: return "session is closed"
            case .nonceExhausted: return "session nonce space exhausted"
            }
        }
    }

    public let peer: PeerIdentity
    public let peerListenAddress: String
    public let decision: TrustPolicy.Decision
    public let role: Noise.Role
    /// The Noise handshake hash: names this session, and both ends know it.
    public let handshakeHash: [UInt8]
    public let maximumMessageLength: Int
    private var sender: Noise.CipherState
    private var receiver: Noise.CipherState
    /// The frames of a message in progress, joined once its last frame arrives (one copy at its final size).
    private var reassembly: [[UInt8]] = []
    private var reassembled = 0
    /// Told a chunked message's first chunk, says whether to hash the message (SHA-256) frame by frame as it
    /// arrives. The hashing then overlaps the peer still sending the rest, instead of following the last frame.
    public var digestsWhileArriving: (@Sendable (UnsafeRawBufferPointer) -> Bool)?
    private var arrivingDigest: SHA256.Hasher?
    public private(set) var isClosed = false

    public init(_ established: EstablishedSession, maximumMessageLength: Int = defaultMaximumMessageLength) {
        self.peer = established.peer
        self.peerListenAddress = established.peerListenAddress
        self.decision = established.decision
        self.role = established.role
        self.handshakeHash = established.handshakeHash
        self.sender = established.send
        self.receiver = established.receive
        self.maximumMessageLength = maximumMessageLength
    }

    /// Seals a message into one or more frame ciphertexts, to be written in order.
    public mutating func seal(message: [UInt8]) throws(Error) -> [[UInt8]] {
        var wire = [UInt8](repeating: 0, count: Self.framedLength(of: message.count))
        var session = self
        let sealed: Result<Void, Error> = wire.withUnsafeMutableBytes { buffer in
            Result { () throws(Error) in try session.seal(message: message, into: buffer) }
        }
        self = session
        try sealed.get()
        var frames: [[UInt8]] = []
        var offset = 0
        while offset < wire.count {
            let length = Int(wire[offset]) << 8 | Int(wire[offset + 1])
            frames.append(Array(wire[(offset + 2)..<(offset + 2 + length)]))
            offset += 2 + length
        }
        return frames
    }

    /// The bytes `seal(message:into:)` writes for a message of `count` bytes: each frame's 2-byte length, its type
    /// byte, its part of the message and its tag.
    public static func framedLength(of count: Int) -> Int {
        Self.framedLength(of: count, frames: 0..<Self.frameCount(of: count))
    }

    /// How many frames carry a message of `count` bytes.
    public static func frameCount(of count: Int) -> Int {
        max(1, (count + Self.maximumChunkLength - 1) / Self.maximumChunkLength)
    }

    /// The bytes `seal(parts:frames:into:)` writes for those frames of a message of `count` bytes.
    public static func framedLength(of count: Int, frames: Range<Int>) -> Int {
        let start = frames.lowerBound * Self.maximumChunkLength
        let end = min(frames.upperBound * Self.maximumChunkLength, count)
        return (end - start) + frames.count * (2 + Self.frameOverhead)
    }

    /// Seals a message as the wire carries it (length-prefixed frames) straight into `buffer`, which holds exactly
    /// `framedLength(of:)` bytes: each part is copied once, then encrypted where it lies.
    public mutating func seal(message: [UInt8], into buffer: UnsafeMutableRawBufferPointer) throws(Error) {
        try self.seal(parts: [message[...]], frames: 0..<Self.frameCount(of: message.count), into: buffer)
    }

    /// Seals some frames of a message given as parts, one after another (a large payload stays the array it is and
    /// is copied only into its frames), in order (`frames` starts where the previous call ended, at 0 for a new
    /// message), into `buffer`, which holds exactly `framedLength(of:frames:)` bytes. A large message sealed a part
    /// at a time can be on its way before the rest is sealed.
    public mutating func seal(parts: [ArraySlice<UInt8>], frames: Range<Int>, into buffer: UnsafeMutableRawBufferPointer) throws(Error) {
        let count = parts.reduce(0) { $0 + $1.count }
        guard !self.isClosed else { throw .sessionClosed }
        guard count <= self.maximumMessageLength else { throw .messageTooLarge(limit: self.maximumMessageLength) }
        precondition(!frames.isEmpty && frames.lowerBound >= 0 && frames.upperBound <= Self.frameCount(of: count), "frames of the message")
        precondition(buffer.count == Self.framedLength(of: count, frames: frames), "the buffer is the framed length")
        var offset = frames.lowerBound * Self.maximumChunkLength, written = 0
        let last = min(frames.upperBound * Self.maximumChunkLength, count)
        repeat {
            let end = min(offset + Self.maximumChunkLength, count)
            let type: FrameType = end == count ? .final : .chunk
            let frameLength = 1 + (end - offset) + Noise.tagLength
            buffer[written] = UInt8(frameLength >> 8)
            buffer[written + 1] = UInt8(frameLength & 0xFF)
            buffer[written + 2] = type.rawValue
            Self.copy(offset..<end, of: parts, to: UnsafeMutableRawBufferPointer(rebasing: buffer[(written + 3)...]))
            do {
                try self.sender.encryptInPlace(
                    UnsafeMutableRawBufferPointer(rebasing: buffer[(written + 2)..<(written + 2 + frameLength)]),
                    plaintextLength: 1 + end - offset)
            } catch {
                throw .nonceExhausted
            }
            written += 2 + frameLength
            offset = end
        } while offset < last
    }

    /// Copies the bytes at `range` of the parts' concatenation to the start of `destination`.
    static func copy(_ range: Range<Int>, of parts: [ArraySlice<UInt8>], to destination: UnsafeMutableRawBufferPointer) {
        var copied = 0
        parts.forEachPiece(of: range) { piece in
            UnsafeMutableRawBufferPointer(rebasing: destination[copied...]).copyMemory(from: piece)
            copied += piece.count
        }
    }

    /// Seals the close frame. After it, the session sends nothing more.
    public mutating func sealClose(_ reason: CloseReason) throws(Error) -> [UInt8] {
        guard !self.isClosed else { throw .sessionClosed }
        let frame = try self.sealFrame(.close, [reason.code] + Array(reason.text.utf8))
        self.isClosed = true
        return frame
    }

    /// Opens one frame ciphertext. Returns nil while a chunked message is incomplete.
    public mutating func open(frame: [UInt8]) throws(Error) -> Inbound? {
        let result: Result<Inbound?, Error> = frame.withUnsafeBytes { bytes in
            Result { () throws(Error) -> Inbound? in try self.open(frame: bytes) }
        }
        return try result.get()
    }

    /// Opens one frame ciphertext where it arrived (a connection's read buffer). Returns nil while a chunked message
    /// is incomplete.
    public mutating func open(frame: UnsafeRawBufferPointer) throws(Error) -> Inbound? {
        guard !self.isClosed else { throw .sessionClosed }
        guard frame.count >= Self.frameOverhead else { throw .frameTooShort(frame.count) }
        let plaintext: [UInt8]
        do {
            plaintext = try self.receiver.decrypt(frame: frame)
        } catch {
            self.isClosed = true
            throw error == .nonceExhausted ? .nonceExhausted : .decryptionFailed
        }
        guard let type = FrameType(rawValue: plaintext[0]) else {
            self.isClosed = true
            throw .unknownFrameType(plaintext[0])
        }
        let data = plaintext[1...]
        switch type {
        case .chunk, .final:
            guard self.reassembled + data.count <= self.maximumMessageLength else {
                self.isClosed = true
                self.reassembly = []
                self.reassembled = 0
                throw .messageTooLarge(limit: self.maximumMessageLength)
            }
            if type == .chunk {
                // Chunks are whole: a peer sending a message a byte per frame would make the receiver hold an
                // array per byte, dozens of times the message's size.
                guard data.count == Self.maximumChunkLength else {
                    self.isClosed = true
                    self.reassembly = []
                    self.reassembled = 0
                    self.arrivingDigest = nil
                    throw .shortChunk(data.count)
                }
                if self.reassembly.isEmpty, let digests = self.digestsWhileArriving,
                    plaintext.withUnsafeBytes({ digests(UnsafeRawBufferPointer(rebasing: $0[1...])) })
                {
                    self.arrivingDigest = SHA256.Hasher()
                }
                self.digestArriving(plaintext)
                self.reassembly.append(plaintext)
                self.reassembled += data.count
                return nil
            }
            if self.reassembly.isEmpty { return .message(Array(data)) }
            self.digestArriving(plaintext)
            let digest = self.arrivingDigest?.finalize()
            self.arrivingDigest = nil
            self.reassembly.append(plaintext)
            let total = self.reassembled + data.count
            let message = [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
                var offset = 0
                for frame in self.reassembly {
                    frame.withUnsafeBufferPointer { bytes in
                        let body = UnsafeBufferPointer(rebasing: bytes[1...])
                        UnsafeMutableRawPointer(buffer.baseAddress! + offset).copyMemory(from: body.baseAddress!, byteCount: body.count)
                        offset += body.count
                    }
                }
                initialized = offset
            }
            self.reassembly = []
            self.reassembled = 0
            return .message(message, digest: digest)
        case .close:
            self.isClosed = true
            let code = data.first ?? 0
            return .closed(CloseReason(code: code, text: String(decoding: data.dropFirst(), as: UTF8.self)))
        }
    }

    private mutating func digestArriving(_ plaintext: [UInt8]) {
        guard self.arrivingDigest != nil else { return }
        plaintext.withUnsafeBytes { self.arrivingDigest!.update(UnsafeRawBufferPointer(rebasing: $0[1...])) }
    }

    mutating func sealFrame(_ type: FrameType, _ data: ArraySlice<UInt8>) throws(Error) -> [UInt8] {
        var plaintext = [UInt8]()
        plaintext.reserveCapacity(data.count + 1)
        plaintext.append(type.rawValue)
        plaintext += data
        do {
            return try self.sender.encrypt(associatedData: [], plaintext: plaintext)
        } catch {
            throw .nonceExhausted
        }
    }
}

extension [ArraySlice<UInt8>] {
    /// Calls `body` with each stretch of `range` of the parts' concatenation, in order, where it lies.
    public func forEachPiece(of range: Range<Int>, _ body: (UnsafeRawBufferPointer) -> Void) {
        var start = 0
        for part in self {
            let lower = Swift.max(range.lowerBound, start), upper = Swift.min(range.upperBound, start + part.count)
            if lower < upper {
                part.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[(lower - start)..<(upper - start)])) }
            }
            start += part.count
            if start >= range.upperBound { break }
        }
    }
}

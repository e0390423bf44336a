public import MeshCore

/// Messages carried inside a secure session, one per sealed message.
///
/// Encoding: one kind byte, then the body. Kind codes are part of the protocol: ONLY APPEND to ``Kind``
/// (memberlist's rule). Integers are big-endian.
public enum WireMessage: Equatable, Sendable {
    /// Liveness check on an established connection; answered by ``pong(nonce:)`` with the same nonce.
    case ping(nonce: UInt64)
    case pong(nonce: UInt64)
    /// The responder's first transport message: it checked the initiator's identity and accepts the session.
    /// (In Noise XX the initiator finishes first; without this it could not tell acceptance from refusal.)
    case welcome
    /// SWIM membership traffic (probes, acks, gossip, push-pull).
    case membership(MembershipMessage)
    /// The task protocol: offers, accepts, declines, results, acknowledgements, cancels.
    case task(TaskMessage)
    /// The sender's signature over the task messages it sent in this session so far (kept in audit logs).
    case transcript(TranscriptCheckpoint)

    public enum Kind: UInt8, Sendable {
        case ping = 1
        case pong = 2
        case welcome = 3
        case membership = 4
        case task = 5
        case transcript = 6
    }

    public enum DecodeError: Error, Equatable, CustomStringConvertible {
        case empty
        case unknownKind(UInt8)
        case malformed(Kind)
        case membership(MembershipMessage.DecodeError)
        case task(TaskMessage.DecodeError)

        public var description: String {
            switch self {
            case .empty: return "empty message"
            case .unknownKind(let kind): return "unknown message kind \(kind)"
            case .malformed(let kind): return "malformed \(kind) message"
            case .membership(let error): return error.description
            case .task(let error): return error.description
            }
        }
    }

    public var kind: Kind {
        switch self {
        case .ping: return .ping
        case .pong: return .pong
        case .welcome: return .welcome
        case .membership: return .membership
        case .task: return .task
        case .transcript: return .transcript
        }
    }

    /// Told the first bytes of a message, whether its audit digest is the SHA-256 of all its bytes (a task message
    /// other than an artifact chunk), so a session may hash it as it arrives.
    @Sendable public static func isAuditedWhole(_ first: UnsafeRawBufferPointer) -> Bool {
        first.count >= 2 && first[0] == Kind.task.rawValue && TaskMessage.digestCoversWholeMessage(tag: first[1])
    }

    /// ``encoded()`` as parts to be sent one after another, a task message's large payload a part of its own.
    public func encodedParts() -> [ArraySlice<UInt8>] {
        if case .task(let message) = self { return message.encodedParts(after: self.kind.rawValue) }
        return [self.encoded()[...]]
    }

    public func encoded() -> [UInt8] {
        if case .task(let message) = self { return message.encoded(after: self.kind.rawValue) }
        var bytes: [UInt8] = [self.kind.rawValue]
        switch self {
        case .ping(let nonce), .pong(let nonce):
            withUnsafeBytes(of: nonce.bigEndian) { bytes += $0 }
        case .welcome:
            break
        case .membership(let message):
            bytes += message.encoded()
        case .task:
            break
        case .transcript(let checkpoint):
            bytes += checkpoint.encoded()
        }
        return bytes
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        guard let first = bytes.first else { throw .empty }
        guard let kind = Kind(rawValue: first) else { throw .unknownKind(first) }
        let body = bytes.dropFirst()
        switch kind {
        case .ping, .pong:
            guard body.count == 8 else { throw .malformed(kind) }
            let nonce = body.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            self = kind == .ping ? .ping(nonce: nonce) : .pong(nonce: nonce)
        case .welcome:
            guard body.isEmpty else { throw .malformed(kind) }
            self = .welcome
        case .membership:
            do { self = .membership(try MembershipMessage(decoding: Array(body))) } catch { throw .membership(error) }
        case .task:
            do { self = .task(try TaskMessage(decoding: bytes, from: 1)) } catch { throw .task(error) }
        case .transcript:
            guard let checkpoint = TranscriptCheckpoint(decoding: Array(body)) else { throw .malformed(kind) }
            self = .transcript(checkpoint)
        }
    }
}

public import MeshCore
public import MeshWire

/// Why a connection ended badly. Each case is something a peer (or the network) did; none of them stops the node.
public enum TransportError: Error, CustomStringConvertible, Sendable {
    case handshake(HandshakeError)
    case handshakeTimedOut(seconds: Double)
    case closedDuringHandshake
    case displacedHandshake
    case frame(FrameCodec.Error)
    case session(SecureSession.Error)
    case refusedByPeer(PeerIdentity, SecureSession.CloseReason)
    case protocolViolation(String)
    case malformedMessage(WireMessage.DecodeError)
    case peerSilent(seconds: Double)
    case notEstablished

    /// Something only a broken or hostile peer sends once its session is established.
    var isMisbehaviour: Bool {
        switch self {
        case .frame, .session, .protocolViolation, .malformedMessage: return true
        case .handshake, .handshakeTimedOut, .closedDuringHandshake, .displacedHandshake, .refusedByPeer,
            .peerSilent, .notEstablished:
            return false
        }
    }

    public var description: String {
        switch self {
        case .handshake(let error): return error.description
        case .handshakeTimedOut(let seconds): return "handshake did not finish within \(seconds) s"
        case .closedDuringHandshake: return "connection closed during the handshake"
        case .displacedHandshake: return "the oldest pending handshake, closed for a newer connection (the handshake slots were full)"
        case .frame(let error): return error.description
        case .session(let error): return error.description
        case .refusedByPeer(let peer, let reason):
            return "\(peer.name) (\(peer.nodeID.short)) refused this node: \(reason.text)"
        case .protocolViolation(let what): return "protocol violation: \(what)"
        case .malformedMessage(let error): return error.description
        case .peerSilent(let seconds): return "peer sent nothing for \(seconds) s"
        case .notEstablished: return "session is not established"
        }
    }
}


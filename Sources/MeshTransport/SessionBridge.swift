import Logging
import MeshCore
import NIOCore

/// How one peer connection ended, for the loop that dialled it (join addresses re-dial, on-demand dials give up).
struct SessionOutcome: Sendable {
    /// The authenticated peer, if the handshake got that far.
    let peer: NodeID?
    /// Whether the node kept the session (it may lose to a duplicate, or refuse a banned peer).
    let wasRegistered: Bool
    /// The peer's authenticated close, if it sent one.
    var closeReason: SecureSession.CloseReason?
}

/// The last handler of a peer connection's pipeline. It runs on the node's event loop, which is also the node
/// actor's executor, so it hands every session event to the node synchronously: a message read from the socket is
/// handled, and its answer written, in the same turn of the loop, without waking another thread.
final class SessionBridge: ChannelInboundHandler {
    typealias InboundIn = SessionEvent

    private let node: MeshNode
    private let origin: MeshNode.Origin
    private let ended: EventLoopPromise<SessionOutcome>
    private var peer: NodeID?
    private var session: UInt64?
    private var closeReason: SecureSession.CloseReason?
    private var failure: (any Error)?

    init(node: MeshNode, origin: MeshNode.Origin, ended: EventLoopPromise<SessionOutcome>) {
        self.node = node
        self.origin = origin
        self.ended = ended
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .established(let peer):
            self.peer = peer.identity.nodeID
            let channel = context.channel
            let origin = self.origin
            self.session = self.node.assumeIsolated { $0.register(peer, channel: channel, origin: origin) }
        case .message(let message, let bytes, let digest):
            guard let session = self.session, let peer = self.peer else { return }
            self.node.assumeIsolated { $0.receive(message, bytes: bytes, digest: digest, from: peer, session: session) }
        case .unknownMessage(let kind, let bytes):
            guard let session = self.session, let peer = self.peer else { return }
            self.node.context.logger.debug("ignored message of unknown kind", metadata: ["peer": "\(peer.short)", "kind": "\(kind)"])
            self.node.assumeIsolated { $0.receiveUnknown(bytes: bytes, from: peer, session: session) }
        case .closed(let reason):
            self.closeReason = reason
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.failure == nil { self.failure = error }
        // A peer whose session ends on a message no honest peer sends is held to it: otherwise it could repeat
        // that forever, a new session each time.
        if let peer = self.peer, self.session != nil, let violation = error as? TransportError, violation.isMisbehaviour {
            self.node.assumeIsolated { $0.peerMisbehaved(peer, reason: "its session ended on a bad message: \(violation)") }
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let outcome = SessionOutcome(peer: self.peer, wasRegistered: self.session != nil, closeReason: self.closeReason)
        if let session = self.session, let peer = self.peer {
            let ending = self.closeReason.map { "peer closed: \($0)" } ?? self.failure.map { "\($0)" }
                ?? "connection lost (no close frame)"
            let cut = self.closeReason == nil
            self.node.assumeIsolated { $0.unregister(session, peer: peer, reason: ending, cut: cut) }
            self.ended.succeed(outcome)
        } else if self.peer == nil, let failure = self.failure {
            // The handshake failed: the caller logs and audits it (a refusal names the peer it learned).
            self.ended.fail(failure)
        } else {
            self.ended.succeed(outcome)
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // A pipeline torn down without going inactive (a failed initialiser, or a handshake displaced before its
        // channel became active) still answers its waiter, with the reason if there was one.
        self.ended.fail(self.failure ?? ChannelError.ioOnClosedChannel)
    }
}

@available(*, unavailable)
extension SessionBridge: Sendable {}

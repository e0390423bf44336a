public import MeshCore
public import MeshWire
import MeshCrypto
import NIOCore
import Synchronization

/// What a secure connection delivers to the node, in order: `established` once, then messages, then (maybe) the
/// peer's authenticated close. A stream that ends without `closed` was cut (reset, EOF, or an error).
public enum SessionEvent: Sendable {
    case established(EstablishedPeer)
    /// A message and its exact bytes (audit digests and byte limits use them), with their SHA-256 when the session
    /// hashed them as they arrived (a large task message).
    case message(WireMessage, bytes: [UInt8], digest: [UInt8]? = nil)
    /// A message of a kind this build does not know, and its size (still counted against the peer's limits).
    case unknownMessage(kind: UInt8, bytes: Int)
    case closed(SecureSession.CloseReason)
}

/// The authenticated peer at the other end of a connection.
public struct EstablishedPeer: Sendable {
    public let identity: PeerIdentity
    public let listenAddress: String
    public let decision: TrustPolicy.Decision
    public let role: Noise.Role
    public let handshakeHash: [UInt8]
}

/// Fired inbound on a pending handshake that a newer connection displaced from its slot.
struct HandshakeDisplaced: Sendable {}

/// Sent with `triggerUserOutboundEvent` before closing, so the close frame says why.
public struct CloseRequest: Sendable {
    public let reason: SecureSession.CloseReason
    public init(_ reason: SecureSession.CloseReason) { self.reason = reason }
}

/// The per-connection shell around ``InitiatorHandshake``/``ResponderHandshake`` and ``SecureSession``:
/// frames bytes, enforces the handshake timeout and the per-state length caps, answers keepalive pings, and turns
/// every failure into a typed error followed by a close. Lives on its channel's event loop.
final class SecureChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = SessionEvent
    typealias OutboundIn = OutboundMessage
    typealias OutboundOut = ByteBuffer

    struct Configuration: Sendable {
        /// Responder only: how long the first handshake message may take to arrive.
        var helloTimeout: TimeAmount
        var handshakeTimeout: TimeAmount
        var keepaliveInterval: TimeAmount
        var idleTimeout: TimeAmount
        var maximumMessageLength: Int
    }

    enum Role {
        case initiator(InitiatorHandshake)
        case responder(ResponderHandshake, ReplayGuard)
    }

    private enum Phase {
        case idle(Role)
        case awaitingResponse(InitiatorHandshake)
        /// Initiator only: Noise is done, but the responder has yet to accept (``WireMessage/welcome``) or refuse.
        case awaitingWelcome(SecureSession)
        case awaitingHello(ResponderHandshake, ReplayGuard)
        case awaitingFinish(ResponderHandshake)
        case established(SecureSession)
        case closed
    }

    private var phase: Phase
    private let configuration: Configuration
    private let trust: @Sendable () -> TrustPolicy
    private var releaseHandshakeSlot: (@Sendable () -> Void)?
    private var frames = FrameDecoder()
    private var handshakeTimeout: Scheduled<Void>?
    private var keepalive: Scheduled<Void>?
    /// Event-loop time of the last bytes received (the loop's clock, so tests can drive it).
    private var lastInbound = NIODeadline.uptimeNanoseconds(0)
    private var closeReason = SecureSession.CloseReason.normal
    /// After our close frame: the full close, once the peer closes its side or `closeLinger` has passed.
    private var lingering: (close: Scheduled<Void>, promise: EventLoopPromise<Void>?)?
    /// How long a closed session keeps reading (and discarding) so that the close frame is not lost to a reset.
    static let closeLinger = TimeAmount.seconds(1)
    private var pingNonce: UInt64 = 0

    init(
        role: Role, configuration: Configuration, trust: @escaping @Sendable () -> TrustPolicy,
        releaseHandshakeSlot: (@Sendable () -> Void)? = nil
    ) {
        self.phase = .idle(role)
        self.configuration = configuration
        self.trust = trust
        self.releaseHandshakeSlot = releaseHandshakeSlot
    }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard case .idle(let role) = self.phase else { return }
        if case .responder = role {
            self.scheduleHandshakeTimeout(in: min(self.configuration.helloTimeout, self.configuration.handshakeTimeout), context: context)
        } else {
            self.scheduleHandshakeTimeout(in: self.configuration.handshakeTimeout, context: context)
        }
        switch role {
        case .initiator(let initiator):
            self.phase = .awaitingResponse(initiator)
            self.writeFrame(initiator.hello, context: context)
            context.flush()
        case .responder(let responder, let replayGuard):
            self.phase = .awaitingHello(responder, replayGuard)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch self.phase {
        case .idle, .awaitingResponse, .awaitingWelcome, .awaitingHello, .awaitingFinish:
            self.phase = .closed
            self.stopTimers()
            self.finishHandshakeSlot()
            context.fireErrorCaught(TransportError.closedDuringHandshake)
        case .established, .closed:
            self.phase = .closed
            self.stopTimers()
        }
        if let lingering = self.lingering {
            lingering.close.cancel()
            lingering.promise?.succeed()
            self.lingering = nil
        }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is HandshakeDisplaced else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        switch self.phase {
        case .established, .closed: return  // finished in the meantime: nothing to displace
        default: self.fail(context: context, .displacedHandshake)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.stopTimers()
        self.finishHandshakeSlot()
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        if case .closed = self.phase { return }
        self.lastInbound = context.eventLoop.now
        self.frames.append(&bytes)
        self.processFrames(context: context)
    }

    private var maximumFrameLength: Int {
        switch self.phase {
        case .awaitingHello: return HandshakeProtocol.helloLength
        case .awaitingResponse, .awaitingFinish: return HandshakeProtocol.maximumMessageLength
        case .awaitingWelcome, .established: return FrameCodec.maximumFrameLength
        case .idle, .closed: return 0
        }
    }

    private func processFrames(context: ChannelHandlerContext) {
        while true {
            if case .closed = self.phase { return }
            let frame: ByteBuffer?
            do {
                frame = try self.frames.nextFrame(maximumLength: self.maximumFrameLength)
            } catch {
                self.fail(context: context, .frame(error))
                return
            }
            guard let frame else { return }
            self.handle(frame: frame, context: context)
        }
    }

    /// A transport frame is opened where it arrived; a handshake message (a few hundred bytes) is taken as bytes.
    private func handle(frame: ByteBuffer, context: ChannelHandlerContext) {
        switch self.phase {
        case .idle, .closed:
            return

        case .awaitingHello(var responder, let replayGuard):
            switch replayGuard.receiveHello(Array(frame.readableBytesView), into: &responder) {
            case .success(let response):
                self.phase = .awaitingFinish(responder)
                // The hello came in time; the rest of the handshake gets the full timeout.
                self.scheduleHandshakeTimeout(in: self.configuration.handshakeTimeout, context: context)
                self.writeFrame(response, context: context)
                context.flush()
            case .failure(let error):
                self.fail(context: context, .handshake(error))
            }

        case .awaitingFinish(var responder):
            switch responder.receiveFinish(Array(frame.readableBytesView), trust: self.trust()) {
            case .success(let established):
                self.phase = .established(self.session(established))
                self.send(.welcome, context: context, promise: nil)
                context.flush()
                // `send` advanced the session's nonce; establish with that state.
                guard case .established(let session) = self.phase else { return }
                self.establish(session, context: context)
            case .failure(let error):
                if let notice = responder.refusalNotice {
                    self.writeFrame(notice, context: context)
                    context.flush()
                }
                self.fail(context: context, .handshake(error))
            }

        case .awaitingResponse(var initiator):
            switch initiator.receiveResponse(Array(frame.readableBytesView), trust: self.trust()) {
            case .success(let (finish, established)):
                self.writeFrame(finish, context: context)
                context.flush()
                self.phase = .awaitingWelcome(self.session(established))
            case .failure(let error):
                self.fail(context: context, .handshake(error))
            }

        case .awaitingWelcome(var session):
            guard let inbound = self.open(frame, with: &session, context: context) else { return }
            switch inbound {
            case .message(let bytes, _) where (try? WireMessage(decoding: bytes)) == .welcome:
                self.establish(session, context: context)
            case .closed(let reason):
                self.fail(context: context, .refusedByPeer(session.peer, reason))
            case .message, nil:
                self.fail(context: context, .protocolViolation("expected the responder's welcome"))
            }

        case .established(var session):
            guard let inbound = self.open(frame, with: &session, context: context) else { return }
            self.phase = .established(session)
            switch inbound {
            case nil:
                return
            case .message(let bytes, let digest):
                self.deliver(bytes, digest: digest, context: context)
            case .closed(let reason):
                self.phase = .closed
                self.stopTimers()
                context.fireChannelRead(self.wrapInboundOut(.closed(reason)))
                context.close(promise: nil)
            }
        }
    }

    /// Opens a transport frame. A frame that fails to open ends the connection (`nil`); `.some(nil)` means a
    /// chunked message is still incomplete.
    private func open(
        _ frame: ByteBuffer, with session: inout SecureSession, context: ChannelHandlerContext
    ) -> SecureSession.Inbound?? {
        let result: Result<SecureSession.Inbound?, SecureSession.Error> = frame.withUnsafeReadableBytes { bytes in
            Result { () throws(SecureSession.Error) -> SecureSession.Inbound? in try session.open(frame: bytes) }
        }
        do {
            return .some(try result.get())
        } catch {
            self.fail(context: context, .session(error))
            return nil
        }
    }

    private func establish(_ session: SecureSession, context: ChannelHandlerContext) {
        self.handshakeTimeout?.cancel()
        self.handshakeTimeout = nil
        self.finishHandshakeSlot()
        self.phase = .established(session)
        self.lastInbound = context.eventLoop.now
        self.scheduleKeepalive(context: context)
        let peer = EstablishedPeer(
            identity: session.peer, listenAddress: session.peerListenAddress, decision: session.decision,
            role: session.role, handshakeHash: session.handshakeHash)
        context.fireChannelRead(self.wrapInboundOut(.established(peer)))
    }

    private func session(_ established: EstablishedSession) -> SecureSession {
        var session = SecureSession(established, maximumMessageLength: self.configuration.maximumMessageLength)
        session.digestsWhileArriving = WireMessage.isAuditedWhole
        return session
    }

    private func deliver(_ bytes: [UInt8], digest: [UInt8]?, context: ChannelHandlerContext) {
        do {
            let message = try WireMessage(decoding: bytes)
            switch message {
            case .ping(let nonce):
                self.send(.pong(nonce: nonce), context: context, promise: nil)
                context.flush()
                // Answered here; passed on so a flood of them is counted against the peer like anything else.
                context.fireChannelRead(self.wrapInboundOut(.message(message, bytes: bytes)))
            case .pong:
                // Its arrival already refreshed `lastInbound`; passed on to be counted.
                context.fireChannelRead(self.wrapInboundOut(.message(message, bytes: bytes)))
            case .welcome:
                self.fail(context: context, .protocolViolation("welcome after the session was established"))
            case .membership, .task, .transcript:
                context.fireChannelRead(self.wrapInboundOut(.message(message, bytes: bytes, digest: digest)))
            }
        } catch .unknownKind(let kind) {
            // A newer peer may speak kinds this build does not know; the node decides what to do with that.
            context.fireChannelRead(self.wrapInboundOut(.unknownMessage(kind: kind, bytes: bytes.count)))
        } catch {
            self.fail(context: context, .malformedMessage(error))
        }
    }

    private func scheduleHandshakeTimeout(in timeout: TimeAmount, context: ChannelHandlerContext) {
        self.handshakeTimeout?.cancel()
        self.handshakeTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.fail(context: context, .handshakeTimedOut(seconds: Double(timeout.nanoseconds) / 1e9))
        }
    }

    private func scheduleKeepalive(context: ChannelHandlerContext) {
        self.keepalive = context.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.keepaliveInterval) {
            self.keepaliveTick(context: context)
        }
    }

    private func keepaliveTick(context: ChannelHandlerContext) {
        guard case .established = self.phase else { return }
        let silence = context.eventLoop.now - self.lastInbound
        if silence > self.configuration.idleTimeout {
            self.fail(context: context, .peerSilent(seconds: Double(silence.nanoseconds) / 1e9))
            return
        }
        self.pingNonce &+= 1
        self.send(.ping(nonce: self.pingNonce), context: context, promise: nil)
        context.flush()
        self.scheduleKeepalive(context: context)
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let message = self.unwrapOutboundIn(data)
        self.send(parts: message.parts, digest: message.digest, context: context, promise: promise)
    }

    private func send(_ message: WireMessage, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        self.send(parts: [message.encoded()[...]], context: context, promise: promise)
    }

    /// Frames sealed and written at a time. A message of more than twice as many (a 1 MiB artifact chunk is not)
    /// goes out in parts of this many frames (about a megabyte), each flushed as soon as it is sealed, so the peer
    /// opens one part while this side seals the next.
    static let framesPerWrite = 16

    private func send(
        parts: [ArraySlice<UInt8>], digest: OutboundDigest? = nil, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?
    ) {
        let count = parts.reduce(0) { $0 + $1.count }
        let frames = SecureSession.frameCount(of: count)
        let isParted = frames > 2 * Self.framesPerWrite
        var next = 0
        repeat {
            // Read again for every part: flushing the one before may have ended the session (a write to a peer that
            // went away closes it at once), and a closed session's cipher state must never seal again.
            guard case .established(var session) = self.phase else {
                promise?.fail(TransportError.notEstablished)
                return
            }
            let part = next..<(isParted ? min(next + Self.framesPerWrite, frames) : frames)
            // Sealed straight into the outgoing buffer: each part of the message is copied once, then encrypted there.
            let length = SecureSession.framedLength(of: count, frames: part)
            var buffer = context.channel.allocator.buffer(capacity: length)
            var failure: SecureSession.Error?
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { space in
                do throws(SecureSession.Error) {
                    try session.seal(parts: parts, frames: part, into: UnsafeMutableRawBufferPointer(rebasing: space[..<length]))
                } catch {
                    failure = error
                }
                return length
            }
            self.phase = .established(session)
            if let failure {
                promise?.fail(TransportError.session(failure))
                // Part of the message is on the wire already: the session cannot go on.
                if part.lowerBound > 0 { self.fail(context: context, .session(failure)) }
                return
            }
            let isLast = part.upperBound == frames
            context.write(self.wrapOutboundOut(buffer), promise: isLast ? promise : nil)
            guard isParted else { return }
            context.flush()
            if let digest {
                let start = part.lowerBound * SecureSession.maximumChunkLength
                let end = min(part.upperBound * SecureSession.maximumChunkLength, count)
                parts.forEachPiece(of: start..<end) { digest.add($0) }
                if isLast { digest.finish() }
            }
            next = part.upperBound
        } while next < frames
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let request = event as? CloseRequest {
            self.closeReason = request.reason
            promise?.succeed()
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    /// Every close from this side of an established session first sends the authenticated close frame, so the peer
    /// can tell a deliberate close from a cut connection.
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard case .established(var session) = self.phase, mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        self.phase = .closed
        self.stopTimers()
        guard let frame = try? session.sealClose(self.closeReason) else {
            context.close(mode: mode, promise: promise)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: frame.count + FrameCodec.lengthPrefixSize)
        FrameCodec.write(frame: frame, to: &buffer)
        // Closing with the peer's bytes unread makes the kernel send a reset, which can destroy the close frame
        // before the peer reads it (a flooding peer always has bytes in flight). So: the frame, then our FIN, then
        // keep reading and discarding until the peer closes too, or for at most `closeLinger`.
        context.writeAndFlush(self.wrapOutboundOut(buffer)).assumeIsolated().whenComplete { _ in
            let linger = context.eventLoop.assumeIsolated().scheduleTask(in: Self.closeLinger) {
                self.lingering = nil
                context.close(mode: .all, promise: promise)
            }
            self.lingering = (linger, promise)
            context.close(mode: .output).assumeIsolated().whenFailure { _ in
                linger.cancel()
                self.lingering = nil
                context.close(mode: .all, promise: promise)
            }
        }
    }

    // MARK: Helpers

    private func writeFrame(_ frame: [UInt8], context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: frame.count + FrameCodec.lengthPrefixSize)
        FrameCodec.write(frame: frame, to: &buffer)
        context.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    private func fail(context: ChannelHandlerContext, _ error: TransportError) {
        if case .closed = self.phase { return }
        self.phase = .closed
        self.stopTimers()
        self.finishHandshakeSlot()
        self.frames.reset()
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    private func stopTimers() {
        self.handshakeTimeout?.cancel()
        self.handshakeTimeout = nil
        self.keepalive?.cancel()
        self.keepalive = nil
    }

    private func finishHandshakeSlot() {
        self.releaseHandshakeSlot?()
        self.releaseHandshakeSlot = nil
    }
}

@available(*, unavailable)
extension SecureChannelHandler: Sendable {}

/// A message on its way into a session, already encoded: the node encodes it once, for the wire and for its audit
/// digest, as parts (a large payload a part of its own, copied only into the frames that carry it).
package struct OutboundMessage: Sendable {
    let parts: [ArraySlice<UInt8>]
    /// Asks the session to hash the message as it writes it (see ``OutboundDigest``).
    let digest: OutboundDigest?

    package init(parts: [ArraySlice<UInt8>], digest: OutboundDigest? = nil) {
        self.parts = parts
        self.digest = digest
    }

    package init(_ bytes: [UInt8]) { self.init(parts: [bytes[...]]) }
}

/// The SHA-256 of a large message, computed by its session a part at a time, each part after it went to the
/// socket: the peer reads and opens one part while this side hashes it. Left empty when the message did not go
/// out in parts; the node then hashes it whole.
package final class OutboundDigest: Sendable {
    private let state = Mutex<(hasher: SHA256.Hasher, value: [UInt8]?)>((SHA256.Hasher(), nil))

    package init() {}

    /// The digest, once the session has hashed the whole message.
    package var value: [UInt8]? { self.state.withLock { $0.value } }

    /// Adds the next stretch of the message (one instance digests one message).
    fileprivate func add(_ stretch: UnsafeRawBufferPointer) {
        self.state.withLock { $0.hasher.update(stretch) }
    }

    fileprivate func finish() {
        self.state.withLock { $0.value = $0.hasher.finalize() }
    }
}

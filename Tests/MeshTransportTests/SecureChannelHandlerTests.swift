import MeshCore
import MeshCrypto
import MeshTestKit
import MeshWire
import NIOCore
import NIOEmbedded
import Testing

@testable import MeshTransport

/// Two handlers on EmbeddedChannels, bytes pumped between them by hand, time advanced by hand.
@Suite struct SecureChannelHandlerTests {
    static let configuration = SecureChannelHandler.Configuration(
        helloTimeout: .seconds(1), handshakeTimeout: .seconds(5), keepaliveInterval: .seconds(1), idleTimeout: .seconds(3),
        maximumMessageLength: 1 << 20)

    struct Pair {
        let initiator: EmbeddedChannel
        let responder: EmbeddedChannel
        let loop: EmbeddedEventLoop
        let slots: PendingHandshakes

        init(trustResponder: Bool = true, trustInitiator: Bool = true, maximumMessageLength: Int = 1 << 20) throws {
            let configuration = SecureChannelHandler.Configuration(
                helloTimeout: .seconds(1), handshakeTimeout: .seconds(5), keepaliveInterval: .seconds(1),
                idleTimeout: .seconds(3), maximumMessageLength: maximumMessageLength)
            let network = NetworkKey.generate()
            let a = NodeIdentity(name: "a")
            let b = NodeIdentity(name: "b")
            let initiatorTrust = TrustPolicy(trusted: trustResponder ? [PeerDescriptor(identity: b.publicIdentity)] : [])
            let responderTrust = TrustPolicy(trusted: trustInitiator ? [PeerDescriptor(identity: a.publicIdentity)] : [])
            self.loop = EmbeddedEventLoop()
            let slots = PendingHandshakes(limit: 1)
            let ticket = slots.begin(from: "a") {}
            self.slots = slots
            self.initiator = EmbeddedChannel(loop: self.loop)
            self.responder = EmbeddedChannel(loop: self.loop)
            try self.initiator.pipeline.syncOperations.addHandler(SecureChannelHandler(
                role: .initiator(InitiatorHandshake(credentials: HandshakeCredentials(
                    identity: a, networkKey: network, listenAddress: "127.0.0.1:1"))),
                configuration: configuration, trust: { initiatorTrust }))
            try self.responder.pipeline.syncOperations.addHandler(SecureChannelHandler(
                role: .responder(ResponderHandshake(credentials: HandshakeCredentials(
                    identity: b, networkKey: network, listenAddress: "127.0.0.1:2")), ReplayGuard(capacity: 16)),
                configuration: configuration, trust: { responderTrust },
                releaseHandshakeSlot: { slots.end(ticket, from: "a") }))
            try self.responder.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            try self.initiator.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        }

        /// Moves every pending byte across, one byte per write, until both sides are quiet. Returns the errors the
        /// handlers raised on the way (each also closed its channel).
        @discardableResult
        func pump(dripping: Bool = true) throws -> [any Error] {
            var errors: [any Error] = []
            func deliver(_ bytes: [UInt8], to channel: EmbeddedChannel) {
                do { try channel.writeInbound(ByteBuffer(bytes: bytes)) } catch { errors.append(error) }
            }
            var moved = true
            while moved {
                moved = false
                for (from, to) in [(self.initiator, self.responder), (self.responder, self.initiator)] where to.isActive {
                    while let buffer = try from.readOutbound(as: ByteBuffer.self) {
                        moved = true
                        let bytes = Array(buffer.readableBytesView)
                        if dripping {
                            for byte in bytes where to.isActive { deliver([byte], to: to) }
                        } else {
                            deliver(bytes, to: to)
                        }
                    }
                }
            }
            return errors
        }

        func events(_ channel: EmbeddedChannel) throws -> [SessionEvent] {
            var events: [SessionEvent] = []
            while let event = try channel.readInbound(as: SessionEvent.self) { events.append(event) }
            return events
        }
    }

    @Test func handshakeDrippedByteByByteEstablishesBothSides() throws {
        let pair = try Pair()
        #expect(try pair.pump().isEmpty)
        let initiatorEvents = try pair.events(pair.initiator)
        let responderEvents = try pair.events(pair.responder)
        guard case .established(let seenByInitiator)? = initiatorEvents.first,
            case .established(let seenByResponder)? = responderEvents.first
        else {
            Issue.record("not established: \(initiatorEvents) / \(responderEvents)")
            return
        }
        #expect(seenByInitiator.identity.name == "b")
        #expect(seenByInitiator.listenAddress == "127.0.0.1:2")
        #expect(seenByResponder.identity.name == "a")
        #expect(pair.slots.current == 0, "the responder released its pending-handshake slot")
    }

    @Test func keepalivePingsAreAnsweredAndSilenceClosesTheSession() throws {
        let pair = try Pair()
        try pair.pump()
        _ = try pair.events(pair.initiator)
        _ = try pair.events(pair.responder)
        for _ in 0..<5 {
            pair.loop.advanceTime(by: .seconds(1))
            try pair.pump(dripping: false)
        }
        #expect(pair.initiator.isActive && pair.responder.isActive, "pings and pongs keep both sides alive")
        // Now the responder stops answering: the initiator gives up after the idle timeout.
        for _ in 0..<4 {
            pair.loop.advanceTime(by: .seconds(1))
            while try pair.initiator.readOutbound(as: ByteBuffer.self) != nil {}
        }
        #expect(!pair.initiator.isActive)
    }

    /// A large message goes out in parts, each flushed as it is sealed. When a flush ends the connection (a write to
    /// a peer that went away), the session seals nothing more: a closed session's cipher state must not be used
    /// again, or the close frame's nonce would be reused.
    @Test func aConnectionEndingWhileALargeMessageGoesOutStopsTheSealing() throws {
        final class CloseOnSecondFlush: ChannelOutboundHandler {
            typealias OutboundIn = ByteBuffer
            var flushes = 0
            var writesAfterClose = 0
            var closed = false
            func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
                if self.closed { self.writesAfterClose += 1 }
                context.write(data, promise: promise)
            }
            func flush(context: ChannelHandlerContext) {
                self.flushes += 1
                context.flush()
                if self.flushes == 2 {
                    self.closed = true
                    context.close(promise: nil)
                }
            }
        }
        let pair = try Pair(maximumMessageLength: 4 << 20)
        try pair.pump(dripping: false)
        _ = try pair.events(pair.initiator)
        let recorder = CloseOnSecondFlush()
        try pair.initiator.pipeline.syncOperations.addHandler(recorder, position: .first)
        let message = WireMessage.task(.result(TaskID(high: 1, low: 1), epoch: 1, outcome: .success([UInt8](repeating: 7, count: 3 << 20))))
        let written = pair.initiator.write(OutboundMessage(parts: message.encodedParts()))
        #expect(recorder.closed && !pair.initiator.isActive)
        #expect(recorder.writesAfterClose == 0, "no part was sealed after the session closed")
        #expect(throws: (any Error).self) { try written.wait() }
    }

    @Test func tamperedTransportFrameClosesTheConnection() throws {
        let pair = try Pair()
        try pair.pump()
        _ = try pair.events(pair.responder)
        try pair.initiator.writeOutbound(OutboundMessage(WireMessage.ping(nonce: 1).encoded()))
        var frame = try #require(try pair.initiator.readOutbound(as: ByteBuffer.self))
        var bytes = Array(frame.readableBytesView)
        bytes[5] ^= 1
        frame = ByteBuffer(bytes: bytes)
        #expect(throws: TransportError.self) { try pair.responder.writeInbound(frame) }
        #expect(!pair.responder.isActive)
    }

    @Test func handshakeTimesOut() throws {
        let pair = try Pair()
        // Deliver nothing; the responder waits for msg1 until its timeout.
        pair.loop.advanceTime(by: .seconds(6))
        #expect(!pair.responder.isActive)
        #expect(pair.slots.current == 0)
    }

    /// The first handshake message takes one round trip: a connection that sends nothing holds its slot for the
    /// hello timeout (1 s here), not the whole handshake timeout (5 s).
    @Test func aConnectionThatSendsNoHelloIsClosedSoon() throws {
        let pair = try Pair()
        pair.loop.advanceTime(by: .milliseconds(900))
        #expect(pair.responder.isActive)
        pair.loop.advanceTime(by: .milliseconds(200))
        #expect(!pair.responder.isActive)
        #expect(pair.slots.current == 0)
    }

    /// A pending handshake displaced from its slot ends with that reason and frees the slot.
    @Test func displacedHandshakeEndsWithItsReason() throws {
        let pair = try Pair()
        pair.responder.pipeline.fireUserInboundEventTriggered(HandshakeDisplaced())
        #expect(!pair.responder.isActive)
        #expect(pair.slots.current == 0)
    }

    @Test func closingSendsAnAuthenticatedCloseFrame() throws {
        let pair = try Pair()
        try pair.pump()
        _ = try pair.events(pair.responder)
        try pair.initiator.pipeline.triggerUserOutboundEvent(CloseRequest(.shuttingDown)).wait()
        pair.initiator.close(promise: nil)
        try pair.pump(dripping: false)
        let events = try pair.events(pair.responder)
        guard case .closed(let reason)? = events.last else {
            Issue.record("no close event: \(events)")
            return
        }
        #expect(reason == .shuttingDown)
    }

    @Test func refusedInitiatorLearnsWhy() throws {
        let pair = try Pair(trustInitiator: false)
        let errors = try pair.pump()
        let initiatorError = errors.compactMap { $0 as? TransportError }.first { error in
            if case .refusedByPeer(_, let reason) = error { return reason.code == SecureSession.CloseReason.refusedCode }
            return false
        }
        #expect(initiatorError != nil, "errors: \(errors)")
        #expect(!pair.initiator.isActive)
        #expect(try pair.events(pair.initiator).isEmpty, "no established event for a refused initiator")
    }

    @Test func writesBeforeTheSessionExistsAreRefused() throws {
        let pair = try Pair()
        #expect(throws: TransportError.self) { try pair.initiator.writeOutbound(OutboundMessage(WireMessage.ping(nonce: 1).encoded())) }
    }
}

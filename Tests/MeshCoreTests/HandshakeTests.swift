import MeshCore
import MeshCrypto
import MeshTestKit
import Testing

/// Two handshake machines pumped against each other in memory, and every way a peer's bytes can be wrong.
@Suite struct HandshakeTests {
    struct Node {
        let identity: NodeIdentity
        let credentials: HandshakeCredentials
        init(_ name: String, network: NetworkKey, address: String = "127.0.0.1:7000") {
            self.identity = NodeIdentity(name: name)
            self.credentials = HandshakeCredentials(identity: identity, networkKey: network, listenAddress: address)
        }
        var descriptor: PeerDescriptor { PeerDescriptor(identity: self.identity.publicIdentity) }
    }

    let network = NetworkKey.generate()

    /// Runs a whole handshake; returns both sessions or the first failure with the side that saw it.
    func handshake(
        _ a: Node, _ b: Node, trustOfA: TrustPolicy, trustOfB: TrustPolicy, tamper: (Int, inout [UInt8]) -> Void = { _, _ in }
    ) -> Result<(SecureSession, SecureSession), HandshakeError> {
        var cache = ReplayCache()
        var initiator = InitiatorHandshake(credentials: a.credentials)
        var responder = ResponderHandshake(credentials: b.credentials)
        var msg1 = initiator.hello
        tamper(0, &msg1)
        var msg2: [UInt8]
        switch responder.receiveHello(msg1, replayCache: &cache) {
        case .success(let m): msg2 = m
        case .failure(let e): return .failure(e)
        }
        tamper(1, &msg2)
        var msg3: [UInt8]
        let initiatorSession: EstablishedSession
        switch initiator.receiveResponse(msg2, trust: trustOfA) {
        case .success(let (m, s)): (msg3, initiatorSession) = (m, s)
        case .failure(let e): return .failure(e)
        }
        tamper(2, &msg3)
        switch responder.receiveFinish(msg3, trust: trustOfB) {
        case .success(let s): return .success((SecureSession(initiatorSession), SecureSession(s)))
        case .failure(let e): return .failure(e)
        }
    }

    @Test func trustedPeersEstablishASessionAndExchangeMessages() throws {
        let a = Node("node-a", network: network, address: "127.0.0.1:7001")
        let b = Node("node-b", network: network, address: "127.0.0.1:7002")
        var (sa, sb) = try handshake(
            a, b, trustOfA: TrustPolicy(trusted: [b.descriptor]), trustOfB: TrustPolicy(trusted: [a.descriptor])
        ).get()
        #expect(sa.peer == b.identity.publicIdentity)
        #expect(sb.peer == a.identity.publicIdentity)
        #expect(sa.peerListenAddress == "127.0.0.1:7002")
        #expect(sb.peerListenAddress == "127.0.0.1:7001")
        #expect(sa.decision == .trusted)
        for frame in try sa.seal(message: Array("hello b".utf8)) {
            let outcome1 = try sb.open(frame: frame)
            #expect(outcome1 == .message(Array("hello b".utf8)))
        }
        for frame in try sb.seal(message: Array("hello a".utf8)) {
            let outcome2 = try sa.open(frame: frame)
            #expect(outcome2 == .message(Array("hello a".utf8)))
        }
    }

    @Test func openModeAdmitsAnyHolderOfTheNetworkKey() throws {
        let a = Node("a", network: network)
        let b = Node("b", network: network)
        let (sa, sb) = try handshake(a, b, trustOfA: TrustPolicy(isOpen: true), trustOfB: TrustPolicy(isOpen: true)).get()
        #expect(sa.decision == .admittedByOpenMode)
        #expect(sb.decision == .admittedByOpenMode)
    }

    @Test func wrongNetworkKeyIsRejectedAtTheGate() {
        let a = Node("a", network: NetworkKey.generate())
        let b = Node("b", network: network)
        let result = handshake(a, b, trustOfA: TrustPolicy(isOpen: true), trustOfB: TrustPolicy(isOpen: true))
        #expect(result.error == .gateRejected)
    }

    @Test func unlistedInitiatorIsRefusedByTheResponder() {
        let a = Node("stranger", network: network)
        let b = Node("b", network: network)
        let result = handshake(a, b, trustOfA: TrustPolicy(trusted: [b.descriptor]), trustOfB: TrustPolicy())
        guard case .refused(let peer, _) = result.error else {
            Issue.record("expected refusal, got \(String(describing: result.error))")
            return
        }
        #expect(peer == a.identity.publicIdentity)
    }

    @Test func refusedInitiatorReceivesASealedReason() throws {
        let a = Node("stranger", network: network)
        let b = Node("b", network: network)
        var cache = ReplayCache()
        var initiator = InitiatorHandshake(credentials: a.credentials)
        var responder = ResponderHandshake(credentials: b.credentials)
        let msg2 = try responder.receiveHello(initiator.hello, replayCache: &cache).get()
        let (msg3, established) = try initiator.receiveResponse(msg2, trust: TrustPolicy(trusted: [b.descriptor])).get()
        let refusal = responder.receiveFinish(msg3, trust: TrustPolicy())
        guard case .refused = refusal.error else {
            Issue.record("expected refusal, got \(refusal)")
            return
        }
        let notice = try #require(responder.refusalNotice)
        var session = SecureSession(established)
        let inbound = try session.open(frame: notice)
        guard case .closed(let reason)? = inbound else {
            Issue.record("expected a close frame, got \(String(describing: inbound))")
            return
        }
        #expect(reason.code == SecureSession.CloseReason.refusedCode)
        #expect(reason.text.contains("not a trusted peer"))
    }

    @Test func unlistedResponderIsRefusedByTheInitiator() {
        let a = Node("a", network: network)
        let b = Node("stranger", network: network)
        let result = handshake(a, b, trustOfA: TrustPolicy(), trustOfB: TrustPolicy(trusted: [a.descriptor]))
        guard case .refused(let peer, _) = result.error else {
            Issue.record("expected refusal, got \(String(describing: result.error))")
            return
        }
        #expect(peer == b.identity.publicIdentity)
    }

    @Test func descriptorPinsTheStaticKey() {
        let a = Node("a", network: network)
        let b = Node("b", network: network)
        // Same identity key as `a`, different Noise static key: someone holding a's identity key but not its static.
        let impostor = NodeIdentity(name: "a", signingKey: a.identity.signingKey, staticKey: X25519KeyPair())
        let impostorNode = Node(identity: impostor, network: network)
        let result = handshake(impostorNode, b, trustOfA: TrustPolicy(isOpen: true), trustOfB: TrustPolicy(trusted: [a.descriptor]))
        guard case .refused = result.error else {
            Issue.record("expected refusal, got \(String(describing: result.error))")
            return
        }
    }

    @Test func connectingToItselfIsRefused() {
        let a = Node("a", network: network)
        let result = handshake(a, a, trustOfA: TrustPolicy(isOpen: true), trustOfB: TrustPolicy(isOpen: true))
        #expect(result.error == .connectedToSelf)
    }

    /// A valid Noise static key whose binding signature was made for a different static key.
    @Test func staticKeyWithoutAValidBindingIsRefused() throws {
        let b = Node("b", network: network)
        let attacker = NodeIdentity(name: "mallory")
        var cache = ReplayCache()
        var noise = Noise.HandshakeState(
            role: .initiator, prologue: HandshakeProtocol.prologue, staticKey: attacker.staticKey)
        let gated = [HandshakeProtocol.version] + (try noise.writeMessage(payload: []))
        let hello = gated + MessageAuthenticator.tag(for: gated, key: HandshakeProtocol.gateKey(from: network))
        var responder = ResponderHandshake(credentials: b.credentials)
        let msg2 = try responder.receiveHello(hello, replayCache: &cache).get()
        _ = try noise.readMessage(msg2)
        let otherStatic = X25519KeyPair().publicKey
        let forgedBinding = attacker.signingKey.signature(for: Array("agentmesh-noise-static-v1".utf8) + otherStatic)
        let payload = HandshakePayload(
            identityKey: attacker.signingKey.publicKey, binding: forgedBinding, name: "mallory", listenAddress: "")
        let msg3 = try noise.writeMessage(payload: payload.encoded())
        let outcome3 = responder.receiveFinish(msg3, trust: TrustPolicy(isOpen: true)).error
        #expect(outcome3 == .invalidBinding)
    }

    @Test func aBitFlipAnywhereInAnyHandshakeMessageYieldsNoSession() throws {
        let a = Node("a", network: network)
        let b = Node("b", network: network)
        let trustA = TrustPolicy(trusted: [b.descriptor])
        let trustB = TrustPolicy(trusted: [a.descriptor])
        // Learn the message lengths from one clean run.
        var lengths: [Int] = []
        _ = try handshake(a, b, trustOfA: trustA, trustOfB: trustB, tamper: { _, m in lengths.append(m.count) }).get()
        var attempts = 0
        for message in 0..<3 {
            for byte in 0..<lengths[message] {
                for bit in [0, 3, 7] {
                    attempts += 1
                    let result = handshake(a, b, trustOfA: trustA, trustOfB: trustB) { index, m in
                        if index == message { m[byte] ^= 1 << bit }
                    }
                    if case .success = result { Issue.record("flip of bit \(bit) in byte \(byte) of msg\(message + 1) was accepted") }
                }
            }
        }
        #expect(attempts > 1000)
    }

    @Test func replayedHelloIsRefusedBeforeDiffieHellman() throws {
        let a = Node("a", network: network)
        let b = Node("b", network: network)
        var cache = ReplayCache()
        let initiator = InitiatorHandshake(credentials: a.credentials)
        var first = ResponderHandshake(credentials: b.credentials)
        _ = try first.receiveHello(initiator.hello, replayCache: &cache).get()
        var second = ResponderHandshake(credentials: b.credentials)
        let outcome4 = second.receiveHello(initiator.hello, replayCache: &cache).error
        #expect(outcome4 == .replayedHello)
    }

    @Test func replayedFinishToAFreshResponderIsRefused() throws {
        let a = Node("a", network: network)
        let b = Node("b", network: network)
        let trustB = TrustPolicy(trusted: [a.descriptor])
        var cache = ReplayCache()
        var initiator = InitiatorHandshake(credentials: a.credentials)
        var responder = ResponderHandshake(credentials: b.credentials)
        let msg2 = try responder.receiveHello(initiator.hello, replayCache: &cache).get()
        let (msg3, _) = try initiator.receiveResponse(msg2, trust: TrustPolicy(trusted: [b.descriptor])).get()
        _ = try responder.receiveFinish(msg3, trust: trustB).get()

        // An attacker replays the recorded msg1 (with an empty cache, as after a restart) and then msg3.
        var freshCache = ReplayCache()
        var victim = ResponderHandshake(credentials: b.credentials)
        _ = try victim.receiveHello(initiator.hello, replayCache: &freshCache).get()
        let outcome5 = victim.receiveFinish(msg3, trust: trustB).error
        #expect(outcome5 == .decryptionFailed)
    }

    @Test(arguments: [0, 1, 32, 64, 66, 200])
    func helloOfTheWrongLengthIsRefused(length: Int) {
        let b = Node("b", network: network)
        var cache = ReplayCache()
        var responder = ResponderHandshake(credentials: b.credentials)
        let outcome6 = responder.receiveHello([UInt8](repeating: 7, count: length), replayCache: &cache).error
        #expect(outcome6 == .unexpectedLength(length))
    }

    @Test func randomBytesNeverProduceASession() {
        let a = Node("a", network: network)
        let b = Node("b", network: network)
        var rng = SeededGenerator(seed: 0xA6E7)
        for _ in 0..<500 {
            var cache = ReplayCache()
            var responder = ResponderHandshake(credentials: b.credentials)
            let length = Int.random(in: 0...700, using: &rng)
            if case .success = responder.receiveHello(rng.bytes(length), replayCache: &cache) {
                Issue.record("random hello accepted")
            }
            var initiator = InitiatorHandshake(credentials: a.credentials)
            if case .success = initiator.receiveResponse(rng.bytes(length), trust: TrustPolicy(isOpen: true)) {
                Issue.record("random response accepted")
            }
        }
    }

    @Test func truncatedResponseAndFinishAreRefused() throws {
        let a = Node("a", network: network)
        let b = Node("b", network: network)
        var cache = ReplayCache()
        let open = TrustPolicy(isOpen: true)
        for cut in [0, 1, 31, 32, 79, 80, 100] {
            var initiator = InitiatorHandshake(credentials: a.credentials)
            var responder = ResponderHandshake(credentials: b.credentials)
            let msg2 = try responder.receiveHello(initiator.hello, replayCache: &cache).get()
            if case .success = initiator.receiveResponse(Array(msg2.prefix(cut)), trust: open) {
                Issue.record("truncated msg2 accepted")
            }
        }
        var initiator = InitiatorHandshake(credentials: a.credentials)
        var responder = ResponderHandshake(credentials: b.credentials)
        let msg2 = try responder.receiveHello(initiator.hello, replayCache: &cache).get()
        let (msg3, _) = try initiator.receiveResponse(msg2, trust: open).get()
        let outcome7 = responder.receiveFinish(Array(msg3.dropLast()), trust: open).error
        #expect(outcome7 == .decryptionFailed)
    }

    @Test func messagesOutOfOrderAreRefused() throws {
        let b = Node("b", network: network)
        var responder = ResponderHandshake(credentials: b.credentials)
        let outcome8 = responder.receiveFinish([1, 2, 3], trust: TrustPolicy(isOpen: true)).error
        #expect(outcome8 == .outOfTurn)
    }

    /// The sizes the wire protocol document states (Sources/MeshWire/MeshWire.docc/WireProtocol.md).
    @Test func messageSizesMatchTheSpecification() {
        #expect(HandshakeProtocol.helloLength == 65)
        #expect(HandshakeProtocol.maximumMessageLength == 514)
        #expect(SecureSession.maximumChunkLength == 65_518)
    }

    @Test func payloadRoundTripsAndRejectsGarbage() throws {
        let identity = NodeIdentity(name: "node-7")
        let payload = HandshakePayload(
            identityKey: identity.signingKey.publicKey, binding: identity.staticKeyBinding(), name: "node-7",
            listenAddress: "[::1]:7400")
        #expect(try HandshakePayload(decoding: payload.encoded()) == payload)
        var wrongVersion = payload.encoded()
        wrongVersion[0] = 9
        #expect(throws: HandshakeError.unsupportedVersion(9)) { try HandshakePayload(decoding: wrongVersion) }
        #expect(throws: HandshakeError.self) { try HandshakePayload(decoding: payload.encoded() + [0]) }
        for cut in 0..<payload.encoded().count {
            #expect(throws: HandshakeError.self) { try HandshakePayload(decoding: Array(payload.encoded().prefix(cut))) }
        }
    }
}

extension HandshakeTests.Node {
    init(identity: NodeIdentity, network: NetworkKey) {
        self.identity = identity
        self.credentials = HandshakeCredentials(identity: identity, networkKey: network, listenAddress: "")
    }
}

extension Result {
    var error: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}

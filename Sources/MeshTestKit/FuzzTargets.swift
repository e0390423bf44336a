import MeshControl
import MeshCore
import MeshCrypto
import MeshWire
import MeshWorkflows
import NIOCore

/// Entry points for fuzzing every decoder that reads a peer's or a user's bytes. Each one must return normally for
/// any input: a trap here is a bug. Used by `mesh-fuzz` (libFuzzer, scripts/fuzz) and by the regression tests that
/// replay saved crashers and seeds.
public enum FuzzTargets {
    public static let names = [
        "frames", "hello", "finish", "response", "payload", "message", "membership", "identity-line", "toml",
        "audit-log", "config", "submit-json", "workflow", "task-payload",
    ]

    /// Runs the named target; false if there is no such target.
    public static func run(_ name: String, _ data: [UInt8]) -> Bool {
        switch name {
        case "frames": frames(data)
        case "hello": hello(data)
        case "finish": finish(data)
        case "response": response(data)
        case "payload": _ = try? HandshakePayload(decoding: data)
        case "message": _ = try? WireMessage(decoding: data)
        case "membership": membership(data)
        case "identity-line": _ = try? IdentityLine.parse(String(decoding: data, as: UTF8.self))
        case "toml": _ = try? PeerDescriptor(parsing: String(decoding: data, as: UTF8.self))
        // A log file as `audit --verify` and a starting node read it: header, chain, checkpoints, a torn tail.
        case "audit-log": _ = try? AuditReader.read(data)
        // DIR/config.toml: every run setting and the [limits] rates.
        case "config": _ = try? RunConfiguration(parsing: String(decoding: data, as: UTF8.self))
        // A submission's body on the control API.
        case "submit-json": _ = try? ControlAPI.SubmitRequest(parsing: data)
        // A workflow document (POST /v1/workflows, workflow run), then a run of it driven to its end.
        case "workflow": workflow(data)
        // A task's input or result as stored and sent (JSON, then maybe a NUL and artifact references), and a
        // large submission's members as the control API finds them.
        case "task-payload":
            _ = try? TaskPayload(decoding: data)
            _ = JSONText.members(of: data)
            _ = JSONText.isValue(data)
        default: return false
        }
        return true
    }

    /// Parses a definition; a valid one runs with the document itself as the input, every task ending with the
    /// document as its output (then failing, to drive the compensations), until nothing is left to run.
    private static func workflow(_ data: [UInt8]) {
        guard let document = try? JSON(parsing: data), let definition = try? WorkflowDefinition(parsing: document) else { return }
        var run = WorkflowRun(id: WorkflowID(high: 1, low: 2), definition: definition, input: document, time: 0)
        var pending = run.start(time: 0)
        var rounds = 0
        while let directive = pending.first, rounds < 10_000 {
            pending.removeFirst()
            rounds += 1
            guard case .submit(let task) = directive else { continue }
            pending += run.taskEnded(task.id, rounds % 3 == 0 ? .failed("fuzz") : .completed(data), time: Int64(rounds))
        }
    }

    /// Fixed keys, so that inputs replay exactly.
    private static let network = try! NetworkKey(key: SecretBytes(copying: [UInt8](repeating: 7, count: 32)))
    private static let responderCredentials = HandshakeCredentials(
        identity: NodeIdentity(name: "fuzz-responder"), networkKey: network, listenAddress: "127.0.0.1:1")
    private static let initiatorCredentials = HandshakeCredentials(
        identity: NodeIdentity(name: "fuzz-initiator"), networkKey: network, listenAddress: "127.0.0.1:2")

    /// A session whose peer is a real initiator: transport frames from the input are opened with it.
    private static let receivingSession: SecureSession = {
        var cache = ReplayCache()
        var initiator = InitiatorHandshake(credentials: initiatorCredentials)
        var responder = ResponderHandshake(credentials: responderCredentials)
        let msg2 = try! responder.receiveHello(initiator.hello, replayCache: &cache).get()
        let (msg3, _) = try! initiator.receiveResponse(msg2, trust: TrustPolicy(isOpen: true)).get()
        return SecureSession(try! responder.receiveFinish(msg3, trust: TrustPolicy(isOpen: true)).get())
    }()

    /// The byte stream of an established connection: frame decoding, then decryption and reassembly.
    static func frames(_ data: [UInt8]) {
        var buffer = ByteBuffer(bytes: data)
        var session = receivingSession
        while let frame = try? FrameCodec.nextFrame(from: &buffer, maximumLength: FrameCodec.maximumFrameLength) {
            guard (try? session.open(frame: Array(frame.readableBytesView))) != nil else { return }
        }
    }

    /// A responder's first message as a stranger would send it (gate, version, replay, Noise).
    static func hello(_ data: [UInt8]) {
        var cache = ReplayCache(capacity: 4)
        var responder = ResponderHandshake(credentials: responderCredentials)
        _ = responder.receiveHello(data, replayCache: &cache)
    }

    /// Past the gate: the input's first 33 bytes become a correctly gated msg1, the rest is msg3. This reaches the
    /// Noise decryption and the identity payload decoder.
    static func finish(_ data: [UInt8]) {
        guard data.count >= 33 else { return }
        let gated = Array(data.prefix(33))
        let hello = gated + MessageAuthenticator.tag(for: gated, key: responderCredentials.gateKey)
        var cache = ReplayCache(capacity: 4)
        var responder = ResponderHandshake(credentials: responderCredentials)
        guard case .success = responder.receiveHello(hello, replayCache: &cache) else { return }
        _ = responder.receiveFinish(Array(data.dropFirst(33)), trust: TrustPolicy(isOpen: true))
    }

    /// A membership message from a peer, decoded and then applied to a node that knows one member: decoding and
    /// every merge rule must cope with whatever arrives.
    static func membership(_ data: [UInt8]) {
        guard let message = try? MembershipMessage(decoding: data) else { return }
        var node = Membership(
            identity: responderCredentials.identity.publicIdentity, address: "127.0.0.1:1", trust: TrustPolicy(isOpen: true),
            signer: .unsigned, settings: .localTesting, seed: 1, now: .zero)
        let peer = initiatorCredentials.identity.publicIdentity
        let record = MemberRecord(identity: peer, address: "127.0.0.1:2", incarnation: 0, capabilities: [], load: 0, signer: .unsigned)
        _ = node.receive(.gossip(updates: [.alive(record)]), from: peer.nodeID, now: .zero)
        _ = node.receive(message, from: peer.nodeID, now: .milliseconds(1))
        _ = node.tick(now: .seconds(60))
    }

    /// An initiator reading a responder's msg2.
    static func response(_ data: [UInt8]) {
        var initiator = InitiatorHandshake(credentials: initiatorCredentials)
        _ = initiator.receiveResponse(data, trust: TrustPolicy(isOpen: true))
    }
}

// The parts of scripts/bench that need an AgentMesh client of their own:
//   mesh-baseline handshakes HOME PORT SECONDS         full AgentMesh handshakes (Noise XX, identity check, the
//                                                      node's welcome) against a node on 127.0.0.1, one at a time
//   mesh-baseline flood HOME HOST PORT SECONDS RATE SLOW  a connection flood: RATE connection attempts per second,
//                                                      each sending a valid msg1 (HOME holds the network key, as an
//                                                      attacker inside the network would) and hanging up, plus SLOW
//                                                      handshakes that trickle one byte every 200 ms and are re-opened
//                                                      as soon as the node closes them
//   mesh-baseline events HOME PORT COUNT BYTES         a trusted peer's event flood: HOME's identity (which the
//                                                      node on 127.0.0.1 must admit) gossips its member record, then
//                                                      publishes COUNT signed events
//                                                      of BYTES of data each, as fast as the session takes them,
//                                                      until they are sent or the node closes the session
//   mesh-baseline floor MIB DIR                        the least work of a MIB-sized inline task on this machine,
//                                                      step by step (Floor.swift), with new files in DIR
// It prints one JSON document in the shape of `agentmesh bench --json`. The NATS and Redis anchors are measured with
// their official clients (scripts/baselines/).
import Foundation
import MeshCore
import MeshBench
import MeshControl
import MeshTestKit
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// MARK: - AgentMesh handshakes

func handshakes(home: String, port: Int, seconds: Int) throws {
    let nodeHome = NodeHome(path: home)
    let credentials = HandshakeCredentials(
        identity: try nodeHome.loadIdentity(), networkKey: try nodeHome.loadNetworkKey(), listenAddress: "127.0.0.1:9")
    let deadline = ContinuousClock.now + .seconds(seconds)
    var samples: [Duration] = []
    let started = ContinuousClock.now
    while ContinuousClock.now < deadline {
        let begun = ContinuousClock.now
        _ = try BlockingConnection.handshake(host: "127.0.0.1", port: port, credentials: credentials)
        samples.append(ContinuousClock.now - begun)
    }
    let elapsed = ContinuousClock.now - started
    let total = elapsed.seconds
    let report = ControlLoad.Report(
        requests: samples.count, failures: 0, concurrency: 1, payloadBytes: 0, seconds: total,
        requestsPerSecond: Double(samples.count) / total, latencyMicroseconds: ControlLoad.Percentiles(samples),
        firstFailure: nil)
    print(String(decoding: try ControlAPI.encoder().encode(report), as: UTF8.self))
}

// MARK: - A connection flood

struct FloodReport: Encodable {
    var attempts = 0
    var connected = 0
    var slowOpened = 0
    var seconds = 0.0
}

/// Paces `rate` attempts a second while another thread keeps `slow` trickling handshakes open.
func flood(home: String, host: String, port: Int, seconds: Int, rate: Int, slow: Int) throws {
    let nodeHome = NodeHome(path: home)
    let credentials = HandshakeCredentials(
        identity: NodeIdentity(name: "flood"), networkKey: try nodeHome.loadNetworkKey(), listenAddress: "\(host):9")
    let started = ContinuousClock.now
    let deadline = started + .seconds(seconds)
    let slowOpened = Mutex(0)
    let trickler = Thread {
        var open: [BlockingConnection] = []
        while ContinuousClock.now < deadline {
            open.removeAll { !$0.trickle([0]) }
            while open.count < slow, let connection = try? BlockingConnection(host: host, port: port, timeout: .milliseconds(100)) {
                open.append(connection)
                slowOpened.withLock { $0 += 1 }
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
    }
    trickler.start()
    // Several threads of attempts: a connect waits for the node to accept, so one thread cannot offer the rate.
    let threads = 64
    let counts = Mutex((attempts: 0, connected: 0))
    let attackers = (0..<threads).map { _ in
        Thread {
            var attempts = 0
            var connected = 0
            while ContinuousClock.now < deadline {
                if attempts >= Int(Double(rate) / Double(threads) * (ContinuousClock.now - started).seconds) {
                    Thread.sleep(forTimeInterval: 0.001)
                    continue
                }
                attempts += 1
                guard let connection = try? BlockingConnection(host: host, port: port, timeout: .milliseconds(100)) else { continue }
                connected += 1
                try? connection.sendFrame(InitiatorHandshake(credentials: credentials).hello)
                connection.abort()
            }
            counts.withLock { $0 = ($0.attempts + attempts, $0.connected + connected) }
        }
    }
    for attacker in attackers { attacker.start() }
    while !trickler.isFinished || attackers.contains(where: { !$0.isFinished }) { Thread.sleep(forTimeInterval: 0.05) }
    var report = FloodReport()
    (report.attempts, report.connected) = counts.withLock { $0 }
    report.slowOpened = slowOpened.withLock { $0 }
    report.seconds = (ContinuousClock.now - started).seconds
    print(String(decoding: try JSONEncoder().encode(report), as: UTF8.self))
}

extension Duration {
    var seconds: Double { Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18 }
}

// MARK: - An event flood from a trusted peer

struct EventFloodReport: Encodable {
    var sent = 0
    var acknowledged = 0
    var seconds = 0.0
    /// Why the node ended the session, if it did (a ban says so).
    var closedBecause: String?
}

func eventFlood(home: String, port: Int, count: Int, bytes: Int) throws {
    let nodeHome = NodeHome(path: home)
    let identity = try nodeHome.loadIdentity()
    let credentials = HandshakeCredentials(identity: identity, networkKey: try nodeHome.loadNetworkKey(), listenAddress: "127.0.0.1:9")
    let (connection, sealing) = try BlockingConnection.handshake(host: "127.0.0.1", port: port, credentials: credentials)
    // The node's side of the session (acknowledgements, pings, the close) is read on its own thread, so a full
    // socket never stops the flood; the two halves of the session state are used apart.
    let opening = Mutex(sealing)
    let report = Mutex(EventFloodReport())
    let reader = Thread {
        while let frame = try? connection.frame() {
            let opened = opening.withLock { session in try? session.open(frame: frame) }
            switch opened {
            case .message(let message, _)?:
                if message.first == 5, case .eventAck? = try? TaskMessage(decoding: message, from: 1) {
                    report.withLock { $0.acknowledged += 1 }
                }
            case .closed(let reason)?:
                report.withLock { $0.closedBecause = reason.text }
                return
            default:
                continue
            }
        }
    }
    reader.start()
    // A member first: a node takes events only from origins it knows (trusted, or with --open a member).
    let record = MemberRecord(
        identity: identity.publicIdentity, address: "127.0.0.1:9", incarnation: 1, capabilities: [], load: 0, signer: .ed25519(identity))
    for frame in try opening.withLock({ session in try session.seal(message: [4] + MembershipMessage.gossip(updates: [.alive(record)]).encoded()) }) {
        try connection.sendFrame(frame)
    }
    Thread.sleep(forTimeInterval: 0.5)
    let data = Array("\"".utf8) + [UInt8](repeating: UInt8(ascii: "x"), count: max(0, bytes - 2)) + Array("\"".utf8)
    var generator = SystemRandomNumberGenerator()
    let started = ContinuousClock.now
    for _ in 0..<count {
        let event = MeshEvent(
            id: EventID(using: &generator), topic: "flood", publishedBy: identity, time: Int64(Date().timeIntervalSince1970 * 1000), data: data)
        guard let frames = try? opening.withLock({ session in try session.seal(message: TaskMessage.event(event).encoded(after: 5)) }),
            (try? frames.forEach { try connection.sendFrame($0) }) != nil
        else { break }
        report.withLock { $0.sent += 1 }
    }
    // What the node still acknowledges after the last event was sent.
    Thread.sleep(forTimeInterval: 2)
    connection.abort()
    var result = report.withLock { $0 }
    result.seconds = (ContinuousClock.now - started).seconds
    print(String(decoding: try ControlAPI.encoder().encode(result), as: UTF8.self))
}

let arguments = CommandLine.arguments.dropFirst().map { $0 }

func usage() -> Never {
    FileHandle.standardError.write(Data("""
        usage: mesh-baseline handshakes HOME PORT SECONDS
               mesh-baseline flood HOME HOST PORT SECONDS RATE SLOW
               mesh-baseline events HOME PORT COUNT BYTES
               mesh-baseline floor MIB DIR

        """.utf8))
    exit(2)
}

do {
    switch arguments.first {
    case "handshakes":
        guard arguments.count == 4, let port = Int(arguments[2]), let seconds = Int(arguments[3]) else { usage() }
        try handshakes(home: arguments[1], port: port, seconds: seconds)
    case "flood":
        guard arguments.count == 7, let port = Int(arguments[3]), let seconds = Int(arguments[4]),
            let rate = Int(arguments[5]), let slow = Int(arguments[6])
        else { usage() }
        try flood(home: arguments[1], host: arguments[2], port: port, seconds: seconds, rate: rate, slow: slow)
    case "events":
        guard arguments.count == 5, let port = Int(arguments[2]), let count = Int(arguments[3]), let bytes = Int(arguments[4]),
            bytes <= MeshEvent.maximumData
        else { usage() }
        try eventFlood(home: arguments[1], port: port, count: count, bytes: bytes)
    case "floor":
        guard arguments.count == 3, let mib = Int(arguments[1]), mib > 0 else { usage() }
        try measureFloor(mib: mib, directory: arguments[2])
    default:
        usage()
    }
} catch {
    FileHandle.standardError.write(Data("mesh-baseline: \(error)\n".utf8))
    exit(1)
}

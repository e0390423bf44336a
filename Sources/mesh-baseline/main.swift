// The baselines of scripts/bench, as native clients (compiled, blocking sockets, one thread per connection), so the
// comparison with AgentMesh is not a comparison with an interpreter:
//   mesh-baseline nats-responder PORT                  answers requests on subject "echo" with their payload
//   mesh-baseline nats-bench PORT REQUESTS CONCURRENCY PAYLOAD WARMUP
//   mesh-baseline redis-worker PORT WORKERS            a task queue: BRPOP "tasks", LPUSH the payload to its reply list
//   mesh-baseline redis-bench PORT REQUESTS CONCURRENCY PAYLOAD WARMUP
//   mesh-baseline handshakes HOME PORT SECONDS         full AgentMesh handshakes (Noise XX, identity check, the
//                                                      node's welcome) against a node on 127.0.0.1, one at a time
// The bench commands print one JSON document in the shape of `agentmesh bench --json`.
import Foundation
import MeshCore
import MeshTransport

#if canImport(Glibc)
import Glibc
#endif

struct Failure: Error, CustomStringConvertible {
    let description: String
}

/// A blocking TCP connection to 127.0.0.1 with a read buffer; used by one thread at a time.
final class Connection: @unchecked Sendable {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0

    init(port: Int) throws {
        self.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(self.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw Failure(description: "cannot connect to 127.0.0.1:\(port)") }
        var one: Int32 = 1
        setsockopt(self.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close(self.fd) }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw Failure(description: "send failed") }
            sent += count
        }
    }

    func send(_ text: String) throws { try self.send(Array(text.utf8)) }

    /// An AgentMesh frame: a 2-byte big-endian length, then the bytes.
    func sendFrame(_ bytes: [UInt8]) throws { try self.send([UInt8(bytes.count >> 8), UInt8(bytes.count & 0xff)] + bytes) }

    func frame() throws -> [UInt8] {
        let length = try self.bytes(2)
        return try self.bytes(Int(length[0]) << 8 | Int(length[1]))
    }

    private func fill() throws {
        if self.start > 0, self.start == self.buffer.count {
            self.buffer.removeAll(keepingCapacity: true)
            self.start = 0
        }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = chunk.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { throw Failure(description: "the server closed the connection") }
        self.buffer += chunk[..<count]
    }

    /// One line without its CRLF.
    func line() throws -> String {
        while true {
            if let end = self.buffer[self.start...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: self.buffer[self.start..<end].dropLast(), as: UTF8.self)
                self.start = end + 1
                return line
            }
            try self.fill()
        }
    }

    func bytes(_ count: Int) throws -> [UInt8] {
        while self.buffer.count - self.start < count { try self.fill() }
        defer { self.start += count }
        return Array(self.buffer[self.start..<self.start + count])
    }
}

// MARK: - NATS (text protocol: INFO/CONNECT/SUB/PUB/MSG/PING/PONG)

func natsConnect(_ port: Int) throws -> Connection {
    let connection = try Connection(port: port)
    _ = try connection.line()  // INFO {...}
    try connection.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
    return connection
}

/// Reads until the next MSG, answering the server's PINGs; returns (reply subject, payload).
func natsNextMessage(_ connection: Connection) throws -> (String?, [UInt8]) {
    while true {
        let line = try connection.line()
        if line == "PING" {
            try connection.send("PONG\r\n")
            continue
        }
        if line == "PONG" || line == "+OK" || line.isEmpty { continue }
        let words = line.split(separator: " ")
        guard words.first == "MSG", words.count >= 4, let count = Int(words.last!) else {
            throw Failure(description: "unexpected from nats-server: \(line)")
        }
        let payload = try connection.bytes(count + 2).dropLast(2)
        return (words.count == 5 ? String(words[3]) : nil, Array(payload))
    }
}

/// Subscribes and waits for the server to confirm it (PING/PONG), so no request is lost to a race.
func natsSubscribe(_ connection: Connection, subject: String) throws {
    try connection.send("SUB \(subject) 1\r\nPING\r\n")
    while try connection.line() != "PONG" {}
}

func natsResponder(port: Int) throws -> Never {
    let connection = try natsConnect(port)
    try natsSubscribe(connection, subject: "echo")
    FileHandle.standardOutput.write(Data("ready\n".utf8))
    while true {
        let (reply, payload) = try natsNextMessage(connection)
        guard let reply else { continue }
        try connection.send(Array("PUB \(reply) \(payload.count)\r\n".utf8) + payload + [13, 10])
    }
}

// MARK: - Redis (RESP: LPUSH / BRPOP)

func resp(_ arguments: [[UInt8]]) -> [UInt8] {
    var bytes = Array("*\(arguments.count)\r\n".utf8)
    for argument in arguments { bytes += Array("$\(argument.count)\r\n".utf8) + argument + [13, 10] }
    return bytes
}

/// Reads one reply; returns the bulk strings of an array reply (BRPOP) or nothing for an integer (LPUSH).
func respReply(_ connection: Connection) throws -> [[UInt8]] {
    let line = try connection.line()
    switch line.first {
    case ":": return []
    case "*":
        let count = Int(line.dropFirst()) ?? 0
        return try (0..<max(0, count)).map { _ in
            let header = try connection.line()
            guard header.first == "$", let length = Int(header.dropFirst()) else { throw Failure(description: "bad bulk: \(header)") }
            return Array(try connection.bytes(length + 2).dropLast(2))
        }
    default: throw Failure(description: "unexpected from redis-server: \(line)")
    }
}

func redisWorkers(port: Int, count: Int) throws -> Never {
    for _ in 0..<count {
        let connection = try Connection(port: port)
        Thread.detachNewThread {
            do {
                while true {
                    try connection.send(resp([Array("BRPOP".utf8), Array("tasks".utf8), Array("0".utf8)]))
                    let popped = try respReply(connection)
                    guard popped.count == 2, let bar = popped[1].firstIndex(of: UInt8(ascii: "|")) else { continue }
                    let replyKey = Array(popped[1][..<bar])
                    try connection.send(resp([Array("LPUSH".utf8), replyKey, Array(popped[1][(bar + 1)...])]))
                    _ = try respReply(connection)
                }
            } catch {
                FileHandle.standardError.write(Data("redis worker: \(error)\n".utf8))
                exit(1)
            }
        }
    }
    FileHandle.standardOutput.write(Data("ready\n".utf8))
    while true { sleep(3600) }
}

// MARK: - Load

/// What the load threads share, behind a lock.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var issued = 0
    private(set) var samples: [Duration] = []
    private(set) var failure: String?

    func claim(limit: Int) -> Bool {
        self.lock.lock()
        defer { self.lock.unlock() }
        guard self.issued < limit, self.failure == nil else { return false }
        self.issued += 1
        return true
    }

    func finish(_ samples: [Duration], failure: String?) {
        self.lock.lock()
        defer { self.lock.unlock() }
        self.samples += samples
        if self.failure == nil { self.failure = failure }
    }
}

/// `concurrency` connections, each with one request in flight, `requests` measured in all after `warmup`.
func bench(
    requests: Int, concurrency: Int, warmup: Int, payload: Int, open: () throws -> (@Sendable () throws -> Void)
) throws {
    let roundTrips = try (0..<concurrency).map { _ in try open() }
    for index in 0..<warmup { try roundTrips[index % concurrency]() }
    let tally = Tally()
    let group = DispatchGroup()
    let started = ContinuousClock.now
    for roundTrip in roundTrips {
        group.enter()
        Thread.detachNewThread {
            var mine: [Duration] = []
            var failure: String?
            while tally.claim(limit: requests) {
                let sent = ContinuousClock.now
                do { try roundTrip() } catch {
                    failure = "\(error)"
                    break
                }
                mine.append(ContinuousClock.now - sent)
            }
            tally.finish(mine, failure: failure)
            group.leave()
        }
    }
    group.wait()
    let elapsed = ContinuousClock.now - started
    if let failure = tally.failure { throw Failure(description: failure) }
    let samples = tally.samples
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    let report = ControlLoad.Report(
        requests: samples.count, failures: 0, concurrency: concurrency, payloadBytes: payload, seconds: seconds,
        requestsPerSecond: Double(samples.count) / seconds, latencyMicroseconds: ControlLoad.Percentiles(samples),
        firstFailure: nil)
    print(String(decoding: try ControlAPI.encoder().encode(report), as: UTF8.self))
}

// MARK: - AgentMesh handshakes

/// One full handshake as a dialling node makes it: msg1, msg2, msg3, then the node's sealed welcome.
func handshake(port: Int, credentials: HandshakeCredentials) throws {
    let connection = try Connection(port: port)
    var initiator = InitiatorHandshake(credentials: credentials)
    try connection.sendFrame(initiator.hello)
    switch initiator.receiveResponse(try connection.frame(), trust: TrustPolicy(isOpen: true)) {
    case .success(let (finish, established)):
        try connection.sendFrame(finish)
        var session = SecureSession(established)
        guard case .message(let welcome)?? = try? session.open(frame: try connection.frame()), welcome == [3] else {
            throw Failure(description: "the node did not welcome the session")
        }
    case .failure(let error):
        throw Failure(description: "handshake failed: \(error)")
    }
}

func handshakes(home: String, port: Int, seconds: Int) throws {
    let nodeHome = NodeHome(path: home)
    let credentials = HandshakeCredentials(
        identity: try nodeHome.loadIdentity(), networkKey: try nodeHome.loadNetworkKey(), listenAddress: "127.0.0.1:9")
    let deadline = ContinuousClock.now + .seconds(seconds)
    var samples: [Duration] = []
    let started = ContinuousClock.now
    while ContinuousClock.now < deadline {
        let begun = ContinuousClock.now
        try handshake(port: port, credentials: credentials)
        samples.append(ContinuousClock.now - begun)
    }
    let elapsed = ContinuousClock.now - started
    let total = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    let report = ControlLoad.Report(
        requests: samples.count, failures: 0, concurrency: 1, payloadBytes: 0, seconds: total,
        requestsPerSecond: Double(samples.count) / total, latencyMicroseconds: ControlLoad.Percentiles(samples),
        firstFailure: nil)
    print(String(decoding: try ControlAPI.encoder().encode(report), as: UTF8.self))
}

let arguments = CommandLine.arguments.dropFirst().map { $0 }

func usage() -> Never {
    FileHandle.standardError.write(Data("usage: see the comment at the top of Sources/mesh-baseline/main.swift\n".utf8))
    exit(2)
}

func number(_ index: Int) -> Int {
    guard index < arguments.count, let value = Int(arguments[index]) else { usage() }
    return value
}

do {
    switch arguments.first {
    case "nats-responder":
        try natsResponder(port: number(1))
    case "redis-worker":
        try redisWorkers(port: number(1), count: number(2))
    case "handshakes":
        guard arguments.count == 4 else { usage() }
        try handshakes(home: arguments[1], port: number(2), seconds: number(3))
    case "nats-bench":
        let (port, payload) = (number(1), [UInt8](repeating: UInt8(ascii: "x"), count: number(4)))
        try bench(requests: number(2), concurrency: number(3), warmup: number(5), payload: payload.count) {
            let connection = try natsConnect(port)
            let inbox = "_INBOX.\(UUID().uuidString)"
            try natsSubscribe(connection, subject: inbox)
            let request = Array("PUB echo \(inbox) \(payload.count)\r\n".utf8) + payload + [13, 10]
            return {
                try connection.send(request)
                let (_, answer) = try natsNextMessage(connection)
                guard answer == payload else { throw Failure(description: "wrong answer") }
            }
        }
    case "redis-bench":
        let (port, payload) = (number(1), [UInt8](repeating: UInt8(ascii: "x"), count: number(4)))
        try bench(requests: number(2), concurrency: number(3), warmup: number(5), payload: payload.count) {
            let connection = try Connection(port: port)
            let replyKey = Array("reply:\(UUID().uuidString)".utf8)
            let push = resp([Array("LPUSH".utf8), Array("tasks".utf8), replyKey + [UInt8(ascii: "|")] + payload])
            let pop = resp([Array("BRPOP".utf8), replyKey, Array("0".utf8)])
            return {
                try connection.send(push)
                _ = try respReply(connection)
                try connection.send(pop)
                guard try respReply(connection).last == payload else { throw Failure(description: "wrong answer") }
            }
        }
    default:
        usage()
    }
} catch {
    FileHandle.standardError.write(Data("mesh-baseline: \(error)\n".utf8))
    exit(1)
}

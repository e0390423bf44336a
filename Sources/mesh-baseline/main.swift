// The parts of scripts/bench that need an AgentMesh client of their own:
//   mesh-baseline handshakes HOME PORT SECONDS         full AgentMesh handshakes (Noise XX, identity check, the
//                                                      node's welcome) against a node on 127.0.0.1, one at a time
// It prints one JSON document in the shape of `agentmesh bench --json`. The NATS and Redis anchors are measured with
// their official clients (scripts/baselines/).
import Foundation
import MeshCore
import MeshBench
import MeshControl

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
    func bytes(_ count: Int) throws -> [UInt8] {
        while self.buffer.count - self.start < count { try self.fill() }
        defer { self.start += count }
        return Array(self.buffer[self.start..<self.start + count])
    }
}

// MARK: - NATS (text protocol: INFO/CONNECT/SUB/PUB/MSG/PING/PONG)

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
    FileHandle.standardError.write(Data("usage: mesh-baseline handshakes HOME PORT SECONDS\n".utf8))
    exit(2)
}

guard arguments.count == 4, arguments[0] == "handshakes", let port = Int(arguments[2]), let seconds = Int(arguments[3])
else { usage() }
do {
    try handshakes(home: arguments[1], port: port, seconds: seconds)
} catch {
    FileHandle.standardError.write(Data("mesh-baseline: \(error)\n".utf8))
    exit(1)
}

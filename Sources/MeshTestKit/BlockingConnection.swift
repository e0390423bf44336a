public import MeshCore

#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP connection speaking AgentMesh frames, for tools and tests that play a peer by hand (a flood, a
/// peer that sends what a node never would). Used by one thread at a time.
public final class BlockingConnection: @unchecked Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    private let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0

    /// Connects within `timeout` (a node whose accept queue is full answers no SYN).
    public init(host: String = "127.0.0.1", port: Int, timeout: Duration? = nil) throws {
        self.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if let timeout {
            var limit = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
            setsockopt(self.fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(self.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(self.fd)
            throw Failure(description: "cannot connect to \(host):\(port)")
        }
        var one: Int32 = 1
        setsockopt(self.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close(self.fd) }

    /// Hangs up with a reset, so a flood leaves no TIME_WAIT behind on either side.
    public func abort() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }

    /// Sends without blocking; false once the node has closed the connection.
    public func trickle(_ bytes: [UInt8]) -> Bool {
        var probe: UInt8 = 0
        if recv(self.fd, &probe, 1, Int32(MSG_DONTWAIT)) == 0 { return false }
        let count = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        return count > 0 || errno == EAGAIN
    }

    public func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw Failure(description: "send failed") }
            sent += count
        }
    }

    /// An AgentMesh frame: a 2-byte big-endian length, then the bytes.
    public func sendFrame(_ bytes: [UInt8]) throws { try self.send([UInt8(bytes.count >> 8), UInt8(bytes.count & 0xff)] + bytes) }

    public func frame() throws -> [UInt8] {
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

    /// The next `count` bytes.
    public func bytes(_ count: Int) throws -> [UInt8] {
        while self.buffer.count - self.start < count { try self.fill() }
        defer { self.start += count }
        return Array(self.buffer[self.start..<self.start + count])
    }
}

extension BlockingConnection {
    /// One full handshake as a dialling node makes it (msg1, msg2, msg3, then the node's sealed welcome); returns
    /// the connection and its session.
    public static func handshake(
        host: String, port: Int, credentials: HandshakeCredentials
    ) throws -> (BlockingConnection, SecureSession) {
        let connection = try BlockingConnection(host: host, port: port)
        var initiator = InitiatorHandshake(credentials: credentials)
        try connection.sendFrame(initiator.hello)
        switch initiator.receiveResponse(try connection.frame(), trust: TrustPolicy(isOpen: true)) {
        case .success(let (finish, established)):
            try connection.sendFrame(finish)
            var session = SecureSession(established)
            guard case .message(let welcome, _)? = try? session.open(frame: try connection.frame()), welcome == [3] else {
                throw Failure(description: "the node did not welcome the session")
            }
            return (connection, session)
        case .failure(let error):
            throw Failure(description: "handshake failed: \(error)")
        }
    }
}

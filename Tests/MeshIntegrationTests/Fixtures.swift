import Dispatch
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshTestKit
import MeshWire
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

@testable import MeshTransport

#if canImport(Glibc)
import Glibc
@testable import MeshControl
#endif

/// A folder of node homes for one test, removed at the end. Paths stay short: Unix socket paths are limited.
final class TestMesh: Sendable {
    let directory: String
    let networkKeyFile: String

    init() throws {
        self.directory = "/tmp/amt-" + Hex.encode(secureRandomBytes(5))
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        self.networkKeyFile = self.directory + "/network.key"
        _ = FileManager.default.createFile(atPath: self.networkKeyFile, contents: Data(NetworkKey.generate().exportKey()))
    }

    func node(_ name: String, networkKeyFile: String? = nil) throws -> TestNode {
        let home = NodeHome(path: self.directory + "/" + name)
        _ = try home.initialize(name: name, networkKeyFile: networkKeyFile ?? self.networkKeyFile)
        return TestNode(home: home, identity: try home.loadIdentity(), networkKey: try home.loadNetworkKey())
    }

    /// Nodes "a" and "b", each with the other's descriptor in its peers/ folder.
    func trustedPair() throws -> (TestNode, TestNode) {
        let a = try self.node("a")
        let b = try self.node("b")
        try a.trust(b)
        try b.trust(a)
        return (a, b)
    }

    /// A network key that no other node here shares.
    func foreignNetworkKeyFile() -> String {
        let path = self.directory + "/foreign.key"
        _ = FileManager.default.createFile(atPath: path, contents: Data(NetworkKey.generate().exportKey()))
        return path
    }

    deinit { try? FileManager.default.removeItem(atPath: self.directory) }
}

struct TestNode: Sendable {
    let home: NodeHome
    let identity: NodeIdentity
    let networkKey: NetworkKey
    let logs = LogCapture(echo: ProcessInfo.processInfo.environment["AGENTMESH_TEST_LOGS"] != nil)

    var id: NodeID { self.identity.nodeID }

    func trust(_ others: TestNode...) throws {
        for other in others { _ = try self.home.trust(other.identity.publicIdentity) }
    }

    func start(_ configure: (inout NodeSettings) -> Void = { _ in }) async throws -> RunningNode {
        var settings = NodeSettings.localTesting()
        configure(&settings)
        let node = MeshNode(
            home: self.home, identity: self.identity, networkKey: self.networkKey, settings: settings,
            logger: self.logs.logger(label: self.identity.name))
        let address = try await node.bind().advertised
        // The same path as `agentmesh run`: a ServiceGroup, stopped by graceful shutdown (what SIGTERM triggers).
        let group = ServiceGroup(configuration: .init(services: [node], logger: self.logs.logger(label: "lifecycle")))
        let task = Task { try await group.run() }
        return RunningNode(node: node, address: address, group: group, task: task)
    }
}

extension TestNode {
    /// An authenticated session driven by the test itself, to send what a real node would not.
    func openSession(to address: HostAndPort) async throws -> NIOAsyncChannel<SessionEvent, OutboundMessage> {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: address.host, port: address.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SecureChannelHandler(
                        role: .initiator(InitiatorHandshake(credentials: HandshakeCredentials(
                            identity: self.identity, networkKey: self.networkKey, listenAddress: "127.0.0.1:9"))),
                        configuration: .init(
                            // Long enough for a test's whole session on 2 cores busy with the rest of the suite.
                            helloTimeout: .seconds(1), handshakeTimeout: .seconds(2), keepaliveInterval: .seconds(1), idleTimeout: .seconds(60),
                            maximumMessageLength: 1 << 20),
                        trust: { TrustPolicy(isOpen: true) }))
                    return try NIOAsyncChannel<SessionEvent, OutboundMessage>(wrappingChannelSynchronously: channel)
                }
            }
    }
}

struct RunningNode: Sendable {
    let node: MeshNode
    let address: HostAndPort
    let group: ServiceGroup
    let task: Task<Void, any Error>

    /// Peers with an open session to this node.
    func peerIDs() async -> Set<String> {
        Set(await self.node.members().members.filter { $0.connection == "inbound" || $0.connection == "outbound" }.map(\.id))
    }

    /// Members (not counting the node itself) by status, as `agentmesh members` shows them.
    func members(_ status: String) async -> Set<String> {
        Set(await self.node.members().members.filter { $0.connection != "self" && $0.status == status }.map(\.name))
    }

    func stop() async {
        await self.group.triggerGracefulShutdown()
        _ = try? await self.task.value
    }
}

/// A plain TCP client for feeding a node bytes no real peer would send.
final class RawConnection: Sendable {
    let fd: Int32
    private let isShut = Mutex(false)

    init(to address: HostAndPort) throws {
        self.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = in_port_t(UInt16(address.port).bigEndian)
        inet_pton(AF_INET, address.host, &sin.sin_addr)
        let result = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(self.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            self.shut()
            throw CLIStyleError("connect failed: \(String(cString: strerror(errno)))")
        }
    }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func sendFrame(_ bytes: [UInt8]) {
        self.send([UInt8(bytes.count >> 8), UInt8(bytes.count & 0xff)] + bytes)
    }

    /// Reads until the node closes the connection; true if it did so within `timeout`.
    func closedByPeer(within timeout: Duration) -> Bool {
        var tv = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
            if count == 0 { return true }
            if count < 0 { return errno == ECONNRESET }
        }
    }

    /// Reads one length-prefixed frame (for a handshake response).
    func readFrame(within timeout: Duration) -> [UInt8]? {
        var tv = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        func read(_ count: Int) -> [UInt8]? {
            var out: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: count)
            while out.count < count {
                let n = buffer.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, count - out.count, 0) }
                if n <= 0 { return nil }
                out += buffer[0..<n]
            }
            return out
        }
        guard let prefix = read(2) else { return nil }
        return read(Int(prefix[0]) << 8 | Int(prefix[1]))
    }

    /// Closes the socket once. A second close could close a descriptor that NIO, in this same process, has just
    /// been given the same number for (an accepted socket), and NIO stops the process on EBADF.
    /// Sends an end of file (the node sees the peer hang up) and keeps reading, so the node's close can be seen.
    func finishSending() { shutdown(self.fd, Int32(SHUT_WR)) }

    func shut() {
        guard self.isShut.withLock({ shut in defer { shut = true }; return !shut }) else { return }
        close(self.fd)
    }

    deinit { self.shut() }
}

/// Runs blocking work (a raw socket read, the blocking control client) on a GCD thread. On a 2-core machine the
/// Swift concurrency pool has two threads; blocking them would starve the very node the test is waiting for.
func offloaded<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try work() }) }
    }
}

struct CLIStyleError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

extension NIOAsyncChannelOutboundWriter where OutboundOut == OutboundMessage {
    /// Tests write messages; the session handler takes them encoded.
    func write(_ message: WireMessage) async throws {
        try await self.write(OutboundMessage(message.encoded()))
    }
}

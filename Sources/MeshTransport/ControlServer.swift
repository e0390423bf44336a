import Foundation
import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOPosix

/// Serves the control API: HTTP/1.1 with JSON bodies, on `DIR/control.sock` (a Unix socket of mode 0600, so only
/// the node's own user can drive it) and, with `run --http`, on a TCP address where every request must carry the
/// bearer token from `DIR/control.token`.
struct ControlServer: Sendable {
    typealias Handler = @Sendable (ControlRequest) async -> ControlResponse

    static let maximumBodyLength = 4 * 1024 * 1024

    let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    /// The socket file to remove at the end (Unix socket only).
    let socketPath: String?
    /// Required as `Authorization: Bearer TOKEN` (TCP only).
    let bearerToken: String?
    let logger: Logger

    enum BindError: Error, CustomStringConvertible {
        case alreadyRunning(String)
        case cannotBind(String, String)

        var description: String {
            switch self {
            case .alreadyRunning(let path): return "a node is already running with this home (\(path) answers)"
            case .cannotBind(let path, let why): return "cannot create the control socket \(path): \(why)"
            }
        }
    }

    /// Binds the socket. A leftover socket file from a crashed node is replaced; one that a live node answers on is
    /// an error, so two nodes never share a home.
    static func bind(socketPath: String, group: any EventLoopGroup, logger: Logger) async throws -> ControlServer {
        if FileManager.default.fileExists(atPath: socketPath) {
            if ControlClient(socketPath: socketPath).isAnswering() { throw BindError.alreadyRunning(socketPath) }
            try? FileManager.default.removeItem(atPath: socketPath)
        }
        // The socket is created with the process umask; tighten it so no other user can connect in the gap.
        let previousMask = umask(0o077)
        defer { umask(previousMask) }
        let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
        do {
            channel = try await ServerBootstrap(group: group)
                .bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: false) { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                            wrappingChannelSynchronously: child)
                    }
                }
        } catch {
            throw BindError.cannotBind(socketPath, "\(error)")
        }
        chmod(socketPath, 0o600)
        return ControlServer(channel: channel, socketPath: socketPath, bearerToken: nil, logger: logger)
    }

    /// Binds a TCP listener that answers only requests carrying `token`.
    static func bind(
        http address: HostAndPort, token: String, group: any EventLoopGroup, logger: Logger
    ) async throws -> ControlServer {
        let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: address.host, port: address.port) { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                            wrappingChannelSynchronously: child)
                    }
                }
        } catch {
            throw BindError.cannotBind("http://\(address)", "\(error)")
        }
        return ControlServer(channel: channel, socketPath: nil, bearerToken: token, logger: logger)
    }

    /// The bound TCP port (for `--http 127.0.0.1:0`).
    var port: Int? { self.channel.channel.localAddress?.port }

    /// Compares in time independent of where the first difference is, so the token cannot be guessed byte by byte.
    private func isAuthorized(_ head: HTTPRequestHead) -> Bool {
        guard let token = self.bearerToken else { return true }
        let expected = Array(("Bearer " + token).utf8)
        let given = Array((head.headers.first(name: "Authorization") ?? "").utf8)
        guard given.count == expected.count else { return false }
        return zip(given, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// Serves until the listener is closed or the task is cancelled; removes the socket file at the end.
    func run(handler: @escaping Handler) async {
        defer { if let socketPath = self.socketPath { try? FileManager.default.removeItem(atPath: socketPath) } }
        do {
            try await withThrowingDiscardingTaskGroup { group in
                try await self.channel.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await self.serve(connection, handler: handler) }
                    }
                }
            }
        } catch is CancellationError {
        } catch {
            self.logger.warning("control socket stopped", metadata: ["error": "\(error)"])
        }
    }

    func close() async {
        try? await self.channel.channel.close()
    }

    private func serve(
        _ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, handler: Handler
    ) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body: [UInt8] = []
                var tooLarge = false
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead):
                        head = requestHead
                        body = []
                        tooLarge = false
                    case .body(let buffer):
                        if body.count + buffer.readableBytes > Self.maximumBodyLength {
                            tooLarge = true
                        } else {
                            body += buffer.readableBytesView
                        }
                    case .end:
                        guard let requestHead = head else { continue }
                        let response: ControlResponse
                        if !self.isAuthorized(requestHead) {
                            response = .error(401, "send the token from the node's control.token as 'Authorization: Bearer TOKEN'")
                        } else if tooLarge {
                            response = .error(413, "request body exceeds \(Self.maximumBodyLength) bytes")
                        } else {
                            response = await handler(Self.request(requestHead, body: body))
                        }
                        try await Self.write(response, keepAlive: requestHead.isKeepAlive, to: connection.channel)
                        if !requestHead.isKeepAlive { return }
                        head = nil
                    }
                }
            }
        } catch {
            self.logger.debug("control connection ended", metadata: ["error": "\(error)"])
        }
    }

    private static func request(_ head: HTTPRequestHead, body: [UInt8]) -> ControlRequest {
        let components = URLComponents(string: head.uri)
        var query: [String: String] = [:]
        for item in components?.queryItems ?? [] { query[item.name] = item.value ?? "" }
        return ControlRequest(
            method: head.method.rawValue, path: components?.path ?? head.uri, query: query, body: body)
    }

    /// Writes through the channel itself so the last write completes only once the kernel has every byte: closing
    /// right after an outbound-writer write would drop whatever the socket had not yet taken (a long task list).
    private static func write(_ response: ControlResponse, keepAlive: Bool, to channel: any Channel) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        channel.write(HTTPServerResponsePart.head(head), promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: response.body))), promise: nil)
        try await channel.writeAndFlush(HTTPServerResponsePart.end(nil)).get()
    }
}

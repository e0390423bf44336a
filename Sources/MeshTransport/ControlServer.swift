import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// Serves the control API on `DIR/control.sock`: HTTP/1.1 with JSON bodies over a Unix socket of mode 0600, so only
/// the node's own user can drive it.
struct ControlServer: Sendable {
    typealias Handler = @Sendable (ControlRequest) async -> ControlResponse

    static let maximumBodyLength = 4 * 1024 * 1024

    let channel: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    let socketPath: String
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
        return ControlServer(channel: channel, socketPath: socketPath, logger: logger)
    }

    /// Serves until the listener is closed or the task is cancelled; removes the socket file at the end.
    func run(handler: @escaping Handler) async {
        defer { try? FileManager.default.removeItem(atPath: self.socketPath) }
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
                        if tooLarge {
                            response = .error(413, "request body exceeds \(Self.maximumBodyLength) bytes")
                        } else {
                            response = await handler(Self.request(requestHead, body: body))
                        }
                        try await Self.write(response, keepAlive: requestHead.isKeepAlive, to: outbound)
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

    private static func write(
        _ response: ControlResponse, keepAlive: Bool, to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    ) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        try await outbound.write(.head(head))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body))))
        try await outbound.write(.end(nil))
    }
}

import Foundation
import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import MeshControl

/// Serves the control API: HTTP/1.1 with JSON bodies, on `DIR/control.sock` (a Unix socket of mode 0600, so only
/// the node's own user can drive it) and, with `run --http`, on a TCP address where every request must carry the
/// bearer token from `DIR/control.token`.
struct ControlServer: Sendable {
    /// Answers one request; called on the server's event loop, which answers by calling `respond` (on any thread).
    typealias Handler = @Sendable (ControlRequest, _ respond: @escaping @Sendable (ControlResponse) -> Void) -> Void
    /// Starts taking a streamed body (`POST /v1/artifacts`): given the request's head and its Content-Length, the
    /// upload that takes the bytes, or a refusal sent before any byte is stored.
    typealias Uploader = @Sendable (ControlRequest, _ length: UInt64) -> UploadStart

    enum UploadStart {
        case accepted(ArtifactUpload)
        case refused(ControlResponse)
    }

    /// A request's body, at most (artifacts stream past it): the largest inline input, twice over for JSON escapes.
    static let maximumBodyLength = 2 * NodeSettings.largestTaskInput + 1024 * 1024
    /// How long a request may take to arrive, head and body (artifact uploads excepted).
    static let requestTimeout: Duration = .seconds(10)
    /// The browser's sign-in sends a one-time code of a few dozen bytes.
    static let maximumSignInBody = 1024
    /// Connections open at once; more are closed as they arrive.
    static let maximumConnections = 256
    /// One client address holds at most this many of them, so one client cannot fill the listener and lock out
    /// the others (a liveness probe included).
    static let maximumConnectionsPerAddress = 64

    /// Open connections, in all and per client address.
    struct ConnectionShares {
        private var total = 0
        private var byAddress: [String: Int] = [:]

        mutating func admit(_ address: String?) -> Bool {
            guard self.total < ControlServer.maximumConnections else { return false }
            if let address {
                guard self.byAddress[address, default: 0] < ControlServer.maximumConnectionsPerAddress else { return false }
                self.byAddress[address, default: 0] += 1
            }
            self.total += 1
            return true
        }

        mutating func release(_ address: String?) {
            self.total -= 1
            if let address, let count = self.byAddress[address] { self.byAddress[address] = count > 1 ? count - 1 : nil }
        }
    }

    let channel: any Channel
    /// The socket file to remove at the end (Unix socket only).
    let socketPath: String?
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
    static func bind(
        socketPath: String, loop: any EventLoop, idleTimeout: Duration, logger: Logger, handler: @escaping Handler,
        uploader: @escaping Uploader
    ) async throws -> ControlServer {
        if FileManager.default.fileExists(atPath: socketPath) {
            if ControlClient(socketPath: socketPath).isAnswering() { throw BindError.alreadyRunning(socketPath) }
            try? FileManager.default.removeItem(atPath: socketPath)
        }
        // The socket is created with the process umask; tighten it so no other user can connect in the gap.
        let previousMask = umask(0o077)
        defer { umask(previousMask) }
        let channel: any Channel
        do {
            channel = try await Self.bootstrap(
                loop: loop, token: nil, browser: nil, idleTimeout: idleTimeout, logger: logger, handler: handler,
                uploader: uploader)
                .bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: false).get()
        } catch {
            throw BindError.cannotBind(socketPath, "\(error)")
        }
        chmod(socketPath, 0o600)
        return ControlServer(channel: channel, socketPath: socketPath, logger: logger)
    }

    /// Binds a TCP listener that answers only requests carrying `token`.
    static func bind(
        http address: HostAndPort, token: String, browser: BrowserSessions, loop: any EventLoop, idleTimeout: Duration,
        logger: Logger, handler: @escaping Handler, uploader: @escaping Uploader
    ) async throws -> ControlServer {
        let channel: any Channel
        do {
            channel = try await Self.bootstrap(
                loop: loop, token: token, browser: browser, idleTimeout: idleTimeout, logger: logger, handler: handler,
                uploader: uploader)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: address.host, port: address.port).get()
        } catch {
            throw BindError.cannotBind("http://\(address)", "\(error)")
        }
        return ControlServer(channel: channel, socketPath: nil, logger: logger)
    }

    private static func bootstrap(
        loop: any EventLoop, token: String?, browser: BrowserSessions?, idleTimeout: Duration, logger: Logger,
        handler: @escaping Handler, uploader: @escaping Uploader
    ) -> ServerBootstrap {
        let open = Mutex(ConnectionShares())
        return ServerBootstrap(group: loop, childGroup: loop)
            .childChannelInitializer { child in
                // The Unix socket's clients have no address; each TCP client address gets a share of the listener.
                let address = child.remoteAddress?.ipAddress
                let admitted = open.withLock { $0.admit(address) }
                guard admitted else {
                    logger.debug("refused a control connection over the limit", metadata: [
                        "limit": "\(Self.maximumConnections), \(Self.maximumConnectionsPerAddress) per address",
                    ])
                    return child.close()
                }
                child.closeFuture.whenComplete { _ in open.withLock { $0.release(address) } }
                return child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(BackPressureHandler())
                    try child.pipeline.syncOperations.addHandler(RequestHeadDeadline())
                    try child.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: TimeAmount(idleTimeout)))
                    try child.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try child.pipeline.syncOperations.addHandler(
                        ControlHTTPHandler(
                            bearerToken: token, browser: browser, logger: logger, handler: handler, uploader: uploader,
                            loop: child.eventLoop))
                }
            }
    }

    /// The bound TCP port (for `--http 127.0.0.1:0`).
    var port: Int? { self.channel.localAddress?.port }

    /// Waits until the listener is closed; removes the socket file at the end.
    func run() async {
        try? await self.channel.closeFuture.get()
        if let socketPath = self.socketPath { try? FileManager.default.removeItem(atPath: socketPath) }
    }

    func close() async {
        try? await self.channel.close()
    }
}

/// One control connection: gathers a request (refusing an unauthorised one on its headers, without keeping its
/// body), hands it to the node and writes the answer. HTTP/1.1 pipelining is serialised by NIO's pipeline handler,
/// so at most one request per connection is in flight.
/// A request's head must be whole within ``ControlServer/requestTimeout`` of the connection opening or of its first
/// byte: the deadline on a request started only once its head was in, so a client trickling a byte of a head every
/// 20 s kept its connection past a minute, and 256 of them shut everyone out. Sits before the HTTP decoder, where
/// the bytes of a head that is not whole yet are still visible; the request handler says when a head is in and when
/// its request ended.
private final class RequestHeadDeadline: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    enum Progress { case headReceived, requestEnded }

    private var waitingForHead = true
    private var deadline: Scheduled<Void>?

    func channelActive(context: ChannelHandlerContext) {
        self.arm(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if self.waitingForHead, self.deadline == nil { self.arm(context) }
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let progress = event as? Progress else { return context.triggerUserOutboundEvent(event, promise: promise) }
        switch progress {
        case .headReceived:
            self.waitingForHead = false
            self.deadline?.cancel()
            self.deadline = nil
        case .requestEnded:
            // The next bytes start the next request's head.
            self.waitingForHead = true
        }
        promise?.succeed()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.deadline?.cancel()
        context.fireChannelInactive()
    }

    private func arm(_ context: ChannelHandlerContext) {
        let channel = context.channel
        self.deadline = context.eventLoop.scheduleTask(in: TimeAmount(ControlServer.requestTimeout)) {
            channel.close(promise: nil)
        }
    }
}

private final class ControlHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let bearerToken: String?
    /// The browser view's sessions (the `--http` listener only): `/ui/api/…` is authorised by them, not the token.
    private let browser: BrowserSessions?
    /// The request is the browser view's: its path loses the `/ui/api` prefix before it is routed.
    private var fromBrowser = false
    private let logger: Logger
    private let handler: ControlServer.Handler
    private let uploader: ControlServer.Uploader
    /// The artifact being streamed in, when the request is an upload.
    private var upload: ArtifactUpload?
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var refusal: ControlResponse?
    /// The most body the current request may carry: paths open without the token take none (the sign-in a few
    /// hundred bytes), so a stranger cannot make the node hold or parse megabytes.
    private var bodyLimit = ControlServer.maximumBodyLength
    /// Refused and answered; what else arrives before the close is dropped.
    private var isClosing = false
    /// A complete request waits for the answers before it to drain.
    private var isAwaitingWritability = false
    /// Ends a connection whose request (head and body) is not complete in time: a client announcing a body and
    /// then saying nothing would otherwise hold one of the listener's connections for as long as it likes.
    private var requestDeadline: Scheduled<Void>?
    /// Requests handed to the node and not yet answered (a long poll may take an hour; the connection stays).
    private let inFlight: NIOLoopBound<Counter>

    private final class Counter {
        var value = 0
    }

    init(
        bearerToken: String?, browser: BrowserSessions?, logger: Logger, handler: @escaping ControlServer.Handler,
        uploader: @escaping ControlServer.Uploader, loop: any EventLoop
    ) {
        self.bearerToken = bearerToken
        self.browser = browser
        self.logger = logger
        self.handler = handler
        self.uploader = uploader
        self.inFlight = NIOLoopBound(Counter(), eventLoop: loop)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read, self.head == nil,
            self.inFlight.value.value == 0
        {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.isClosing else { return }
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            context.triggerUserOutboundEvent(RequestHeadDeadline.Progress.headReceived, promise: nil)
            self.head = head
            self.body = []
            self.requestDeadline?.cancel()
            let channel = context.channel
            self.requestDeadline = context.eventLoop.scheduleTask(in: TimeAmount(ControlServer.requestTimeout)) {
                channel.close(promise: nil)
            }
            // The health check answers without the token (a liveness probe carries none); it says only ok or not.
            // So are the A2A agent card and the OpenAPI document: clients read them to learn how to authenticate.
            let path = head.uri.split(separator: "?").first
            let isPublic = head.method == .GET
                && (path == "/v1/health" || path == "/.well-known/agent-card.json" || path == "/openapi.yaml")
            self.fromBrowser = false
            self.bodyLimit = ControlServer.maximumBodyLength
            if let browser = self.browser, let path, path == "/ui" || path.hasPrefix("/ui/") {
                self.refusal = Self.browserRefusal(head, path: path, browser: browser)
                self.fromBrowser = path.hasPrefix("/ui/api/")
                if !self.fromBrowser { self.bodyLimit = path == "/ui/session" ? ControlServer.maximumSignInBody : 0 }
                self.refuseAnnouncedBodyOverLimit(head, context: context)
                return
            }
            if isPublic {
                self.refusal = nil
                self.bodyLimit = 0
                self.refuseAnnouncedBodyOverLimit(head, context: context)
                return
            }
            self.refusal = self.isAuthorized(head)
                ? nil : .error(401, "send the token from the node's control.token as 'Authorization: Bearer TOKEN'")
            if self.refusal == nil, head.method == .POST, path == "/v1/artifacts" {
                // Streamed to disk as it arrives; refused on its announced length before any byte is stored.
                guard let length = head.headers.first(name: "Content-Length").flatMap({ UInt64($0) }) else {
                    self.refusal = .error(411, "send the artifact's bytes with a Content-Length")
                    return
                }
                switch self.uploader(Self.request(head, body: []), length) {
                case .accepted(let upload):
                    // An upload may take as long as its bytes need; the idle timeout still ends a silent one.
                    self.requestDeadline?.cancel()
                    self.upload = upload
                case .refused(let refusal): self.refusal = refusal
                }
            }
        case .body(let buffer):
            guard self.refusal == nil else { return }
            if let upload = self.upload {
                upload.write(buffer, channel: context.channel)
                return
            }
            if self.body.count + buffer.readableBytes > self.bodyLimit {
                self.refuseAndClose(Self.tooLarge(self.bodyLimit), context: context)
            } else {
                if self.body.isEmpty, let length = self.head?.headers.first(name: "Content-Length").flatMap({ Int($0) }),
                    length <= self.bodyLimit
                {
                    // Room for the announced body once it starts: a 10 MiB body grown by doubling was copied again
                    // about as many times as it doubled.
                    self.body.reserveCapacity(length)
                }
                self.body += buffer.readableBytesView
            }
        case .end:
            context.triggerUserOutboundEvent(RequestHeadDeadline.Progress.requestEnded, promise: nil)
            self.requestDeadline?.cancel()
            guard self.head != nil else { return }
            // Answers the client is not reading pile up in the outbound buffer: the next request is answered only
            // once they have drained (the pipeline handler holds later requests until this one's answer ends, and
            // `BackPressureHandler` stops reading the socket meanwhile). 720 KB of pipelined requests from a
            // client that never read cost +441 MiB per connection.
            guard context.channel.isWritable else {
                self.isAwaitingWritability = true
                return
            }
            self.answer(context: context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, self.isAwaitingWritability {
            self.isAwaitingWritability = false
            self.answer(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    /// Hands the complete request to the node (or answers its refusal).
    private func answer(context: ChannelHandlerContext) {
        guard let head = self.head else { return }
        self.head = nil
        let channel = context.channel
        let keepAlive = head.isKeepAlive
        let inFlight = self.inFlight
        inFlight.value.value += 1
        let respond: @Sendable (ControlResponse) -> Void = { response in
            // A stream stays in flight until its connection closes: the idle timeout must not cut it.
            if response.stream == nil { inFlight.value.value -= 1 }
            Self.write(response, keepAlive: keepAlive, to: channel)
        }
        if let refusal = self.refusal {
            respond(refusal)
        } else if let upload = self.upload {
            self.upload = nil
            // The upload ends on the artifact queue; the answer is written from the connection's loop.
            let loop = context.eventLoop
            upload.finish { response in loop.execute { respond(response) } }
        } else {
            var request = Self.request(head, body: self.body)
            if self.fromBrowser {
                request = ControlRequest(
                    method: request.method, path: String(request.path.dropFirst("/ui/api".count)), query: request.query,
                    body: request.body, headers: request.headers)
            }
            self.body = []
            self.handler(request, respond)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.requestDeadline?.cancel()
        // A client gone mid-upload: what it sent is dropped.
        self.upload?.abort()
        self.upload = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("control connection ended", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    private static func tooLarge(_ limit: Int) -> ControlResponse {
        .error(413, limit == 0 ? "this path takes no request body" : "request body exceeds \(limit) bytes")
    }

    /// A request whose announced body is over the path's limit is refused before any of it arrives.
    private func refuseAnnouncedBodyOverLimit(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard self.refusal == nil, let length = head.headers.first(name: "Content-Length").flatMap({ Int($0) }),
            length > self.bodyLimit
        else { return }
        self.refuseAndClose(Self.tooLarge(self.bodyLimit), context: context)
    }

    /// Answers at once and ends the connection: the rest of an oversized body is never read, nor waited for.
    private func refuseAndClose(_ response: ControlResponse, context: ChannelHandlerContext) {
        self.isClosing = true
        self.head = nil
        self.body = []
        Self.write(response, keepAlive: false, to: context.channel)
    }

    /// The browser view: its page (`GET /ui`) and sign-in (`POST /ui/session`, which checks the one-time code) are
    /// open; its API (`/ui/api/…`, the control API below that prefix) needs a live session cookie, and a request
    /// that changes anything also the session's CSRF token in `X-CSRF-Token`.
    private static func browserRefusal(_ head: HTTPRequestHead, path: Substring, browser: BrowserSessions) -> ControlResponse? {
        if ["/ui", "/ui/", "/ui/app.js", "/ui/app.css", "/ui/session"].contains(path) { return nil }
        guard path.hasPrefix("/ui/api/") else { return .error(404, "no such page: \(path)") }
        guard let session = browser.session(cookieHeader: head.headers.first(name: "Cookie")) else {
            return .error(401, "not signed in (or the session ended): run 'agentmesh ui' for a new sign-in link")
        }
        if head.method != .GET && head.method != .HEAD,
            !BrowserSessions.matches(head.headers.first(name: "X-CSRF-Token"), session.csrf)
        {
            return .error(403, "a request that changes something must carry the session's X-CSRF-Token")
        }
        return nil
    }

    /// Compares in time independent of where the first difference is, so the token cannot be guessed byte by byte.
    private func isAuthorized(_ head: HTTPRequestHead) -> Bool {
        guard let token = self.bearerToken else { return true }
        let expected = Array(("Bearer " + token).utf8)
        let given = Array((head.headers.first(name: "Authorization") ?? "").utf8)
        guard given.count == expected.count else { return false }
        return zip(given, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    private static func request(_ head: HTTPRequestHead, body: [UInt8]) -> ControlRequest {
        let components = URLComponents(string: head.uri)
        var query: [String: String] = [:]
        for item in components?.queryItems ?? [] { query[item.name] = item.value ?? "" }
        var headers: [String: String] = [:]
        for (name, value) in head.headers { headers[name.lowercased()] = value }
        return ControlRequest(
            method: head.method.rawValue, path: components?.path ?? head.uri, query: query, body: body, headers: headers)
    }

    /// A connection that is not kept alive closes only once the kernel has every byte of the answer: closing
    /// right after the write would drop whatever the socket had not yet taken (a long task list).
    private static func write(_ response: ControlResponse, keepAlive: Bool, to channel: any Channel) {
        if let stream = response.stream { return Self.stream(response, start: stream, to: channel) }
        if let file = response.file { return Self.send(file, response, keepAlive: keepAlive, to: channel) }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        for header in response.headers { headers.add(name: header.name, value: header.value) }
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        channel.write(HTTPServerResponsePart.head(head), promise: nil)
        channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: response.body))), promise: nil)
        let written = channel.writeAndFlush(HTTPServerResponsePart.end(nil))
        if !keepAlive { written.whenComplete { _ in channel.close(promise: nil) } }
    }

    /// A file as the body, with `sendfile`: a gigabyte artifact never passes through the node's memory.
    private static func send(_ file: (path: String, size: UInt64), _ response: ControlResponse, keepAlive: Bool, to channel: any Channel) {
        let handle: NIOFileHandle
        do {
            handle = try NIOFileHandle(_deprecatedPath: file.path)
        } catch {
            return Self.write(.error(404, "the artifact is gone from this node"), keepAlive: keepAlive, to: channel)
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(file.size)")
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)), promise: nil)
        let region = FileRegion(fileHandle: handle, readerIndex: 0, endIndex: Int(file.size))
        channel.write(HTTPServerResponsePart.body(.fileRegion(region)), promise: nil)
        channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in
            try? handle.close()
            if !keepAlive { channel.close(promise: nil) }
        }
    }

    /// A body written over time, chunked, until the node finishes it or the client goes away; the connection closes
    /// at its end. Runs on the channel's loop, which is the node's.
    private static func stream(
        _ response: ControlResponse, start: @Sendable (ControlStreamSink) -> Void, to channel: any Channel
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Transfer-Encoding", value: "chunked")
        headers.add(name: "Connection", value: "close")
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        channel.writeAndFlush(HTTPServerResponsePart.head(head), promise: nil)
        let sink = ControlStreamSink(
            write: { bytes in
                channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: bytes))), promise: nil)
            },
            end: {
                channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
            })
        channel.closeFuture.whenComplete { _ in sink.closed() }
        start(sink)
    }
}

@available(*, unavailable)
extension ControlHTTPHandler: Sendable {}

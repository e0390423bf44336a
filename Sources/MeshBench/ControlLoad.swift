import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Drives a running node through its control socket, as `nats bench` or `redis-benchmark` drive theirs: `concurrency`
/// persistent HTTP/1.1 connections, each with one request in flight, every request a task submitted with
/// `?wait=` so it answers when the task has run somewhere in the mesh and its result is back. Records every
/// request's latency.
public struct ControlLoad: Sendable {
    public struct Settings: Sendable {
        public var socketPath: String
        public var capability: String
        public var requests: Int
        public var concurrency: Int
        /// Bytes of input text in each task.
        public var payload: Int
        /// Stop after this long even if requests remain.
        public var duration: Duration?
        /// Requests run first and not measured (connections open, caches warm).
        public var warmup: Int

        public init(socketPath: String, capability: String, requests: Int, concurrency: Int, payload: Int,
                    duration: Duration?, warmup: Int) {
            self.socketPath = socketPath
            self.capability = capability
            self.requests = requests
            self.concurrency = concurrency
            self.payload = payload
            self.duration = duration
            self.warmup = warmup
        }
    }

    public struct Report: Sendable, Codable {
        public let requests: Int
        public let failures: Int
        public let concurrency: Int
        public let payloadBytes: Int
        public let seconds: Double
        public let requestsPerSecond: Double
        public let latencyMicroseconds: Percentiles
        /// The first failure, word for word.
        public let firstFailure: String?

        public init(
            requests: Int, failures: Int, concurrency: Int, payloadBytes: Int, seconds: Double,
            requestsPerSecond: Double, latencyMicroseconds: Percentiles, firstFailure: String?
        ) {
            self.requests = requests
            self.failures = failures
            self.concurrency = concurrency
            self.payloadBytes = payloadBytes
            self.seconds = seconds
            self.requestsPerSecond = requestsPerSecond
            self.latencyMicroseconds = latencyMicroseconds
            self.firstFailure = firstFailure
        }
    }

    public struct Percentiles: Sendable, Codable {
        public let p50: Double
        public let p90: Double
        public let p99: Double
        public let max: Double
        public let mean: Double

        /// Exact percentiles of the samples (nearest rank).
        public init(_ samples: [Duration]) {
            let sorted = samples.map { Double($0.components.attoseconds) / 1e12 + Double($0.components.seconds) * 1e6 }.sorted()
            func rank(_ fraction: Double) -> Double {
                sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((fraction * Double(sorted.count)).rounded(.up)) - 1)]
            }
            self.p50 = rank(0.5)
            self.p90 = rank(0.9)
            self.p99 = rank(0.99)
            self.max = sorted.last ?? 0
            self.mean = sorted.isEmpty ? 0 : sorted.reduce(0, +) / Double(sorted.count)
        }
    }

    /// Counts shared by the connections, read by the progress line.
    public final class Progress: Sendable {
        private let state = Mutex((issued: 0, done: 0, failures: 0))
        public init() {}
        public var done: Int { self.state.withLock { $0.done } }
        public var failures: Int { self.state.withLock { $0.failures } }

        func record(failed: Bool) {
            self.state.withLock { state in
                state.done += 1
                if failed { state.failures += 1 }
            }
        }

        /// Claims the next request, if fewer than `limit` were claimed.
        func claim(limit: Int) -> Bool {
            self.state.withLock { state in
                guard state.issued < limit else { return false }
                state.issued += 1
                return true
            }
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    let settings: Settings

    public init(_ settings: Settings) { self.settings = settings }

    public func run(progress: Progress) async throws -> Report {
        let settings = self.settings
        let body = Self.body(capability: settings.capability, payload: settings.payload)
        let connections = try await withThrowingTaskGroup(of: Connection.self) { group in
            for _ in 0..<settings.concurrency {
                group.addTask { try await Connection.open(settings.socketPath) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        // Warm-up, spread over the connections and not measured.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, connection) in connections.enumerated() {
                let share = settings.warmup / connections.count + (index < settings.warmup % connections.count ? 1 : 0)
                group.addTask { for _ in 0..<share { _ = try await connection.submit(body) } }
            }
            try await group.waitForAll()
        }
        let deadline = settings.duration.map { ContinuousClock.now + $0 }
        let started = ContinuousClock.now
        let results = try await withThrowingTaskGroup(of: ([Duration], String?).self) { group in
            for connection in connections {
                group.addTask {
                    var samples: [Duration] = []
                    var firstFailure: String?
                    while progress.claim(limit: settings.requests) {
                        if let deadline, ContinuousClock.now >= deadline { break }
                        let sent = ContinuousClock.now
                        let failure = try await connection.submit(body)
                        samples.append(ContinuousClock.now - sent)
                        progress.record(failed: failure != nil)
                        if firstFailure == nil { firstFailure = failure }
                    }
                    return (samples, firstFailure)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let elapsed = ContinuousClock.now - started
        for connection in connections { await connection.close() }
        let samples = results.flatMap(\.0)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return Report(
            requests: samples.count, failures: progress.failures, concurrency: settings.concurrency,
            payloadBytes: settings.payload, seconds: seconds,
            requestsPerSecond: seconds > 0 ? Double(samples.count) / seconds : 0,
            latencyMicroseconds: Percentiles(samples), firstFailure: results.compactMap(\.1).first)
    }

    static func body(capability: String, payload: Int) -> [UInt8] {
        let text = String(repeating: "x", count: payload)
        return Array("{\"capability\":\"\(capability)\",\"input\":\"\(text)\",\"timeout_seconds\":60,\"max_attempts\":5}".utf8)
    }

    /// One persistent connection to the control socket, used by one task at a time.
    final class Connection: @unchecked Sendable {
        let channel: NIOAsyncChannel<NIOHTTPClientResponseFull, HTTPClientRequestPart>
        private var responses: NIOAsyncChannelInboundStream<NIOHTTPClientResponseFull>.AsyncIterator

        init(_ channel: NIOAsyncChannel<NIOHTTPClientResponseFull, HTTPClientRequestPart>) {
            self.channel = channel
            self.responses = channel.inbound.makeAsyncIterator()
        }

        static func open(_ path: String) async throws -> Connection {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: path) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(NIOHTTPClientResponseAggregator(maxContentLength: 64 << 20))
                        return try NIOAsyncChannel<NIOHTTPClientResponseFull, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel)
                    }
                }
            return Connection(channel)
        }

        /// Submits one task and waits for its end; returns why it failed, or nil.
        func submit(_ body: [UInt8]) async throws -> String? {
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/tasks?wait=60")
            head.headers.add(name: "Host", value: "agentmesh")
            head.headers.add(name: "Content-Type", value: "application/json")
            head.headers.add(name: "Content-Length", value: "\(body.count)")
            try await self.channel.outbound.write(contentsOf: [
                .head(head), .body(.byteBuffer(ByteBuffer(bytes: body))), .end(nil),
            ])
            guard let response = try await self.responses.next() else {
                throw Failure(description: "the node closed the control connection")
            }
            let text = response.body.map { String(buffer: $0) } ?? ""
            guard response.head.status == .ok, text.contains("\"completed\"") else {
                return "HTTP \(response.head.status.code): \(text.prefix(300))"
            }
            return nil
        }

        func close() async {
            self.channel.outbound.finish()
            try? await self.channel.channel.close()
        }
    }
}

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
        // Every connection opens and warms up (its share of `warmup`, not measured); the measured run starts when the
        // last one is ready, on all of them at once.
        let ready = StartLine(count: settings.concurrency)
        let results = try await withThrowingTaskGroup(of: ([Duration], String?).self) { group in
            for index in 0..<settings.concurrency {
                let share = settings.warmup / settings.concurrency + (index < settings.warmup % settings.concurrency ? 1 : 0)
                group.addTask {
                    var arrived = false
                    // A connection that fails before the start line still counts there, so the others are not held.
                    defer { if !arrived { ready.leave() } }
                    return try await Self.connect(settings.socketPath).executeThenClose { inbound, outbound in
                        var exchange = Exchange(responses: inbound.makeAsyncIterator(), requests: outbound)
                        for _ in 0..<share { _ = try await exchange.submit(body) }
                        arrived = true
                        let start = await ready.arrive()
                        let deadline = settings.duration.map { start + $0 }
                        var samples: [Duration] = []
                        var firstFailure: String?
                        while progress.claim(limit: settings.requests) {
                            if let deadline, ContinuousClock.now >= deadline { break }
                            let sent = ContinuousClock.now
                            let failure = try await exchange.submit(body)
                            samples.append(ContinuousClock.now - sent)
                            progress.record(failed: failure != nil)
                            if firstFailure == nil { firstFailure = failure }
                        }
                        return (samples, firstFailure)
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let elapsed = ContinuousClock.now - (ready.started ?? ContinuousClock.now)
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

    typealias Channel = NIOAsyncChannel<NIOHTTPClientResponseFull, HTTPClientRequestPart>

    /// One persistent connection to the control socket.
    static func connect(_ path: String) async throws -> Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(NIOHTTPClientResponseAggregator(maxContentLength: 64 << 20))
                    return try Channel(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// Requests on one connection, one at a time.
    struct Exchange {
        var responses: NIOAsyncChannelInboundStream<NIOHTTPClientResponseFull>.AsyncIterator
        let requests: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>

        /// Submits one task and waits for its end; returns why it failed, or nil.
        mutating func submit(_ body: [UInt8]) async throws -> String? {
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/tasks?wait=60")
            head.headers.add(name: "Host", value: "agentmesh")
            head.headers.add(name: "Content-Type", value: "application/json")
            head.headers.add(name: "Content-Length", value: "\(body.count)")
            try await self.requests.write(contentsOf: [.head(head), .body(.byteBuffer(ByteBuffer(bytes: body))), .end(nil)])
            guard let response = try await self.responses.next() else {
                throw Failure(description: "the node closed the control connection")
            }
            let text = response.body.map { String(buffer: $0) } ?? ""
            guard response.head.status == .ok, text.contains("\"completed\"") else {
                return "HTTP \(response.head.status.code): \(text.prefix(300))"
            }
            return nil
        }
    }

    /// Holds every connection until the last one arrives, then lets them all go at once and notes when.
    final class StartLine: Sendable {
        private let state: Mutex<(waiting: Int, started: ContinuousClock.Instant?, parked: [CheckedContinuation<ContinuousClock.Instant, Never>])>

        init(count: Int) { self.state = Mutex((count, nil, [])) }

        var started: ContinuousClock.Instant? { self.state.withLock { $0.started } }

        /// Returns the start time once every connection has arrived (or left).
        func arrive() async -> ContinuousClock.Instant {
            await withCheckedContinuation { continuation in
                self.count(parking: continuation)
            }
        }

        /// A connection that will not arrive.
        func leave() { self.count(parking: nil) }

        private func count(parking continuation: CheckedContinuation<ContinuousClock.Instant, Never>?) {
            let released: (ContinuousClock.Instant, [CheckedContinuation<ContinuousClock.Instant, Never>])? = self.state.withLock { state in
                state.waiting -= 1
                if let continuation { state.parked.append(continuation) }
                guard state.waiting == 0 else { return nil }
                let now = ContinuousClock.now
                state.started = now
                defer { state.parked = [] }
                return (now, state.parked)
            }
            if let (start, parked) = released { for waiting in parked { waiting.resume(returning: start) } }
        }
    }
}

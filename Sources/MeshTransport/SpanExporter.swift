import Foundation
import Logging
import Synchronization

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// One finished span, as OTLP describes it.
struct Span: Sendable {
    enum Kind: Int, Sendable {
        case server = 2
        case client = 3
        case `internal` = 1
    }

    let traceID: String
    let spanID: String
    let parentID: String?
    let name: String
    let kind: Kind
    let start: Date
    let end: Date
    let attributes: [(String, String)]
    /// Nil: ok; otherwise the error's sentence.
    let error: String?
}

/// Exports spans over OTLP/HTTP with the JSON encoding (`POST ENDPOINT/v1/traces`), in batches of up to 256 or
/// every second, so tracing costs the task path one append under a lock. A collector that is down loses spans (they
/// are counted and logged), never tasks. Written against the OTLP specification rather than swift-otel, whose
/// build alone takes about 7 minutes here.
final class SpanExporter: Sendable {
    static let batchSize = 256
    /// Spans waiting beyond this are dropped (a collector that is down must not grow the node).
    static let maximumBuffered = 8_192

    let url: URL
    private let resource: [(String, String)]
    private let logger: Logger
    private let state = Mutex<(spans: [Span], isFlushScheduled: Bool, dropped: Int)>(([], false, 0))

    init?(endpoint: String, serviceName: String, instance: String, logger: Logger) {
        guard let url = URL(string: endpoint.hasSuffix("/v1/traces") ? endpoint : endpoint.trimmingSuffix("/") + "/v1/traces"),
            url.scheme == "http" || url.scheme == "https"
        else { return nil }
        self.url = url
        self.resource = [("service.name", serviceName), ("service.instance.id", instance)]
        self.logger = logger
    }

    func export(_ span: Span) {
        let (flushNow, schedule) = self.state.withLock { state -> (Bool, Bool) in
            guard state.spans.count < Self.maximumBuffered else {
                state.dropped += 1
                return (false, false)
            }
            state.spans.append(span)
            if state.spans.count >= Self.batchSize { return (true, false) }
            defer { state.isFlushScheduled = true }
            return (false, !state.isFlushScheduled)
        }
        if flushNow {
            Task.detached { await self.flush() }
        } else if schedule {
            Task.detached {
                try? await Task.sleep(for: .seconds(1))
                await self.flush()
            }
        }
    }

    /// Sends what is buffered (at shutdown too).
    func flush() async {
        let (spans, dropped) = self.state.withLock { state -> ([Span], Int) in
            defer {
                state.spans = []
                state.isFlushScheduled = false
                state.dropped = 0
            }
            return (state.spans, state.dropped)
        }
        if dropped > 0 { self.logger.warning("spans dropped: the OTLP endpoint is behind", metadata: ["spans": "\(dropped)"]) }
        guard !spans.isEmpty else { return }
        var request = URLRequest(url: self.url, timeoutInterval: 10)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = self.body(spans)
        do {
            let (_, response) = try await URLSession.shared.data(for: request)
            let status = (response as? HTTPURLResponse)?.statusCode ?? 0
            if !(200..<300).contains(status) {
                self.logger.warning("the OTLP endpoint refused spans", metadata: ["url": "\(self.url)", "status": "\(status)", "spans": "\(spans.count)"])
            }
        } catch {
            self.logger.warning("cannot export spans", metadata: ["url": "\(self.url)", "error": "\(error.localizedDescription)", "spans": "\(spans.count)"])
        }
    }

    /// `ExportTraceServiceRequest` in OTLP's JSON encoding (ids as hex, times as nanosecond strings).
    func body(_ spans: [Span]) -> Data {
        func attributes(_ pairs: [(String, String)]) -> [[String: Any]] {
            pairs.map { ["key": $0.0, "value": ["stringValue": $0.1]] }
        }
        func nanoseconds(_ date: Date) -> String { String(UInt64(max(0, date.timeIntervalSince1970) * 1e9)) }
        let encoded: [[String: Any]] = spans.map { span in
            var object: [String: Any] = [
                "traceId": span.traceID, "spanId": span.spanID, "name": span.name, "kind": span.kind.rawValue,
                "startTimeUnixNano": nanoseconds(span.start), "endTimeUnixNano": nanoseconds(span.end),
                "attributes": attributes(span.attributes),
                "status": span.error.map { ["code": 2, "message": $0] as [String: Any] } ?? ["code": 1],
            ]
            if let parent = span.parentID { object["parentSpanId"] = parent }
            return object
        }
        let document: [String: Any] = [
            "resourceSpans": [[
                "resource": ["attributes": attributes(self.resource)],
                "scopeSpans": [["scope": ["name": "agentmesh"], "spans": encoded]],
            ]],
        ]
        return (try? JSONSerialization.data(withJSONObject: document, options: [.sortedKeys])) ?? Data()
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String {
        self.hasSuffix(suffix) ? String(self.dropLast(suffix.count)) : self
    }
}

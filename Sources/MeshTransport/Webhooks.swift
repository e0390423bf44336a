import AsyncHTTPClient
import Foundation
import Logging
import MeshControl
import MeshCore
import MeshCrypto
import MeshStorage
import NIOCore
import NIOHTTP1

/// Where a task's or a workflow's webhook goes, and whether every state change is sent or only the end.
struct WebhookTarget: Sendable, Equatable, Codable {
    let url: String
    let allStates: Bool
}

/// What a webhook reports on.
enum WebhookSubject: Sendable, Hashable, Codable {
    case task(TaskID)
    case workflow(WorkflowID)

    /// The id its stored target is kept under: the task's or the run's.
    var documentID: TaskStore.DocumentID {
        switch self {
        case .task(let id): return .init(id)
        case .workflow(let id): return .init(id)
        }
    }

    var kind: String {
        switch self {
        case .task: return "task"
        case .workflow: return "workflow"
        }
    }
}

/// One POST to make: its body is signed when it is sent. Kept in the store until it is delivered or given up.
struct WebhookDelivery: Sendable, Codable {
    let id: TaskID
    let url: String
    /// `task.completed`, `workflow.running`, …
    let event: String
    let body: [UInt8]
    var attempts = 0
    /// Wall-clock milliseconds of the next try.
    var nextAt: Int64
}

/// The webhooks of one node: registrations, deliveries waiting for their next try, and the last state sent.
struct WebhookBook {
    static let maximumAttempts = 12
    static let targetDocument = "callback"
    static let deliveryDocument = "delivery"

    var targets: [WebhookSubject: WebhookTarget] = [:]
    var lastState: [WebhookSubject: String] = [:]
    var pending: [TaskID: WebhookDelivery] = [:]
    var inFlight: Set<TaskID> = []
    /// The key that signs deliveries (`DIR/webhook.secret`), read when the node binds.
    var secret: SecretBytes?

    mutating func register(_ target: WebhookTarget, for subject: WebhookSubject) { self.targets[subject] = target }

    /// 1 s, 2 s, 4 s … up to 5 min, less up to a quarter as jitter.
    static func delay(afterAttempts attempts: Int) -> Int64 {
        let base = min(300_000, 1_000 << min(attempts - 1, 20))
        return Int64(base - Int.random(in: 0...(base / 4)))
    }
}

/// Callback targets a node refuses unless `--allow-private-callbacks`: loopback, private, link-local, shared and
/// multicast addresses, so a client cannot make the node POST into the network it sits in (SSRF).
enum CallbackAddress {
    /// Why `url` may not be a callback target, judged from the URL alone (a host name is checked once resolved).
    static func refusal(_ url: String, allowPrivate: Bool) -> String? {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
        else { return "callback must be an http:// or https:// URL, not '\(url)'" }
        guard !allowPrivate else { return nil }
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")).lowercased()
        if bare == "localhost" || bare.hasSuffix(".localhost") || Self.isPrivate(bare) == true {
            return "callback \(url) points into a private, loopback or link-local network; a node refuses that unless run with --allow-private-callbacks"
        }
        return nil
    }

    /// Where a delivery connects: the URL to call (for `http:`, the host replaced by the address that was checked,
    /// so a name that resolves differently a moment later (DNS rebinding) cannot send it elsewhere; for `https:`
    /// the name, whose certificate an address it rebinds to cannot present) and the `Host` header to send.
    struct Destination: Equatable {
        let url: String
        let host: String?
    }

    /// The same, for every address the host resolves to (at delivery time, off the node's loop); where to connect.
    static func resolve(_ url: String, allowPrivate: Bool) -> Result<Destination, Refusal> {
        if let refusal = self.refusal(url, allowPrivate: allowPrivate) { return .failure(Refusal(refusal)) }
        guard !allowPrivate, var components = URLComponents(string: url), let host = components.host else {
            return .success(Destination(url: url, host: nil))
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0 else { return .failure(Refusal("callback host \(host) does not resolve")) }
        defer { freeaddrinfo(list) }
        var addresses: [String] = []
        var cursor = list
        while let entry = cursor {
            var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(entry.pointee.ai_addr, entry.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 {
                let address = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if Self.isPrivate(address) != false {
                    return .failure(Refusal(
                        "callback host \(host) resolves to \(address), a private, loopback or link-local address; a node refuses that unless run with --allow-private-callbacks"))
                }
                addresses.append(address)
            }
            cursor = entry.pointee.ai_next
        }
        guard let address = addresses.first else { return .failure(Refusal("callback host \(host) does not resolve")) }
        guard components.scheme?.lowercased() == "http", Self.isPrivate(host) == nil else {
            return .success(Destination(url: url, host: nil))
        }
        let hostHeader = components.port.map { "\(host):\($0)" } ?? host
        components.host = address.contains(":") ? "[\(address)]" : address
        return .success(Destination(url: components.string ?? url, host: hostHeader))
    }

    struct Refusal: Error, Equatable {
        let reason: String
        init(_ reason: String) { self.reason = reason }
    }

    /// True for an address in a range a callback may not reach, false for a public one, nil if not an IP address.
    static func isPrivate(_ text: String) -> Bool? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return Self.isPrivateV4(UInt32(bigEndian: v4.s_addr))
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
            return Self.isPrivateV4(bytes[12..<16].reduce(0) { $0 << 8 | UInt32($1) })  // ::ffff:a.b.c.d
        }
        if bytes[0..<15].allSatisfy({ $0 == 0 }) { return true }  // :: and ::1
        if bytes[0] & 0xFE == 0xFC { return true }  // fc00::/7 unique local
        if bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80 { return true }  // fe80::/10 link-local
        if bytes[0] == 0xFF { return true }  // multicast
        return false
    }

    private static func isPrivateV4(_ address: UInt32) -> Bool {
        let ranges: [(UInt32, Int)] = [
            (0x0000_0000, 8), (0x0A00_0000, 8), (0x6440_0000, 10), (0x7F00_0000, 8), (0xA9FE_0000, 16),
            (0xAC10_0000, 12), (0xC0A8_0000, 16), (0xE000_0000, 4), (0xF000_0000, 4),
        ]
        return ranges.contains { network, bits in address >> (32 - bits) == network >> (32 - bits) }
    }
}

/// Webhooks: a task's or workflow's end (and, if asked, every state change) POSTed to the client's URL, signed with
/// the node's secret, retried with exponential back-off, kept in the store until delivered.
extension MeshNode {
    /// Checks a callback URL a client gave; nil when there is none.
    func webhookTarget(_ url: String?, events: String?) -> Result<WebhookTarget?, WebhookRefusal> {
        guard let url else {
            return events == nil ? .success(nil) : .failure(WebhookRefusal(description: "callback_events needs a callback"))
        }
        if let refusal = CallbackAddress.refusal(url, allowPrivate: self.settings.allowPrivateCallbacks) {
            return .failure(WebhookRefusal(description: refusal))
        }
        switch events {
        case nil, "final": return .success(WebhookTarget(url: url, allStates: false))
        case "all": return .success(WebhookTarget(url: url, allStates: true))
        case let other?: return .failure(WebhookRefusal(description: "callback_events is final or all, not '\(other)'"))
        }
    }

    struct WebhookRefusal: Error, CustomStringConvertible {
        let description: String
    }

    /// Registers (and stores) a target for a subject.
    func registerWebhook(_ target: WebhookTarget, for subject: WebhookSubject) {
        self.webhooks.register(target, for: subject)
        if let body = try? JSONEncoder().encode(StoredTarget(subject: subject, target: target)) {
            self.taskStore?.enqueue([.document(kind: WebhookBook.targetDocument, id: subject.documentID, body: Array(body))])
        }
    }

    private struct StoredTarget: Codable {
        let subject: WebhookSubject
        let target: WebhookTarget
    }

    /// A subject's state changed: with a target, queue a delivery of its document (every change, or only the end).
    func webhookStateChanged(_ subject: WebhookSubject, state: String, isFinal: Bool, document: () -> [UInt8]?) {
        guard let target = self.webhooks.targets[subject], self.webhooks.lastState[subject] != state else { return }
        self.webhooks.lastState[subject] = state
        if target.allStates || isFinal, let body = document() {
            var generator = SystemRandomNumberGenerator()
            let delivery = WebhookDelivery(
                id: TaskID(using: &generator), url: target.url, event: "\(subject.kind).\(state)", body: body,
                nextAt: AuditLog.wallClockMilliseconds())
            self.webhooks.pending[delivery.id] = delivery
            self.storeDelivery(delivery)
            self.attemptDelivery(delivery.id)
        }
        if isFinal {
            self.webhooks.targets[subject] = nil
            self.webhooks.lastState[subject] = nil
            self.taskStore?.enqueue([.forgetDocument(kind: WebhookBook.targetDocument, id: subject.documentID)])
        }
    }

    private func storeDelivery(_ delivery: WebhookDelivery) {
        guard let body = try? JSONEncoder().encode(delivery) else { return }
        self.taskStore?.enqueue([.document(kind: WebhookBook.deliveryDocument, id: .init(delivery.id), body: Array(body))])
    }

    /// POSTs one delivery off the loop; its answer decides: done, retry later, or give up.
    private func attemptDelivery(_ id: TaskID) {
        guard var delivery = self.webhooks.pending[id], !self.webhooks.inFlight.contains(id), self.isServing else { return }
        self.webhooks.inFlight.insert(id)
        delivery.attempts += 1
        self.webhooks.pending[id] = delivery
        let secret = self.webhooks.secret
        let allowPrivate = self.settings.allowPrivateCallbacks
        let loop = self.context.loop
        Task.detached {
            let result = await Self.post(delivery, secret: secret, allowPrivate: allowPrivate)
            loop.execute { self.assumeIsolated { $0.deliveryEnded(id, result) } }
        }
    }

    /// The HMAC key of a `webhook.secret`: a Standard Webhooks secret (`whsec_` and base64) is the key it encodes;
    /// a secret written before nodes wrote that form (64 hex digits) is used as the text it is, so a receiver
    /// verifies it as `whsec_` followed by that text in base64. nil for a `whsec_` secret that is not base64.
    static func webhookKey(fromSecret secret: String) -> [UInt8]? {
        guard secret.hasPrefix("whsec_") else { return Array(secret.utf8) }
        var encoded = String(secret.dropFirst("whsec_".count))
        while encoded.utf8.count % 4 != 0 { encoded += "=" }
        guard let key = Data(base64Encoded: encoded), !key.isEmpty else { return nil }
        return Array(key)
    }

    enum DeliveryResult: Sendable {
        case delivered
        case retry(String)
        case refused(String)
    }

    private func deliveryEnded(_ id: TaskID, _ result: DeliveryResult) {
        self.webhooks.inFlight.remove(id)
        guard var delivery = self.webhooks.pending[id] else { return }
        switch result {
        case .delivered:
            self.webhooks.pending[id] = nil
            self.taskStore?.enqueue([.forgetDocument(kind: WebhookBook.deliveryDocument, id: .init(id))])
            self.context.logger.debug("webhook delivered", metadata: ["url": "\(delivery.url)", "event": "\(delivery.event)"])
        case .refused(let why),
            .retry(let why) where delivery.attempts >= WebhookBook.maximumAttempts:
            self.webhooks.pending[id] = nil
            self.taskStore?.enqueue([.forgetDocument(kind: WebhookBook.deliveryDocument, id: .init(id))])
            self.context.logger.warning("webhook given up", metadata: [
                "url": "\(delivery.url)", "event": "\(delivery.event)", "attempts": "\(delivery.attempts)", "why": "\(why)",
            ])
        case .retry(let why):
            let delay = WebhookBook.delay(afterAttempts: delivery.attempts)
            delivery.nextAt = AuditLog.wallClockMilliseconds() + delay
            self.webhooks.pending[id] = delivery
            self.storeDelivery(delivery)
            self.context.logger.info("webhook will be retried", metadata: [
                "url": "\(delivery.url)", "attempt": "\(delivery.attempts)", "in": "\(delay) ms", "why": "\(why)",
            ])
            self.scheduleDelivery(id, in: .milliseconds(delay))
        }
    }

    private func scheduleDelivery(_ id: TaskID, in delay: Duration) {
        self.context.loop.scheduleTask(in: TimeAmount(delay)) { self.assumeIsolated { $0.attemptDelivery(id) } }
    }

    /// After a restart: targets and undelivered deliveries come back from the store.
    func restoreWebhooks() {
        for (_, stored) in self.restoredDocuments(WebhookBook.targetDocument, as: StoredTarget.self, what: "webhook target") {
            self.webhooks.register(stored.target, for: stored.subject)
        }
        let now = AuditLog.wallClockMilliseconds()
        for (_, delivery) in self.restoredDocuments(WebhookBook.deliveryDocument, as: WebhookDelivery.self, what: "webhook delivery") {
            self.webhooks.pending[delivery.id] = delivery
            self.scheduleDelivery(delivery.id, in: .milliseconds(max(0, delivery.nextAt - now)))
        }
    }

    /// Signed as Standard Webhooks says: `webhook-id` (the same on every retry), `webhook-timestamp` (Unix seconds)
    /// and `webhook-signature: v1,BASE64`, the HMAC-SHA256 of `ID.TIMESTAMP.BODY` keyed by the node's
    /// `webhook.secret`; `X-AgentMesh-Event` names the event (`task.completed`, …).
    private static func post(_ delivery: WebhookDelivery, secret: SecretBytes?, allowPrivate: Bool) async -> DeliveryResult {
        let destination: CallbackAddress.Destination
        switch CallbackAddress.resolve(delivery.url, allowPrivate: allowPrivate) {
        case .failure(let refusal): return .refused(refusal.reason)
        case .success(let found): destination = found
        }
        guard let secret else { return .refused("no secret") }
        let timestamp = String(Int(Date().timeIntervalSince1970))
        let id = delivery.id.description
        let signature = HMACSHA256.authenticate(key: secret, Array("\(id).\(timestamp).".utf8), delivery.body).exportedCopy()
        var request = HTTPClientRequest(url: destination.url)
        request.method = .POST
        if let host = destination.host { request.headers.replaceOrAdd(name: "Host", value: host) }
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "webhook-id", value: id)
        request.headers.add(name: "webhook-timestamp", value: timestamp)
        request.headers.add(name: "webhook-signature", value: "v1," + Data(signature).base64EncodedString())
        request.headers.add(name: "X-AgentMesh-Event", value: delivery.event)
        request.body = .bytes(delivery.body)
        do {
            // Only the status counts: the answer's body is never read (dropping it ends the connection), so a
            // receiver answering a gigabyte costs nothing.
            let status = Int(try await Self.client.execute(request, timeout: .seconds(10)).status.code)
            if (200..<300).contains(status) { return .delivered }
            if (300..<400).contains(status) { return .refused("HTTP \(status): a webhook does not follow redirects") }
            if (400..<500).contains(status) && status != 408 && status != 429 { return .refused("HTTP \(status)") }
            return .retry("HTTP \(status)")
        } catch {
            return .retry("\(error)")
        }
    }

    /// One client for every delivery: it never follows a redirect (a receiver answering 302 sent the signed
    /// request wherever it pointed, past the private-address check).
    private static let client = HTTPClient(
        eventLoopGroup: HTTPClient.defaultEventLoopGroup,
        configuration: HTTPClient.Configuration(
            redirectConfiguration: .disallow, timeout: .init(connect: .seconds(10), read: .seconds(10))))
}

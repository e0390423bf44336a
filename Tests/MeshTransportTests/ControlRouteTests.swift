import MeshControl
import MeshCore
import Testing

@testable import MeshTransport

/// Every control request is routed, or refused with the status and sentence a client sees, from the request alone.
@Suite struct ControlRouteTests {
    static func route(
        _ method: String, _ path: String, _ query: [String: String] = [:], body: [UInt8] = [], headers: [String: String] = [:]
    ) -> ControlRoute {
        ControlRoute(ControlRequest(method: method, path: path, query: query, body: body, headers: headers))
    }

    @Test func answersContextsEventsAndWorkflowsAreRouted() {
        #expect(Self.route("POST", "/v1/tasks/\(Self.id)/input", body: [1]) == .reply(.id(Self.id), body: [1]))
        #expect(Self.route("GET", "/v1/tasks", ["context": "chat-1"]) == .listTasks(TaskFilter(context: "chat-1")))
        #expect(Self.route("GET", "/v1/tasks", ["context": "has space"])
            == .refused(status: 400, message: "context must be 1 to 128 printable ASCII characters without spaces"))
        #expect(Self.route("GET", "/v1/events", ["topic": "orders", "after": "5", "wait": "1"])
            == .events(topic: "orders", after: 5, limit: 1_000, wait: .seconds(1)))
        #expect(Self.route("DELETE", "/v1/events")
            == .methodNotAllowed(allow: ["GET", "POST"], message: "DELETE is not allowed on /v1/events; it takes GET, POST"))
        #expect(Self.route("GET", "/v1/workflows/\(Self.id)", ["version": "3", "wait": "10"])
            == .workflow(.id(Self.id), version: 3, wait: .seconds(10)))
        #expect(Self.route("POST", "/v1/workflows/\(Self.id)/cancel") == .cancelWorkflow(.id(Self.id)))
        #expect(Self.route("GET", "/metrics") == .metrics)
        #expect(Self.route("GET", "/v1/stats") == .stats)
        #expect(Self.route("POST", "/metrics") == .methodNotAllowed(allow: ["GET"], message: "POST is not allowed on /metrics; it takes GET"))
    }

    /// A known path asked with a method it does not take is 405 with the methods it does take in `Allow` (RFC 9110
    /// §15.5.6); `/v1/tasks` and `/v1/workflows` answered 404, and no 405 had the header.
    @Test func aMethodAPathDoesNotTakeIsRefusedWithTheMethodsItDoes() {
        func allowed(_ method: String, _ path: String) -> [String]? {
            if case .methodNotAllowed(let allow, _) = Self.route(method, path) { return allow }
            return nil
        }
        #expect(allowed("DELETE", "/v1/tasks") == ["GET", "POST"])
        #expect(allowed("PUT", "/v1/workflows") == ["GET", "POST"])
        #expect(allowed("DELETE", "/v1/tasks/\(Self.id)") == ["GET"])
        #expect(allowed("GET", "/v1/tasks/\(Self.id)/cancel") == ["POST"])
        #expect(allowed("POST", "/v1/tasks/\(Self.id)/events") == ["GET"])
        #expect(allowed("GET", "/v1/workflows/\(Self.id)/cancel") == ["POST"])
        #expect(allowed("GET", "/a2a") == ["POST"])
        #expect(allowed("GET", "/v1/artifacts") == ["POST"])
        #expect(allowed("POST", "/ui") == ["GET"])
        #expect(allowed("GET", "/ui/session") == ["POST"])
        #expect(allowed("POST", "/openapi.yaml") == ["GET"])
        #expect(Self.route("GET", "/openapi.yaml") == .openAPIDocument)
        #expect(Self.route("GET", "/v1/tasks/\(Self.id)/nothing") == .refused(status: 404, message: "no such endpoint: GET /v1/tasks/\(Self.id)/nothing"))
    }

    /// `Last-Event-ID: banana` was refused alone but taken beside `?after=0`; both are checked, and the header wins.
    @Test func aLastEventIDIsCheckedBesideAfterAndWins() {
        let path = "/v1/tasks/\(Self.id)/events"
        #expect(Self.route("GET", path, ["after": "0"], headers: ["last-event-id": "banana"])
            == .refused(status: 400, message: "Last-Event-ID must be an event number, 0 or more"))
        #expect(Self.route("GET", path, ["after": "2"], headers: ["last-event-id": "5"])
            == .taskEvents(.id(Self.id), after: 5, wait: nil, stream: false))
    }

    @Test func artifactsTheBrowserViewAndTheAuditAreRouted() {
        let digest = [UInt8](repeating: 0xAB, count: 32)
        #expect(Self.route("GET", "/v1/artifacts/" + String(repeating: "AB", count: 32)) == .artifact(digest: digest))
        #expect(Self.route("GET", "/v1/artifacts/abc") == .refused(status: 400, message: "'abc' is not a SHA-256 (64 hex digits)"))
        #expect(Self.route("POST", "/v1/artifacts") == .refused(status: 411, message: "send the artifact's bytes with a Content-Length"))
        #expect(Self.route("DELETE", "/v1/artifacts/" + String(repeating: "ab", count: 32))
            == .methodNotAllowed(allow: ["GET"], message: "DELETE is not allowed on /v1/artifacts/" + String(repeating: "ab", count: 32) + "; it takes GET"))
        #expect(Self.route("GET", "/ui") == .uiAsset("index.html"))
        #expect(Self.route("GET", "/ui/app.js") == .uiAsset("app.js"))
        #expect(Self.route("GET", "/ui/secrets") == .refused(status: 404, message: "no such page: /ui/secrets"))
        #expect(Self.route("POST", "/ui/session", body: [1]) == .uiSession(body: [1]))
        #expect(Self.route("POST", "/v1/ui/login") == .uiLogin)
        #expect(Self.route("GET", "/v1/ui/login") == .methodNotAllowed(allow: ["POST"], message: "GET is not allowed on /v1/ui/login; it takes POST"))
        #expect(Self.route("GET", "/v1/ui/stream") == .uiStream)
        #expect(Self.route("GET", "/v1/audit", ["peer": "beta", "last": "5"]) == .audit(peer: "beta", last: 5))
        #expect(Self.route("GET", "/v1/audit", ["last": "0"]) == .refused(status: 400, message: "last must be 1 to 1000"))
    }

    @Test func progressEventsAreAPageOrAStreamResumingAfterTheLastSeen() {
        #expect(Self.route("GET", "/v1/tasks/\(Self.id)/events", ["after": "3", "wait": "30"])
            == .taskEvents(.id(Self.id), after: 3, wait: .seconds(30), stream: false))
        #expect(Self.route("GET", "/v1/tasks/\(Self.id)/events", headers: ["accept": "text/event-stream", "last-event-id": "12"])
            == .taskEvents(.id(Self.id), after: 12, wait: nil, stream: true))
        #expect(Self.route("GET", "/v1/tasks/\(Self.id)/events", headers: ["last-event-id": "x"])
            == .refused(status: 400, message: "Last-Event-ID must be an event number, 0 or more"))
    }

    static let id = TaskID(high: 0xABCD, low: 0x1234)

    @Test func everyEndpointIsRouted() {
        #expect(Self.route("GET", "/v1/members") == .members)
        #expect(Self.route("GET", "/v1/node") == .node)
        #expect(Self.route("GET", "/v1/limits") == .limits)
        #expect(Self.route("POST", "/v1/leave") == .leave(drain: nil))
        #expect(Self.route("POST", "/v1/leave", ["drain": "30"]) == .leave(drain: .seconds(30)))
        #expect(Self.route("POST", "/v1/leave", ["drain": "never"]) == .refused(status: 400, message: "drain must be a number of seconds from 0 to 86400"))
        #expect(Self.route("POST", "/v1/tasks", body: [1]) == .submit(body: [1], wait: nil))
        #expect(Self.route("POST", "/v1/tasks", ["wait": "2.5"]) == .submit(body: [], wait: .milliseconds(2_500)))
        #expect(Self.route("GET", "/v1/health") == .health)
        #expect(Self.route("GET", "/v1/executing") == .executing)
        #expect(Self.route("GET", "/v1/tasks") == .listTasks(TaskFilter()))
        #expect(Self.route("GET", "/v1/tasks", ["state": "running"]) == .listTasks(TaskFilter(state: .running)))
        #expect(Self.route("GET", "/v1/tasks", ["capability": "echo", "since": "90", "limit": "5"])
            == .listTasks(TaskFilter(capability: "echo", since: .seconds(90), limit: 5)))
        #expect(Self.route("GET", "/v1/tasks/\(Self.id)") == .task(.id(Self.id), wait: nil))
        #expect(Self.route("GET", "/v1/tasks/\(Self.id)", ["wait": "0"]) == .task(.id(Self.id), wait: .zero))
        #expect(Self.route("POST", "/v1/tasks/\(Self.id)/cancel") == .cancel(.id(Self.id)))
        #expect(Self.route("GET", "/v1/tasks/ABCD12") == .task(.prefix("abcd12"), wait: nil), "a prefix, any case")
        #expect(Self.route("POST", "/v1/tasks/abcd/cancel") == .cancel(.prefix("abcd")))
    }

    @Test func malformedRequestsAreRefusedWithWhatIsWrong() {
        #expect(Self.route("GET", "/v1/nothing") == .refused(status: 404, message: "no such endpoint: /v1/nothing"))
        #expect(Self.route("GET", "/") == .refused(status: 404, message: "no such endpoint: /"))
        #expect(Self.route("GET", "/v2/members") == .refused(status: 404, message: "no such endpoint: /v2/members"))
        #expect(Self.route("DELETE", "/v1/members") == .methodNotAllowed(allow: ["GET"], message: "DELETE is not allowed on /v1/members; it takes GET"))
        #expect(Self.route("GET", "/v1/leave") == .methodNotAllowed(allow: ["POST"], message: "GET is not allowed on /v1/leave; it takes POST"))
        #expect(Self.route("GET", "/v1/tasks/xyz") == .refused(status: 400, message: TaskReference.mistake("xyz")))
        #expect(Self.route("GET", "/v1/tasks/abc") == .refused(status: 400, message: TaskReference.mistake("abc")), "too short")
        #expect(Self.route("POST", "/v1/tasks/xyz/cancel") == .refused(status: 400, message: TaskReference.mistake("xyz")))
        for (key, value) in [("limit", "0"), ("limit", "10001"), ("since", "-5"), ("since", "soon"), ("capability", "a b")] {
            guard case .refused(400, _) = Self.route("GET", "/v1/tasks", [key: value]) else {
                Issue.record("\(key)=\(value) is refused")
                continue
            }
        }
        #expect(Self.route("PUT", "/v1/tasks/\(Self.id)") == .methodNotAllowed(allow: ["GET"], message: "PUT is not allowed on /v1/tasks/\(Self.id); it takes GET"))
        for wait in ["-1", "3601", "soon", "nan"] {
            #expect(Self.route("POST", "/v1/tasks", ["wait": wait])
                == .refused(status: 400, message: "wait must be a number of seconds from 0 to 3600"), "\(wait)")
        }
        guard case .refused(400, let message) = Self.route("GET", "/v1/tasks", ["state": "dancing"]) else {
            Issue.record("an unknown state is refused")
            return
        }
        #expect(message.hasPrefix("unknown state 'dancing': use one of submitted"))
    }
}

/// Which callback targets a node refuses (SSRF), from the URL alone.
@Suite struct CallbackAddressTests {
    @Test func privateLoopbackLinkLocalAndMulticastAddressesAreRefused() {
        for address in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
                        "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "::", "fe80::1", "fd00::1", "ff02::1", "::ffff:10.0.0.1"] {
            #expect(CallbackAddress.isPrivate(address) == true, "\(address)")
        }
        for address in ["8.8.8.8", "172.32.0.1", "192.169.0.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            #expect(CallbackAddress.isPrivate(address) == false, "\(address)")
        }
        #expect(CallbackAddress.isPrivate("example.com") == nil, "a name is judged once resolved")
        #expect(CallbackAddress.refusal("http://localhost:8080/x", allowPrivate: false)?.contains("private, loopback") == true)
        #expect(CallbackAddress.refusal("http://[::1]/x", allowPrivate: false) != nil)
        #expect(CallbackAddress.refusal("ftp://example.com/x", allowPrivate: false)?.contains("http:// or https://") == true)
        #expect(CallbackAddress.refusal("https://hooks.example.com/x", allowPrivate: false) == nil)
        #expect(CallbackAddress.refusal("http://127.0.0.1/x", allowPrivate: true) == nil)
    }
}

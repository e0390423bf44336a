import Foundation
import MeshControl
import MeshCore
import MeshStorage
import MeshCrypto
import Logging
import NIOCore

/// The browser view: the page and its sign-in, the live stream it draws from, and the audit summary it shows. Its
/// other data are the control API's own documents, read through `/ui/api/…` with the session.
extension MeshNode {
    /// How often the live stream looks for changes.
    static let browserStreamInterval: Duration = .milliseconds(500)

    private static let securityHeaders: [(name: String, value: String)] = [
        ("Content-Security-Policy",
         "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
        ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"),
    ]

    /// `GET /ui`, `/ui/app.js`, `/ui/app.css`: the page, shipped inside the binary; it holds no data.
    func browserAsset(_ name: String) -> ControlResponse {
        let asset: (body: String, type: String)
        switch name {
        case "app.js": asset = (BrowserAssets.script, "text/javascript; charset=utf-8")
        case "app.css": asset = (BrowserAssets.style, "text/css; charset=utf-8")
        default: asset = (BrowserAssets.page, "text/html; charset=utf-8")
        }
        var response = ControlResponse(status: 200, body: Array(asset.body.utf8))
        response.contentType = asset.type
        response.headers = Self.securityHeaders
        return response
    }

    /// `POST /ui/session {"code": C}`: the code from a sign-in link, once, for a session cookie and a CSRF token.
    func browserSignIn(_ body: [UInt8]) -> ControlResponse {
        struct SignIn: Decodable { let code: String }
        guard let code = (try? JSONDecoder().decode(SignIn.self, from: Data(body)))?.code, let session = self.browser.sessions.redeem(code)
        else {
            return .error(401, "this sign-in link was used already or has expired: run 'agentmesh ui' for a new one")
        }
        self.context.logger.info("browser signed in")
        var response = ControlResponse.json(["csrf": session.csrf])
        response.headers = Self.securityHeaders + [("Set-Cookie", BrowserSessions.cookie(for: session))]
        return response
    }

    /// `POST /v1/ui/login`: a sign-in link for `agentmesh ui`. The code rides in the URL's fragment, which a browser
    /// never sends to a server.
    func browserLoginLink() -> ControlResponse {
        guard let http = self.settings.httpControl, let port = self.httpControlPort else {
            return .error(409, "the browser view is served on the --http listener: start the node with --http 127.0.0.1:PORT")
        }
        let host = ["0.0.0.0", "::", ""].contains(http.host) ? "127.0.0.1" : http.host
        let shown = host.contains(":") ? "[\(host)]" : host
        let code = self.browser.sessions.issueCode()
        return .json(["url": "http://\(shown):\(port)/ui#code=\(code)", "expires_in_seconds": "\(Int(BrowserSessions.codeLifetime.seconds))"])
    }

    /// `GET /v1/ui/stream`: an event `mesh` with this node, its members, the newest tasks and workflows, the stats
    /// and the limits, at once and then whenever any of them changes.
    func browserStream() -> ControlResponse {
        .eventStream { sink in
            self.onLoop { node in
                node.browser.streams.append((sink, []))
                // The first stream starts the ticks; a new one among others gets the snapshot at once.
                if node.browser.streams.count == 1 { node.tickBrowserStreams() } else { node.sendBrowserSnapshots() }
            }
        }
    }

    /// Every half second while any browser view is open: one snapshot, sent to each stream it is news to.
    private func tickBrowserStreams() {
        self.sendBrowserSnapshots()
        guard !self.browser.streams.isEmpty else { return }
        _ = self.context.loop.scheduleTask(in: TimeAmount(Self.browserStreamInterval)) {
            self.assumeIsolated { node in node.tickBrowserStreams() }
        }
    }

    private func sendBrowserSnapshots() {
        for (sink, _) in self.browser.streams where sink.isClosed || !self.isServing { sink.finish() }
        self.browser.streams.removeAll { $0.sink.isClosed || !self.isServing }
        guard !self.browser.streams.isEmpty else { return }
        let snapshot = self.browserSnapshot()
        for index in self.browser.streams.indices where self.browser.streams[index].sent != snapshot {
            self.browser.streams[index].sink.write(Array("event: mesh\ndata: ".utf8) + snapshot + Array("\n\n".utf8))
            self.browser.streams[index].sent = snapshot
        }
    }

    private func browserSnapshot() -> [UInt8] {
        func body(_ response: ControlResponse) -> [UInt8] {
            Array(response.body.last == 0x0A ? response.body.dropLast() : response.body[...])
        }
        var filter = TaskFilter()
        filter.limit = 100
        let parts: [(String, [UInt8])] = [
            ("limits", body(.json(self.limitsReport()))), ("members", body(.json(self.members()))),
            ("node", body(.json(self.nodeInfo()))), ("stats", body(.json(self.statsReport()))),
            ("tasks", body(self.taskDocuments.list(self.tasks(matching: filter), brief: true))), ("workflows", body(self.listWorkflows())),
        ]
        var json: [UInt8] = Array("{".utf8)
        for (index, part) in parts.enumerated() {
            json += Array("\(index == 0 ? "" : ",")\"\(part.0)\":".utf8) + part.1
        }
        return json + Array("}".utf8)
    }

    /// `GET /v1/audit`: each audit log's verification (read from disk off the loop), and the newest records.
    func answerAudit(peer: String?, last: Int, respond: @escaping Respond) {
        let directory = self.home.auditDirectory, local = self.identity.signingKey.publicKey
        DispatchQueue.global().async {
            var logs = AuditFolder.read(directory, keepRecords: true)
            if let peer {
                logs = logs.filter { ($0.file as NSString).lastPathComponent.hasPrefix(peer.lowercased()) || $0.report?.header.peerName == peer }
            }
            let summary = ControlAPI.AuditSummary(logs: logs, localKey: local, last: last)
            self.onLoop { _ in respond(.json(summary)) }
        }
    }
}

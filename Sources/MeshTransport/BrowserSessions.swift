import Foundation
import MeshCore
import MeshCrypto
import Synchronization

/// Who may use the browser view (`GET /ui` on the `--http` listener). `agentmesh ui` asks the node for a one-time
/// login code and prints a link with it in the URL fragment (never sent to a server, never in a log); the page
/// trades it once for a session: an `HttpOnly`, `SameSite=Strict` cookie and a CSRF token that every state-changing
/// request must carry in `X-CSRF-Token`. The bearer token never reaches the browser.
final class BrowserSessions: Sendable {
    static let codeLifetime: Duration = .seconds(120)
    static let sessionLifetime: Duration = .seconds(12 * 3600)
    /// Codes and sessions at most (the oldest go first): a client of the control socket cannot fill the memory.
    static let maximumEntries = 64
    static let cookieName = "agentmesh_session"

    struct Session: Sendable, Equatable {
        let id: String
        let csrf: String
        let expires: Duration
    }

    private struct State {
        var codes: [String: Duration] = [:]
        var sessions: [String: Session] = [:]
    }

    private let state = Mutex(State())
    private let now: @Sendable () -> Duration

    init(now: @escaping @Sendable () -> Duration) {
        self.now = now
    }

    private static func token() -> String {
        Hex.encode((0..<32).map { _ in UInt8.random(in: 0...255) })
    }

    /// A code good for one sign-in within two minutes.
    func issueCode() -> String {
        let code = Self.token(), now = self.now()
        self.state.withLock { state in
            state.codes = state.codes.filter { $0.value > now }
            if state.codes.count >= Self.maximumEntries, let oldest = state.codes.min(by: { $0.value < $1.value })?.key {
                state.codes[oldest] = nil
            }
            state.codes[code] = now + Self.codeLifetime
        }
        return code
    }

    /// Trades a code for a session, once: a code used or expired gives nothing.
    func redeem(_ code: String) -> Session? {
        let now = self.now()
        return self.state.withLock { state -> Session? in
            guard let expires = state.codes.removeValue(forKey: code), expires > now else { return nil }
            state.sessions = state.sessions.filter { $0.value.expires > now }
            if state.sessions.count >= Self.maximumEntries,
                let oldest = state.sessions.min(by: { $0.value.expires < $1.value.expires })?.key
            {
                state.sessions[oldest] = nil
            }
            let session = Session(id: Self.token(), csrf: Self.token(), expires: now + Self.sessionLifetime)
            state.sessions[session.id] = session
            return session
        }
    }

    /// The live session a request's `Cookie` header names, if any.
    func session(cookieHeader: String?) -> Session? {
        guard let cookieHeader else { return nil }
        let prefix = Self.cookieName + "="
        guard let value = cookieHeader.split(separator: ";").map({ $0.trimmingCharacters(in: .whitespaces) })
            .first(where: { $0.hasPrefix(prefix) })?.dropFirst(prefix.count)
        else { return nil }
        let now = self.now()
        return self.state.withLock { state in
            guard let session = state.sessions[String(value)], session.expires > now else { return nil }
            return session
        }
    }

    /// The cookie that carries a session: not readable by scripts, never sent on another site's request.
    static func cookie(for session: Session) -> String {
        "\(Self.cookieName)=\(session.id); Path=/; HttpOnly; SameSite=Strict; Max-Age=\(Int(Self.sessionLifetime.components.seconds))"
    }

    /// Compares in time independent of where the first difference is.
    static func matches(_ given: String?, _ expected: String) -> Bool {
        let given = Array((given ?? "").utf8), expected = Array(expected.utf8)
        guard given.count == expected.count else { return false }
        return zip(given, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

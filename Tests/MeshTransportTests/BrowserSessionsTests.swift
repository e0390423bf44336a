import Synchronization
import Testing

@testable import MeshTransport

/// The browser view's sign-in: codes work once and expire, sessions expire, cookies and CSRF tokens are checked.
@Suite struct BrowserSessionsTests {
    final class Clock: Sendable {
        let now = Mutex(Duration.zero)
        func advance(_ by: Duration) { self.now.withLock { $0 += by } }
    }

    @Test func aCodeSignsInOnceAndOnlyBeforeItExpires() {
        let clock = Clock()
        let sessions = BrowserSessions(now: { clock.now.withLock { $0 } })
        let code = sessions.issueCode()
        let session = sessions.redeem(code)
        #expect(session != nil)
        #expect(sessions.redeem(code) == nil, "a used code gives nothing")
        let late = sessions.issueCode()
        clock.advance(BrowserSessions.codeLifetime + .seconds(1))
        #expect(sessions.redeem(late) == nil, "an expired code gives nothing")
        #expect(sessions.redeem("not a code") == nil)
    }

    @Test func theCookieNamesALiveSessionUntilItEnds() throws {
        let clock = Clock()
        let sessions = BrowserSessions(now: { clock.now.withLock { $0 } })
        let session = try #require(sessions.redeem(sessions.issueCode()))
        let cookie = BrowserSessions.cookie(for: session)
        #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.hasPrefix("agentmesh_session=\(session.id);"))
        #expect(sessions.session(cookieHeader: "theme=dark; agentmesh_session=\(session.id)") == session)
        #expect(sessions.session(cookieHeader: "agentmesh_session=\(session.id)x") == nil)
        #expect(sessions.session(cookieHeader: nil) == nil)
        let other = (session.csrf.first == "a" ? "b" : "a") + session.csrf.dropFirst()
        #expect(BrowserSessions.matches(session.csrf, session.csrf))
        #expect(!BrowserSessions.matches(nil, session.csrf) && !BrowserSessions.matches(other, session.csrf))
        clock.advance(BrowserSessions.sessionLifetime + .seconds(1))
        #expect(sessions.session(cookieHeader: "agentmesh_session=\(session.id)") == nil, "an ended session reads nothing")
    }

    @Test func codesAndSessionsAreBounded() {
        let clock = Clock()
        let sessions = BrowserSessions(now: { clock.now.withLock { $0 } })
        let codes = (0..<(BrowserSessions.maximumEntries + 10)).map { _ in
            clock.advance(.milliseconds(1))
            return sessions.issueCode()
        }
        #expect(sessions.redeem(codes[0]) == nil, "the oldest codes went first")
        #expect(sessions.redeem(codes[codes.count - 1]) != nil)
    }
}

/// Lets at most `perSecond` lines of one kind into the log and counts the rest, so that a flood of refused
/// connections costs the log ten lines a second instead of one line per attempt.
public struct LogThrottle: Sendable {
    public let perSecond: Int
    private var windowStart: Duration?
    private var loggedInWindow = 0
    private var dropped = 0

    public init(perSecond: Int) { self.perSecond = perSecond }

    /// nil: leave this line out. Otherwise log it, with how many lines were left out since the last one logged.
    public mutating func admit(now: Duration) -> Int? {
        if let start = self.windowStart, now - start < .seconds(1) {
            guard self.loggedInWindow < self.perSecond else {
                self.dropped += 1
                return nil
            }
        } else {
            self.windowStart = now
            self.loggedInWindow = 0
        }
        self.loggedInWindow += 1
        defer { self.dropped = 0 }
        return self.dropped
    }
}

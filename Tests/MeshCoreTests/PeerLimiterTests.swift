import MeshCore
import Testing

@Suite struct PeerLimiterTests {
    static func limiter(_ rates: [LimitClass: Rate], configure: (inout PeerLimiter<String>.Settings) -> Void = { _ in })
        -> PeerLimiter<String>
    {
        var settings = PeerLimiter<String>.Settings(rates: rates)
        configure(&settings)
        return PeerLimiter(settings: settings)
    }

    @Test func aBurstIsAllowedThenTheSustainedRate() {
        var limiter = Self.limiter([.offers: Rate(perSecond: 10, burst: 5)]) { $0.refusalsBeforeBan = .max }
        let burst = (0..<8).map { _ in limiter.admit("p", .offers, now: .zero) }
        #expect(burst.filter { $0 == .accepted }.count == 5)
        #expect(burst.last == .refused)
        // 10/s: one more every 100 ms, not two.
        #expect(limiter.admit("p", .offers, now: .milliseconds(100)) == .accepted)
        #expect(limiter.admit("p", .offers, now: .milliseconds(100)) == .refused)
        #expect(limiter.admit("p", .offers, now: .milliseconds(300)) == .accepted)
        // Over a long stretch it averages the rate.
        var accepted = 0
        for step in 0..<1000 where limiter.admit("p", .offers, now: .seconds(1) + .milliseconds(step * 10)) == .accepted {
            accepted += 1
        }
        #expect((100...106).contains(accepted), "\(accepted) accepted in 10 s at 10/s")
    }

    @Test func peersAndClassesHaveTheirOwnBuckets() {
        var limiter = Self.limiter([.offers: Rate(perSecond: 1, burst: 1), .gossip: Rate(perSecond: 1, burst: 1)])
        #expect(limiter.admit("a", .offers, now: .zero) == .accepted)
        #expect(limiter.admit("a", .offers, now: .zero) == .refused)
        #expect(limiter.admit("a", .gossip, now: .zero) == .accepted)
        #expect(limiter.admit("b", .offers, now: .zero) == .accepted)
        #expect(limiter.admit("a", .results, now: .zero) == .accepted, "a class without a rate is not limited")
    }

    @Test func bytesCountTheirSize() {
        var limiter = Self.limiter([.bytes: Rate(perSecond: 1000, burst: 1000)])
        #expect(limiter.admit("p", .bytes, cost: 800, now: .zero) == .accepted)
        #expect(limiter.admit("p", .bytes, cost: 300, now: .zero) == .refused)
        #expect(limiter.admit("p", .bytes, cost: 300, now: .milliseconds(100)) == .accepted)
    }

    @Test func aPeerThatStaysOverItsLimitIsBannedForLongerEachTimeThenLetBack() {
        var limiter = Self.limiter([.offers: Rate(perSecond: 10, burst: 10)]) { $0.refusalsBeforeBan = 20 }
        var now = Duration.zero
        func flood() -> PeerLimiter<String>.Verdict {
            var verdict = PeerLimiter<String>.Verdict.accepted
            for _ in 0..<100 {
                verdict = limiter.admit("flooder", .offers, now: now)
                if case .banned = verdict { return verdict }
                now += .milliseconds(1)
            }
            return verdict
        }
        guard case .banned(let firstEnd) = flood() else { Issue.record("never banned"); return }
        let firstLength = firstEnd - now
        #expect(firstLength == .seconds(60))
        #expect(limiter.admit("flooder", .offers, now: now + .seconds(30)) == .banned(until: firstEnd))
        #expect(limiter.admit("honest", .offers, now: now + .seconds(30)) == .accepted, "others are untouched")
        now = firstEnd
        #expect(limiter.admit("flooder", .offers, now: now) == .accepted, "let back with a full bucket")
        guard case .banned(let secondEnd) = flood() else { Issue.record("never banned again"); return }
        #expect(secondEnd - now == .seconds(120))
        #expect(limiter.bannedUntil("flooder", now: now) == secondEnd)
    }

    @Test func refusalsSpreadBeyondTheWindowDoNotBan() {
        var limiter = Self.limiter([.offers: Rate(perSecond: 1, burst: 1)]) { $0.refusalsBeforeBan = 5 }
        for second in 0..<60 {
            let now = Duration.seconds(second * 3)
            _ = limiter.admit("p", .offers, now: now)
            #expect(limiter.admit("p", .offers, now: now) == .refused)
        }
    }

    @Test func misbehaviourStrikesBan() {
        var limiter = Self.limiter([:])
        #expect(limiter.misbehaved("liar", now: .zero) == .refused)
        #expect(limiter.misbehaved("liar", now: .seconds(1)) == .refused)
        #expect(limiter.misbehaved("liar", now: .seconds(2)) == .banned(until: .seconds(62)))
        #expect(limiter.admit("liar", .gossip, now: .seconds(3)) == .banned(until: .seconds(62)))
    }

    /// Keys that would start over the same way are forgotten; a key with a full history is kept.
    @Test func idleKeysAreForgottenAndOffendersRemembered() {
        var limiter = Self.limiter([.connections: Rate(perSecond: 1, burst: 2)])
        _ = limiter.admit("passer-by", .connections, now: .zero)
        for _ in 0..<3 { _ = limiter.admit("scanner", .connections, now: .zero) }
        limiter.forgetIdle(now: .milliseconds(500))
        #expect(limiter.keys == ["passer-by", "scanner"], "buckets not yet full again")
        limiter.forgetIdle(now: .seconds(5))
        #expect(limiter.keys == ["scanner"], "its refusal is recent")
        limiter.forgetIdle(now: .seconds(11))
        #expect(limiter.keys.isEmpty)
        _ = limiter.misbehaved("liar", now: .seconds(20))
        _ = limiter.misbehaved("liar", now: .seconds(20))
        _ = limiter.misbehaved("liar", now: .seconds(20))
        limiter.forgetIdle(now: .seconds(3600 * 2))
        #expect(limiter.keys == ["liar"], "a peer that was banned keeps its record, so its next ban is longer")
    }

    @Test func aPeersOwnRatesReplaceTheNodeWideOnes() {
        var limiter = Self.limiter([.offers: Rate(perSecond: 1, burst: 1)])
        limiter.setOverrides([.offers: Rate(perSecond: 100, burst: 3)], for: "trusted")
        #expect((0..<3).allSatisfy { _ in limiter.admit("trusted", .offers, now: .zero) == .accepted })
        #expect(limiter.admit("other", .offers, now: .zero) == .accepted)
        #expect(limiter.admit("other", .offers, now: .zero) == .refused)
        let usage = limiter.usage(of: "trusted", now: .zero).first
        #expect(usage?.rate == Rate(perSecond: 100, burst: 3))
        #expect(usage?.accepted == 3)
        #expect(usage.map { $0.tokensLeft < 0.01 } == true)
        #expect(limiter.usage(of: "trusted", now: .seconds(1)).first?.tokensLeft == 3)
    }

    @Test(arguments: [
        ("offers=20/s:40", LimitClass.offers, 20.0, 40.0), ("gossip=5/s", .gossip, 5, 5), ("bytes=0.5/s:2", .bytes, 0.5, 2),
        ("bytes=64M/s:1G", .bytes, 64 * 1024 * 1024, 1024 * 1024 * 1024), ("bytes=8K/s", .bytes, 8192, 8192),
    ])
    func limitsParse(text: String, limitClass: LimitClass, rate: Double, burst: Double) throws {
        let (parsedClass, parsed) = try Rate.parseLimit(text)
        #expect(parsedClass == limitClass)
        #expect(parsed == Rate(perSecond: rate, burst: burst))
    }

    @Test(arguments: ["offers", "offers=", "offers=20", "offers=20/m", "offers=-1/s", "offers=1/s:0", "offers=1/s:x",
                      "nope=1/s", "=1/s", "offers=nan/s", "offers=1/s:2:3", "bytes=M/s", "bytes=1X/s"])
    func malformedLimitsSayWhatIsWrong(text: String) {
        #expect(Rate(perSecond: 64 * 1024 * 1024, burst: 1536).description == "64M/s:1536")
        #expect(Rate(perSecond: 2.5).description == "2.5/s:2.5")
        #expect(throws: Rate.ParseError.self) { try Rate.parseLimit(text) }
    }
}

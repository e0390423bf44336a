import MeshCore
import Testing

/// The event bus driven by hand: who gets what, acknowledgements, re-sends, de-duplication, the history bound.
@Suite struct EventBusTests {
    static let (a, b, c, d) = (NodeID(high: 0, low: 1), NodeID(high: 0, low: 2), NodeID(high: 0, low: 3), NodeID(high: 0, low: 4))
    static func event(_ number: UInt64, from origin: NodeID = a) -> MeshEvent {
        MeshEvent(id: EventID(high: 9, low: number), topic: "orders", origin: origin, time: 0, data: Array("{}".utf8), seal: nil)
    }

    static func sends(_ directives: [EventBus.Directive]) -> [String] {
        directives.compactMap { directive in
            guard case .send(let message, let peer) = directive else { return nil }
            return "\(TaskMessage.name(ofTag: message.tag))→\(peer.low)"
        }
    }

    @Test func thePublisherSendsToEveryLiveMemberAndResendsUntilEachAcknowledges() {
        var bus = EventBus(local: Self.a)
        let published = bus.publish(Self.event(1), to: [Self.a, Self.b, Self.c], now: .zero)
        #expect(Self.sends(published) == ["event→2", "event→3"])
        #expect(published.contains(.deliver(Self.event(1))), "the publisher's own subscribers get it too")
        _ = bus.receive(.eventAck(Self.event(1).id), from: Self.b, members: [], now: .zero, time: 0)
        #expect(bus.waiting(for: Self.event(1).id) == [Self.c])
        #expect(Self.sends(bus.tick(now: .milliseconds(500), alive: [Self.b, Self.c])).isEmpty, "not yet due")
        #expect(Self.sends(bus.tick(now: .seconds(1), alive: [Self.b, Self.c])) == ["event→3"])
        #expect(Self.sends(bus.tick(now: .seconds(2), alive: [Self.b])).isEmpty, "a member no longer alive is not waited for")
        #expect(bus.waiting(for: Self.event(1).id).isEmpty)
    }

    @Test func aReceiverAcknowledgesRelaysOnceAndDeliversOnce() {
        var bus = EventBus(local: Self.c)
        let first = bus.receive(.event(Self.event(2)), from: Self.b, members: [Self.a, Self.b, Self.c, Self.d], now: .zero, time: 0)
        #expect(Self.sends(first) == ["event-ack→2", "event→4"], "acknowledged to the sender, passed on to d, not back to a or b")
        #expect(first.filter { if case .deliver = $0 { return true } else { return false } }.count == 1)
        let again = bus.receive(.event(Self.event(2)), from: Self.a, members: [Self.a, Self.b, Self.c, Self.d], now: .zero, time: 0)
        #expect(Self.sends(again) == ["event-ack→1"], "a repeat is acknowledged and nothing else")
        #expect(bus.records(after: 0, topic: "orders", limit: 10).map(\.sequence) == [1])
        #expect(bus.handled(Self.event(2).id, by: "orders=builtin:echo", outcome: "ran").count == 1)
        #expect(bus.record(Self.event(2).id)?.outcomes == ["orders=builtin:echo": "ran"])
    }

    /// `events --topic research.*` took no pattern: the history's filter takes a prefix ending in `*` as a
    /// subscription does.
    @Test func theHistoryIsFilteredByATopicOrAPrefixPattern() {
        var bus = EventBus(local: Self.a)
        for (number, topic) in ["research.papers", "research.blogs", "orders", "researcher"].enumerated() {
            _ = bus.publish(
                MeshEvent(id: EventID(high: 8, low: UInt64(number)), topic: topic, origin: Self.a, time: 0, data: [], seal: nil),
                to: [], now: .zero)
        }
        func topics(_ filter: String?) -> [String] { bus.records(after: 0, topic: filter, limit: 10).map(\.event.topic) }
        #expect(topics("research.*") == ["research.papers", "research.blogs"])
        #expect(topics("research*") == ["research.papers", "research.blogs", "researcher"])
        #expect(topics("orders") == ["orders"] && topics("order") == [])
        #expect(topics("*").count == 4 && topics(nil).count == 4)
        #expect(MeshEvent.isValidPattern("research.*") && MeshEvent.isValidPattern("*") && MeshEvent.isValidPattern("orders"))
        #expect(!MeshEvent.isValidPattern("re*search") && !MeshEvent.isValidPattern("**") && !MeshEvent.isValidPattern(""))
    }

    @Test func theHistoryKeepsTheNewestAndForgetsTheRest() throws {
        var settings = EventBus.Settings()
        settings.historyLimit = 3
        var bus = EventBus(local: Self.a, settings: settings)
        var forgotten: [EventID] = []
        for number in 1...5 {
            for case .forget(let id) in bus.publish(Self.event(UInt64(number)), to: [], now: .zero) { forgotten.append(id) }
        }
        #expect(bus.history.map(\.sequence) == [3, 4, 5])
        #expect(forgotten == [Self.event(1).id, Self.event(2).id])
        #expect(bus.record(Self.event(4).id)?.sequence == 4)
        var restored = EventBus(local: Self.a, settings: settings)
        restored.restore(bus.history)
        #expect(restored.lastSequence == 5 && restored.record(Self.event(5).id) != nil)
        let message = TaskMessage.event(MeshEvent(
            id: EventID(high: 9, low: 7), topic: "orders", publishedBy: NodeIdentity(name: "b"), time: 0, data: Array("{}".utf8)))
        #expect(try TaskMessage(decoding: message.encoded()) == message)
        #expect(try TaskMessage(decoding: TaskMessage.eventAck(Self.event(7).id).encoded()) == .eventAck(Self.event(7).id))
    }

    /// One peer's 10,000 events of 64 KiB grew a node by 890 MiB within every rate limit: the history now holds
    /// at most 64 MiB, one origin at most 16 MiB of it, and a flooding origin pushes out its own oldest events.
    @Test func aFloodingOriginPushesOutItsOwnEventsAndTheHistoryStaysWithinItsBytes() {
        var bus = EventBus(local: Self.a)
        let data = [UInt8](repeating: 0x31, count: MeshEvent.maximumData)
        func event(_ number: UInt64, from origin: NodeID) -> MeshEvent {
            MeshEvent(id: EventID(high: number, low: origin.low), topic: "t", origin: origin, time: 0, data: data, seal: nil)
        }
        let quiet = event(1, from: Self.c)
        _ = bus.receive(.event(quiet), from: Self.c, members: [Self.a, Self.b, Self.c], now: .zero, time: 0)
        var forgotten = 0
        for number in 1...2_000 {
            for case .forget in bus.receive(.event(event(UInt64(number), from: Self.b)), from: Self.b, members: [Self.a, Self.b, Self.c], now: .zero, time: 0) {
                forgotten += 1
            }
        }
        #expect(bus.bytes(from: Self.b) <= bus.settings.originBytesLimit)
        #expect(bus.historyBytes <= bus.settings.historyBytesLimit)
        #expect(bus.record(quiet.id) != nil, "another origin's event stays")
        #expect(bus.record(event(2_000, from: Self.b).id) != nil, "the newest of the flood stays")
        #expect(bus.record(event(1, from: Self.b).id) == nil)
        #expect(forgotten == 2_000 - bus.history.count + 1)
    }

    /// A peer replayed an honest event after its own flood had pushed it out of the history, and every subscriber
    /// acted on it a second time. One origin now holds at most its share of places, an event that left the history
    /// is remembered for the replay window, and one older than the window is refused by its signed time.
    @Test func aReplayedEventIsNotTakenAgainAndOneOriginCannotPushOthersOut() {
        var settings = EventBus.Settings()
        settings.historyLimit = 8
        settings.originCountLimit = 4
        settings.replayWindow = 60_000
        var bus = EventBus(local: Self.c, settings: settings)
        let members = [Self.a, Self.b, Self.c]
        let honest = MeshEvent(id: EventID(high: 1, low: 1), topic: "orders", origin: Self.a, time: 1_000, data: Array("7".utf8), seal: nil)
        #expect(bus.receive(.event(honest), from: Self.a, members: members, now: .zero, time: 1_000).contains(.deliver(honest)))
        for number in 0..<50 {
            let flood = MeshEvent(id: EventID(high: 2, low: UInt64(number)), topic: "x", origin: Self.b, time: 1_000, data: [], seal: nil)
            _ = bus.receive(.event(flood), from: Self.b, members: members, now: .zero, time: 1_000)
        }
        #expect(bus.record(honest.id) != nil, "b's flood pushed out only b's own events")
        #expect(bus.history.count { $0.event.origin == Self.b } == 4)
        // Honest traffic lets it go; a replay within the window is known, one after it is too old.
        for number in 0..<8 {
            let later = MeshEvent(id: EventID(high: 3, low: UInt64(number)), topic: "x", origin: Self.d, time: 2_000, data: [], seal: nil)
            _ = bus.receive(.event(later), from: Self.d, members: members, now: .zero, time: 2_000)
        }
        #expect(bus.record(honest.id) == nil && bus.knows(honest.id))
        let replayed = bus.receive(.event(honest), from: Self.b, members: members, now: .zero, time: 30_000)
        #expect(replayed == [.send(.eventAck(honest.id), to: Self.b)], "acknowledged, not delivered again")
        let late = bus.receive(.event(honest), from: Self.b, members: members, now: .zero, time: 100_000)
        #expect(late == [.send(.eventAck(honest.id), to: Self.b)] && !bus.knows(honest.id), "too old: refused by its time")
        // A peer's extreme times are refused, not subtracted into an overflow.
        for extreme in [Int64.min, Int64.max] {
            let odd = MeshEvent(id: EventID(high: 4, low: 1), topic: "x", origin: Self.b, time: extreme, data: [], seal: nil)
            #expect(bus.receive(.event(odd), from: Self.b, members: members, now: .zero, time: 100_000) == [.send(.eventAck(odd.id), to: Self.b)])
        }
    }
}

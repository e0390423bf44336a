import Foundation
import MeshControl
import MeshCore
import MeshWorkflows
import Testing

@testable import MeshTransport

/// Runs that events start are bounded like executor subscriptions: 8 at once, 1,000 waiting, the rest dropped.
@Suite struct BoundedRunsTests {
    @Test func runsStartUpToTheLimitThenWaitInOrderThenAreDropped() {
        var runs = BoundedRuns<Int>(maximumRunning: 2, maximumWaiting: 2)
        var admitted: [String] = []
        for item in 0..<6 {
            switch runs.admit(item) {
            case .start(let started): admitted.append("start \(started)")
            case .queued: admitted.append("queued \(item)")
            case .dropped: admitted.append("dropped \(item)")
            }
        }
        #expect(admitted == ["start 0", "start 1", "queued 2", "queued 3", "dropped 4", "dropped 5"])
        #expect(runs.finished() == 2)
        #expect(runs.running == 2)
        #expect(runs.finished() == 3)
        #expect(runs.finished() == nil)
        #expect(runs.running == 1)
        if case .start(6) = runs.admit(6) {} else { Issue.record("a free place starts at once") }
    }
}

@Suite struct SubscriptionIntegrationTests {
    /// 10,000 events on a `workflow:` subscription once started 10,000 runs at once (35 CPU-s in 30 s).
    @Test func eventsOnAWorkflowSubscriptionStartAtMostEightRunsAtOnce() async throws {
        let definition = try WorkflowDefinition(parsing: JSON(foundation: [
            "name": "held",
            "steps": [["name": "wait", "capability": "nobody-offers-this", "input": ["x": 1], "timeout_seconds": 600]],
        ] as [String: Any]))
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let running = try await a.start {
            $0.subscriptions = [EventSubscription(topic: "orders", action: .workflow(path: "held.yaml", definition: definition))]
        }
        for number in 0..<20 {
            let body = try JSONSerialization.data(withJSONObject: ["topic": "orders", "data": ["n": number]])
            let answer = await running.node.handleControl(ControlRequest(method: "POST", path: "/v1/events", query: [:], body: Array(body)))
            #expect(answer.status < 300, "\(String(decoding: answer.body, as: UTF8.self))")
        }
        let listed = await running.node.handleControl(ControlRequest(method: "GET", path: "/v1/workflows", query: [:], body: []))
        let runs = try ControlAPI.decoder().decode(ControlAPI.WorkflowList.self, from: Data(listed.body)).workflows
        #expect(runs.count == 8, "\(runs.count) runs started")
        let history = await running.node.handleControl(ControlRequest(method: "GET", path: "/v1/events", query: ["topic": "orders"], body: []))
        let events = try ControlAPI.decoder().decode(ControlAPI.EventHistory.self, from: Data(history.body)).events
        let outcomes = events.compactMap { $0.outcomes?.values.first }
        #expect(outcomes.filter { $0.hasPrefix("workflow ") }.count == 8)
        #expect(outcomes.filter { $0 == "waiting" }.count == 12)
        await running.stop()
    }
}

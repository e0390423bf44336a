import MeshCore
import MeshExecutors
import MeshWorkflows

/// Work started here by events: each kind at most `maximumRunning` at once and `maximumWaiting` queued behind
/// them, first come first served; an event past both is dropped (and its outcome says so). Peers' events cannot
/// start processes or workflow runs without bound: 10,000 events on a `workflow:` subscription once started
/// 10,000 runs at once.
struct BoundedRuns<Item> {
    let maximumRunning: Int
    let maximumWaiting: Int
    private(set) var running = 0
    private var waiting: [Item] = []
    private var waitingStart = 0

    var waitingCount: Int { self.waiting.count - self.waitingStart }

    enum Admission {
        case start(Item)
        case queued
        case dropped
    }

    init(maximumRunning: Int, maximumWaiting: Int) {
        self.maximumRunning = maximumRunning
        self.maximumWaiting = maximumWaiting
    }

    mutating func admit(_ item: Item) -> Admission {
        if self.running < self.maximumRunning, self.waitingCount == 0 {
            self.running += 1
            return .start(item)
        }
        guard self.waitingCount < self.maximumWaiting else { return .dropped }
        self.waiting.append(item)
        return .queued
    }

    /// A run ended: the next waiting item, if any, starts in its place.
    mutating func finished() -> Item? {
        guard self.waitingStart < self.waiting.count else {
            self.running = max(0, self.running - 1)
            return nil
        }
        let next = self.waiting[self.waitingStart]
        self.waitingStart += 1
        if self.waitingStart > 1024, self.waitingStart * 2 > self.waiting.count {
            self.waiting.removeFirst(self.waitingStart)
            self.waitingStart = 0
        }
        return next
    }
}

/// The node's event subscriptions at work: runs of executors and of workflows that events started.
struct EventSubscribers {
    static let maximumRuns = 8
    static let maximumWaiting = 1_000

    var executors = BoundedRuns<(event: MeshEvent, key: String, executor: CapabilitySpec.Executor)>(
        maximumRunning: Self.maximumRuns, maximumWaiting: Self.maximumWaiting)
    var workflows = BoundedRuns<(event: MeshEvent, key: String, definition: WorkflowDefinition)>(
        maximumRunning: Self.maximumRuns, maximumWaiting: Self.maximumWaiting)
    /// Executor runs that subscriptions started, by event and subscription, so that stopping the node stops them.
    var executorRuns: [String: Task<Void, Never>] = [:]
    /// Workflow runs that subscriptions started, still going: each frees a place when it ends.
    var workflowRuns: Set<WorkflowID> = []
    /// A peer's flood dropped 8,709 events in 19 s here, one warning each: ten lines a second now, with a count.
    var dropLog = LogThrottle(perSecond: 10)
}

import Foundation
import MeshCore
import MeshWorkflows
import Testing

/// Workflow runs driven by hand: every task the run asks for is answered by the test, in the order the test picks.
@Suite struct WorkflowRunTests {
    static func definition(_ text: String) throws -> WorkflowDefinition {
        try WorkflowDefinition(parsing: JSON(parsing: Array(text.utf8)))
    }

    static func tasks(_ directives: [WorkflowRun.Directive]) -> [WorkflowTask] {
        directives.compactMap { if case .submit(let task) = $0 { return task } else { return nil } }
    }

    static func input(_ task: WorkflowTask) -> String { String(decoding: task.input, as: UTF8.self) }

    static let pipeline = """
        {"name": "research", "steps": [
          {"name": "research", "capability": "search", "input": {"topic": "{{input.topic}}"},
           "compensate": {"capability": "forget", "input": {"notes": "{{output.notes}}"}}},
          {"name": "analyze", "capability": "analyze", "input": {"notes": "{{steps.research.output.notes}}", "id": "{{workflow.id}}"},
           "compensate": {"capability": "unanalyze"}},
          {"name": "write", "capability": "write", "input": "Summary of {{steps.analyze.output}} about {{input.topic}}"}
        ], "output": "{{steps.write.output}}"}
        """

    @Test func aPipelinePassesEachStepsOutputToTheNext() throws {
        let id = WorkflowID(high: 1, low: 2)
        var run = WorkflowRun(id: id, definition: try Self.definition(Self.pipeline), input: .object(["topic": .string("bees")]), time: 0)
        let first = Self.tasks(run.start(time: 0))
        #expect(first.map(\.capability) == ["search"] && Self.input(first[0]) == #"{"topic":"bees"}"#)
        #expect(first[0].id == WorkflowRun.taskID(id, "research", 0, undo: false), "ids are derived, so a restart finds them")
        let second = Self.tasks(run.taskEnded(first[0].id, .completed(Array(#"{"notes":["a","b"]}"#.utf8)), time: 1))
        #expect(second.map(\.capability) == ["analyze"])
        #expect(Self.input(second[0]) == #"{"id":"\#(id)","notes":["a","b"]}"#, "a whole reference keeps its type")
        let third = Self.tasks(run.taskEnded(second[0].id, .completed(Array(#"{"score":3}"#.utf8)), time: 2))
        #expect(Self.input(third[0]) == #""Summary of {\"score\":3} about bees""#, "inside a string, references become text")
        #expect(run.taskEnded(third[0].id, .completed(Array(#""done""#.utf8)), time: 3).isEmpty)
        #expect(run.state == .completed && run.output == .string("done") && run.completionOrder == ["research", "analyze", "write"])
        #expect(run.taskEnded(third[0].id, .completed([]), time: 4).isEmpty, "a repeated end changes nothing")
    }

    @Test func aFailingThirdStepCompensatesTheFirstTwoNewestFirst() throws {
        var run = WorkflowRun(id: WorkflowID(high: 3, low: 4), definition: try Self.definition(Self.pipeline), input: .object(["topic": .string("x")]), time: 0)
        let research = Self.tasks(run.start(time: 0))[0]
        let analyze = Self.tasks(run.taskEnded(research.id, .completed(Array(#"{"notes":"n"}"#.utf8)), time: 1))[0]
        let write = Self.tasks(run.taskEnded(analyze.id, .completed(Array("7".utf8)), time: 2))[0]
        let undoAnalyze = Self.tasks(run.taskEnded(write.id, .failed("the writer crashed"), time: 3))
        #expect(run.state == .compensating && run.error == "step write failed: the writer crashed")
        #expect(undoAnalyze.map(\.capability) == ["unanalyze"] && Self.input(undoAnalyze[0]) == "7", "the default undo input is the output")
        let undoResearch = Self.tasks(run.taskEnded(undoAnalyze[0].id, .completed([]), time: 4))
        #expect(undoResearch.map(\.capability) == ["forget"] && Self.input(undoResearch[0]) == #"{"notes":"n"}"#)
        _ = run.taskEnded(undoResearch[0].id, .completed([]), time: 5)
        #expect(run.state == .compensated && run.steps["write"]?.state == .failed)
        #expect(run.steps["research"]?.compensations[0]?.state == .completed)
    }

    @Test func aCompensationThatFailsIsRecordedAndTheOthersStillRun() throws {
        var run = WorkflowRun(id: WorkflowID(high: 5, low: 6), definition: try Self.definition(Self.pipeline), input: .object(["topic": .string("x")]), time: 0)
        let research = Self.tasks(run.start(time: 0))[0]
        let analyze = Self.tasks(run.taskEnded(research.id, .completed(Array(#"{"notes":"n"}"#.utf8)), time: 1))[0]
        let undoResearch = Self.tasks(run.taskEnded(analyze.id, .failed("no"), time: 2))
        #expect(undoResearch.map(\.capability) == ["forget"], "analyze did not complete: only research is undone")
        _ = run.taskEnded(undoResearch[0].id, .failed("forget is down"), time: 3)
        #expect(run.state == .compensationFailed && run.compensationFailures == ["research"])
    }

    @Test func aFanOutOfAHundredRunsEightAtATimeAndKeepsResultsInOrder() throws {
        let definition = try Self.definition("""
            {"name": "fan", "steps": [
              {"name": "each", "capability": "echo", "map": "{{input.items}}", "concurrency": 8, "input": {"n": "{{item}}", "i": "{{index}}"}},
              {"name": "sum", "capability": "sum", "input": "{{steps.each.output}}"}
            ]}
            """)
        var run = WorkflowRun(id: WorkflowID(high: 7, low: 8), definition: definition, input: .object(["items": .array((0..<100).map { .int(Int64($0)) })]), time: 0)
        var inFlight = Self.tasks(run.start(time: 0))
        #expect(inFlight.count == 8)
        var rng = SystemRandomNumberGenerator()
        var sum: [WorkflowTask] = []
        while !inFlight.isEmpty {
            let task = inFlight.remove(at: Int.random(in: 0..<inFlight.count, using: &rng))
            let input = try JSON(parsing: task.input)
            guard case .object(let fields) = input, case .int(let n)? = fields["n"] else { Issue.record("input \(input)"); return }
            let next = Self.tasks(run.taskEnded(task.id, .completed(Array("\(n * 10)".utf8)), time: 1))
            for task in next where task.capability == "sum" { sum.append(task) }
            inFlight += next.filter { $0.capability == "echo" }
            #expect(inFlight.count <= 8)
        }
        #expect(sum.count == 1)
        #expect(Self.input(sum[0]) == "[" + (0..<100).map { "\($0 * 10)" }.joined(separator: ",") + "]", "fan-in in item order")
    }

    @Test func continueLetsTheRunGoOnWithANullOutput() throws {
        let definition = try Self.definition("""
            {"name": "c", "steps": [
              {"name": "optional", "capability": "flaky", "on_failure": "continue"},
              {"name": "after", "capability": "echo", "input": {"got": "{{steps.optional.output}}"}}
            ]}
            """)
        var run = WorkflowRun(id: WorkflowID(high: 9, low: 9), definition: definition, input: nil, time: 0)
        let optional = Self.tasks(run.start(time: 0))[0]
        let next = Self.tasks(run.taskEnded(optional.id, .failed("flaked"), time: 1))
        #expect(Self.input(next[0]) == #"{"got":null}"#)
        _ = run.taskEnded(next[0].id, .completed(Array("1".utf8)), time: 2)
        #expect(run.state == .completed && run.steps["optional"]?.state == .failed && run.steps["optional"]?.error == "flaked")
    }

    @Test func cancelStopsRunningTasksAndUndoesCompletedSteps() throws {
        var run = WorkflowRun(id: WorkflowID(high: 10, low: 1), definition: try Self.definition(Self.pipeline), input: .object(["topic": .string("x")]), time: 0)
        let research = Self.tasks(run.start(time: 0))[0]
        let analyze = Self.tasks(run.taskEnded(research.id, .completed(Array(#"{"notes":"n"}"#.utf8)), time: 1))[0]
        let directives = run.cancel(time: 2)
        #expect(directives.contains(.cancel(analyze.id)))
        let undo = Self.tasks(directives)
        #expect(undo.map(\.capability) == ["forget"])
        _ = run.taskEnded(undo[0].id, .completed([]), time: 3)
        #expect(run.state == .canceled && run.steps["write"]?.state == .skipped)
    }

    @Test func aStoredRunResumesWhereItStopped() throws {
        var run = WorkflowRun(id: WorkflowID(high: 11, low: 1), definition: try Self.definition(Self.pipeline), input: .object(["topic": .string("x")]), time: 0)
        let research = Self.tasks(run.start(time: 0))[0]
        let analyze = Self.tasks(run.taskEnded(research.id, .completed(Array(#"{"notes":"n"}"#.utf8)), time: 1))[0]
        var restored = try JSONDecoder().decode(WorkflowRun.self, from: JSONEncoder().encode(run))
        #expect(restored == run)
        #expect(restored.tasksInFlight == [analyze], "the shell re-attaches to (or re-submits) exactly the running task")
        let write = Self.tasks(restored.taskEnded(analyze.id, .completed(Array("1".utf8)), time: 2))
        #expect(write.map(\.capability) == ["write"])
    }

    /// A run is stored as a header and one document per changed item: a map over 2,000 items writes what its
    /// items hold, not the whole run after every change (1,075 MiB before, for 2,000 items), and the documents put
    /// the run back together at any point, compensations included.
    @Test func aMapStoresWhatChangedAndComesBackWholeFromItsDocuments() throws {
        let definition = try Self.definition("""
            {"name": "fan", "steps": [
              {"name": "each", "capability": "echo", "map": "{{input.items}}", "concurrency": 8, "input": {"n": "{{item}}"},
               "compensate": {"capability": "undo"}},
              {"name": "sum", "capability": "sum", "input": "{{steps.each.output}}"}
            ]}
            """)
        let count = 2_000
        var run = WorkflowRun(
            id: WorkflowID(high: 12, low: 1), definition: definition, input: .object(["items": .array((0..<count).map { .int(Int64($0)) })]), time: 0)
        var documents: [TaskID: [UInt8]] = [:]
        var header: [UInt8] = []
        var written = 0
        func store() throws {
            for key in run.takeChangedItems() {
                let body = Array(try JSONEncoder().encode(try #require(run.storedItem(key))))
                documents[WorkflowRun.documentID(of: key, in: run.id)] = body
                written += body.count
            }
            header = Array(try JSONEncoder().encode(run.storedHeader()))
            written += header.count
        }
        func restored() throws -> WorkflowRun {
            let items = try documents.values.map { try JSONDecoder().decode(WorkflowRun.StoredItem.self, from: Data($0)) }
            return WorkflowRun.restored(
                start: try JSONDecoder().decode(WorkflowRun.StoredStart.self, from: JSONEncoder().encode(run.storedStart)),
                header: try JSONDecoder().decode(WorkflowRun.StoredHeader.self, from: Data(header)), items: items)
        }
        var inFlight = Self.tasks(run.start(time: 0))
        try store()
        var ended = 0
        while let task = inFlight.first, task.capability == "echo" {
            inFlight.removeFirst()
            inFlight += Self.tasks(run.taskEnded(task.id, .completed(Array("{\"echo\":\(ended)}".utf8)), time: 1))
            try store()
            ended += 1
            if ended % 500 == 0 { #expect(try restored() == run, "after \(ended) items") }
        }
        #expect(inFlight.map(\.capability) == ["sum"])
        #expect(written < count * 2_000, "\(written) bytes written for \(count) items")
        #expect(header.count < 2_000, "the header does not grow with the items: \(header.count) bytes")
        // The last step fails: the 2,000 items are undone newest first, and that comes back whole too.
        let undo = Self.tasks(run.taskEnded(inFlight[0].id, .failed("no"), time: 2))
        try store()
        #expect(undo.map(\.capability) == ["undo"] && run.state == .compensating)
        #expect(try restored() == run)
        var back = try restored()
        #expect(back.tasksInFlight == undo, "a restored run waits for the same compensation")
        #expect(Self.tasks(back.taskEnded(undo[0].id, .completed([]), time: 3)).count == 1)
    }

    @Test func badDefinitionsAreRefusedWithASentence() throws {
        func refusal(_ text: String) -> String {
            do {
                _ = try Self.definition(text)
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(refusal(#"{"name": "x", "steps": [{"name": "a", "capability": "c", "after": "b"}, {"name": "b", "capability": "c", "after": "a"}]}"#)
            == "the steps depend on each other in a cycle: a → b → a")
        #expect(refusal(#"{"name": "x", "steps": [{"name": "a", "capability": "c", "input": "{{steps.nope.output}}"}]}"#)
            == "step a comes after nope, which is not a step of this workflow")
        #expect(refusal(#"{"name": "x", "steps": [{"name": "a", "capability": "c", "input": "{{item}}"}]}"#)
            == "step a refers to {{item}}, but it has no map")
        #expect(refusal(#"{"name": "x", "steps": [{"name": "a", "capability": "c", "retries": 3}]}"#).contains("unknown field 'retries'"))
        #expect(refusal(#"{"name": "x", "steps": [{"name": "a", "capability": "c", "map": "items"}]}"#).contains("map is one reference"))
        #expect(refusal(#"{"name": "x", "steps": [{"name": "a", "capability": "c", "input": "{{input.a"}]}"#).contains("opens {{ without closing"))
        #expect(refusal(#"{"name": "x", "steps": [{"name": "a", "capability": "c", "wait_for_capability": "yes"}]}"#)
            == "step a: wait_for_capability is true or false")
        #expect(refusal(#"{"name": "x", "steps": []}"#) == "workflow x needs a list of steps")
        #expect(refusal(#"[1]"#) == "a workflow is an object with name and steps")
    }

    /// A step's task fails at once when no live member offers its capability unless the step says to wait; an undo
    /// always waits, and an item stored before the setting existed keeps waiting as it did.
    @Test func aStepsTasksWaitForTheirCapabilityOnlyWhenTheStepSaysSo() throws {
        let definition = try Self.definition(#"""
            {"name": "w", "steps": [
              {"name": "now", "capability": "c", "compensate": {"capability": "undo"}},
              {"name": "later", "capability": "c", "after": "now", "wait_for_capability": true}
            ]}
            """#)
        var run = WorkflowRun(id: WorkflowID(high: 12, low: 2), definition: definition, input: .null, time: 0)
        let first = Self.tasks(run.start(time: 0))
        let second = Self.tasks(run.taskEnded(first[0].id, .completed(Array("1".utf8)), time: 1))
        let tasks = first + second
        #expect(tasks.map(\.waitForCapability) == [false, true])
        let undo = Self.tasks(run.taskEnded(second[0].id, .failed("no live member offers c"), time: 2))
        #expect(undo.map(\.capability) == ["undo"] && undo.first?.waitForCapability == true)
        let old = #"{"id": "\#(tasks[0].id)", "capability": "c", "input": "{}", "timeoutSeconds": 300, "attempts": 3}"#
        #expect(try JSONDecoder().decode(WorkflowTask.self, from: Data(old.utf8)).waitForCapability)
        let again = try JSONDecoder().decode(WorkflowTask.self, from: JSONEncoder().encode(tasks[0]))
        #expect(again == tasks[0])
    }

    @Test func aMapOverSomethingThatIsNotAListFailsTheStepWithAReason() throws {
        let definition = try Self.definition(#"{"name": "m", "steps": [{"name": "each", "capability": "echo", "map": "{{input.items}}"}]}"#)
        var run = WorkflowRun(id: WorkflowID(high: 12, low: 1), definition: definition, input: .object(["items": .string("no")]), time: 0)
        #expect(Self.tasks(run.start(time: 0)).isEmpty)
        #expect(run.state == .failed && run.error == "step each failed: map {{input.items}} is not a list")
        #expect(run.steps["each"]?.error == "map {{input.items}} is not a list")
    }
}

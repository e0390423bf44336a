/// A workflow as its author wrote it (YAML or JSON, read into ``JSON``): named steps, each a capability with an input
/// built from the workflow's input and earlier steps' outputs, run as a DAG.
///
/// ```yaml
/// name: research
/// steps:
///   - name: research
///     capability: research
///     map: "{{input.sources}}"        # one task per item, at most `concurrency` at once
///     concurrency: 8
///     input: {source: "{{item}}", topic: "{{input.topic}}"}
///     compensate: {capability: forget, input: {source: "{{item}}"}}
///   - name: summarize
///     capability: summarize
///     input: {notes: "{{steps.research.output}}"}   # a reference is also a dependency
///     attempts: 3
///     timeout_seconds: 60
///     on_failure: abort               # or continue
///     wait_for_capability: true       # queue while no live member offers it (otherwise the step fails at once)
/// output: "{{steps.summarize.output}}"
/// ```
public struct WorkflowDefinition: Sendable, Equatable, Codable {
    public enum FailurePolicy: String, Sendable, Codable { case abort, `continue` }

    public struct Compensation: Sendable, Equatable, Codable {
        public let capability: String
        public let input: JSON
        public let attempts: Int
        public let timeoutSeconds: Double
    }

    public struct Step: Sendable, Equatable, Codable {
        public let name: String
        public let capability: String
        public let input: JSON
        /// Steps that must end first: those named in `after` and those the input (or `map`) refers to.
        public let after: [String]
        /// A reference to a list: the step runs once per item.
        public let map: String?
        public let concurrency: Int
        public let attempts: Int
        public let timeoutSeconds: Double
        public let onFailure: FailurePolicy
        public let compensate: Compensation?
        /// Queue the step's tasks while no live member offers its capability; otherwise such a task fails at once, as
        /// `submit` refuses it. nil (runs stored before the setting existed) is no.
        public let waitForCapability: Bool?
    }

    public let name: String
    public let steps: [Step]
    /// What the workflow returns; by default an object of every step's output by name.
    public let output: JSON?
    /// The input used when a run gives none.
    public let defaultInput: JSON?
    /// Where to POST the finished workflow (see webhooks).
    public let callback: String?

    public static let maximumSteps = 1_000
    public static let defaultAttempts = 3
    public static let defaultConcurrency = 4

    public struct DefinitionError: Error, Equatable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    public init(parsing document: JSON) throws(DefinitionError) {
        guard case .object(let fields) = document else { throw DefinitionError("a workflow is an object with name and steps") }
        try Self.only(["name", "steps", "output", "input", "callback"], in: fields, where: "the workflow")
        guard case .string(let name)? = fields["name"], Self.isName(name) else {
            throw DefinitionError("the workflow needs a name of 1 to 64 characters of A-Z a-z 0-9 . _ -")
        }
        guard case .array(let stepDocuments)? = fields["steps"], !stepDocuments.isEmpty else {
            throw DefinitionError("workflow \(name) needs a list of steps")
        }
        guard stepDocuments.count <= Self.maximumSteps else {
            throw DefinitionError("workflow \(name) has \(stepDocuments.count) steps; at most \(Self.maximumSteps)")
        }
        var steps: [Step] = []
        for (index, document) in stepDocuments.enumerated() { steps.append(try Self.step(document, number: index + 1)) }
        var seen = Set<String>()
        for step in steps where !seen.insert(step.name).inserted {
            throw DefinitionError("two steps are named \(step.name)")
        }
        for step in steps {
            for dependency in step.after where !seen.contains(dependency) {
                throw DefinitionError("step \(step.name) comes after \(dependency), which is not a step of this workflow")
            }
        }
        if let output = fields["output"] {
            for reference in try Self.references(in: output, where: "the workflow's output") {
                guard reference.root == .steps || reference.root == .input || reference.root == .workflow else {
                    throw DefinitionError("the workflow's output refers to \(reference), which only a step has")
                }
                if let step = reference.step, !seen.contains(step) {
                    throw DefinitionError("the workflow's output refers to \(reference): there is no step \(step)")
                }
            }
        }
        var callback: String?
        if let value = fields["callback"] {
            guard case .string(let url) = value else { throw DefinitionError("callback is a URL") }
            callback = url
        }
        self.name = name
        self.steps = steps
        self.output = fields["output"]
        self.defaultInput = fields["input"]
        self.callback = callback
        if let cycle = self.cycle() {
            throw DefinitionError("the steps depend on each other in a cycle: \(cycle.joined(separator: " → "))")
        }
    }

    public func step(_ name: String) -> Step? { self.steps.first { $0.name == name } }

    /// A path of steps that leads back to its start, if the dependencies have one.
    func cycle() -> [String]? {
        var state: [String: Int] = [:]  // 1 visiting, 2 done
        var path: [String] = []
        func visit(_ name: String) -> [String]? {
            if state[name] == 2 { return nil }
            if state[name] == 1 {
                let start = path.firstIndex(of: name) ?? 0
                return Array(path[start...]) + [name]
            }
            state[name] = 1
            path.append(name)
            for dependency in self.step(name)?.after ?? [] {
                if let cycle = visit(dependency) { return cycle }
            }
            path.removeLast()
            state[name] = 2
            return nil
        }
        for step in self.steps {
            if let cycle = visit(step.name) { return cycle.reversed() }
        }
        return nil
    }

    private static func step(_ document: JSON, number: Int) throws(DefinitionError) -> Step {
        guard case .object(let fields) = document else { throw DefinitionError("step \(number) is not an object") }
        guard case .string(let name)? = fields["name"], Self.isName(name) else {
            throw DefinitionError("step \(number) needs a name of 1 to 64 characters of A-Z a-z 0-9 . _ -")
        }
        try Self.only(
            ["name", "capability", "input", "after", "map", "concurrency", "attempts", "timeout_seconds", "on_failure", "compensate",
             "wait_for_capability"],
            in: fields, where: "step \(name)")
        guard case .string(let capability)? = fields["capability"], Self.isName(capability) else {
            throw DefinitionError("step \(name) needs a capability name")
        }
        let input = fields["input"] ?? .object([:])
        var after: [String] = []
        switch fields["after"] {
        case nil: break
        case .string(let one)?: after = [one]
        case .array(let many)?:
            for value in many {
                guard case .string(let dependency) = value else { throw DefinitionError("step \(name): after lists step names") }
                after.append(dependency)
            }
        default: throw DefinitionError("step \(name): after is a step name or a list of them")
        }
        var map: String?
        switch fields["map"] {
        case nil: break
        case .string(let text)?:
            let pieces: [Template.Piece]
            do { pieces = try Template.pieces(text) } catch { throw DefinitionError("step \(name): \(error.description)") }
            guard pieces.count == 1, case .reference = pieces[0] else {
                throw DefinitionError("step \(name): map is one reference to a list, such as \"{{input.sources}}\"")
            }
            map = text
        default: throw DefinitionError("step \(name): map is one reference to a list, such as \"{{input.sources}}\"")
        }
        let concurrency = try Self.integer(fields["concurrency"], default: Self.defaultConcurrency, in: 1...1_000, "step \(name): concurrency")
        let attempts = try Self.integer(fields["attempts"], default: Self.defaultAttempts, in: 1...100, "step \(name): attempts")
        let timeout = try Self.seconds(fields["timeout_seconds"], "step \(name)")
        var policy = FailurePolicy.abort
        if let value = fields["on_failure"] {
            guard case .string(let text) = value, let parsed = FailurePolicy(rawValue: text) else {
                throw DefinitionError("step \(name): on_failure is abort or continue")
            }
            policy = parsed
        }
        var waitForCapability = false
        if let value = fields["wait_for_capability"] {
            guard case .bool(let wait) = value else { throw DefinitionError("step \(name): wait_for_capability is true or false") }
            waitForCapability = wait
        }
        var compensate: Compensation?
        if let value = fields["compensate"] {
            guard case .object(let compensation) = value else { throw DefinitionError("step \(name): compensate is an object with a capability") }
            try Self.only(["capability", "input", "attempts", "timeout_seconds"], in: compensation, where: "step \(name)'s compensate")
            guard case .string(let undo)? = compensation["capability"], Self.isName(undo) else {
                throw DefinitionError("step \(name): compensate needs a capability name")
            }
            let undoInput = compensation["input"] ?? .string("{{output}}")
            for reference in try Self.references(in: undoInput, where: "step \(name)'s compensate") {
                if reference.root == .item && map == nil {
                    throw DefinitionError("step \(name)'s compensate refers to \(reference), but the step has no map")
                }
                if let step = reference.step { after.append(step) }
            }
            compensate = Compensation(
                capability: undo, input: undoInput,
                attempts: try Self.integer(compensation["attempts"], default: 5, in: 1...100, "step \(name): compensate attempts"),
                timeoutSeconds: try Self.seconds(compensation["timeout_seconds"], "step \(name)'s compensate"))
        }
        var references = try Self.references(in: input, where: "step \(name)")
        if let map { references += try Self.references(in: .string(map), where: "step \(name)'s map") }
        for reference in references {
            switch reference.root {
            case .item, .index:
                guard map != nil else { throw DefinitionError("step \(name) refers to \(reference), but it has no map") }
            case .output:
                throw DefinitionError("step \(name) refers to \(reference): use steps.NAME.output (output alone is for compensate)")
            case .steps:
                guard reference.step != name else { throw DefinitionError("step \(name) refers to its own output") }
                after.append(reference.step!)
            case .input, .workflow: break
            }
        }
        var unique: [String] = []
        for dependency in after where !unique.contains(dependency) { unique.append(dependency) }
        return Step(
            name: name, capability: capability, input: input, after: unique, map: map, concurrency: concurrency,
            attempts: attempts, timeoutSeconds: timeout, onFailure: policy, compensate: compensate,
            waitForCapability: waitForCapability)
    }

    private static func references(in template: JSON, where place: String) throws(DefinitionError) -> [Reference] {
        do { return try Template.references(in: template) } catch { throw DefinitionError("\(place): \(error.description)") }
    }

    private static func only(_ keys: Set<String>, in fields: [String: JSON], where place: String) throws(DefinitionError) {
        if let unknown = fields.keys.sorted().first(where: { !keys.contains($0) }) {
            throw DefinitionError("\(place) has an unknown field '\(unknown)' (known: \(keys.sorted().joined(separator: ", ")))")
        }
    }

    private static func integer(_ value: JSON?, default fallback: Int, in range: ClosedRange<Int>, _ what: String) throws(DefinitionError) -> Int {
        guard let value else { return fallback }
        guard case .int(let number) = value, range.contains(Int(number)) else {
            throw DefinitionError("\(what) must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return Int(number)
    }

    private static func seconds(_ value: JSON?, _ what: String) throws(DefinitionError) -> Double {
        let seconds: Double
        switch value {
        case nil: return 300
        case .int(let number)?: seconds = Double(number)
        case .double(let number)?: seconds = number
        default: throw DefinitionError("\(what): timeout_seconds is a number of seconds")
        }
        guard seconds > 0, seconds <= 86_400 else { throw DefinitionError("\(what): timeout_seconds must be more than 0 and at most 86400") }
        return seconds
    }

    static func isName(_ text: String) -> Bool {
        (1...64).contains(text.utf8.count)
            && text.utf8.allSatisfy { $0.isASCIILetterOrDigit || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }
}

extension UInt8 {
    var isASCIILetterOrDigit: Bool { (48...57).contains(self) || (65...90).contains(self) || (97...122).contains(self) }
}

import Foundation

/// The reference syntax of workflow inputs: `{{input.topic}}`, `{{steps.research.output.sources.0}}`, `{{item}}`,
/// `{{index}}`, `{{output}}` (in a compensation: what the step it undoes returned) and `{{workflow.id}}`. A string
/// that is exactly one reference takes the referenced value with its type; references inside a longer string are
/// replaced by their text (strings as they are, other values as compact JSON). Nothing else is evaluated.
public struct Reference: Sendable, Equatable, CustomStringConvertible {
    public enum Root: String, Sendable { case input, steps, item, index, output, workflow }
    public let root: Root
    /// For `steps`: the step named.
    public let step: String?
    /// Keys and list indexes after the root (after `output` for a step).
    public let path: [String]
    public let text: String

    public var description: String { "{{\(self.text)}}" }

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    init(parsing text: String) throws(ParseError) {
        let trimmed = text.trimmingSpaces
        let parts = trimmed.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard let first = parts.first, let root = Root(rawValue: first), !parts.contains(where: \.isEmpty) else {
            throw ParseError(description: "{{\(text)}} is not a reference: use input, steps.NAME.output, item, index, output or workflow.id")
        }
        self.root = root
        self.text = trimmed
        switch root {
        case .steps:
            guard parts.count >= 3, parts[2] == "output" else {
                throw ParseError(description: "{{\(text)}}: write steps.NAME.output, then any keys")
            }
            self.step = parts[1]
            self.path = Array(parts.dropFirst(3))
        case .index:
            guard parts.count == 1 else { throw ParseError(description: "{{\(text)}}: index has no keys") }
            self.step = nil
            self.path = []
        case .workflow:
            guard parts == ["workflow", "id"] else { throw ParseError(description: "{{\(text)}}: the workflow offers only workflow.id") }
            self.step = nil
            self.path = []
        case .input, .item, .output:
            self.step = nil
            self.path = Array(parts.dropFirst())
        }
    }
}

/// What references resolve against.
public struct TemplateScope: Sendable {
    public var input: JSON
    public var outputs: [String: JSON]
    public var item: JSON?
    public var index: Int?
    public var output: JSON?
    public var workflowID: String

    public init(input: JSON, outputs: [String: JSON], item: JSON? = nil, index: Int? = nil, output: JSON? = nil, workflowID: String) {
        self.input = input
        self.outputs = outputs
        self.item = item
        self.index = index
        self.output = output
        self.workflowID = workflowID
    }
}

public enum Template {
    public struct RenderError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Every reference in a template, in order.
    static func references(in template: JSON) throws(Reference.ParseError) -> [Reference] {
        switch template {
        case .string(let text): return try Self.pieces(text).compactMap { piece in
                if case .reference(let reference) = piece { return reference }
                return nil
            }
        case .array(let values):
            var all: [Reference] = []
            for value in values { all += try Self.references(in: value) }
            return all
        case .object(let fields):
            var all: [Reference] = []
            for key in fields.keys.sorted() { all += try Self.references(in: fields[key]!) }
            return all
        case .null, .bool, .int, .double: return []
        }
    }

    public static func render(_ template: JSON, in scope: TemplateScope) throws(RenderError) -> JSON {
        switch template {
        case .string(let text):
            let pieces: [Piece]
            do { pieces = try Self.pieces(text) } catch { throw RenderError(description: error.description) }
            if pieces.count == 1, case .reference(let reference) = pieces[0] { return try Self.resolve(reference, in: scope) }
            var result = ""
            for piece in pieces {
                switch piece {
                case .text(let text): result += text
                case .reference(let reference): result += try Self.resolve(reference, in: scope).interpolated
                }
            }
            return .string(result)
        case .array(let values):
            var rendered: [JSON] = []
            for value in values { rendered.append(try Self.render(value, in: scope)) }
            return .array(rendered)
        case .object(let fields):
            var rendered: [String: JSON] = [:]
            for (key, value) in fields { rendered[key] = try Self.render(value, in: scope) }
            return .object(rendered)
        case .null, .bool, .int, .double:
            return template
        }
    }

    static func resolve(_ reference: Reference, in scope: TemplateScope) throws(RenderError) -> JSON {
        var value: JSON
        switch reference.root {
        case .input: value = scope.input
        case .steps:
            guard let step = reference.step, let output = scope.outputs[step] else {
                throw RenderError(description: "\(reference): step \(reference.step ?? "?") has no output")
            }
            value = output
        case .item:
            guard let item = scope.item else { throw RenderError(description: "\(reference): only a map step has an item") }
            value = item
        case .index:
            guard let index = scope.index else { throw RenderError(description: "\(reference): only a map step has an index") }
            return .int(Int64(index))
        case .output:
            guard let output = scope.output else { throw RenderError(description: "\(reference): only a compensation has an output") }
            value = output
        case .workflow:
            return .string(scope.workflowID)
        }
        for key in reference.path {
            switch value {
            case .object(let fields):
                guard let next = fields[key] else { throw RenderError(description: "\(reference): there is no '\(key)' there") }
                value = next
            case .array(let values):
                guard let index = Int(key), values.indices.contains(index) else {
                    throw RenderError(description: "\(reference): '\(key)' is not an index of a list of \(values.count)")
                }
                value = values[index]
            default:
                throw RenderError(description: "\(reference): '\(key)' looks into a \(value.kind), which has no keys")
            }
        }
        return value
    }

    enum Piece {
        case text(String)
        case reference(Reference)
    }

    static func pieces(_ text: String) throws(Reference.ParseError) -> [Piece] {
        var pieces: [Piece] = []
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            if open.lowerBound > rest.startIndex { pieces.append(.text(String(rest[..<open.lowerBound]))) }
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                throw Reference.ParseError(description: "'\(text)' opens {{ without closing it")
            }
            pieces.append(.reference(try Reference(parsing: String(rest[open.upperBound..<close.lowerBound]))))
            rest = rest[close.upperBound...]
        }
        if !rest.isEmpty { pieces.append(.text(String(rest))) }
        return pieces
    }
}

extension JSON {
    var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .int, .double: return "number"
        case .string: return "string"
        case .array: return "list"
        case .object: return "object"
        }
    }
}

extension String {
    var trimmingSpaces: String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

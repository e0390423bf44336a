import Foundation

/// A JSON value a workflow holds (its input, steps' outputs, templates), Codable so a run can be stored whole.
public indirect enum JSON: Sendable, Equatable, Codable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Parses JSON text (any value at the top).
    public init(parsing bytes: some Collection<UInt8>) throws(ParseError) {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        } catch {
            let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
            throw ParseError(description: "not valid JSON" + (detail.map { ": \($0)" } ?? ""))
        }
        self.init(foundation: object)
    }

    /// A value from `JSONSerialization` (or Yams' plain types).
    public init(foundation value: Any) {
        switch value {
        case is NSNull: self = .null
        case let bool as Bool where type(of: value) == Bool.self: self = .bool(bool)
        case let number as NSNumber:
            switch String(cString: number.objCType) {
            case "c", "B": self = .bool(number.boolValue)
            case "d", "f":
                let double = number.doubleValue
                self = double == double.rounded() && abs(double) < 9e15 ? .int(Int64(double)) : .double(double)
            default: self = .int(number.int64Value)
            }
        case let int as Int: self = .int(Int64(int))
        case let double as Double: self = .double(double)
        case let string as String: self = .string(string)
        case let array as [Any]: self = .array(array.map(JSON.init(foundation:)))
        case let object as [String: Any]: self = .object(object.mapValues(JSON.init(foundation:)))
        default: self = .string("\(value)")
        }
    }

    /// Compact JSON text, keys sorted.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        self.write(into: &out)
        return out
    }

    public var text: String { String(decoding: self.bytes, as: UTF8.self) }

    private func write(into out: inout [UInt8]) {
        switch self {
        case .null: out += Array("null".utf8)
        case .bool(let value): out += Array((value ? "true" : "false").utf8)
        case .int(let value): out += Array(String(value).utf8)
        case .double(let value): out += Array((value.isFinite ? "\(value)" : "null").utf8)
        case .string(let value): Self.writeString(value, into: &out)
        case .array(let values):
            out.append(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                value.write(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let fields):
            out.append(UInt8(ascii: "{"))
            for (index, key) in fields.keys.sorted().enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                Self.writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                fields[key]!.write(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ value: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [0x5C, 0x22]
            case UInt8(ascii: "\\"): out += [0x5C, 0x5C]
            case 0x0A: out += [0x5C, UInt8(ascii: "n")]
            case 0x0D: out += [0x5C, UInt8(ascii: "r")]
            case 0x09: out += [0x5C, UInt8(ascii: "t")]
            case 0..<0x20: out += Array(String(format: "\\u%04x", byte).utf8)
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Stored runs hold a value as its compact text: one string to encode and one parse to read, where a tree of
    /// Codable containers cost a measurable share of each step.
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do {
            try self.init(parsing: Array(text.utf8))
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.text)
    }

    /// The value as text inside a larger string: a string as it is, anything else as compact JSON.
    var interpolated: String {
        if case .string(let value) = self { return value }
        return self.text
    }
}

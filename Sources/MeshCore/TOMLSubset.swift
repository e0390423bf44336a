/// The part of TOML that AgentMesh's own files use: `[table]` headers, `key = value` pairs, `#` comments, and
/// values that are basic strings, integers, booleans or one-line arrays of those. Anything else is an error that
/// names the line, so a hand-edited file never half-loads.
public struct TOMLDocument: Sendable, Equatable {
    public enum Value: Sendable, Equatable {
        case string(String)
        case integer(Int64)
        case boolean(Bool)
        case array([Value])
    }

    /// Keys of the top level live under the table name "".
    public var tables: [String: [String: Value]] = [:]

    public init() {}

    public subscript(table: String, key: String) -> Value? { self.tables[table]?[key] }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let line: Int
        public let message: String
        public var description: String { "line \(self.line): \(self.message)" }
    }

    public init(parsing text: String) throws(ParseError) {
        var current = ""
        self.tables[""] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            var scanner = Scanner(Array(rawLine.utf8), line: lineNumber)
            scanner.skipSpaces()
            if scanner.atEndOfLine { continue }
            if scanner.peek == UInt8(ascii: "[") {
                scanner.advance()
                let name = try scanner.bareKey()
                try scanner.expect(UInt8(ascii: "]"))
                try scanner.expectEndOfLine()
                guard self.tables[name] == nil else { throw ParseError(line: lineNumber, message: "table [\(name)] appears twice") }
                self.tables[name] = [:]
                current = name
                continue
            }
            let key = try scanner.bareKey()
            scanner.skipSpaces()
            try scanner.expect(UInt8(ascii: "="))
            scanner.skipSpaces()
            let value = try scanner.value()
            try scanner.expectEndOfLine()
            guard self.tables[current]?[key] == nil else {
                throw ParseError(line: lineNumber, message: "key '\(key)' appears twice")
            }
            self.tables[current, default: [:]][key] = value
        }
    }

    /// Quotes a string as a TOML basic string.
    public static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    private struct Scanner {
        let bytes: [UInt8]
        let line: Int
        var position = 0

        init(_ bytes: [UInt8], line: Int) {
            // Tolerate Windows line endings.
            self.bytes = bytes.last == UInt8(ascii: "\r") ? Array(bytes.dropLast()) : bytes
            self.line = line
        }

        var peek: UInt8? { self.position < self.bytes.count ? self.bytes[self.position] : nil }
        var atEndOfLine: Bool { self.peek == nil || self.peek == UInt8(ascii: "#") }
        mutating func advance() { self.position += 1 }

        func error(_ message: String) -> ParseError { ParseError(line: self.line, message: message) }

        mutating func skipSpaces() {
            while let c = self.peek, c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") { self.advance() }
        }

        mutating func expect(_ c: UInt8) throws(ParseError) {
            guard self.peek == c else { throw self.error("expected '\(Character(Unicode.Scalar(c)))'") }
            self.advance()
        }

        mutating func expectEndOfLine() throws(ParseError) {
            self.skipSpaces()
            guard self.atEndOfLine else { throw self.error("unexpected text after the value") }
        }

        mutating func bareKey() throws(ParseError) -> String {
            let start = self.position
            while let c = self.peek,
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: "_")
                    || c == UInt8(ascii: "-")
            {
                self.advance()
            }
            guard self.position > start else { throw self.error("expected a key") }
            return String(decoding: self.bytes[start..<self.position], as: UTF8.self)
        }

        mutating func value() throws(ParseError) -> Value {
            switch self.peek {
            case UInt8(ascii: "\""): return .string(try self.basicString())
            case UInt8(ascii: "["):
                self.advance()
                var elements: [Value] = []
                while true {
                    self.skipSpaces()
                    if self.peek == UInt8(ascii: "]") { self.advance(); break }
                    let element = try self.value()
                    if case .array = element { throw self.error("nested arrays are not supported") }
                    elements.append(element)
                    self.skipSpaces()
                    if self.peek == UInt8(ascii: ",") { self.advance(); continue }
                    try self.expect(UInt8(ascii: "]"))
                    break
                }
                return .array(elements)
            case UInt8(ascii: "t"), UInt8(ascii: "f"):
                let word = self.word()
                switch word {
                case "true": return .boolean(true)
                case "false": return .boolean(false)
                default: throw self.error("unknown value '\(word)'")
                }
            case nil: throw self.error("expected a value")
            default:
                let word = self.word()
                guard let number = Int64(word.replacingUnderscores()) else { throw self.error("invalid value '\(word)'") }
                return .integer(number)
            }
        }

        private mutating func word() -> String {
            let start = self.position
            while let c = self.peek, c != UInt8(ascii: " "), c != UInt8(ascii: "\t"), c != UInt8(ascii: ","),
                c != UInt8(ascii: "]"), c != UInt8(ascii: "#")
            {
                self.advance()
            }
            return String(decoding: self.bytes[start..<self.position], as: UTF8.self)
        }

        private mutating func basicString() throws(ParseError) -> String {
            self.advance()  // opening quote
            var scalars = String.UnicodeScalarView()
            var raw: [UInt8] = []
            func flush() {
                scalars.append(contentsOf: String(decoding: raw, as: UTF8.self).unicodeScalars)
                raw.removeAll()
            }
            while true {
                guard let c = self.peek else { throw self.error("unterminated string") }
                self.advance()
                if c == UInt8(ascii: "\"") { break }
                if c != UInt8(ascii: "\\") {
                    raw.append(c)
                    continue
                }
                flush()
                guard let escape = self.peek else { throw self.error("unterminated string") }
                self.advance()
                switch escape {
                case UInt8(ascii: "\""): scalars.append("\"")
                case UInt8(ascii: "\\"): scalars.append("\\")
                case UInt8(ascii: "n"): scalars.append("\n")
                case UInt8(ascii: "t"): scalars.append("\t")
                case UInt8(ascii: "r"): scalars.append("\r")
                case UInt8(ascii: "u"):
                    guard self.position + 4 <= self.bytes.count,
                        let code = UInt32(String(decoding: self.bytes[self.position..<self.position + 4], as: UTF8.self), radix: 16),
                        let scalar = Unicode.Scalar(code)
                    else { throw self.error("invalid \\u escape") }
                    self.position += 4
                    scalars.append(scalar)
                default: throw self.error("unsupported escape '\\\(Character(Unicode.Scalar(escape)))'")
                }
            }
            flush()
            return String(scalars)
        }
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String { String(self.filter { $0 != "_" }) }
}

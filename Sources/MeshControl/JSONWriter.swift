#if canImport(Glibc)
import Glibc
#endif
package import Foundation

/// Writes compact JSON straight into bytes, as ``ControlAPI/encoder(pretty:)`` would (keys in the order written,
/// strings escaped the same way, dates as ISO 8601 seconds). For the documents a busy node writes for every task:
/// Foundation's encoder cost it a tenth of its CPU.
package struct JSONWriter {
    package private(set) var bytes: [UInt8] = []
    /// Per open object or array: whether the next member needs a comma before it.
    private var needsComma: [Bool] = []

    package init(capacity: Int = 512) { self.bytes.reserveCapacity(capacity) }

    /// The document and a closing newline, handed over without copying (a document may hold a 10 MiB result): the
    /// writer gives its bytes up, so the newline is appended to storage nothing else shares.
    package mutating func line() -> [UInt8] {
        self.bytes.append(0x0A)
        defer { self.bytes = [] }
        return self.bytes
    }

    package mutating func beginObject() {
        self.separate()
        self.bytes.append(UInt8(ascii: "{"))
        self.needsComma.append(false)
    }

    package mutating func endObject() {
        self.needsComma.removeLast()
        self.bytes.append(UInt8(ascii: "}"))
    }

    package mutating func beginArray() {
        self.separate()
        self.bytes.append(UInt8(ascii: "["))
        self.needsComma.append(false)
    }

    package mutating func endArray() {
        self.needsComma.removeLast()
        self.bytes.append(UInt8(ascii: "]"))
    }

    /// A member's key; its value follows. Keys are written as given (callers write them sorted).
    package mutating func key(_ key: String) {
        self.separate()
        self.appendString(key)
        self.bytes.append(UInt8(ascii: ":"))
        self.needsComma[self.needsComma.count - 1] = false
    }

    package mutating func string(_ value: String) {
        self.separate()
        self.appendString(value)
    }

    package mutating func int(_ value: Int) {
        self.separate()
        self.bytes += String(value).utf8
    }

    /// A finite number in Swift's shortest round-tripping form (JSON has no infinities or NaN: those are null).
    package mutating func double(_ value: Double) {
        self.separate()
        self.bytes += (value.isFinite ? String(value) : "null").utf8
    }

    package mutating func bool(_ value: Bool) {
        self.separate()
        self.bytes += (value ? "true" : "false").utf8
    }

    package mutating func null() {
        self.separate()
        self.bytes += "null".utf8
    }

    /// RFC 3339 to the millisecond, `2026-11-28T02:58:39.125Z` (``Timestamp``).
    package mutating func date(_ date: Date) {
        self.separate()
        self.bytes.append(UInt8(ascii: "\""))
        Timestamp.append(date, to: &self.bytes)
        self.bytes.append(UInt8(ascii: "\""))
    }

    /// A value that is already compact JSON (see ``JSONText/compacted(_:)``).
    package mutating func raw(_ json: [UInt8]) {
        self.separate()
        self.bytes += json
    }

    private mutating func separate() {
        guard let last = self.needsComma.indices.last else { return }
        if self.needsComma[last] { self.bytes.append(UInt8(ascii: ",")) }
        self.needsComma[last] = true
    }

    private mutating func appendString(_ value: String) {
        self.bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): self.bytes += "\\\"".utf8
            case UInt8(ascii: "\\"): self.bytes += "\\\\".utf8
            case 0x08: self.bytes += "\\b".utf8
            case 0x0C: self.bytes += "\\f".utf8
            case 0x0A: self.bytes += "\\n".utf8
            case 0x0D: self.bytes += "\\r".utf8
            case 0x09: self.bytes += "\\t".utf8
            case 0x00..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                self.bytes += "\\u00".utf8
                self.bytes.append(hex[Int(byte >> 4)])
                self.bytes.append(hex[Int(byte & 0x0F)])
            default: self.bytes.append(byte)
            }
        }
        self.bytes.append(UInt8(ascii: "\""))
    }
}

/// Checks JSON text without building values.
package enum JSONText {
    /// `bytes` as one compact JSON value (whitespace between tokens removed), or nil when they are not exactly one
    /// JSON value in UTF-8 (or nest deeper than `maximumDepth`).
    package static func compacted(_ bytes: [UInt8], maximumDepth: Int = 256) -> [UInt8]? {
        guard Self.isUTF8(bytes) else { return nil }
        var scanner = Scanner(input: bytes, maximumDepth: maximumDepth)
        guard scanner.value(depth: 0) else { return nil }
        scanner.skipWhitespace()
        guard scanner.position == bytes.count else { return nil }
        return scanner.output
    }

    /// A top-level member's value in an object's text: where it is, and whether it is already compact (no
    /// whitespace between its tokens), so that `compacted` of it would return it unchanged.
    package struct Member: Equatable, Sendable {
        package let range: Range<Int>
        package let isCompact: Bool
    }

    /// For a JSON object: where each top-level member's value is in `bytes`, or nil when `bytes` are not one JSON
    /// object. Lets a large input be taken as it was sent instead of being parsed into values and written again.
    package static func members(of bytes: [UInt8], maximumDepth: Int = 256) -> [String: Member]? {
        guard Self.isUTF8(bytes) else { return nil }
        var scanner = Scanner(input: bytes, maximumDepth: maximumDepth)
        scanner.recordsMembers = true
        scanner.writesOutput = false
        scanner.skipWhitespace()
        guard scanner.current == UInt8(ascii: "{"), scanner.value(depth: 0) else { return nil }
        scanner.skipWhitespace()
        guard scanner.position == bytes.count else { return nil }
        return scanner.members
    }

    /// `bytes` is valid UTF-8: checked without building a string when it is all ASCII (most JSON is).
    static func isUTF8(_ bytes: [UInt8]) -> Bool {
        let ascii = bytes.withUnsafeBufferPointer { buffer in
            var combined: UInt8 = 0
            for byte in buffer { combined |= byte }
            return combined < 0x80
        }
        return ascii || String(validating: bytes, as: UTF8.self) != nil
    }

    /// JSON text that is exactly one value, checked without copying it (whitespace kept).
    package static func isValue(_ bytes: [UInt8], maximumDepth: Int = 256) -> Bool {
        guard Self.isUTF8(bytes) else { return false }
        var scanner = Scanner(input: bytes, maximumDepth: maximumDepth)
        scanner.writesOutput = false
        guard scanner.value(depth: 0) else { return false }
        scanner.skipWhitespace()
        return scanner.position == bytes.count
    }

    private struct Scanner {
        let input: [UInt8]
        let maximumDepth: Int
        var position = 0
        var output: [UInt8] = []
        /// Off: only check (and find members); nothing is copied.
        var writesOutput = true
        /// With `recordsMembers`: the top-level object's members and where their values are.
        var recordsMembers = false
        var members: [String: Member] = [:]
        /// Whitespace bytes skipped between tokens so far.
        var whitespace = 0

        init(input: [UInt8], maximumDepth: Int) {
            self.input = input
            self.maximumDepth = maximumDepth
        }

        var current: UInt8? { self.position < self.input.count ? self.input[self.position] : nil }

        mutating func skipWhitespace() {
            let start = self.position
            while let byte = self.current, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 {
                self.position += 1
            }
            self.whitespace += self.position - start
        }

        mutating func take(_ byte: UInt8) -> Bool {
            guard self.current == byte else { return false }
            if self.writesOutput { self.output.append(byte) }
            self.position += 1
            return true
        }

        mutating func value(depth: Int) -> Bool {
            self.skipWhitespace()
            switch self.current {
            case UInt8(ascii: "{")?: return self.container(close: UInt8(ascii: "}"), depth: depth, keyed: true)
            case UInt8(ascii: "[")?: return self.container(close: UInt8(ascii: "]"), depth: depth, keyed: false)
            case UInt8(ascii: "\"")?: return self.string()
            case UInt8(ascii: "t")?: return self.literal("true")
            case UInt8(ascii: "f")?: return self.literal("false")
            case UInt8(ascii: "n")?: return self.literal("null")
            case let byte? where byte == UInt8(ascii: "-") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte):
                return self.number()
            default: return false
            }
        }

        mutating func container(close: UInt8, depth: Int, keyed: Bool) -> Bool {
            guard depth < self.maximumDepth else { return false }
            if self.writesOutput { self.output.append(self.input[self.position]) }
            self.position += 1
            self.skipWhitespace()
            if self.take(close) { return true }
            while true {
                var key: String?
                if keyed {
                    self.skipWhitespace()
                    let keyStart = self.position
                    guard self.current == UInt8(ascii: "\""), self.string() else { return false }
                    if self.recordsMembers, depth == 0 {
                        key = (try? JSONSerialization.jsonObject(with: Data(self.input[keyStart..<self.position]), options: .fragmentsAllowed)) as? String
                    }
                    self.skipWhitespace()
                    guard self.take(UInt8(ascii: ":")) else { return false }
                }
                self.skipWhitespace()
                let valueStart = self.position, whitespaceBefore = self.whitespace
                guard self.value(depth: depth + 1) else { return false }
                if let key {
                    self.members[key] = Member(range: valueStart..<self.position, isCompact: self.whitespace == whitespaceBefore)
                }
                self.skipWhitespace()
                if self.take(close) { return true }
                guard self.take(UInt8(ascii: ",")) else { return false }
            }
        }

        mutating func string() -> Bool {
            guard self.take(UInt8(ascii: "\"")) else { return false }
            while let byte = self.current {
                switch byte {
                case UInt8(ascii: "\""):
                    return self.take(byte)
                case UInt8(ascii: "\\"):
                    if self.writesOutput { self.output.append(byte) }
                    self.position += 1
                    guard let escaped = self.current else { return false }
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                        UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        _ = self.take(escaped)
                    case UInt8(ascii: "u"):
                        _ = self.take(escaped)
                        for _ in 0..<4 {
                            guard let hex = self.current, Self.isHexDigit(hex) else { return false }
                            _ = self.take(hex)
                        }
                    default:
                        return false
                    }
                case 0x00..<0x20:
                    return false
                default:
                    // A run of plain bytes is found and copied at once: a 10 MB string is one copy, not ten million
                    // appends.
                    let start = self.position
                    let end = self.input.withUnsafeBufferPointer { Self.endOfPlainRun($0, from: start + 1) }
                    if self.writesOutput {
                        if self.output.isEmpty { self.output.reserveCapacity(self.input.count) }
                        self.output += self.input[start..<end]
                    }
                    self.position = end
                }
            }
            return false
        }

        mutating func number() -> Bool {
            _ = self.take(UInt8(ascii: "-"))
            if !self.take(UInt8(ascii: "0")) {
                guard self.digits() else { return false }
            }
            if self.take(UInt8(ascii: ".")) {
                guard self.digits() else { return false }
            }
            if self.take(UInt8(ascii: "e")) || self.take(UInt8(ascii: "E")) {
                if !self.take(UInt8(ascii: "+")) { _ = self.take(UInt8(ascii: "-")) }
                guard self.digits() else { return false }
            }
            return true
        }

        mutating func digits() -> Bool {
            var any = false
            while let byte = self.current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
                _ = self.take(byte)
                any = true
            }
            return any
        }

        mutating func literal(_ word: String) -> Bool {
            for byte in word.utf8 {
                guard self.take(byte) else { return false }
            }
            return true
        }

        /// The first quote, backslash or control byte at or after `start`, eight bytes at a time: a word with none
        /// of them is passed in a few instructions (the tests below are exact as a whole, so a hit is then found byte
        /// by byte).
        static func endOfPlainRun(_ buffer: UnsafeBufferPointer<UInt8>, from start: Int) -> Int {
            var end = start
            if let base = buffer.baseAddress {
                let ones: UInt64 = 0x0101_0101_0101_0101
                let highs: UInt64 = 0x8080_8080_8080_8080
                while end + 8 <= buffer.count {
                    let word = UnsafeRawPointer(base + end).loadUnaligned(as: UInt64.self)
                    let quotes = word ^ (ones &* 0x22)
                    let backslashes = word ^ (ones &* 0x5C)
                    let special = ((quotes &- ones) & ~quotes) | ((backslashes &- ones) & ~backslashes)
                        | ((word &- ones &* 0x20) & ~word)
                    if special & highs != 0 { break }
                    end += 8
                }
            }
            while end < buffer.count {
                let next = buffer[end]
                if next == UInt8(ascii: "\"") || next == UInt8(ascii: "\\") || next < 0x20 { break }
                end += 1
            }
            return end
        }

        static func isHexDigit(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
        }
    }
}

/// A W3C trace context (`traceparent: 00-TRACE-PARENT-FLAGS`): which trace a task belongs to and which span is its
/// parent. The submitting node's span for a task is named by the task id's low 8 bytes, so it needs no storage.
public struct TraceContext: Sendable, Equatable, CustomStringConvertible {
    /// 16 bytes as 32 lowercase hex digits.
    public let traceID: String
    /// 8 bytes as 16 lowercase hex digits.
    public let parentID: String
    public let flags: String

    /// Checked byte by byte (it runs for every task document and offer): `00-` 32 hex `-` 16 hex `-` 2 hex, lowercase,
    /// ids not all zero.
    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count == 55, bytes[0] == UInt8(ascii: "0"), bytes[1] == UInt8(ascii: "0"), bytes[2] == UInt8(ascii: "-"),
            bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-")
        else { return nil }
        func isHex(_ range: Range<Int>) -> Bool {
            bytes[range].allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
        }
        guard isHex(3..<35), isHex(36..<52), isHex(53..<55),
            bytes[3..<35].contains(where: { $0 != 48 }), bytes[36..<52].contains(where: { $0 != 48 })
        else { return nil }
        self.traceID = String(decoding: bytes[3..<35], as: UTF8.self)
        self.parentID = String(decoding: bytes[36..<52], as: UTF8.self)
        self.flags = String(decoding: bytes[53..<55], as: UTF8.self)
    }

    public init(traceID: String, parentID: String, flags: String = "01") {
        (self.traceID, self.parentID, self.flags) = (traceID, parentID, flags)
    }

    /// A new trace, for a task submitted without one (its parent is then the task's own span: it has none above).
    public static func new(for task: TaskID, using generator: inout some RandomNumberGenerator) -> TraceContext {
        let trace = TaskID(using: &generator).description
        return TraceContext(traceID: trace, parentID: Self.spanID(of: task))
    }

    public var description: String { "00-\(self.traceID)-\(self.parentID)-\(self.flags)" }

    /// The submitting node's span for a task.
    public static func spanID<Kind>(of id: MeshID<Kind>) -> String { String(id.description.suffix(16)) }

    /// The executing node's span for one attempt of a task.
    public static func executionSpanID(of task: TaskID, epoch: UInt32) -> String {
        let mixed = task.high ^ (UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15) ^ 0xA5A5_A5A5_A5A5_A5A5
        let value = mixed == 0 ? 1 : mixed
        let digits = Array("0123456789abcdef")
        return String((0..<16).map { digits[Int((value >> (60 - 4 * UInt64($0))) & 0xF)] })
    }

    /// The same trace with another parent span.
    public func child(of span: String) -> TraceContext { TraceContext(traceID: self.traceID, parentID: span, flags: self.flags) }
}

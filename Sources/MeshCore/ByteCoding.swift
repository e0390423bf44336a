/// Big-endian writer for the core's binary formats (member records, claims, membership messages).
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) { self.bytes.reserveCapacity(capacity) }

    public mutating func u8(_ value: UInt8) { self.bytes.append(value) }
    public mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.bigEndian) { self.bytes += $0 } }
    public mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { self.bytes += $0 } }
    public mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { self.bytes += $0 } }
    public mutating func raw(_ value: some Sequence<UInt8>) { self.bytes += value }
    public mutating func nodeID(_ id: NodeID) {
        self.u64(id.high)
        self.u64(id.low)
    }

    /// A string of at most 255 UTF-8 bytes, length-prefixed; the caller validates the length.
    public mutating func shortString(_ text: String) {
        let utf8 = Array(text.utf8.prefix(255))
        self.u8(UInt8(utf8.count))
        self.bytes += utf8
    }

    /// A byte string of up to 4 GiB, length-prefixed.
    public mutating func longBytes(_ value: [UInt8]) {
        self.u32(UInt32(value.count))
        self.bytes += value
    }

    /// Large byte strings kept as parts of their own (see ``parts``) rather than copied into ``bytes``.
    private var apart: [ArraySlice<UInt8>] = []

    /// Appends `value` as it is: a part of its own when it is large, so a megabyte is not copied on its way out.
    public mutating func rawApart(_ value: ArraySlice<UInt8>) {
        guard value.count >= Self.apartLength else { return self.raw(value) }
        if !self.bytes.isEmpty { self.apart.append(self.bytes[...]) }
        self.apart.append(value)
        self.bytes = []
    }

    /// What was written, in order, as the parts `rawApart` left whole and the runs between them.
    public var parts: [ArraySlice<UInt8>] {
        self.bytes.isEmpty && !self.apart.isEmpty ? self.apart : self.apart + [self.bytes[...]]
    }

    /// Below this a byte string is copied in: a part of its own costs more than copying it.
    static let apartLength = 16 * 1024
}

/// Bounds-checked big-endian reader: every read of a peer's bytes either succeeds or throws, never traps.
public struct ByteReader: Sendable {
    public struct Truncated: Error, Equatable, CustomStringConvertible {
        public let what: String
        public var description: String { "truncated \(self.what)" }
    }

    private let bytes: [UInt8]
    public private(set) var offset = 0

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = min(max(offset, 0), bytes.count)
    }

    public var remaining: Int { self.bytes.count - self.offset }
    public var isAtEnd: Bool { self.remaining == 0 }

    public mutating func take(_ count: Int, _ what: String) throws(Truncated) -> ArraySlice<UInt8> {
        guard count >= 0, self.remaining >= count else { throw Truncated(what: what) }
        defer { self.offset += count }
        return self.bytes[self.offset..<self.offset + count]
    }

    public mutating func u8(_ what: String) throws(Truncated) -> UInt8 { try self.take(1, what).first! }
    public mutating func u16(_ what: String) throws(Truncated) -> UInt16 { UInt16(try self.integer(2, what)) }
    public mutating func u32(_ what: String) throws(Truncated) -> UInt32 { UInt32(try self.integer(4, what)) }
    public mutating func u64(_ what: String) throws(Truncated) -> UInt64 { try self.integer(8, what) }
    public mutating func nodeID(_ what: String) throws(Truncated) -> NodeID {
        NodeID(high: try self.u64(what), low: try self.u64(what))
    }

    public mutating func shortString(_ what: String) throws(Truncated) -> String {
        let count = Int(try self.u8(what))
        return String(decoding: try self.take(count, what), as: UTF8.self)
    }

    public mutating func longBytes(_ what: String, limit: Int) throws(Truncated) -> [UInt8] {
        let count = Int(try self.u32(what))
        guard count <= limit else { throw Truncated(what: "\(what) (length \(count) over \(limit))") }
        return Array(try self.take(count, what))
    }

    private mutating func integer(_ size: Int, _ what: String) throws(Truncated) -> UInt64 {
        try self.take(size, what).reduce(0) { $0 << 8 | UInt64($1) }
    }
}

import Foundation
import MeshControl
import MeshCore
import MeshCrypto
import MeshStorage

/// What an idempotency key was first used for: the request's digest and the task or workflow it created.
struct IdempotencyRecord: Sendable, Codable, Equatable {
    let key: String
    /// SHA-256 (hex) of the request as the node read it: a repeat must match it.
    let digest: String
    /// The id of the task or workflow run it made (`kind` says which).
    let target: TaskID
    /// `task` or `workflow`.
    let kind: String
    /// Wall-clock milliseconds of the first use.
    let time: Int64
}

/// Idempotency keys in use: a repeat within `retention` gets the original; bounded in number (the oldest go first).
struct IdempotencyBook {
    static let document = "idempotency"
    static let maximumKeys = 100_000
    static let retentionMilliseconds: Int64 = 24 * 3_600_000

    private(set) var records: [String: IdempotencyRecord] = [:]
    private var order: [String] = []
    private var orderStart = 0

    /// The record of a key still within its retention.
    func record(_ key: String, now: Int64) -> IdempotencyRecord? {
        guard let record = self.records[key], now - record.time < Self.retentionMilliseconds else { return nil }
        return record
    }

    /// Adds a record; returns the keys dropped (past retention, or the oldest beyond the bound).
    mutating func add(_ record: IdempotencyRecord, now: Int64) -> [String] {
        self.records[record.key] = record
        self.order.append(record.key)
        var dropped: [String] = []
        while self.orderStart < self.order.count {
            let oldest = self.order[self.orderStart]
            guard let kept = self.records[oldest] else { self.orderStart += 1; continue }
            guard self.records.count > Self.maximumKeys || now - kept.time >= Self.retentionMilliseconds else { break }
            self.records[oldest] = nil
            dropped.append(oldest)
            self.orderStart += 1
        }
        if self.orderStart > 4_096, self.orderStart * 2 > self.order.count {
            self.order.removeFirst(self.orderStart)
            self.orderStart = 0
        }
        return dropped
    }

    mutating func forget(_ key: String) { self.records[key] = nil }

    /// The store's id for a key's record.
    static func documentID(_ key: String) -> TaskID {
        let digest = SHA256.hash(Array("agentmesh idempotency key \(key)".utf8))
        return TaskID(
            high: digest[0..<8].reduce(0) { $0 << 8 | UInt64($1) }, low: digest[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
    }

    /// `Idempotency-Key`: 1 to 255 printable ASCII characters.
    static func isValid(_ key: String) -> Bool {
        (1...255).contains(key.utf8.count) && key.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }
}

extension MeshNode {
    /// What a request with an `Idempotency-Key` does: go ahead (recording the key once it has a target), or answer
    /// at once with the original (a repeat) or a refusal (a different request under the same key).
    enum IdempotencyCheck {
        case proceed(key: String?, digest: String)
        case repeated(TaskID)
        case refused(ControlResponse)
    }

    /// The request is digested only when it carries a key.
    func checkIdempotency(_ request: ControlRequest, canonical parts: @autoclosure () -> [[UInt8]], kind: String) -> IdempotencyCheck {
        guard let key = request.headers["idempotency-key"] else { return .proceed(key: nil, digest: "") }
        let digest = Hex.encode(SHA256.hash(parts().flatMap { $0 + [0] }))
        guard IdempotencyBook.isValid(key) else {
            return .refused(.error(400, "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces"))
        }
        guard let record = self.taskPlane.idempotency.record(key, now: AuditLog.wallClockMilliseconds()) else {
            return .proceed(key: key, digest: digest)
        }
        guard record.kind == kind, record.digest == digest else {
            // 422, as the IETF Idempotency-Key draft says: 409 already means "no live member offers it".
            return .refused(.error(422, "the idempotency key '\(key)' was used for a different request (\(record.kind) \(record.target)); send a new key"))
        }
        return .repeated(record.target)
    }

    /// Records a key for the task or workflow it created, in the store with it.
    func rememberIdempotencyKey<Kind>(_ key: String, digest: String, target: MeshID<Kind>, kind: String) {
        let now = AuditLog.wallClockMilliseconds()
        let record = IdempotencyRecord(key: key, digest: digest, target: TaskID(target), kind: kind, time: now)
        var changes: [TaskStore.Change] = []
        if let body = try? JSONEncoder().encode(record) {
            changes.append(.document(kind: IdempotencyBook.document, id: .init(IdempotencyBook.documentID(key)), body: Array(body)))
        }
        for dropped in self.taskPlane.idempotency.add(record, now: now) {
            changes.append(.forgetDocument(kind: IdempotencyBook.document, id: .init(IdempotencyBook.documentID(dropped))))
        }
        self.taskStore?.enqueue(changes)
    }

    func forgetIdempotencyKey(_ key: String) {
        self.taskPlane.idempotency.forget(key)
        self.taskStore?.enqueue([.forgetDocument(kind: IdempotencyBook.document, id: .init(IdempotencyBook.documentID(key)))])
    }

    func restoreIdempotencyKeys() {
        let now = AuditLog.wallClockMilliseconds()
        let records = self.restoredDocuments(IdempotencyBook.document, as: IdempotencyRecord.self, what: "idempotency key")
            .map(\.value).sorted { $0.time < $1.time }
        var dropped: [String] = []
        for record in records { dropped += self.taskPlane.idempotency.add(record, now: now) }
        self.taskStore?.enqueue(dropped.map { .forgetDocument(kind: IdempotencyBook.document, id: .init(IdempotencyBook.documentID($0))) })
    }
}

import Foundation
public import MeshControl
public import MeshCore
public import MeshCrypto
public import MeshStorage

// The control API's audit documents, mapped from what the audit log reads back (``AuditFolder/Log``): storage
// returns its own types, and the control layer shows them.

extension ControlAPI.AuditLogState {
    /// A log's verification: its readable prefix's counts, and the first problem (a broken chain, a log written by
    /// another node than `localKey`'s).
    public init(_ log: AuditFolder.Log, localKey: Ed25519PublicKey?) {
        guard let report = log.report else {
            self.init(
                file: log.file, peerID: nil, peerName: nil, ok: false, records: 0, checkpoints: 0, peerCheckpoints: 0,
                unsignedAtEnd: 0, incompleteTail: 0, problem: "\(log.file): \(log.error ?? "unreadable")")
            return
        }
        let peer = "\(report.header.peerName) (\(report.header.peerID))"
        var problem = report.problem.map { "peer \(peer): \($0)" }
        if problem == nil, let localKey, report.header.local != localKey {
            problem = "peer \(peer): the log was written by another node"
        }
        self.init(
            file: log.file, peerID: report.header.peerID.description, peerName: report.header.peerName, ok: problem == nil,
            records: report.recordCount, checkpoints: report.checkpoints, peerCheckpoints: report.peerCheckpoints,
            unsignedAtEnd: report.unsignedAtEnd, incompleteTail: report.incompleteTail, problem: problem)
    }
}

extension ControlAPI.AuditRecordInfo {
    public init(peerID: String, peerName: String, record: AuditRecord) {
        let entry = record.entry
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        self.init(
            peerID: peerID, peerName: peerName, index: record.index,
            time: formatter.string(from: Date(timeIntervalSince1970: Double(entry.time) / 1000)), timeMilliseconds: entry.time,
            event: entry.event.description, session: entry.session,
            message: entry.message == 0 ? nil : TaskMessage.name(ofTag: entry.message), task: entry.task?.description,
            epoch: entry.epoch, digest: entry.digest.isEmpty ? nil : Hex.encode(entry.digest), detail: entry.detail)
    }

    /// The newest records of `logs`, newest first.
    public static func newest(in logs: [AuditFolder.Log], limit: Int) -> [ControlAPI.AuditRecordInfo] {
        var rows: [ControlAPI.AuditRecordInfo] = []
        for log in logs {
            guard let report = log.report else { continue }
            rows += report.records.map { .init(peerID: report.header.peerID.description, peerName: report.header.peerName, record: $0) }
        }
        rows.sort { ($0.timeMilliseconds, $0.index) > ($1.timeMilliseconds, $1.index) }
        return limit > 0 ? Array(rows.prefix(limit)) : rows
    }
}

extension ControlAPI.AuditSummary {
    public init(logs: [AuditFolder.Log], localKey: Ed25519PublicKey?, last: Int) {
        self.init(logs: logs.map { ControlAPI.AuditLogState($0, localKey: localKey) }, records: ControlAPI.AuditRecordInfo.newest(in: logs, limit: last))
    }
}

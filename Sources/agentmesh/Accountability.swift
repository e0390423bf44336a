import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto
import MeshStorage
import MeshControl
import MeshTransport

struct Limits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each peer's limits: rate, tokens left, accepted, declined or dropped, and any ban.")

    @OptionGroup var options: HomeOptions

    @Flag(help: "One JSON document instead of a table.")
    var json = false

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let limits = try reporting { try client.get("/v1/limits", as: ControlAPI.Limits.self) }
        if self.json {
            try printJSON(limits)
            return
        }
        let defaults = limits.defaults.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        print("node-wide limits: \(defaults)")
        guard !limits.peers.isEmpty else {
            print("no peer has sent anything yet")
            return
        }
        print(renderTable(
            header: ["PEER", "ID", "CLASS", "RATE", "TOKENS", "ACCEPTED", "REFUSED", "BAN"],
            rows: limits.peers.flatMap { peer in
                peer.classes.map { usage in
                    let ban: String
                    if let until = peer.bannedUntil {
                        ban = "until \(until.timeOfDay) (ban \(peer.bans))"
                    } else {
                        ban = peer.bans > 0 ? "none now (\(peer.bans) so far)" : "-"
                    }
                    return [
                        peer.name, String(peer.id.prefix(12)), usage.limitClass, usage.rate,
                        Rate.format(usage.tokensLeft), "\(usage.accepted)", "\(usage.refused)", ban,
                    ]
                }
            }))
    }
}

struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the per-peer audit logs (newest first), or verify them.",
        discussion: """
            Reads DIR/audit directly: it needs no running node, so an auditor can check a copied home folder.
            --verify checks every record's framing, sequence number and hash chain, this node's checkpoint
            signatures and the peers' transcript signatures, and exits non-zero naming the peer and the index of
            the first bad record. An incomplete record at the very end (a crash mid-append) is reported, not fatal.
            """)

    @OptionGroup var options: HomeOptions

    @Option(help: ArgumentHelp("Only this peer: its node id (or a prefix of it) or its name.", valueName: "ID"))
    var peer: String?

    @Flag(help: "Verify the logs instead of showing them.")
    var verify = false

    @Option(help: "Show at most this many records (0: all).")
    var last = 50

    @Flag(help: "JSON instead of a table.")
    var json = false

    func validate() throws {
        guard self.last >= 0 else { throw ValidationError("--last must be 0 or more") }
    }

    func run() throws {
        let home = self.options.nodeHome
        var logs = AuditFolder.read(home.auditDirectory, keepRecords: !self.verify)
        if let peer = self.peer {
            let all = logs
            logs = logs.filter { log in
                let name = (log.file as NSString).lastPathComponent
                return name.hasPrefix(peer.lowercased()) || log.report?.header.peerName == peer
            }
            guard !logs.isEmpty else {
                let known = all.compactMap { $0.report.map { "\($0.header.peerName) (\($0.header.peerID.short))" } }.sorted()
                throw CLIError(
                    "no audit log in \(home.auditDirectory) for peer '\(peer)'; "
                        + (known.isEmpty ? "there are no audit logs yet" : "logs exist for: \(known.joined(separator: ", "))"),
                    status: .badInput)
            }
        }
        if self.verify {
            try self.verify(logs, home: home)
        } else {
            try self.show(logs)
        }
    }

    private func verify(_ logs: [AuditFolder.Log], home: NodeHome) throws {
        let localKey = try? home.loadIdentity().signingKey.publicKey
        let results = logs.map { ControlAPI.AuditLogState($0, localKey: localKey) }
        let failures = results.compactMap { $0.ok ? nil : $0.problem ?? "\($0.file): broken" }
        if self.json {
            try printJSON(results)
        } else {
            for result in results {
                let who = "\(result.peerName ?? "?") \(result.peerID.map { String($0.prefix(12)) } ?? (result.file as NSString).lastPathComponent)"
                if result.ok {
                    var line = "ok    \(who): \(result.records) records; checkpoints signed by this node: \(result.checkpoints); transcripts signed by the peer: \(result.peerCheckpoints); records after the last checkpoint: \(result.unsignedAtEnd)"
                    if result.incompleteTail > 0 {
                        line += "; an incomplete record of \(result.incompleteTail) bytes at the end (a crash mid-append; the node cuts it off when it starts)"
                    }
                    print(line)
                } else {
                    print("FAIL  \(who): \(result.problem ?? "broken")")
                }
            }
            if logs.isEmpty { print("no audit logs in \(home.auditDirectory)") }
        }
        if let first = failures.first {
            throw CLIError(failures.count == 1 ? "audit log broken: \(first)" : "\(failures.count) audit logs broken; first: \(first)")
        }
    }

    private func show(_ logs: [AuditFolder.Log]) throws {
        for log in logs {
            guard let report = log.report else {
                FileHandle.standardError.write(Data("warning: \(log.file): \(log.error ?? "unreadable")\n".utf8))
                continue
            }
            if let problem = report.problem {
                FileHandle.standardError.write(Data("warning: \(log.file): broken at \(problem); showing the records before it (run 'agentmesh audit --verify')\n".utf8))
            }
        }
        let rows = ControlAPI.AuditRecordInfo.newest(in: logs, limit: self.last)
        if self.json {
            try printJSON(rows)
            return
        }
        guard !rows.isEmpty else {
            print("no audit records")
            return
        }
        print(renderTable(
            header: ["TIME", "PEER", "#", "EVENT", "MESSAGE", "TASK", "DETAIL"],
            rows: rows.map { row in
                [
                    Date(timeIntervalSince1970: Double(row.timeMilliseconds) / 1000).timeOfDay, row.peerName, "\(row.index)", row.event,
                    row.message ?? "-", row.task.map { "\(String($0.prefix(12)))#\(row.epoch)" } ?? "-", row.detail,
                ]
            }))
    }
}

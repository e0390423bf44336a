import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto
import MeshTestKit
import MeshTransport
import Testing

@testable import agentmesh
import MeshControl

@Suite struct CommandParsingTests {
    @Test func runParsesListenJoinsAndFlags() throws {
        let command = try AgentMesh.parseAsRoot([
            "run", "--home", "/tmp/x", "--listen", "127.0.0.1:0", "--join", "127.0.0.1:7001", "--join", "[::1]:7002",
            "--open", "--log-level", "debug",
        ])
        let run = try #require(command as? Run)
        #expect(run.listen == "127.0.0.1:0")
        #expect(run.join == ["127.0.0.1:7001", "[::1]:7002"])
        #expect(run.open)
        #expect(run.options.home == "/tmp/x")
    }

    /// config.toml takes every `run` setting: its keys are checked against `run`'s own options (read from the
    /// parser), so an option added without a key fails here. Three were missing (max_artifact_bytes,
    /// artifact_store_bytes, set_aside_broken_audit).
    @Test func everyRunOptionIsAConfigKeyAndTakesEffect() throws {
        let help = try #require(try JSONSerialization.jsonObject(with: Data(Run._dumpHelp().utf8)) as? [String: Any])
        let arguments = try #require((help["command"] as? [String: Any])?["arguments"] as? [[String: Any]])
        let options = arguments.compactMap { argument in
            (argument["names"] as? [[String: Any]])?.first { $0["kind"] as? String == "long" }?["name"] as? String
        }
        let notSettings: Set = ["home", "help", "version", "limit"]  // --limit is the [limits] table
        let keys = options.filter { !notSettings.contains($0) }.map { option in
            option == "capability" ? "capabilities" : option.replacingOccurrences(of: "-", with: "_")
        }
        #expect(keys.count > 15, "\(options)")
        #expect(Set(keys) == Set(RunConfiguration.keys), "options without a key: \(Set(keys).subtracting(RunConfiguration.keys).sorted()); keys without an option: \(Set(RunConfiguration.keys).subtracting(keys).sorted())")

        let file = try RunConfiguration(parsing: """
            listen = "127.0.0.1:0"
            max_artifact_bytes = "2M"
            artifact_store_bytes = 3000000
            set_aside_broken_audit = true
            """)
        let run = try #require(try AgentMesh.parseAsRoot(["run", "--home", "/tmp/x"]) as? Run)
        let settings = try run.effectiveSettings(file).settings
        #expect(settings.maximumArtifact == UInt64(Rate.number("2M")!) && settings.artifactCapacity == 3_000_000)
        #expect(settings.setAsideBrokenAuditLogs)
        let flagWins = try #require(try AgentMesh.parseAsRoot(["run", "--home", "/tmp/x", "--max-artifact-bytes", "5K"]) as? Run)
        #expect(try flagWins.effectiveSettings(file).settings.maximumArtifact == UInt64(Rate.number("5K")!))
        let bad = try RunConfiguration(parsing: "listen = \"127.0.0.1:0\"\nmax_artifact_bytes = \"lots\"")
        #expect(throws: CLIError.self) { try run.effectiveSettings(bad) }
        #expect(throws: (any Error).self) { try RunConfiguration(parsing: "set_aside_broken_audit = \"yes\"") }
    }

    @Test(arguments: [
        ["run", "--listen", "nonsense"], ["run", "--listen", "127.0.0.1:70000"], ["run", "--durability", "sometimes"],
        ["run", "--listen", "127.0.0.1:1", "--join", "host"], ["run", "--listen", "127.0.0.1:1", "--log-level", "loud"],
    ])
    func badRunArgumentsAreRejected(arguments: [String]) {
        #expect(throws: (any Error).self) { try AgentMesh.parseAsRoot(arguments) }
    }

    @Test func membersAndTrustParse() throws {
        let members = try #require(try AgentMesh.parseAsRoot(["members", "--json"]) as? Members)
        #expect(members.json)
        let trust = try #require(try AgentMesh.parseAsRoot(["trust", "line-or-file"]) as? Trust)
        #expect(trust.peer == "line-or-file")
    }

    @Test func trustReadsLinesFilesAndDescriptors() throws {
        let identity = NodeIdentity(name: "peer-1").publicIdentity
        let line = IdentityLine.render(identity)
        #expect(try Trust.identity(from: line) == identity)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("am-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let lineFile = directory.appendingPathComponent("identity.pub")
        try (line + "\n").write(to: lineFile, atomically: true, encoding: .utf8)
        #expect(try Trust.identity(from: lineFile.path) == identity)
        let descriptorFile = directory.appendingPathComponent("peer.toml")
        try PeerDescriptor(identity: identity).render().write(to: descriptorFile, atomically: true, encoding: .utf8)
        #expect(try Trust.identity(from: descriptorFile.path) == identity)
        let garbage = directory.appendingPathComponent("garbage")
        try "hello".write(to: garbage, atomically: true, encoding: .utf8)
        #expect(throws: CLIError.self) { try Trust.identity(from: garbage.path) }
        #expect(throws: CLIError.self) { try Trust.identity(from: "no-such-file-or-line") }
    }

    @Test func tablesAlignColumns() {
        let table = renderTable(header: ["A", "LONGER"], rows: [["xyz", "1"], ["q", "22"]])
        #expect(table == "A    LONGER\nxyz  1\nq    22")
    }
}

/// The built binary, as a user runs it: one sentence on stderr and a non-zero exit for every mistake.
@Suite(.serialized) struct CommandLineTests {
    /// The test runner lives in the build folder, next to the `agentmesh` binary that `swift build` made.
    static var binary: String {
        let runner = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: runner).deletingLastPathComponent().appendingPathComponent("agentmesh").path
    }

    struct Outcome {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    static func agentmesh(_ arguments: String...) throws -> Outcome { try self.agentmesh(arguments) }

    static func agentmesh(_ arguments: [String]) throws -> Outcome {
        let (status, stdout, stderr) = try SpawnedProcess.run(self.binary, arguments)
        return Outcome(status: status, stdout: stdout, stderr: stderr)
    }

    @Test func homeLifecycleAndMistakes() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "build agentmesh first: \(Self.binary)")
        let root = "/tmp/am-cli-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }

        let created = try Self.agentmesh("init", "--home", root + "/a", "--name", "alpha")
        #expect(created.status == 0)
        #expect(created.stdout.contains("agentmesh-id/1 name=alpha"))
        let keyMode = try FileManager.default.attributesOfItem(atPath: root + "/a/identity.key")[.posixPermissions] as? Int
        #expect(keyMode == 0o600)
        let networkMode = try FileManager.default.attributesOfItem(atPath: root + "/a/network.key")[.posixPermissions] as? Int
        #expect(networkMode == 0o600)
        #expect(try FileManager.default.attributesOfItem(atPath: root + "/a/network.key")[.size] as? Int == 32)

        let again = try Self.agentmesh("init", "--home", root + "/a")
        #expect(again.status != 0)
        #expect(again.stderr.contains("refusing to overwrite"))

        let line = try Self.agentmesh("id", "--home", root + "/a").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(line.hasPrefix("agentmesh-id/1 name=alpha"))
        #expect(try Self.agentmesh("init", "--home", root + "/b", "--network-key-file", root + "/a/network.key").status == 0)
        let trusted = try Self.agentmesh("trust", "--home", root + "/b", line)
        #expect(trusted.status == 0)
        #expect(trusted.stdout.contains("Trusted alpha"))
        #expect(try Self.agentmesh("trust", "--home", root + "/b", line).stdout.contains("Already trusted"))

        let mangled = try Self.agentmesh("trust", "--home", root + "/b", "agentmesh-id/1 name=x id=12")
        #expect(mangled.status != 0)
        #expect(mangled.stderr.contains("invalid 'id'"))

        let selfTrust = try Self.agentmesh("trust", "--home", root + "/a", line)
        #expect(selfTrust.status != 0)
        #expect(selfTrust.stderr.contains("own identity"))

        let badKey = try Self.agentmesh("init", "--home", root + "/c", "--network-key-file", root + "/a/identity.pub")
        #expect(badKey.status != 0)
        #expect(badKey.stderr.contains("is not a network key"))
        #expect(!FileManager.default.fileExists(atPath: root + "/c/identity.key"), "no half-created home")

        let missingKeyFile = try Self.agentmesh("init", "--home", root + "/d", "--network-key-file", root + "/nope")
        #expect(missingKeyFile.status != 0)
        #expect(missingKeyFile.stderr.contains("no such file"))

        let noHome = try Self.agentmesh("run", "--home", root + "/missing", "--listen", "127.0.0.1:0")
        #expect(noHome.status != 0)
        #expect(noHome.stderr.contains("no identity in"))

        let notRunning = try Self.agentmesh("members", "--home", root + "/a")
        #expect(notRunning.status != 0)
        #expect(notRunning.stderr.contains("no node is running"))

        let badName = try Self.agentmesh("init", "--home", root + "/e", "--name", "has space")
        #expect(badName.status != 0)
        #expect(badName.stderr.contains("invalid node name"))
    }

    @Test func runRefusesATaskStoreItCannotReadAndSaysWhich() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "build agentmesh first: \(Self.binary)")
        let root = "/tmp/am-run-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try Self.agentmesh("init", "--home", root + "/a").status == 0)
        try Data(repeating: 0x5a, count: 4096).write(to: URL(fileURLWithPath: root + "/a/node.sqlite"))
        let refused = try Self.agentmesh("run", "--home", root + "/a", "--listen", "127.0.0.1:0")
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("\(root)/a/node.sqlite"))
        #expect(refused.stderr.contains("not a valid task store"), "\(refused.stderr)")
    }

    /// A log for a made-up peer, written as the node would: three records, signed at the end.
    static func writeAuditLog(home: NodeHome, peer: PeerIdentity) throws -> (path: String, offsets: [Int]) {
        let local = try home.loadIdentity()
        var chain = AuditChain(header: AuditHeader(local: local.signingKey.publicKey, peer: peer.identityKey, peerName: peer.name))
        var bytes = chain.header.encoded()
        var offsets: [Int] = []
        for entry in [
            AuditEntry(.connected, time: 1, session: 1, extra: [UInt8](repeating: 7, count: 32)),
            AuditEntry(.received, time: 2, session: 1, message: 1, task: TaskID(high: 1, low: 2), epoch: 1, digest: [UInt8](repeating: 1, count: 32)),
            AuditEntry(.disconnected, time: 3, session: 1, detail: "peer closed"),
        ] {
            offsets.append(bytes.count)
            bytes += chain.append(entry).framed()
        }
        offsets.append(bytes.count)
        bytes += chain.checkpoint(time: 4, signingKey: local.signingKey).framed()
        try FileManager.default.createDirectory(atPath: home.auditDirectory, withIntermediateDirectories: true)
        let path = home.auditDirectory + "/\(peer.nodeID).log"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return (path, offsets)
    }

    @Test func auditVerifyNamesThePeerAndTheFirstBadRecordAndRunRefusesTheLog() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "build agentmesh first: \(Self.binary)")
        let root = "/tmp/am-audit-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try Self.agentmesh("init", "--home", root + "/a").status == 0)
        let home = NodeHome(path: root + "/a")
        let peer = NodeIdentity(name: "mallory").publicIdentity
        let (path, offsets) = try Self.writeAuditLog(home: home, peer: peer)

        let clean = try Self.agentmesh("audit", "--verify", "--home", home.path)
        #expect(clean.status == 0, "\(clean.stderr)")
        #expect(clean.stdout.contains("ok    mallory"))
        let shown = try Self.agentmesh("audit", "--home", home.path, "--peer", "mallory")
        #expect(shown.stdout.contains("received") && shown.stdout.contains("offer"))
        let firstLine = shown.stdout.split(separator: "\n").dropFirst().first.map(String.init) ?? ""
        #expect(firstLine.contains("checkpoint"), "newest first: \(shown.stdout)")

        // A torn tail is reported, not fatal.
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        try Data(bytes + [0, 0, 0, 40, 1]).write(to: URL(fileURLWithPath: path))
        let torn = try Self.agentmesh("audit", "--verify", "--home", home.path)
        #expect(torn.status == 0)
        #expect(torn.stdout.contains("incomplete record of 5 bytes"))

        // A flipped byte in record 1 fails verification, naming the peer and the record; run refuses the log.
        bytes[offsets[1] + 20] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let broken = try Self.agentmesh("audit", "--verify", "--home", home.path)
        #expect(broken.status != 0)
        #expect(broken.stdout.contains("FAIL  mallory"))
        #expect(broken.stderr.contains("peer mallory (\(peer.nodeID))") && broken.stderr.contains("record 1"), "\(broken.stderr)")
        let refused = try Self.agentmesh("run", "--home", home.path, "--listen", "127.0.0.1:0")
        #expect(refused.status != 0)
        #expect(refused.stderr.contains(path) && refused.stderr.contains("record 1"), "\(refused.stderr)")
        #expect(refused.stderr.contains("--set-aside-broken-audit"))

        let garbage = home.auditDirectory + "/0123.log"
        try Data("not a log".utf8).write(to: URL(fileURLWithPath: garbage))
        let notALog = try Self.agentmesh("audit", "--verify", "--home", home.path, "--peer", "0123")
        #expect(notALog.status != 0)
        #expect(notALog.stderr.contains("0123.log") && notALog.stderr.contains("magic"))
    }

    @Test func limitsComeFromConfigAndDescriptorsAndBadOnesAreNamed() throws {
        let root = "/tmp/am-limits-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let home = NodeHome(path: root + "/a")
        _ = try home.initialize(name: "a", networkKeyFile: nil)
        #expect(try home.loadRunConfiguration().limits.isEmpty, "no config.toml: no limits of its own")
        try "[limits]\noffers = \"20/s:20\"\nbytes = \"8M/s\"\n".write(toFile: home.configPath, atomically: true, encoding: .utf8)
        #expect(try home.loadRunConfiguration().limits == [.offers: Rate(perSecond: 20, burst: 20), .bytes: Rate(perSecond: 8 * 1024 * 1024)])
        for bad in ["[limits]\noffers = \"fast\"\n", "[limits]\nnope = \"1/s\"\n", "name = \"x\"\n", "[limits\n"] {
            try bad.write(toFile: home.configPath, atomically: true, encoding: .utf8)
            #expect(throws: HomeError.self) { try home.loadRunConfiguration().limits }
        }
        let refused = try Self.agentmesh("run", "--home", home.path, "--listen", "127.0.0.1:0")
        #expect(refused.status != 0)
        #expect(refused.stderr.contains(home.configPath), "\(refused.stderr)")
        let badFlag = try Self.agentmesh("run", "--home", home.path, "--listen", "127.0.0.1:0", "--limit", "offers=lots")
        #expect(badFlag.status != 0)
        #expect(badFlag.stderr.contains("--limit"))
        let badDurability = try Self.agentmesh("run", "--home", home.path, "--listen", "127.0.0.1:0", "--durability", "maybe")
        #expect(badDurability.status != 0)
        #expect(badDurability.stderr.contains("--durability must be fsync or process"), "\(badDurability.stderr)")

        // A peer's descriptor may carry its own limits; re-trusting keeps them; a malformed one names the key.
        let peer = NodeIdentity(name: "b").publicIdentity
        _ = try home.trust(peer)
        let descriptorPath = home.peersDirectory + "/\(peer.nodeID).toml"
        let text = try String(contentsOfFile: descriptorPath, encoding: .utf8)
        try (text + "\n[limits]\noffers = \"5/s:10\"\n").write(toFile: descriptorPath, atomically: true, encoding: .utf8)
        #expect(home.loadTrustedPeers().descriptors.first?.limits == [.offers: Rate(perSecond: 5, burst: 10)])
        #expect(try home.trust(peer) == .unchanged(path: descriptorPath))
        #expect(home.loadTrustedPeers().descriptors.first?.limits == [.offers: Rate(perSecond: 5, burst: 10)])
        try (text + "\n[limits]\noffers = \"5/m\"\n").write(toFile: descriptorPath, atomically: true, encoding: .utf8)
        let (descriptors, problems) = home.loadTrustedPeers()
        #expect(descriptors.isEmpty)
        #expect(problems.first?.contains(descriptorPath) == true && problems.first?.contains("limits.offers") == true, "\(problems)")
    }

    @Test func runReportsItsPortRefusesATakenOneAndStopsCleanlyOnSIGTERM() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "build agentmesh first: \(Self.binary)")
        let root = "/tmp/am-run-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try Self.agentmesh("init", "--home", root + "/a").status == 0)
        #expect(try Self.agentmesh("init", "--home", root + "/b").status == 0)

        let node = try SpawnedProcess(Self.binary, ["run", "--home", root + "/a", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        // The first stdout line names the port it picked.
        let firstLine = try #require(node.waitForLine(containing: "listening on"))
        let address = try #require(firstLine.components(separatedBy: "listening on ").last?
            .trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(address.hasPrefix("127.0.0.1:") && !address.hasSuffix(":0"))
        // So does the next for the HTTP listener, and `status` (only the log said it).
        let httpLine = try #require(node.waitForLine(containing: "control API and A2A on"))
        let http = try #require(httpLine.components(separatedBy: "http://").last?.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(http.hasPrefix("127.0.0.1:") && !http.hasSuffix(":0"))
        #expect(try Self.agentmesh("status", "--home", root + "/a").stdout.contains("http     control API and A2A on http://\(http)"))

        let taken = try Self.agentmesh("run", "--home", root + "/b", "--listen", address)
        #expect(taken.status != 0)
        #expect(taken.stderr.contains("cannot listen on \(address)"))
        #expect(taken.stderr.lowercased().contains("in use"))

        node.signal(SIGTERM)
        #expect(node.waitForExit() == 0, "a clean exit, not a signal")
        #expect(!FileManager.default.fileExists(atPath: root + "/a/control.sock"))
    }
}

/// What a peer chooses (a listen address, a close reason) cannot forge a line of the node's log.
@Suite struct LogLineTests {
    @Test func controlCharactersArePrintedAsEscapes() {
        #expect(LineLogHandler.escaped("10.0.0.1:7400") == "10.0.0.1:7400")
        #expect(LineLogHandler.escaped("x\n2026-11-28T00:00:00Z info    peer authenticated") == "x\\n2026-11-28T00:00:00Z info    peer authenticated")
        #expect(LineLogHandler.escaped("a\rb\tc\\d\u{1B}[31m\u{85}\u{2028}") == "a\\rb\\tc\\\\d\\u{1b}[31m\\u{85}\\u{2028}")
        #expect(!LineLogHandler.escaped("\u{0}\u{7}\u{7F}").unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F })
    }
}

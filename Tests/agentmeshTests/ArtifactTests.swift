import Foundation
import MeshControl
import MeshCore
import MeshCrypto
import MeshTestKit
import Testing

/// Issue 16 on real nodes: artifacts pulled peer to peer, through a cut session, a damaged chunk, a full store and
/// a kill -9 of the node they come from.
@Suite(.serialized) struct ArtifactTests {
    typealias Node = MeshProcessTests.Node

    /// An `exec:` agent that leaves a file of `mib` MiB (each MiB starts with its index) in AGENTMESH_ARTIFACTS_OUT
    /// and notes each run in `log`.
    static let blobAgent = #"""
        import json, os, sys
        request = json.load(sys.stdin)
        block = bytes(range(256)) * 4096
        with open(os.path.join(os.environ["AGENTMESH_ARTIFACTS_OUT"], "blob.bin"), "wb") as out:
            for index in range(int(request["mib"])):
                out.write(bytes([index & 255]) + block[1:])
        with open(request["log"], "a") as log:
            log.write("ran\n")
        json.dump({"mib": request["mib"]}, sys.stdout)
        """#

    static func setUp(_ prefix: String) throws -> (root: String, agent: String) {
        let (root, _, _) = try MeshProcessTests.scratch(prefix, ["a", "b"])
        try Self.blobAgent.write(toFile: root + "/blob.py", atomically: true, encoding: .utf8)
        return (root, root + "/blob.py")
    }

    static func submitBlob(_ node: Node, mib: Int, log: String, capability: String = "blob") throws -> String {
        let body = try JSONSerialization.data(withJSONObject: [
            "capability": capability, "input": ["mib": mib, "log": log], "timeout_seconds": 300, "max_attempts": 1,
        ])
        let response = try node.client.request(method: "POST", path: "/v1/tasks", body: Array(body))
        #expect(response.status == 202, "\(String(decoding: response.body, as: UTF8.self))")
        return try node.client.decode(response, as: ControlAPI.TaskInfo.self).id
    }

    static func task(_ node: Node, _ id: String) -> ControlAPI.TaskInfo? {
        try? node.client.get("/v1/tasks/\(id)", as: ControlAPI.TaskInfo.self)
    }

    /// The artifact as the node serves it, hashed, against the digest the result names and the bytes the agent wrote.
    static func checkBlob(_ node: Node, _ task: ControlAPI.TaskInfo?, mib: Int, root: String) throws {
        let artifact = try #require(task?.resultArtifacts?.first)
        #expect(artifact.name == "blob.bin" && artifact.size == UInt64(mib) << 20)
        let saved = root + "/saved.bin"
        #expect(try node.client.download(artifact: artifact.sha256, to: saved) == UInt64(mib) << 20)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: saved)))
        #expect(Hex.encode(SHA256.hash(bytes)) == artifact.sha256)
        #expect((0..<mib).allSatisfy { bytes[$0 << 20] == UInt8($0 & 255) && bytes[($0 << 20) + 1] == 1 })
    }

    /// The example agents: a text file in, its summary out as a file, through `exec:` and through `http:`
    /// (multipart both ways), with `submit --attach` and `--save-artifacts`.
    @Test func theExampleAgentsTurnAFileIntoAFileOverExecAndHTTP() throws {
        let (root, _) = try Self.setUp("art-example")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let examples = FileManager.default.currentDirectoryPath + "/scripts/examples"
        let service = try SpawnedProcess("/usr/bin/env", ["python3", examples + "/http_agent_service.py"])
        defer { service.signal(SIGKILL) }
        let port = try #require(service.waitForLine(timeout: .seconds(10)) { !$0.isEmpty }).trimmingCharacters(in: .whitespacesAndNewlines)
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: [
            "summarize-file=exec:python3 \(examples)/summarize_file.py", "summarize-http=http:http://127.0.0.1:\(port)/summarize",
        ])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.count == 2 })
        let report = root + "/report.txt"
        try String(repeating: "Agents pass files. The mesh moves them by hash! Nobody stands in the middle. ", count: 40)
            .write(toFile: report, atomically: true, encoding: .utf8)
        for capability in ["summarize-file", "summarize-http"] {
            let out = root + "/out-" + capability
            let run = try CommandLineTests.agentmesh(
                "submit", "--home", a.home, "--capability", capability, "--input", #"{"sentences": 2}"#, "--attach", report,
                "--wait", "--save-artifacts", out)
            #expect(run.status == 0, "\(capability): \(run.stderr)")
            #expect(run.stdout.contains("report.txt"), "\(run.stdout)")
            let summary = (try? String(contentsOfFile: out + "/summary.md", encoding: .utf8)) ?? ""
            #expect(summary.contains("## report.txt (560 words)") && summary.contains("The mesh moves them by hash!"), "\(capability): \(summary)")
        }
        // The submitter shows both sides of the task.
        let shown = try CommandLineTests.agentmesh("tasks", "--home", a.home, "--json")
        #expect(shown.stdout.contains("\"result_artifacts\"") && shown.stdout.contains("\"media_type\":\"text/markdown\""), "\(shown.stdout.prefix(600))")
    }

    /// Input artifacts were hard links into the store: an agent that appended to its input changed the stored,
    /// content-addressed bytes (1,500 -> 1,507), still served under the old SHA-256. Agents now get a copy.
    @Test func anAgentThatWritesToItsInputCannotChangeTheStoredArtifact() throws {
        let (root, _) = try Self.setUp("art-tamper")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let tamper = """
            import json, os, sys
            json.load(sys.stdin)
            folder = os.environ["AGENTMESH_ARTIFACTS_IN"]
            for name in os.listdir(folder):
                with open(os.path.join(folder, name), "ab") as f:
                    f.write(b"tamper!")
            print("{}")
            """
        try tamper.write(toFile: root + "/tamper.py", atomically: true, encoding: .utf8)
        let a = Node(home: "\(root)/a")
        defer { a.signal(SIGKILL) }
        try a.start(join: nil, capabilities: ["tamper=exec:python3 \(root)/tamper.py"])
        let original = [UInt8](repeating: 0x41, count: 1500)
        try Data(original).write(to: URL(fileURLWithPath: root + "/notes.txt"))
        let ran = try CommandLineTests.agentmesh(
            "submit", "--home", a.home, "--capability", "tamper", "--input", "{}", "--attach", root + "/notes.txt", "--wait")
        #expect(ran.status == 0, "\(ran.stderr)")
        let digest = Hex.encode(SHA256.hash(original))
        #expect(try a.client.download(artifact: digest, to: root + "/served.txt") == 1500)
        let served = try [UInt8](Data(contentsOf: URL(fileURLWithPath: root + "/served.txt")))
        #expect(served == original, "the stored artifact changed under its digest")

        // Changed on disk some other way, it is no longer served under its digest: removed, with the reason.
        let stored = try #require(FileHandle(forWritingAtPath: "\(root)/a/artifacts/\(digest)"))
        stored.seekToEndOfFile()
        stored.write(Data("changed on disk".utf8))
        try stored.close()
        let refused = try a.client.request(method: "GET", path: "/v1/artifacts/\(digest)", body: [])
        #expect(refused.status == 404 && String(decoding: refused.body, as: UTF8.self).contains("no longer matches its digest"),
            "\(refused.status) \(String(decoding: refused.body, as: UTF8.self).prefix(200))")
        #expect(!FileManager.default.fileExists(atPath: "\(root)/a/artifacts/\(digest)"))
        let again = try CommandLineTests.agentmesh(
            "submit", "--home", a.home, "--capability", "tamper", "--input", "{}", "--attach", root + "/notes.txt", "--wait")
        #expect(again.status == 0, "the same file attached again is stored afresh: \(again.stderr)")
        #expect(try a.client.download(artifact: digest, to: root + "/served.txt") == 1500)
    }

    /// Results that claimed gigabytes of artifacts reserved the whole store until their pulls gave up, and every
    /// upload was refused meanwhile: one peer's transfers now hold at most a quarter of the store (or one artifact
    /// of the largest size). Here the store has 8 MiB, so b's result may bring 2 MiB, not two files of 1.5 MiB.
    @Test func onePeersArtifactsOnTheirWayHoldAtMostItsShareOfTheStore() throws {
        let (root, _) = try Self.setUp("art-share")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let twoFiles = """
            import json, os, sys
            json.load(sys.stdin)
            for name in ["one.bin", "two.bin"]:
                with open(os.path.join(os.environ["AGENTMESH_ARTIFACTS_OUT"], name), "wb") as out:
                    out.write(name.encode() * ((3 << 19) // 7))
            print("{}")
            """
        try twoFiles.write(toFile: root + "/two.py", atomically: true, encoding: .utf8)
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["two=exec:python3 \(root)/two.py"])
        try a.start(join: b.address, extra: ["--max-artifact-bytes", "2M", "--artifact-store-bytes", "8M"])
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false })
        let ran = try CommandLineTests.agentmesh(
            "submit", "--home", a.home, "--capability", "two", "--input", "{}", "--max-attempts", "1", "--wait", "--json")
        let task = try? ControlAPI.decoder().decode(ControlAPI.TaskInfo.self, from: Data(ran.stdout.utf8))
        #expect(task?.state == "failed", "\(ran.stdout)\(ran.stderr)")
        #expect(task?.error?.contains("on their way here") == true, "\(task?.error ?? ran.stderr)")
        // The store keeps its room for everyone else: an upload of 6 MiB (three artifacts of 2 MiB) still fits.
        for number in 0..<3 {
            let file = root + "/upload\(number).bin"
            try Data(repeating: UInt8(number), count: 2 << 20).write(to: URL(fileURLWithPath: file))
            #expect(throws: Never.self) { try a.client.upload(file: file, name: "u\(number).bin", mediaType: "application/octet-stream") }
        }
    }

    @Test func anArtifactOverTheCapIsRefusedBeforeAnyByteIsStored() throws {
        let (root, agent) = try Self.setUp("art-cap")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["blob=exec:python3 \(agent)"])
        try a.start(join: b.address, extra: ["--max-artifact-bytes", "2M", "--artifact-store-bytes", "3M"])
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false })
        func stored() -> [String] {
            ["", "/partial", "/incoming"].flatMap { folder in
                ((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/a/artifacts" + folder)) ?? []).filter { $0.count >= 64 || folder != "" }
            }
        }

        // An upload over the per-artifact maximum: refused on its length, nothing written.
        let big = root + "/big.bin"
        try Data(count: 3 << 20).write(to: URL(fileURLWithPath: big))
        let refused = try CommandLineTests.agentmesh("submit", "--home", a.home, "--capability", "blob", "--input", "{}", "--attach", big)
        #expect(refused.status != 0 && refused.stderr.contains("takes at most 2097152") && refused.stderr.contains("--max-artifact-bytes"),
                "\(refused.stderr)")
        #expect(stored().isEmpty, "\(stored())")
        // One that fits, then one the store has no room left for.
        let small = root + "/small.bin"
        try Data(count: 2 << 20).write(to: URL(fileURLWithPath: small))
        let first = try a.client.upload(file: small, name: "small.bin", mediaType: "application/octet-stream")
        #expect(first.size == 2 << 20)
        try Data(repeating: 1, count: 2 << 20).write(to: URL(fileURLWithPath: small))
        #expect(throws: ControlClient.Error.self) { try a.client.upload(file: small, name: "other.bin", mediaType: "application/octet-stream") }
        let full = try CommandLineTests.agentmesh("submit", "--home", a.home, "--capability", "blob", "--input", "{}", "--attach", small)
        #expect(full.stderr.contains("the artifact store is full") && full.stderr.contains("--artifact-store-bytes"), "\(full.stderr)")
        #expect(stored().count == 3, "the first artifact, its chaining values and its metadata: \(stored())")

        // A result artifact over the maximum: the task fails with the sentence, and no byte of it is kept.
        let id = try Self.submitBlob(a, mib: 4, log: root + "/runs.log")
        #expect(MeshProcessTests.waitUntil(60) { ["completed", "failed", "timed_out", "canceled"].contains(Self.task(a, id)?.state ?? "") })
        let task = Self.task(a, id)
        #expect(task?.state == "failed" && task?.error?.contains("--max-artifact-bytes") == true, "\(String(describing: task))")
        #expect(stored().count == 3, "\(stored())")
    }

    /// An `http:` agent that answers without end: once its answer passes the limit (a multipart answer the node's
    /// `--max-artifact-bytes`, a JSON answer the inline limit) the node closes the connection and fails the run with
    /// why, at once, instead of reading on until the task's time runs out.
    @Test func anEndlessHTTPAnswerIsCutOffAtItsLimit() throws {
        let (root, _) = try Self.setUp("art-endless")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let server = #"""
            import sys, time
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
            class Endless(BaseHTTPRequestHandler):
                def do_POST(self):
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    self.send_response(200)
                    multipart = self.path == "/multipart"
                    self.send_header("Content-Type", "multipart/form-data; boundary=b" if multipart else "application/json")
                    self.end_headers()
                    self.wfile.write(b'--b\r\nContent-Disposition: form-data; name="out"; filename="o.bin"\r\n\r\n' if multipart else b"[")
                    started = time.time()
                    try:
                        while time.time() - started < 100:
                            self.wfile.write(b"1," * 32768)
                    except (BrokenPipeError, ConnectionResetError):
                        with open(sys.argv[1], "a") as log:
                            log.write("closed %s after %.1f s\n" % (self.path, time.time() - started))
                def log_message(self, *arguments):
                    pass
            server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
            print(server.server_address[1], flush=True)
            server.serve_forever()
            """#
        try server.write(toFile: root + "/endless.py", atomically: true, encoding: .utf8)
        let closed = root + "/closed.log"
        let service = try SpawnedProcess("/usr/bin/env", ["python3", root + "/endless.py", closed])
        defer { service.signal(SIGKILL) }
        let port = try #require(service.waitForLine(timeout: .seconds(10)) { !$0.isEmpty }).trimmingCharacters(in: .whitespacesAndNewlines)
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: [
            "multipart=http:http://127.0.0.1:\(port)/multipart", "json=http:http://127.0.0.1:\(port)/json",
        ], extra: ["--max-artifact-bytes", "4M"])
        try a.start(join: b.address)
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.count == 2 })
        for (capability, limit) in [("multipart", "--max-artifact-bytes"), ("json", "bytes")] {
            let body = try JSONSerialization.data(withJSONObject: [
                "capability": capability, "input": ["file": true], "timeout_seconds": 90, "max_attempts": 1,
            ])
            let response = try a.client.request(method: "POST", path: "/v1/tasks", body: Array(body))
            let id = try a.client.decode(response, as: ControlAPI.TaskInfo.self).id
            #expect(MeshProcessTests.waitUntil(20) { Self.task(a, id)?.state == "failed" }, "\(String(describing: Self.task(a, id)))")
            let error = Self.task(a, id)?.error ?? ""
            #expect(error.contains("answered more than") && error.contains(limit), "\(error)")
        }
        #expect(MeshProcessTests.waitUntil(10) {
            let lines = ((try? String(contentsOfFile: closed, encoding: .utf8)) ?? "").split(separator: "\n")
            return lines.count == 2 && lines.allSatisfy { $0.hasPrefix("closed") }
        }, "the node hung up on both answers")
    }

    /// Two results that are the same artifact, from two executors, share one pull. When the first executor's copy
    /// is gone mid-transfer (it answers that it has none), the second task's result comes from its own executor,
    /// from where the first pull left off, instead of failing with the first.
    @Test func aSharedPullThatFailsAtOnePeerGoesOnFromTheOther() throws {
        let (root, _, _) = try MeshProcessTests.scratch("art-shared", ["a", "b", "c"])
        defer { try? FileManager.default.removeItem(atPath: root) }
        try Self.blobAgent.write(toFile: root + "/blob.py", atomically: true, encoding: .utf8)
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b"), c = Node(home: "\(root)/c")
        defer { for node in [a, b, c] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["blob-b=exec:python3 \(root)/blob.py"])
        try c.start(join: b.address, capabilities: ["blob-c=exec:python3 \(root)/blob.py"])
        // a lets each peer send it 16 MiB a second: a 64 MiB result takes about 4 s to come over.
        try a.start(join: b.address, extra: ["--limit", "bytes=16M/s:4M"])
        #expect(MeshProcessTests.waitUntil {
            a.status(of: "b")?.capabilities.isEmpty == false && a.status(of: "c")?.capabilities.isEmpty == false
        })
        let log = root + "/runs.log"
        let first = try Self.submitBlob(a, mib: 64, log: log, capability: "blob-b")
        let partial = "\(root)/a/artifacts/partial"
        func received() -> Int {
            ((try? FileManager.default.contentsOfDirectory(atPath: partial)) ?? []).reduce(0) {
                $0 + ((try? FileManager.default.attributesOfItem(atPath: partial + "/" + $1)[.size] as? Int) ?? 0)
            }
        }
        #expect(MeshProcessTests.waitUntil(60) { received() >= 4 << 20 })
        let second = try Self.submitBlob(a, mib: 64, log: log, capability: "blob-c")
        #expect(MeshProcessTests.waitUntil(60) { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "") == "ran\nran\n" })
        // c's result (the same bytes, so the same digest) reaches a and joins the pull from b.
        Thread.sleep(forTimeInterval: 1)
        let stored = "\(root)/b/artifacts"
        for name in try FileManager.default.contentsOfDirectory(atPath: stored) where name.count == 64 {
            try FileManager.default.removeItem(atPath: stored + "/" + name)
        }
        let left = received()
        #expect(MeshProcessTests.waitUntil(120) { Self.task(a, second)?.state == "completed" }, "\(String(describing: Self.task(a, second)))")
        try Self.checkBlob(a, Self.task(a, second), mib: 64, root: root)
        let logged = a.process?.stderr.split(separator: "\n").filter { $0.contains("resuming an artifact transfer") } ?? []
        #expect(logged.count == 1 && logged[0].contains("offset="), "the pull from c went on from the bytes b had sent: \(logged)")
        #expect(left >= 4 << 20 && left < 64 << 20)
        #expect(Self.task(a, first)?.state == "failed", "b has no copy left, and the task had one attempt")
    }

    @Test func kill9OfTheExecutorMidPullLosesNothingAcknowledged() throws {
        let (root, agent) = try Self.setUp("art-kill")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let a = Node(home: "\(root)/a"), b = Node(home: "\(root)/b")
        defer { for node in [a, b] { node.signal(SIGKILL) } }
        try b.start(join: nil, capabilities: ["blob=exec:python3 \(agent)"])
        // a lets b send it 16 MiB a second: a 64 MiB result takes about 4 s to come over.
        try a.start(join: b.address, extra: ["--limit", "bytes=16M/s:4M"])
        #expect(MeshProcessTests.waitUntil { a.status(of: "b")?.capabilities.isEmpty == false })
        let log = root + "/runs.log"
        let id = try Self.submitBlob(a, mib: 64, log: log)
        func partial() -> Int {
            let folder = "\(root)/a/artifacts/partial"
            return ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).reduce(0) {
                $0 + ((try? FileManager.default.attributesOfItem(atPath: folder + "/" + $1)[.size] as? Int) ?? 0)
            }
        }
        #expect(MeshProcessTests.waitUntil(60) { partial() >= 8 << 20 })
        b.signal(SIGKILL)
        let before = partial()
        try b.start(join: a.address, capabilities: ["blob=exec:python3 \(agent)"])
        #expect(MeshProcessTests.waitUntil(120) { Self.task(a, id)?.state == "completed" }, "\(String(describing: Self.task(a, id)))")
        try Self.checkBlob(a, Self.task(a, id), mib: 64, root: root)
        #expect(before >= 8 << 20 && before < 64 << 20)
        let runs = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(runs == "ran\n", "the result was kept through the kill: the agent ran once")
    }
}

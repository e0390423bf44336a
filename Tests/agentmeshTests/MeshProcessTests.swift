import Foundation
import MeshTransport
import Testing

/// Real `agentmesh run` processes: what a user sees when a machine dies and comes back.
@Suite(.serialized) struct MeshProcessTests {
    final class Node {
        let home: String
        var process: Process?
        var address = ""

        init(home: String) { self.home = home }

        func start(join: String?) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
            process.arguments = ["run", "--home", self.home, "--listen", "127.0.0.1:0", "--open", "--timers", "local"]
                + (join.map { ["--join", $0] } ?? [])
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try process.run()
            self.process = process
            var line = ""
            while !line.contains("\n") {
                let data = out.fileHandleForReading.availableData
                if data.isEmpty { break }
                line += String(decoding: data, as: UTF8.self)
            }
            self.address = line.components(separatedBy: "listening on ").last?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        }

        func members() -> [ControlAPI.Member] {
            (try? ControlClient(socketPath: self.home + "/control.sock").get("/v1/members", as: ControlAPI.Members.self))?
                .members ?? []
        }

        func status(of name: String) -> ControlAPI.Member? { self.members().first { $0.name == name } }

        func signal(_ signal: Int32) {
            guard let process, process.isRunning else { return }
            kill(process.processIdentifier, signal)
            process.waitUntilExit()
        }
    }

    static func waitUntil(_ seconds: Double = 30, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return condition()
    }

    @Test func aKilledNodeIsDeadEverywhereAndComesBackWithAHigherIncarnation() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let root = "/tmp/am-proc-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let names = ["a", "b", "c", "d"]
        for name in names {
            let arguments = ["init", "--home", "\(root)/\(name)", "--name", name]
                + (name == "a" ? [] : ["--network-key-file", "\(root)/a/network.key"])
            #expect(try CommandLineTests.agentmesh(arguments).status == 0)
        }
        let nodes = Dictionary(uniqueKeysWithValues: names.map { ($0, Node(home: "\(root)/\($0)")) })
        defer { for node in nodes.values { node.signal(SIGKILL) } }
        try nodes["a"]!.start(join: nil)
        try nodes["b"]!.start(join: nodes["a"]!.address)
        try nodes["c"]!.start(join: nodes["a"]!.address)
        try nodes["d"]!.start(join: nodes["c"]!.address)  // joins through another member, not the first

        let everyoneAlive = Self.waitUntil {
            nodes.values.allSatisfy { node in node.members().filter { $0.status == "alive" }.count == 4 }
        }
        #expect(everyoneAlive, "the mesh did not converge")

        nodes["b"]!.signal(SIGKILL)
        let survivors = ["a", "c", "d"].map { nodes[$0]! }
        let dead = Self.waitUntil { survivors.allSatisfy { $0.status(of: "b")?.status == "dead" } }
        #expect(dead, "b was not declared dead everywhere")
        let accuser = survivors[0].status(of: "b")?.accuser
        #expect(accuser != nil, "a death names its accuser")
        let deadIncarnation = survivors.map { $0.status(of: "b")?.incarnation ?? 0 }.max() ?? 0

        try nodes["b"]!.start(join: nodes["d"]!.address)
        let back = Self.waitUntil {
            survivors.allSatisfy { node in
                guard let b = node.status(of: "b") else { return false }
                return b.status == "alive" && b.incarnation > deadIncarnation
            }
        }
        #expect(back, "b did not come back alive with a higher incarnation")
        for node in nodes.values { node.signal(SIGTERM) }
        #expect(nodes.values.allSatisfy { $0.process?.terminationStatus == 0 }, "a node did not stop cleanly")
    }
}

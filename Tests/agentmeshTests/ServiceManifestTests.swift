import ArgumentParser
import Foundation
import MeshTestKit
import Testing

@testable import agentmesh

/// scripts/service: the Kubernetes manifests parse, and every agentmesh command line in the manifests, the
/// container recipe and the systemd unit is one the CLI accepts.
@Suite struct ServiceManifestTests {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/service").path

    /// Kubernetes substitutes $(VAR) from the container's env; these are what a pod would see.
    static func substituted(_ argument: String) -> String {
        argument.replacingOccurrences(of: "$(POD_NAME)", with: "agentmesh-2")
            .replacingOccurrences(of: "$(POD_NAMESPACE)", with: "default")
    }

    static func accepts(_ arguments: [String]) -> String? {
        do {
            var command = try AgentMesh.parseAsRoot(arguments.map(Self.substituted))
            try command.validate()
            return nil
        } catch {
            return AgentMesh.message(for: error)
        }
    }

    @Test func kubernetesManifestsParseAndTheirCommandLinesAreAccepted() throws {
        // PyYAML reads every document; the probes, ports and every container's args come back as JSON.
        let script = """
            import json, sys, yaml
            docs = list(yaml.safe_load_all(open(sys.argv[1])))
            out = {"kinds": [d["kind"] for d in docs], "commands": [], "probes": []}
            for d in docs:
                if d["kind"] != "StatefulSet": continue
                spec = d["spec"]["template"]["spec"]
                assert d["spec"]["serviceName"] == "agentmesh"
                for c in spec["containers"]:
                    out["commands"].append(c["args"])
                    out["commands"].append(c["lifecycle"]["preStop"]["exec"]["command"][1:])
                    out["probes"] += [c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]]
                for c in spec["initContainers"]:
                    out["init"] = c["args"][0]
            print(json.dumps(out))
            """
        let run = try SpawnedProcess.run("/usr/bin/python3", ["-c", script, Self.folder + "/kubernetes.yaml"])
        try #require(run.status == 0, "the manifest does not parse: \(run.stderr)")
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(parsed["kinds"] as? [String] == ["Service", "StatefulSet"])
        #expect(parsed["probes"] as? [String] == ["/v1/health", "/v1/health"])
        let commands = try #require(parsed["commands"] as? [[String]])
        #expect(commands.count >= 2, "the node's command and its preStop hook: \(commands)")
        for command in commands {
            #expect(Self.accepts(command) == nil, "\(command): \(Self.accepts(command) ?? "")")
        }
        let initScript = try #require(parsed["init"] as? String)
        #expect(initScript.contains("agentmesh trust --home /data"))
    }

    /// Every system library a target links (`link "…"` in Sources/*/module.modulemap) is installed in both stages of
    /// the container recipe: its -dev package to build, its runtime package to run.
    @Test func theContainerInstallsEverySystemLibraryThePackageLinks() throws {
        let recipe = try String(contentsOfFile: Self.folder + "/Containerfile", encoding: .utf8)
        let stages = Array(recipe.components(separatedBy: "\nFROM ").dropFirst())  // the comment before the first
        #expect(stages.count == 2, "a build stage and a runtime stage")
        let packages: [String: (build: String, run: String)] = [
            "sodium": ("libsodium-dev", "libsodium23"), "crypto": ("libssl-dev", "libssl3"),
            "sqlite3": ("libsqlite3-dev", "libsqlite3-0"),
        ]
        let sources = URL(fileURLWithPath: Self.folder).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources").path
        var linked: Set<String> = ["sqlite3"]  // GRDB links the system SQLite
        for target in try FileManager.default.contentsOfDirectory(atPath: sources) {
            guard let map = try? String(contentsOfFile: "\(sources)/\(target)/module.modulemap", encoding: .utf8) else { continue }
            for line in map.split(separator: "\n") where line.trimmingCharacters(in: .whitespaces).hasPrefix("link \"") {
                linked.insert(String(line.split(separator: "\"")[1]))
            }
        }
        #expect(linked.isSuperset(of: ["sodium", "crypto"]))
        for library in linked {
            let names = try #require(packages[library], "a Debian package for lib\(library)")
            #expect(stages[0].contains(names.build), "the build stage installs \(names.build)")
            #expect(stages.last?.contains(names.run) == true, "the runtime stage installs \(names.run)")
        }
    }

    @Test func theContainerAndSystemdCommandLinesAreAccepted() throws {
        let recipe = try String(contentsOfFile: Self.folder + "/Containerfile", encoding: .utf8)
        let cmd = try #require(recipe.split(separator: "\n").first { $0.hasPrefix("CMD ") })
        let arguments = try #require(
            try JSONSerialization.jsonObject(with: Data(cmd.dropFirst(4).utf8)) as? [String], "CMD is a JSON array")
        #expect(Self.accepts(arguments) == nil, "\(arguments): \(Self.accepts(arguments) ?? "")")

        let unit = try String(contentsOfFile: Self.folder + "/agentmesh.service", encoding: .utf8)
        let lines = unit.split(separator: "\n").filter { $0.hasPrefix("ExecStart=") || $0.hasPrefix("ExecStop=") }
        #expect(lines.count == 2)
        for line in lines {
            let words = line.split(separator: "=", maxSplits: 1)[1].split(separator: " ").map(String.init)
            #expect(words.first == "/usr/local/bin/agentmesh")
            #expect(Self.accepts(Array(words.dropFirst())) == nil, "\(line): \(Self.accepts(Array(words.dropFirst())) ?? "")")
        }
    }

    /// The Secret generator makes homes the init container can install: real identities, one network key.
    @Test func theSecretGeneratorWritesAnIdentityPerPodAndOneNetworkKey() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary))
        let run = try SpawnedProcess.run(Self.folder + "/k8s-secret", ["2", CommandLineTests.binary])
        try #require(run.status == 0, "\(run.stderr)")
        let script = """
            import base64, json, sys, yaml
            d = yaml.safe_load(sys.stdin.read())
            print(json.dumps({k: base64.b64decode(v).decode(errors="replace") for k, v in d["data"].items()}))
            """
        let decode = try SpawnedProcess.run("/bin/sh", ["-c", "'\(Self.folder)/k8s-secret' 2 '\(CommandLineTests.binary)' | python3 -c '\(script)'"])
        try #require(decode.status == 0, "\(decode.stderr)")
        let data = try #require(try JSONSerialization.jsonObject(with: Data(decode.stdout.utf8)) as? [String: String])
        #expect(Set(data.keys) == ["network.key", "agentmesh-0.key", "agentmesh-0.pub", "agentmesh-1.key", "agentmesh-1.pub"])
        #expect(data["agentmesh-1.pub"]?.hasPrefix("agentmesh-id/1 name=agentmesh-1") == true)
        #expect(data["agentmesh-0.key"]?.contains("ed25519-secret") == true)
        let bad = try SpawnedProcess.run(Self.folder + "/k8s-secret", ["many"])
        #expect(bad.status == 64)
    }
}

import ArgumentParser
import Foundation
import MeshControl

@main
struct AgentMesh: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agentmesh",
        abstract: "A brokerless mesh for AI agents: authenticated peers, tasks run peer to peer.",
        discussion: """
            Every machine runs a node ('agentmesh run'). Nodes authenticate each other with Ed25519 identities and a \
            shared network key; the client commands talk to the running node through DIR/control.sock.
            """,
        version: AgentMeshVersion.current,
        subcommands: [
            Init.self, Id.self, Trust.self, Untrust.self, Peers.self, Run.self, Status.self, Members.self,
            Submit.self, Tasks.self, TaskCommand.self, Reply.self, Cancel.self, WorkflowCommand.self, Publish.self, Events.self, Stats.self, MCP.self, Limits.self, Audit.self, Bench.self,
            Leave.self, UI.self,
        ]
    )

    /// As ArgumentParser's, except that a `CLIError` exits with its own status.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CLIError {
            FileHandle.standardError.write(Data("Error: \(error.description)\n".utf8))
            Foundation.exit(error.status.rawValue)
        } catch {
            // Help and --version print as ArgumentParser prints them; a usage mistake is one sentence, as every
            // other error is, with where to read more.
            let status = exitCode(for: error)
            guard status != .success else { exit(withError: error) }
            let command = CommandLine.arguments.dropFirst().first { !$0.hasPrefix("-") }
                .flatMap { name in Self.configuration.subcommands.first { $0._commandName == name }?._commandName }
            FileHandle.standardError.write(Data(
                "Error: \(message(for: error)) (see 'agentmesh \(command.map { "\($0) " } ?? "")--help')\n".utf8))
            Foundation.exit(status.rawValue)
        }
    }
}

/// `--home`, shared by every command.
struct HomeOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "The node's home folder (default: $AGENTMESH_HOME, else $HOME/.agentmesh).", valueName: "DIR"),
            completion: .directory)
    var home: String?

    /// `--home`, else `$AGENTMESH_HOME`, else `~/.agentmesh`.
    var nodeHome: NodeHome { NodeHome.resolve(self.home) }
}

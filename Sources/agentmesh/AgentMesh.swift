import ArgumentParser
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
        version: "0.1.0",
        subcommands: [
            Init.self, Id.self, Trust.self, Run.self, Members.self, Submit.self, Tasks.self, TaskCommand.self,
            Cancel.self, Limits.self, Audit.self, Bench.self, Leave.self,
        ]
    )
}

/// `--home`, shared by every command.
struct HomeOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The node's home folder.", valueName: "DIR"))
    var home: String?

    /// `--home`, else `$AGENTMESH_HOME`, else `~/.agentmesh`.
    var nodeHome: NodeHome { NodeHome.resolve(self.home) }
}

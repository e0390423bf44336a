import ArgumentParser
import MeshTransport

struct Members: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the mesh as this node sees it.")

    @OptionGroup var options: HomeOptions

    @Flag(help: "One JSON document instead of a table.")
    var json = false

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let members = try reporting { try client.get("/v1/members", as: ControlAPI.Members.self) }
        if self.json {
            try printJSON(members)
            return
        }
        print(renderTable(
            header: ["NAME", "ID", "ADDRESS", "CONNECTION", "TRUST", "SINCE"],
            rows: members.members.map { member in
                [member.name, String(member.id.prefix(12)), member.address, member.connection, member.trust,
                 member.since.timeOfDay]
            }))
    }
}

import ArgumentParser
import Foundation
import MeshControl

struct UI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ui",
        abstract: "Print a one-time sign-in link to this node's browser view (it opens nothing itself).",
        discussion: """
            The view is served on the node's --http listener. The link carries a code, good once and for two minutes, \
            in its fragment (the part after #, which a browser never sends to a server); the page trades it for a \
            session cookie. Run this again for another browser.
            """)

    @OptionGroup var options: HomeOptions

    func run() throws {
        let client = ControlClient(socketPath: self.options.nodeHome.controlSocketPath)
        let link = try reporting {
            try client.decode(client.request(method: "POST", path: "/v1/ui/login"), as: [String: String].self)
        }
        guard let url = link["url"] else { throw CLIError("the node answered without a link") }
        print(url)
        FileHandle.standardError.write(Data("open it within \(link["expires_in_seconds"] ?? "120") s; it signs in one browser, once\n".utf8))
    }
}

import Foundation
import ArgumentParser
import MeshCore
import MeshControl

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create this node's identity (and a new network key unless one is given).")

    @OptionGroup var options: HomeOptions

    @Option(help: "A name for this node (A-Z a-z 0-9 . _ -). Default: node-<id prefix>.")
    var name: String?

    @Option(help: ArgumentHelp("Join an existing mesh: copy its network key from this file.", valueName: "FILE"),
            completion: .file())
    var networkKeyFile: String?

    @Option(help: ArgumentHelp(
        "Join an existing mesh: its network key as 64 hex digits ('agentmesh id --network' on a member prints it).",
        valueName: "HEX"))
    var networkKey: String?

    func validate() throws {
        guard self.networkKeyFile == nil || self.networkKey == nil else {
            throw ValidationError("give the network key with at most one of --network-key-file and --network-key")
        }
    }

    func run() throws {
        let home = self.options.nodeHome
        let identity = try reporting {
            do {
                return try home.initialize(name: self.name, networkKeyFile: self.networkKeyFile, networkKeyText: self.networkKey)
            } catch let error as HomeError {
                // What the user gave (a name, a key, a key file that cannot be read) is bad input, exit 64, as
                // for submit --input-file; a home that cannot be written stays a failure (1).
                switch error {
                case .invalidName, .invalidNetworkKey: throw CLIError(error.description, status: .badInput)
                case .unreadable(let path, _) where path == self.networkKeyFile: throw CLIError(error.description, status: .badInput)
                default: throw error
                }
            }
        }
        let networkKey = try reporting { try home.loadNetworkKey() }
        print("Created node \(identity.name) (\(identity.nodeID)) in \(home.path)")
        print("Network key fingerprint (the same on every node of this mesh): \(NodeHome.networkKeyFingerprint(networkKey))")
        print("Its identity line, for 'agentmesh trust' on other nodes:")
        print(IdentityLine.render(identity.publicIdentity))
    }
}

struct Id: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print this node's identity line (or, with --network, the mesh's network key and its fingerprint).")

    @OptionGroup var options: HomeOptions

    @Flag(help: "Print the network key as text (a SECRET: carry it to a new host over a channel you trust) and its fingerprint.")
    var network = false

    func run() throws {
        guard self.network else {
            let identity = try reporting { try self.options.nodeHome.loadIdentity() }
            print(IdentityLine.render(identity.publicIdentity))
            return
        }
        let key = try reporting { try self.options.nodeHome.loadNetworkKey() }
        print("network key  \(NodeHome.networkKeyText(key))")
        print("fingerprint  \(NodeHome.networkKeyFingerprint(key))")
        print("On the new host: agentmesh init --network-key \(NodeHome.networkKeyText(key))")
    }
}

struct Trust: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Trust a peer: write its descriptor into DIR/peers.",
        discussion: "Takes the peer's identity line (from 'agentmesh id'), or a file holding one or a descriptor.")

    @OptionGroup var options: HomeOptions

    @Argument(help: ArgumentHelp("An identity line, or a file with one (identity.pub) or a peer descriptor.",
                                 valueName: "IDENTITY-LINE | FILE"))
    var peer: String

    func run() throws {
        let home = self.options.nodeHome
        // What the user gave is not an identity: bad input (64), as for every command.
        let identity: PeerIdentity
        do {
            identity = try Self.identity(from: self.peer)
        } catch {
            throw CLIError((error as? CLIError)?.description ?? "not an identity line: \(error)", status: .badInput)
        }
        let outcome = try reporting { try home.trust(identity) }
        switch outcome {
        case .added(let path): print("Trusted \(identity.name) (\(identity.nodeID)): \(path)")
        case .updated(let path): print("Updated \(identity.name) (\(identity.nodeID)): \(path)")
        case .unchanged(let path): print("Already trusted \(identity.name) (\(identity.nodeID)): \(path)")
        }
    }

    static func identity(from argument: String) throws -> PeerIdentity {
        let trimmed = argument.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasPrefix(IdentityLine.tag) { return try IdentityLine.parse(trimmed) }
        guard FileManager.default.fileExists(atPath: argument) else {
            throw CLIError("'\(argument)' is neither an identity line (starting with '\(IdentityLine.tag)') nor a file")
        }
        guard let data = FileManager.default.contents(atPath: argument), data.count <= 1 << 20 else {
            throw CLIError("cannot read \(argument)")
        }
        let text = String(decoding: data, as: UTF8.self)
        let content = text.trimmingCharacters(in: .whitespacesAndNewlines)
        do {
            if content.hasPrefix(IdentityLine.tag) { return try IdentityLine.parse(content) }
            return try PeerDescriptor(parsing: text).identity
        } catch {
            throw CLIError("\(argument) holds no usable identity: \(error)")
        }
    }
}

struct Untrust: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop trusting a peer: remove its descriptor from DIR/peers (a running node drops it at once).")

    @OptionGroup var options: HomeOptions

    @Argument(help: "The peer's name, node id or id prefix (as 'agentmesh peers' lists them).")
    var peer: String

    func run() throws {
        let descriptor = try reporting { try self.options.nodeHome.untrust(self.peer) }
        print("No longer trusting \(descriptor.identity.name) (\(descriptor.identity.nodeID))")
    }
}

struct Peers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the peers this node trusts (DIR/peers).")

    @OptionGroup var options: HomeOptions

    @Flag(help: "One JSON document instead of a table.")
    var json = false

    func run() throws {
        let (descriptors, problems) = self.options.nodeHome.loadTrustedPeers()
        for problem in problems { FileHandle.standardError.write(Data("warning: \(problem)\n".utf8)) }
        if self.json {
            try printJSON(descriptors.map { ["name": $0.identity.name, "id": $0.identity.nodeID.description,
                                             "identity_line": IdentityLine.render($0.identity)] })
            return
        }
        guard !descriptors.isEmpty else {
            print("no trusted peers; add one with 'agentmesh trust <identity line>'")
            return
        }
        print(renderTable(
            header: ["NAME", "ID", "LIMITS"],
            rows: descriptors.map { descriptor in
                [descriptor.identity.name, descriptor.identity.nodeID.description,
                 descriptor.limits.isEmpty ? "defaults"
                    : descriptor.limits.map { "\($0.key.rawValue)=\($0.value)" }.sorted().joined(separator: " ")]
            }))
    }
}

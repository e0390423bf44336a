public import Foundation
import MeshCore

/// JSON documents of the control API. `agentmesh` decodes the same types it serves, so client and server cannot
/// drift apart.
public enum ControlAPI {
    public struct NodeInfo: Codable, Sendable, Equatable {
        public let id: String
        public let name: String
        public let listen: String
        public let identityLine: String
        public let open: Bool
        public let startedAt: Date
    }

    public struct CapabilityInfo: Codable, Sendable, Equatable {
        public let name: String
        public let capacity: Int

        init(_ capability: Capability) {
            self.name = capability.name
            self.capacity = Int(capability.capacity)
        }
    }

    public struct Member: Codable, Sendable, Equatable {
        public let id: String
        public let name: String
        /// The address the member listens on, from its signed record.
        public let address: String
        /// `alive`, `suspect`, `dead` or `left`.
        public let status: String
        public let incarnation: UInt64
        public let capabilities: [CapabilityInfo]
        /// Tasks running on the member.
        public let load: UInt32
        /// When this node last learned anything about the member.
        public let lastHeard: Date
        /// Who claimed the member suspect or dead.
        public let accuser: String?
        /// The remote end of the TCP session, when one is open.
        public let remoteAddress: String?
        /// `self`, `inbound` (the member dialled us), `outbound` (we dialled it) or `none`.
        public let connection: String
        /// `trusted` (descriptor in peers/), `open` (admitted by --open) or `self`.
        public let trust: String
        /// Since when the session has been open.
        public let since: Date?
    }

    public struct Members: Codable, Sendable, Equatable {
        public let members: [Member]
    }

    public struct ErrorBody: Codable, Sendable {
        public let error: String
        public init(error: String) { self.error = error }
    }

    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }
}

/// One request to the control API and its answer, independent of HTTP plumbing.
public struct ControlRequest: Sendable {
    public let method: String
    public let path: String
    public let query: [String: String]
    public let body: [UInt8]
}

public struct ControlResponse: Sendable {
    public let status: Int
    public let body: [UInt8]

    public static func json(_ value: some Encodable, status: Int = 200) -> ControlResponse {
        do {
            return ControlResponse(status: status, body: Array(try ControlAPI.encoder().encode(value)) + [0x0a])
        } catch {
            return .error(500, "cannot encode the response: \(error)")
        }
    }

    public static func error(_ status: Int, _ message: String) -> ControlResponse {
        let body = (try? ControlAPI.encoder().encode(ControlAPI.ErrorBody(error: message))) ?? Data()
        return ControlResponse(status: status, body: Array(body) + [0x0a])
    }
}

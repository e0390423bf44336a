public import Foundation

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

    public struct Member: Codable, Sendable, Equatable {
        public let id: String
        public let name: String
        /// The address the member listens on (what it advertised in the handshake).
        public let address: String
        /// The remote end of the TCP connection, for peers.
        public let remoteAddress: String?
        /// `self`, `inbound` (the peer dialled us) or `outbound` (we dialled it).
        public let connection: String
        /// `trusted` (descriptor in peers/), `open` (admitted by --open) or `self`.
        public let trust: String
        public let since: Date
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

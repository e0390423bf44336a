import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A small blocking HTTP/1.1 client for the control socket, used by the CLI's client commands. One request per
/// connection (`Connection: close`), so the response ends at EOF and no connection state is kept.
public struct ControlClient: Sendable {
    public let socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    public enum Error: Swift.Error, CustomStringConvertible {
        case notRunning(String)
        case staleSocket(String)
        case io(String)
        case badResponse(String)
        case api(status: Int, message: String)

        public var description: String {
            switch self {
            case .notRunning(let path): return "no node is running here (\(path) does not exist); start one with 'agentmesh run'"
            case .staleSocket(let path): return "no node answers on \(path) (it is left over from a node that stopped)"
            case .io(let why): return "control socket error: \(why)"
            case .badResponse(let why): return "the node sent a malformed response: \(why)"
            case .api(let status, let message): return "the node refused the request (HTTP \(status)): \(message)"
            }
        }
    }

    public struct Response: Sendable {
        public let status: Int
        public let body: [UInt8]
    }

    /// True when a live node accepts connections on the socket.
    package func isAnswering() -> Bool {
        guard let fd = try? self.connect() else { return false }
        close(fd)
        return true
    }

    public func request(
        method: String, path: String, body: [UInt8] = [], headers: [String: String] = [:], timeout: Duration = .seconds(30)
    ) throws(Error) -> Response {
        let fd = try self.connect()
        defer { close(fd) }
        let head =
            "\(method) \(path) HTTP/1.1\r\nHost: agentmesh\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + headers.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)\r\n" }.joined()
            + "Content-Length: \(body.count)\r\n\r\n"
        try Self.writeAll(fd, Array(head.utf8) + body)
        return try Self.parse(Self.readAll(fd, timeout: timeout))
    }

    /// `POST /v1/artifacts`: streams a file to the node (never read whole into memory); answers the reference.
    public func upload(file path: String, name: String, mediaType: String) throws(Error) -> ControlAPI.ArtifactInfo {
        let input = open(path, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw .io("cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { close(input) }
        var info = stat()
        guard fstat(input, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { throw .io("\(path) is not a regular file") }
        let fd = try self.connect()
        defer { close(fd) }
        let query = name.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(CharacterSet(charactersIn: "&=+"))) ?? "artifact"
        let head = "POST /v1/artifacts?name=\(query) HTTP/1.1\r\nHost: agentmesh\r\nConnection: close\r\n"
            + "Content-Type: \(mediaType)\r\nContent-Length: \(info.st_size)\r\n\r\n"
        try Self.writeAll(fd, Array(head.utf8))
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .io("cannot read \(path): \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            do {
                try Self.writeAll(fd, Array(chunk[0..<count]))
            } catch {
                // The node may have refused on the length and closed: its answer says why.
                break
            }
        }
        return try self.decode(Self.parse(Self.readAll(fd, timeout: .seconds(600))), as: ControlAPI.ArtifactInfo.self)
    }

    /// `GET /v1/artifacts/SHA256` into a file, streamed; returns the bytes written.
    public func download(artifact sha256: String, to path: String) throws(Error) -> UInt64 {
        let fd = try self.connect()
        defer { close(fd) }
        var tv = timeval(tv_sec: 600, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        try Self.writeAll(fd, Array("GET /v1/artifacts/\(sha256) HTTP/1.1\r\nHost: agentmesh\r\nConnection: close\r\n\r\n".utf8))
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        // The head first; an error answer is small and read whole.
        while received.firstRange(of: [13, 10, 13, 10]) == nil {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw .badResponse("the node closed the connection before answering") }
            received += chunk[0..<count]
        }
        let headEnd = received.firstRange(of: [13, 10, 13, 10])!
        let status = Int(String(decoding: received[..<headEnd.lowerBound], as: UTF8.self).split(separator: " ").dropFirst().first ?? "") ?? 0
        guard status == 200 else {
            let rest = Array(received[headEnd.upperBound...]) + (try Self.readAll(fd, timeout: .seconds(30)))
            _ = try self.decode(Response(status: status, body: rest), as: ControlAPI.ErrorBody.self)
            throw .badResponse("HTTP \(status)")
        }
        let output = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard output >= 0 else { throw .io("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(output) }
        var written: UInt64 = 0
        var pending = Array(received[headEnd.upperBound...])
        while true {
            if !pending.isEmpty {
                try Self.writeAll(output, pending)
                written += UInt64(pending.count)
            }
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { pending = []; continue }
                throw .io(String(cString: strerror(errno)))
            }
            if count == 0 { break }
            pending = Array(chunk[0..<count])
        }
        return written
    }

    private static func readAll(_ fd: Int32, timeout: Duration) throws(Error) -> [UInt8] {
        var tv = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .io(errno == EAGAIN ? "no answer within \(timeout)" : String(cString: strerror(errno)))
            }
            if count == 0 { return received }
            received += chunk[0..<count]
        }
    }

    /// Decodes a JSON response of type `T`, or throws the node's error message.
    public func get<T: Decodable>(_ path: String, as type: T.Type) throws(Error) -> T {
        try self.decode(self.request(method: "GET", path: path), as: type)
    }

    public func decode<T: Decodable>(_ response: Response, as type: T.Type) throws(Error) -> T {
        guard (200..<300).contains(response.status) else {
            let message = (try? ControlAPI.decoder().decode(ControlAPI.ErrorBody.self, from: Data(response.body)))?.error
            throw .api(status: response.status, message: message ?? String(decoding: response.body, as: UTF8.self))
        }
        do {
            return try ControlAPI.decoder().decode(T.self, from: Data(response.body))
        } catch {
            throw .badResponse("\(error)")
        }
    }

    private func connect() throws(Error) -> Int32 {
        guard FileManager.default.fileExists(atPath: self.socketPath) else { throw .notRunning(self.socketPath) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .io(String(cString: strerror(errno))) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(self.socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw .io("socket path is too long: \(self.socketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(fd)
            if code == ECONNREFUSED || code == ENOENT { throw .staleSocket(self.socketPath) }
            throw .io(String(cString: strerror(code)))
        }
        return fd
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(Error) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .io(String(cString: strerror(errno)))
            }
            offset += count
        }
    }

    private static func parse(_ bytes: [UInt8]) throws(Error) -> Response {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let headEnd = bytes.firstRange(of: separator) else { throw .badResponse("no header terminator") }
        let head = String(decoding: bytes[..<headEnd.lowerBound], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw .badResponse("bad status line '\(statusLine)'")
        }
        return Response(status: status, body: Array(bytes[headEnd.upperBound...]))
    }
}

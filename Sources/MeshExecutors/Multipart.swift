import Foundation

/// A run's artifact folders: the input artifacts, each a file named as the artifact (`AGENTMESH_ARTIFACTS_IN`),
/// and an empty folder whose regular files become the result's artifacts once the run succeeds
/// (`AGENTMESH_ARTIFACTS_OUT`). An `http:` agent gets the inputs as `multipart/form-data` parts and may answer
/// the same way; its file parts land in the output folder.
package struct ArtifactFolders: Sendable {
    package struct Input: Sendable {
        package let name: String
        package let mediaType: String
        package let path: String

        package init(name: String, mediaType: String, path: String) {
            self.name = name
            self.mediaType = mediaType
            self.path = path
        }
    }

    package let input: String
    package let output: String
    /// Scratch space for request and answer bodies that must not be held in memory.
    package let scratch: String
    package let inputs: [Input]
    /// The most an `http:` agent's multipart answer may be (the node's largest artifact): more fails the run.
    package let maximumAnswer: UInt64

    package init(input: String, output: String, scratch: String, inputs: [Input], maximumAnswer: UInt64) {
        self.input = input
        self.output = output
        self.scratch = scratch
        self.inputs = inputs
        self.maximumAnswer = maximumAnswer
    }
}

/// `multipart/form-data` (RFC 7578) as `http:` agents get and give artifacts: written to and read from files, so a
/// large artifact is never held in memory whole.
enum Multipart {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Writes the request body: a part `input` (the task's JSON), then one part per artifact with its file name and
    /// media type. Returns the boundary.
    static func writeRequest(to path: String, json: [UInt8], inputs: [ArtifactFolders.Input]) throws -> String {
        let boundary = "agentmesh-" + UUID().uuidString
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        guard let out = FileHandle(forWritingAtPath: path) else { throw Failure(description: "cannot write \(path)") }
        defer { try? out.close() }
        func write(_ text: String) throws { try out.write(contentsOf: Data(text.utf8)) }
        try write("--\(boundary)\r\nContent-Disposition: form-data; name=\"input\"\r\nContent-Type: application/json\r\n\r\n")
        try out.write(contentsOf: Data(json))
        for input in inputs {
            let name = input.name.replacingOccurrences(of: "\"", with: "%22")
            try write("\r\n--\(boundary)\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"\(name)\"\r\n"
                + "Content-Type: \(input.mediaType)\r\n\r\n")
            guard let source = FileHandle(forReadingAtPath: input.path) else { throw Failure(description: "cannot read \(input.path)") }
            defer { try? source.close() }
            while let chunk = try source.read(upToCount: 1 << 20), !chunk.isEmpty { try out.write(contentsOf: chunk) }
        }
        try write("\r\n--\(boundary)--\r\n")
        return boundary
    }

    /// Reads an answer body: the part named `result` is the task's JSON result; every part with a file name is
    /// written to `folder` under that name (its base name only). Returns the result's bytes.
    static func readAnswer(from path: String, contentType: String, into folder: String) throws -> [UInt8] {
        guard let boundaryParameter = contentType.split(separator: ";").map({ $0.trimmingCharacters(in: .whitespaces) })
            .first(where: { $0.lowercased().hasPrefix("boundary=") })
        else { throw Failure(description: "a multipart answer without a boundary") }
        let boundary = boundaryParameter.dropFirst("boundary=".count).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        let body = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        let delimiter = Data("--\(boundary)".utf8)
        guard var cursor = body.range(of: delimiter)?.upperBound else { throw Failure(description: "the multipart answer has no parts") }
        var result: [UInt8]?
        while true {
            // After a delimiter: "--" ends the body, CRLF starts a part.
            if body[cursor...].starts(with: Data("--".utf8)) { break }
            guard body[cursor...].starts(with: Data("\r\n".utf8)) else { throw Failure(description: "a malformed multipart delimiter") }
            let headersStart = cursor + 2
            guard let headersEnd = body.range(of: Data("\r\n\r\n".utf8), in: headersStart..<body.endIndex) else {
                throw Failure(description: "a multipart part without the end of its headers")
            }
            let headers = String(decoding: body[headersStart..<headersEnd.lowerBound], as: UTF8.self)
            let contentStart = headersEnd.upperBound
            guard let next = body.range(of: Data("\r\n".utf8) + delimiter, in: contentStart..<body.endIndex) else {
                throw Failure(description: "a multipart part that never ends")
            }
            let content = body[contentStart..<next.lowerBound]
            let disposition = Self.disposition(headers)
            if let filename = disposition["filename"] {
                let name = (filename as NSString).lastPathComponent
                guard !name.isEmpty, !name.hasPrefix("."), name.utf8.count <= 128 else {
                    throw Failure(description: "an artifact part's file name '\(filename)' cannot be used")
                }
                guard FileManager.default.createFile(atPath: folder + "/" + name, contents: content) else {
                    throw Failure(description: "cannot write the artifact \(name)")
                }
            } else if disposition["name"] == "result" {
                result = Array(content)
            }
            cursor = next.upperBound
        }
        guard let result else { throw Failure(description: "a multipart answer without a part named \"result\"") }
        return result
    }

    /// The parameters of a part's `Content-Disposition` header.
    private static func disposition(_ headers: String) -> [String: String] {
        guard let line = headers.components(separatedBy: "\r\n").first(where: { $0.lowercased().hasPrefix("content-disposition:") }) else {
            return [:]
        }
        var parameters: [String: String] = [:]
        for item in line.split(separator: ";").dropFirst() {
            let pair = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard pair.count == 2 else { continue }
            parameters[pair[0].lowercased()] = pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
        return parameters
    }
}

import Foundation
import MeshCore
import MeshCrypto
import Testing

@testable import MeshExecutors

/// How a task's payload carries its artifacts, the artifact messages, and the multipart reader and writer.
@Suite struct PayloadTests {
    @Test func payloadsCarryArtifactsAfterANulAndRefuseMalformedLists() throws {
        let artifact = ArtifactRef(digest: SHA256.hash([1]), size: 9, mediaType: "text/plain", name: "notes.txt")
        let payload = TaskPayload(json: Array(#"{"a":1}"#.utf8), artifacts: [artifact])
        let bytes = payload.encoded()
        #expect(try TaskPayload(decoding: bytes) == payload)
        #expect(Array(TaskPayload.json(of: bytes)) == payload.json && TaskPayload.artifacts(of: bytes) == [artifact])
        #expect(TaskPayload(json: [0x31]).encoded() == [0x31], "no artifacts: the JSON alone")
        #expect(throws: TaskPayload.DecodeError.self) { try TaskPayload(decoding: bytes + [0]) }
        #expect(throws: TaskPayload.DecodeError.self) { try TaskPayload(decoding: Array(bytes.dropLast())) }
        let twice = TaskPayload(json: [0x31], artifacts: [artifact, artifact]).encoded()
        #expect(throws: TaskPayload.DecodeError.self) { try TaskPayload(decoding: twice) }
        #expect(!ArtifactRef.isValidName("../x") && !ArtifactRef.isValidName(".hidden") && ArtifactRef.isValidName("report 1.pdf"))
    }

    @Test func artifactMessagesRoundTripAndRefuseBadLengths() throws {
        let id = TaskID(high: 1, low: 2), digest = SHA256.hash([3])
        let messages: [TaskMessage] = [
            .artifactRequest(id, digest: digest, offset: 1 << 20, length: 1 << 20),
            .artifactChunk(id, digest: digest, offset: 0, chainingValue: digest, bytes: [1, 2, 3]),
            .artifactChunk(id, digest: digest, offset: 5, chainingValue: [], bytes: []),
            .artifactUnavailable(id, digest: digest, reason: "gone"),
        ]
        for message in messages { #expect(try TaskMessage(decoding: message.encoded()) == message) }
        var tooLong = TaskMessage.artifactRequest(id, digest: digest, offset: 0, length: 1).encoded()
        tooLong.replaceSubrange(tooLong.count - 4..<tooLong.count, with: [0, 0x20, 0, 0])
        #expect(throws: TaskMessage.DecodeError.self) { try TaskMessage(decoding: tooLong) }
        // A chunk's audit digest leaves its bytes out but not its chaining value.
        let chunk = TaskMessage.artifactChunk(id, digest: digest, offset: 0, chainingValue: digest, bytes: [1, 2, 3])
        let other = TaskMessage.artifactChunk(id, digest: digest, offset: 0, chainingValue: digest, bytes: [4, 5, 6])
        #expect(chunk.auditDigest(wireBytes: chunk.encoded()) == other.auditDigest(wireBytes: other.encoded()))
        let request = TaskMessage.artifactRequest(id, digest: digest, offset: 0, length: 1)
        #expect(request.auditDigest(wireBytes: request.encoded()) == SHA256.hash(request.encoded()))
    }

    /// A message sent as parts (its large payload a part of its own, not copied) is byte for byte the message
    /// encoded whole, and its audit digest over the parts is the digest over the bytes, however they are split.
    @Test func aMessageInPartsIsTheMessageEncodedWhole() throws {
        let id = TaskID(high: 1, low: 2), digest = SHA256.hash([3])
        var rng = SplitMix64(seed: 5)
        let large = rng.bytes(100_000), small = Array("{\"a\":1}".utf8)
        // Each message with how many parts it goes out in: the large payload apart, between the bytes around it.
        let messages: [(TaskMessage, Int)] = [
            (.offer(TaskOffer(id: id, epoch: 1, capability: "echo", input: large, timeRemaining: .seconds(9),
                              options: TaskOptions(context: "c", traceparent: "t"))), 3),
            (.offer(TaskOffer(id: id, epoch: 1, capability: "echo", input: small, timeRemaining: .seconds(9))), 1),
            (.result(id, epoch: 1, outcome: .success(large)), 2), (.result(id, epoch: 1, outcome: .success(small)), 1),
            (.artifactChunk(id, digest: digest, offset: 0, chainingValue: digest, bytes: large[...]), 2),
            (.artifactChunk(id, digest: digest, offset: 0, chainingValue: digest, bytes: [1, 2, 3]), 1),
            (.accept(id, epoch: 1), 1),
        ]
        for (message, count) in messages {
            let whole = message.encoded(after: 5), parts = message.encodedParts(after: 5)
            #expect(Array(parts.joined()) == whole)
            #expect(parts.count == count)
            #expect(message.auditDigest(wireParts: parts) == message.auditDigest(wireBytes: whole))
            for split in [0, 1, 7, whole.count / 2, whole.count - 1, whole.count] {
                let halves = [whole[..<split], whole[split...]]
                #expect(message.auditDigest(wireParts: halves) == message.auditDigest(wireBytes: whole))
            }
        }
    }

    @Test func multipartAnswersGiveTheResultAndTheirFiles() throws {
        let folder = "/tmp/am-multipart-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: folder + "/out", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let body = "--b\r\nContent-Disposition: form-data; name=\"result\"\r\n\r\n{\"ok\":true}\r\n"
            + "--b\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"../../escape.txt\"\r\nContent-Type: text/plain\r\n\r\nline\r\n"
            + "--b--\r\n"
        try body.write(toFile: folder + "/answer", atomically: true, encoding: .utf8)
        let result = try Multipart.readAnswer(from: folder + "/answer", contentType: "multipart/form-data; boundary=b", into: folder + "/out")
        #expect(result == Array("{\"ok\":true}".utf8))
        #expect(try String(contentsOfFile: folder + "/out/escape.txt", encoding: .utf8) == "line", "only the base name is used")
        try "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nno end".write(toFile: folder + "/answer", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) {
            try Multipart.readAnswer(from: folder + "/answer", contentType: "multipart/form-data; boundary=b", into: folder + "/out")
        }
        // The request side: the input part first, then each file.
        try Data("abc".utf8).write(to: URL(fileURLWithPath: folder + "/in.txt"))
        let boundary = try Multipart.writeRequest(
            to: folder + "/request", json: Array("{}".utf8), inputs: [.init(name: "in.txt", mediaType: "text/plain", path: folder + "/in.txt")])
        let request = try String(contentsOfFile: folder + "/request", encoding: .utf8)
        #expect(request.hasPrefix("--\(boundary)\r\nContent-Disposition: form-data; name=\"input\"") && request.contains("filename=\"in.txt\"")
                && request.hasSuffix("abc\r\n--\(boundary)--\r\n"))
    }
}

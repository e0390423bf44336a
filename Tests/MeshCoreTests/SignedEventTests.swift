import Foundation
import MeshCore
import MeshCrypto
import Testing

/// Events carry their publisher's signature: the vectors in `Fixtures/signed-events.json` (made with an independent
/// Ed25519) reproduced byte for byte, and every field covered.
@Suite struct SignedEventTests {
    struct VectorFile: Decodable {
        let secret_key: String
        let public_key: String
        let vectors: [Vector]
    }
    struct Vector: Decodable {
        let id: String
        let topic: String
        let time: Int64
        let data: String
        let origin: String
        let signature: String
        let message: String
    }

    static func vectors() throws -> (NodeIdentity, VectorFile) {
        let url = try #require(Bundle.module.url(forResource: "signed-events", withExtension: "json", subdirectory: "Fixtures"))
        let file = try JSONDecoder().decode(VectorFile.self, from: Data(contentsOf: url))
        let key = try Ed25519SigningKey(secretKey: SecretBytes(copying: try #require(Hex.decode(file.secret_key))))
        return (NodeIdentity(name: "vector", signingKey: key), file)
    }

    @Test func signedEventsReproduceTheVectorsByteForByte() throws {
        let (identity, file) = try Self.vectors()
        #expect(Hex.encode(identity.signingKey.publicKey.bytes) == file.public_key)
        for vector in file.vectors {
            let event = MeshEvent(
                id: try #require(EventID(hex: vector.id)), topic: vector.topic, publishedBy: identity, time: vector.time,
                data: Array(vector.data.utf8))
            #expect(event.origin.description == vector.origin)
            #expect(Hex.encode(try #require(event.seal).signature) == vector.signature)
            #expect(Hex.encode(TaskMessage.event(event).encoded()) == vector.message)
            let decoded = try TaskMessage(decoding: try #require(Hex.decode(vector.message)))
            #expect(decoded == .event(event))
            guard case .event(let received) = decoded else { continue }
            #expect(received.isAuthentic)
        }
    }

    @Test func changingAnyFieldOrTheOriginBreaksTheSignature() throws {
        let (identity, file) = try Self.vectors()
        let vector = try #require(file.vectors.first)
        let message = try #require(Hex.decode(vector.message))
        // Every byte after the header, the origin key's included: flipped, the event decodes but is not authentic
        // (or does not decode at all, when the flip breaks a length or the topic).
        for position in 21..<message.count {
            var altered = message
            altered[position] ^= 0x01
            guard case .event(let event)? = try? TaskMessage(decoding: altered) else { continue }
            #expect(!event.isAuthentic, "byte \(position) changed and the event still verified")
        }
        // Another node's name on a genuine seal: refused.
        let genuine = MeshEvent(id: EventID(high: 1, low: 2), topic: "t", publishedBy: identity, time: 5, data: Array("1".utf8))
        let forged = MeshEvent(
            id: genuine.id, topic: genuine.topic, origin: NodeIdentity(name: "other").nodeID, time: genuine.time,
            data: genuine.data, seal: genuine.seal)
        #expect(genuine.isAuthentic && !forged.isAuthentic)
        let unsealed = MeshEvent(id: genuine.id, topic: "t", origin: genuine.origin, time: 5, data: genuine.data, seal: nil)
        #expect(!unsealed.isAuthentic)
    }

    @Test func theUnsignedEventOfEarlierBuildsIsRefused() throws {
        var message = try #require(Hex.decode(try Self.vectors().1.vectors[0].message))
        message[0] = 11
        #expect(throws: TaskMessage.DecodeError.self) { try TaskMessage(decoding: message) }
    }
}

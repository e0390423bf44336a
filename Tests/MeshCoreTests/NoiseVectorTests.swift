import Foundation
import MeshCore
import MeshCrypto
import MeshTestKit
import Testing

/// The cacophony vectors for `Noise_XX_25519_ChaChaPoly_SHA256`, reproduced byte for byte.
@Suite struct NoiseVectorTests {
    struct VectorFile: Decodable { let vectors: [Vector] }
    struct Vector: Decodable {
        let protocol_name: String
        let init_prologue: String
        let init_static: String
        let init_ephemeral: String
        let resp_prologue: String
        let resp_static: String
        let resp_ephemeral: String
        let handshake_hash: String
        let init_psks: [String]?
        let messages: [Message]
    }
    struct Message: Decodable { let payload: String; let ciphertext: String }

    static func xxVectors() throws -> [Vector] {
        let url = try #require(Bundle.module.url(
            forResource: "noise-xx-25519-chachapoly-sha256", withExtension: "json", subdirectory: "Fixtures"))
        let file = try JSONDecoder().decode(VectorFile.self, from: Data(contentsOf: url))
        return file.vectors.filter { $0.protocol_name == Noise.protocolName && $0.init_psks == nil }
    }

    static func keyPair(_ hex: String) throws -> X25519KeyPair {
        try X25519KeyPair(secretKey: SecretBytes(copying: try #require(Hex.decode(hex))))
    }

    @Test func vectorsReproduceByteForByte() throws {
        let vectors = try Self.xxVectors()
        #expect(!vectors.isEmpty)
        for vector in vectors {
            var initiator = Noise.HandshakeState(
                role: .initiator, prologue: try #require(Hex.decode(vector.init_prologue)),
                staticKey: try Self.keyPair(vector.init_static), ephemeralKey: try Self.keyPair(vector.init_ephemeral))
            var responder = Noise.HandshakeState(
                role: .responder, prologue: try #require(Hex.decode(vector.resp_prologue)),
                staticKey: try Self.keyPair(vector.resp_static), ephemeralKey: try Self.keyPair(vector.resp_ephemeral))

            var initiatorCiphers: (send: Noise.CipherState, receive: Noise.CipherState)?
            var responderCiphers: (send: Noise.CipherState, receive: Noise.CipherState)?
            for (index, message) in vector.messages.enumerated() {
                let payload = try #require(Hex.decode(message.payload))
                let expected = try #require(Hex.decode(message.ciphertext))
                let initiatorSends = index % 2 == 0
                if index < 3 {
                    let ciphertext: [UInt8]
                    let received: [UInt8]
                    if initiatorSends {
                        ciphertext = try initiator.writeMessage(payload: payload)
                        received = try responder.readMessage(ciphertext)
                    } else {
                        ciphertext = try responder.writeMessage(payload: payload)
                        received = try initiator.readMessage(ciphertext)
                    }
                    #expect(ciphertext == expected, "handshake message \(index)")
                    #expect(received == payload)
                    if index == 2 {
                        #expect(initiator.handshakeHash == Hex.decode(vector.handshake_hash))
                        #expect(responder.handshakeHash == initiator.handshakeHash)
                        initiatorCiphers = try initiator.split()
                        responderCiphers = try responder.split()
                    }
                } else {
                    let ciphertext: [UInt8]
                    let received: [UInt8]
                    if initiatorSends {
                        ciphertext = try initiatorCiphers!.send.encrypt(associatedData: [], plaintext: payload)
                        received = try responderCiphers!.receive.decrypt(associatedData: [], ciphertext: ciphertext)
                    } else {
                        ciphertext = try responderCiphers!.send.encrypt(associatedData: [], plaintext: payload)
                        received = try initiatorCiphers!.receive.decrypt(associatedData: [], ciphertext: ciphertext)
                    }
                    #expect(ciphertext == expected, "transport message \(index)")
                    #expect(received == payload)
                }
            }
        }
    }

    @Test func messagesOutOfTurnAreRefused() throws {
        var initiator = Noise.HandshakeState(role: .initiator, prologue: [], staticKey: X25519KeyPair())
        #expect(throws: Noise.Error.outOfTurn) { try initiator.readMessage([UInt8](repeating: 0, count: 32)) }
        var responder = Noise.HandshakeState(role: .responder, prologue: [], staticKey: X25519KeyPair())
        #expect(throws: Noise.Error.outOfTurn) { try responder.writeMessage(payload: []) }
        #expect(throws: Noise.Error.outOfTurn) { try responder.split() }
    }

    @Test func lowOrderEphemeralIsRejected() throws {
        var initiator = Noise.HandshakeState(role: .initiator, prologue: [], staticKey: X25519KeyPair())
        _ = try initiator.writeMessage(payload: [])
        // The all-zero point has low order: the DH result is zero and libsodium refuses it.
        let forged = [UInt8](repeating: 0, count: 32) + [UInt8](repeating: 0, count: 64)
        #expect(throws: Noise.Error.invalidPublicKey) { try initiator.readMessage(forged) }
    }
}

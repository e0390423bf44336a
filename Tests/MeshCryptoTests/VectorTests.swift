import MeshCrypto
import Testing

/// The primitives against their published test vectors: a wrapper that passes the wrong length, swaps an argument
/// or truncates an output fails here before any handshake test could notice.
@Suite struct VectorTests {
    static func hex(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            bytes.append(UInt8(text[index..<next], radix: 16)!)
            index = next
        }
        return bytes
    }

    @Test func sha256OfTheFIPSExamples() {
        #expect(SHA256.hash(Array("abc".utf8)) == Self.hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"))
        #expect(SHA256.hash([]) == Self.hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
        #expect(SHA256.hash(Array("a".utf8), Array("bc".utf8)) == SHA256.hash(Array("abc".utf8)), "parts are concatenated")
    }

    /// RFC 4231, test cases 1, 2 and 6 (a key longer than the block).
    @Test func hmacSHA256OfRFC4231() {
        let cases: [(key: [UInt8], data: [UInt8], mac: String)] = [
            ([UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8),
             "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (Array("Jefe".utf8), Array("what do ya want for nothing?".utf8),
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            ([UInt8](repeating: 0xaa, count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
             "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        ]
        for (key, data, mac) in cases {
            #expect(HMACSHA256.authenticate(key: SecretBytes(copying: key), data).exportedCopy() == Self.hex(mac))
        }
    }

    /// RFC 5869 test case 3 (no salt, no info) is the Noise HKDF: with the chaining key at zero (HashLen zeros is the
    /// RFC's salt when none is given), T(1) = HMAC(PRK, 0x01) and T(2) = HMAC(PRK, T(1) ‖ 0x02).
    @Test func hkdfOfRFC5869TestCase3() {
        let prk = HMACSHA256.authenticate(key: SecretBytes(copying: [UInt8](repeating: 0, count: 32)), [UInt8](repeating: 0x0b, count: 22))
        #expect(prk.exportedCopy() == Self.hex("19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"))
        let first = HMACSHA256.authenticate(key: prk, [0x01]).exportedCopy()
        let second = HMACSHA256.authenticate(key: prk, first, [0x02]).exportedCopy()
        #expect(Array((first + second).prefix(42)) == Self.hex(
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"))
    }

    /// RFC 8032 §7.1, tests 1 and 2: the key from its seed, the signature byte for byte, and verification.
    @Test func ed25519OfRFC8032() throws {
        let cases: [(seed: String, publicKey: String, message: String, signature: String)] = [
            ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
             "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
             "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
            ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
             "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
             "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
        ]
        for (seed, publicKey, message, signature) in cases {
            let key = try Ed25519SigningKey(secretKey: SecretBytes(copying: Self.hex(seed) + Self.hex(publicKey)))
            #expect(key.publicKey.bytes == Self.hex(publicKey))
            #expect(key.signature(for: Self.hex(message)) == Self.hex(signature))
            #expect(key.publicKey.isValidSignature(Self.hex(signature), for: Self.hex(message)))
            var forged = Self.hex(signature)
            forged[0] ^= 1
            #expect(!key.publicKey.isValidSignature(forged, for: Self.hex(message)))
        }
        // A secret whose public half does not match its seed is refused.
        #expect(throws: CryptoError.self) {
            try Ed25519SigningKey(secretKey: SecretBytes(copying: Self.hex(cases[0].seed) + Self.hex(cases[1].publicKey)))
        }
    }

    /// RFC 7748 §6.1: both public keys and the shared secret; a low-order point is refused.
    @Test func x25519OfRFC7748() throws {
        let alice = try X25519KeyPair(secretKey: SecretBytes(copying: Self.hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")))
        let bob = try X25519KeyPair(secretKey: SecretBytes(copying: Self.hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")))
        #expect(alice.publicKey == Self.hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"))
        #expect(bob.publicKey == Self.hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"))
        let shared = Self.hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        #expect(try alice.sharedSecret(with: bob.publicKey).exportedCopy() == shared)
        #expect(try bob.sharedSecret(with: alice.publicKey).exportedCopy() == shared)
        #expect(throws: CryptoError.weakPublicKey) { try alice.sharedSecret(with: [UInt8](repeating: 0, count: 32)) }
        #expect(throws: CryptoError.self) { try alice.sharedSecret(with: [1, 2, 3]) }
    }

    /// The network key's sub-keys: deterministic, and different for every id and context.
    @Test func networkSubKeysAreSeparatedByIdAndContext() throws {
        let network = try NetworkKey(key: SecretBytes(copying: [UInt8](repeating: 7, count: 32)))
        let gate = network.derivedKey(id: 1, context: "am-gate1").exportedCopy()
        #expect(gate == network.derivedKey(id: 1, context: "am-gate1").exportedCopy())
        #expect(gate != network.derivedKey(id: 2, context: "am-gate1").exportedCopy())
        #expect(gate != network.derivedKey(id: 1, context: "am-other").exportedCopy())
        #expect(gate != network.exportKey() && gate.count == 32)
        #expect(throws: CryptoError.self) { try NetworkKey(key: SecretBytes(copying: [1, 2, 3])) }
    }

    /// The Noise vectors (Tests/MeshCoreTests) check the cipher byte for byte; here: what opens and what does not.
    @Test func sealedMessagesOpenOnlyUnchanged() throws {
        let key = SecretBytes(randomCount: ChaChaPoly.keyByteCount)
        let sealed = ChaChaPoly.seal(key: key, nonce: 7, associatedData: [1], plaintext: Array("payload".utf8))
        #expect(sealed.count == 7 + ChaChaPoly.tagByteCount)
        #expect(try ChaChaPoly.open(key: key, nonce: 7, associatedData: [1], ciphertext: sealed) == Array("payload".utf8))
        var tampered = sealed
        tampered[0] ^= 1
        #expect(throws: CryptoError.self) { try ChaChaPoly.open(key: key, nonce: 7, associatedData: [1], ciphertext: tampered) }
        #expect(throws: CryptoError.self) { try ChaChaPoly.open(key: key, nonce: 8, associatedData: [1], ciphertext: sealed) }
        #expect(throws: CryptoError.self) { try ChaChaPoly.open(key: key, nonce: 7, associatedData: [2], ciphertext: sealed) }
    }

    @Test func secretsAreWipedOnRequest() {
        var secret: [UInt8] = [1, 2, 3, 4]
        wipe(&secret)
        #expect(secret == [0, 0, 0, 0])
        let held = SecretBytes(consuming: &secret)
        #expect(held.count == 4)
        var original: [UInt8] = [9, 9]
        _ = SecretBytes(consuming: &original)
        #expect(original.allSatisfy { $0 == 0 }, "consuming wipes the caller's copy")
    }
}

@Suite struct IncrementalSHA256Tests {
    @Test func incrementalHashingMatchesOneShotAndExposesChainingValuesOnBlockBoundaries() {
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var hasher = SHA256.Hasher()
        hasher.update(Array(bytes[0..<128]))
        #expect(hasher.count == 128)
        let checkpoint = hasher
        #expect(hasher.chainingValue?.count == 32)
        hasher.update(Array(bytes[128..<129]))
        #expect(hasher.chainingValue == nil)
        hasher.update(Array(bytes[129...]))
        #expect(hasher.finalize() == SHA256.hash(bytes))
        // A copy is a checkpoint: going back and hashing the rest again gives the same digest.
        var again = checkpoint
        again.update(Array(bytes[128...]))
        #expect(again.finalize() == SHA256.hash(bytes))
        #expect(SHA256.hash(Array("abc".utf8)) == VectorTests.hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"))
    }
}

@Suite struct InPlaceAEADTests {
    /// Transport frames of 4 KiB and more go through OpenSSL and smaller ones through libsodium; the copying
    /// functions are libsodium's. The same key, nonce and bytes give the same ciphertext and tag either way, and a
    /// frame opens in place or into another buffer.
    @Test(arguments: [0, 1, 4095, 4096, 4097, 65_535, 70_000])
    func transportSealingAndOpeningMatchTheCopyingFunctions(_ length: Int) {
        let key = SecretBytes(randomCount: ChaChaPoly.keyByteCount)
        let plaintext = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let sealed = ChaChaPoly.seal(key: key, nonce: 7, associatedData: [], plaintext: plaintext)
        var buffer = plaintext + [UInt8](repeating: 0, count: ChaChaPoly.tagByteCount)
        buffer.withUnsafeMutableBytes { ChaChaPoly.sealInPlace(key: key, nonce: 7, buffer: $0, plaintextLength: plaintext.count) }
        #expect(buffer == sealed)
        func open(_ frame: [UInt8], nonce: UInt64, inPlace: Bool) -> (Bool, [UInt8]) {
            var target = inPlace ? frame : [UInt8](repeating: 0x55, count: frame.count)
            let source = frame
            let opened = source.withUnsafeBytes { ciphertext in
                target.withUnsafeMutableBytes { output in
                    inPlace
                        ? ChaChaPoly.open(key: key, nonce: nonce, ciphertext: UnsafeRawBufferPointer(output), into: output.baseAddress!)
                        : ChaChaPoly.open(key: key, nonce: nonce, ciphertext: ciphertext, into: output.baseAddress!)
                }
            }
            return (opened, Array(target.prefix(length)))
        }
        for inPlace in [true, false] {
            #expect(open(buffer, nonce: 7, inPlace: inPlace) == (true, plaintext))
            var tampered = buffer
            tampered[length / 2] ^= 1
            let (opened, left) = open(tampered, nonce: 7, inPlace: inPlace)
            #expect(!opened, "a flipped bit fails the tag")
            #expect(left.allSatisfy { $0 == 0 }, "a forgery's bytes are not left decrypted")
            #expect(!open(buffer, nonce: 8, inPlace: inPlace).0)
        }
    }
}

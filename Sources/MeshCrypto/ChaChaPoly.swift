internal import CSodium

/// ChaCha20-Poly1305 (IETF) as Noise uses it: a 96-bit nonce of 4 zero bytes and a 64-bit little-endian counter.
public enum ChaChaPoly {
    public static let keyByteCount = 32
    public static let tagByteCount = Int(crypto_aead_chacha20poly1305_ietf_ABYTES)

    private static func nonceBytes(_ counter: UInt64) -> [UInt8] {
        var nonce = [UInt8](repeating: 0, count: Int(crypto_aead_chacha20poly1305_ietf_NPUBBYTES))
        withUnsafeBytes(of: counter.littleEndian) { nonce.replaceSubrange(4..<12, with: $0) }
        return nonce
    }

    public static func seal(
        key: SecretBytes, nonce: UInt64, associatedData: [UInt8], plaintext: [UInt8]
    ) -> [UInt8] {
        ensureSodium()
        precondition(key.count == keyByteCount, "ChaCha20-Poly1305 keys are 32 bytes")
        let nonce = nonceBytes(nonce)
        return plaintext.withUnsafeBytes { pt in
            // Not zeroed first: the cipher writes every byte.
            [UInt8](unsafeUninitializedCapacity: pt.count + tagByteCount) { o, initialized in
                var outLength: UInt64 = 0
                key.withUnsafeBytes { k in
                    associatedData.withUnsafeBufferPointer { ad in
                        _ = crypto_aead_chacha20poly1305_ietf_encrypt(
                            o.baseAddress!, &outLength,
                            pt.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(pt.count),
                            ad.baseAddress, UInt64(ad.count), nil, nonce,
                            k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    }
                }
                initialized = pt.count + tagByteCount
            }
        }
    }

    public static func open(
        key: SecretBytes, nonce: UInt64, associatedData: [UInt8], ciphertext: [UInt8]
    ) throws(CryptoError) -> [UInt8] {
        ensureSodium()
        precondition(key.count == keyByteCount, "ChaCha20-Poly1305 keys are 32 bytes")
        let nonce = nonceBytes(nonce)
        let result: [UInt8]? = ciphertext.withUnsafeBytes { ct in
            guard ct.count >= tagByteCount else { return nil }
            var status: Int32 = -1
            // Not zeroed first: on success every byte is written; on failure the bytes are dropped unread.
            let out = [UInt8](unsafeUninitializedCapacity: ct.count - tagByteCount) { o, initialized in
                var outLength: UInt64 = 0
                status = key.withUnsafeBytes { k in
                    associatedData.withUnsafeBufferPointer { ad in
                        crypto_aead_chacha20poly1305_ietf_decrypt(
                            o.baseAddress, &outLength, nil,
                            ct.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(ct.count),
                            ad.baseAddress, UInt64(ad.count), nonce,
                            k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    }
                }
                initialized = status == 0 ? ct.count - tagByteCount : 0
            }
            return status == 0 ? out : nil
        }
        guard let result else { throw .authenticationFailed }
        return result
    }
}

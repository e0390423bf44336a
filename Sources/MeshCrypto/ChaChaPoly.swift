internal import CLibCrypto
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

    /// Encrypts the first `plaintextLength` bytes of `buffer` where they are and writes the tag right after them
    /// (`buffer` holds `plaintextLength + tagByteCount` bytes): no copy in, no copy out. No associated data.
    public static func sealInPlace(key: SecretBytes, nonce: UInt64, buffer: UnsafeMutableRawBufferPointer, plaintextLength: Int) {
        ensureSodium()
        precondition(key.count == keyByteCount, "ChaCha20-Poly1305 keys are 32 bytes")
        precondition(buffer.count >= plaintextLength + tagByteCount, "room for the tag")
        let nonce = nonceBytes(nonce)
        if plaintextLength >= largeFrame {
            let sealed = key.withUnsafeBytes { k in
                OpenSSLChaChaPoly.seal(key: k, nonce: nonce, bytes: buffer.baseAddress!, count: plaintextLength)
            }
            if sealed { return }
        }
        var outLength: UInt64 = 0
        let bytes = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        key.withUnsafeBytes { k in
            // libsodium encrypts in place: the ciphertext may start where the plaintext does.
            _ = crypto_aead_chacha20poly1305_ietf_encrypt(
                bytes, &outLength, bytes, UInt64(plaintextLength), nil, 0, nil, nonce,
                k.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Checks and decrypts `ciphertext` (ending in its tag) into `plaintext`, which has room for
    /// `ciphertext.count - tagByteCount` bytes and may be the ciphertext's own start (in place). Reading the frame
    /// where it arrived spares a copy of it first. No associated data. False when the tag does not match; the
    /// plaintext's bytes are then wiped (OpenSSL decrypts as it checks), never left to be read.
    public static func open(
        key: SecretBytes, nonce: UInt64, ciphertext: UnsafeRawBufferPointer, into plaintext: UnsafeMutableRawPointer
    ) -> Bool {
        ensureSodium()
        precondition(key.count == keyByteCount, "ChaCha20-Poly1305 keys are 32 bytes")
        guard ciphertext.count >= tagByteCount else { return false }
        let length = ciphertext.count - tagByteCount
        let nonce = nonceBytes(nonce)
        let opened = key.withUnsafeBytes { k in
            if length >= largeFrame,
                let opened = OpenSSLChaChaPoly.open(key: k, nonce: nonce, ciphertext: ciphertext, into: plaintext)
            {
                return opened
            }
            var outLength: UInt64 = 0
            // libsodium checks the tag first, then decrypts (in place too).
            return crypto_aead_chacha20poly1305_ietf_decrypt(
                plaintext.assumingMemoryBound(to: UInt8.self), &outLength, nil,
                ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(ciphertext.count), nil, 0, nonce,
                k.baseAddress!.assumingMemoryBound(to: UInt8.self)) == 0
        }
        if !opened { plaintext.initializeMemory(as: UInt8.self, repeating: 0, count: length) }
        return opened
    }

    /// Frames of at least this many bytes are sealed and opened by OpenSSL; below it, libsodium's lower set-up cost
    /// wins. Both compute the same bytes (a test holds them to it).
    static let largeFrame = 4096

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

/// ChaCha20-Poly1305 (IETF, no associated data) through OpenSSL's EVP interface, in place. Each returns nil when
/// OpenSSL could not set up (the caller then uses libsodium).
enum OpenSSLChaChaPoly {
    /// False when OpenSSL failed; the bytes are then the plaintext they were, for libsodium to seal instead.
    static func seal(key: UnsafeRawBufferPointer, nonce: [UInt8], bytes: UnsafeMutableRawPointer, count: Int) -> Bool {
        let data = bytes.assumingMemoryBound(to: UInt8.self)
        func run(_ body: (OpaquePointer, inout Int32) -> Bool) -> Bool {
            guard let context = EVP_CIPHER_CTX_new() else { return false }
            defer { EVP_CIPHER_CTX_free(context) }
            var written: Int32 = 0
            guard EVP_EncryptInit_ex(context, EVP_chacha20_poly1305(), nil, key.baseAddress!.assumingMemoryBound(to: UInt8.self), nonce) == 1
            else { return false }
            return body(context, &written)
        }
        var encrypted: Int32 = 0
        let sealed = run { context, written in
            guard EVP_EncryptUpdate(context, data, &written, data, Int32(count)) == 1 else { return false }
            encrypted = written
            var final: Int32 = 0
            return Int(written) == count && EVP_EncryptFinal_ex(context, data + count, &final) == 1
                && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_GET_TAG, Int32(ChaChaPoly.tagByteCount), data + count) == 1
        }
        if !sealed && encrypted > 0 {
            // The cipher is a keystream XORed in: running it again over the bytes it covered gives them back.
            let restored = run { context, written in
                EVP_EncryptUpdate(context, data, &written, data, encrypted) == 1 && written == encrypted
            }
            precondition(restored, "OpenSSL's ChaCha20 failed after it had run once")
        }
        return sealed
    }

    /// True when the tag matched (`plaintext` holds it), false when it did not, nil when OpenSSL could not set up.
    static func open(key: UnsafeRawBufferPointer, nonce: [UInt8], ciphertext: UnsafeRawBufferPointer, into plaintext: UnsafeMutableRawPointer) -> Bool? {
        guard let context = EVP_CIPHER_CTX_new() else { return nil }
        defer { EVP_CIPHER_CTX_free(context) }
        let count = ciphertext.count - ChaChaPoly.tagByteCount
        let input = ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let output = plaintext.assumingMemoryBound(to: UInt8.self)
        var tag = Array(UnsafeRawBufferPointer(rebasing: ciphertext[count...]))
        var written: Int32 = 0
        var final: Int32 = 0
        guard EVP_DecryptInit_ex(context, EVP_chacha20_poly1305(), nil, key.baseAddress!.assumingMemoryBound(to: UInt8.self), nonce) == 1,
            EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_SET_TAG, Int32(ChaChaPoly.tagByteCount), &tag) == 1
        else { return nil }
        // From here the output changes: any failure is a refusal, never a retry with libsodium.
        guard EVP_DecryptUpdate(context, output, &written, input, Int32(count)) == 1, Int(written) == count else { return false }
        return EVP_DecryptFinal_ex(context, output + count, &final) == 1
    }
}

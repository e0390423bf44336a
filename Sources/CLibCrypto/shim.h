#ifndef AGENTMESH_CLIBCRYPTO_SHIM_H
#define AGENTMESH_CLIBCRYPTO_SHIM_H
// Two primitives, for their speed, both computing exactly what libsodium computes:
// - SHA-256: OpenSSL uses the CPU's SHA extensions (about 5x libsodium 1.0.18's portable C). The low-level API is
//   deprecated in OpenSSL 3 but is the one that exposes the chaining value between blocks, which artifact transfers
//   check chunk by chunk.
// - ChaCha20-Poly1305 (IETF) for large transport frames: OpenSSL's AVX-512 code runs at 3.8 GB/s here, libsodium
//   1.0.18's at about 1.2.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <openssl/evp.h>
#endif

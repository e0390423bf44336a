#ifndef AGENTMESH_CLIBCRYPTO_SHIM_H
#define AGENTMESH_CLIBCRYPTO_SHIM_H
// Only SHA-256, for its speed: OpenSSL uses the CPU's SHA extensions (about 5x libsodium 1.0.18's portable C).
// The low-level API is deprecated in OpenSSL 3 but is the one that exposes the chaining value between blocks,
// which artifact transfers check chunk by chunk.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#endif

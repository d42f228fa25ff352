/* auth.h - mutual challenge-response authentication of a client and a
 * ppserver on a shared secret, and the handshake payloads that carry it.
 *
 * HMAC-SHA256 over fresh random nonces (OpenSSL libcrypto); the secret
 * never crosses the wire, and each side proves knowledge of it with a
 * different label, so one side's proof can never be replayed as the
 * other's. The exchange, each payload inside a frame (frame.h):
 *
 *   client -> HELLO     magic "PPC\1", u16 version, u8 py major, u8 py minor,
 *                       u8[32] client nonce
 *   server -> CHALLENGE magic, u16 version, u8 py major, u8 py minor,
 *                       u8[32] server nonce, u8[32] server proof, u32 ncpus
 *   client -> AUTH      u8[32] client proof
 *   server -> WELCOME   u32 ncpus           (or ERROR with a text, then close)
 *
 *   server proof = HMAC(secret, "ppc-server" || client nonce || server nonce)
 *   client proof = HMAC(secret, "ppc-client" || client nonce || server nonce)
 *
 * Decoders check every length; nothing is allocated. (Discovery
 * announcements: announce.h.) */
#ifndef PPC_AUTH_H
#define PPC_AUTH_H
#include <stddef.h>
#include <stdint.h>

#define PPC_PROTO_VERSION 2 /* 2: JOB/RESULT aux bit PPC_AUX_OOB (out-of-band buffers) */
#define PPC_NONCE_LEN 32
#define PPC_MAC_LEN 32
#define PPC_HELLO_LEN (4 + 2 + 1 + 1 + PPC_NONCE_LEN)
#define PPC_CHALLENGE_LEN (PPC_HELLO_LEN + PPC_MAC_LEN + 4)
#define PPC_AUTH_LEN PPC_MAC_LEN
#define PPC_WELCOME_LEN 4

typedef struct ppc_hello {
    uint16_t version;
    uint8_t py_major, py_minor;
    uint8_t nonce[PPC_NONCE_LEN];
} ppc_hello;

typedef struct ppc_challenge {
    ppc_hello h; /* the server's version, python and nonce */
    uint8_t proof[PPC_MAC_LEN];
    uint32_t ncpus;
} ppc_challenge;

/* Fill buf with cryptographically random bytes. 0 or -1. */
int ppc_random(uint8_t *buf, size_t n);

/* HMAC-SHA256(secret, label || a || b) into out. 0 or -1. */
int ppc_auth_proof(const uint8_t *secret, size_t secret_len, const char *label,
                   const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                   uint8_t out[PPC_MAC_LEN]);
/* Constant-time comparison of two MACs: 1 when equal. */
int ppc_auth_equal(const uint8_t a[PPC_MAC_LEN], const uint8_t b[PPC_MAC_LEN]);

/* Encoders write exactly *_LEN bytes into out. */
void ppc_hello_encode(const ppc_hello *h, uint8_t out[PPC_HELLO_LEN]);
void ppc_challenge_encode(const ppc_challenge *c, uint8_t out[PPC_CHALLENGE_LEN]);
/* Decoders: 0 on success, -1 when the length or magic is wrong. */
int ppc_hello_decode(const uint8_t *p, size_t n, ppc_hello *h);
int ppc_challenge_decode(const uint8_t *p, size_t n, ppc_challenge *c);

#endif

/* auth.h - what the client and a ppserver say to each other once TLS is
 * up (tls.h: TLS authenticates both sides and protects every byte), the
 * HMAC helpers.
 *
 * Inside the TLS session, each payload inside a frame (frame.h):
 *
 *   client -> HELLO     magic "PPC\2", u16 version, u8 py major, u8 py minor
 *   server -> WELCOME   magic "PPC\2", u16 version, u8 py major, u8 py minor,
 *                       u32 ncpus, u32 liveness ms
 *                       (or ERROR with a text, then close: other version)
 *
 * Decoders check every length; nothing is allocated. (Discovery
 * announcements: announce.h.) */
#ifndef PPC_AUTH_H
#define PPC_AUTH_H
#include <stddef.h>
#include <stdint.h>

#define PPC_PROTO_VERSION 3 /* 3: TLS 1.3 links (tls.h); 2: OOB aux bit */
#define PPC_MAC_LEN 32
#define PPC_HELLO_LEN 8
#define PPC_WELCOME_LEN 16


typedef struct ppc_hello {
    uint16_t version;
    uint8_t py_major, py_minor;
} ppc_hello;

typedef struct ppc_welcome {
    ppc_hello h; /* the server's version and python */
    uint32_t ncpus;
    uint32_t liveness_ms;
} ppc_welcome;

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
void ppc_welcome_encode(const ppc_welcome *w, uint8_t out[PPC_WELCOME_LEN]);
/* Decoders: 0 on success, -1 when the length or magic is wrong. */
int ppc_hello_decode(const uint8_t *p, size_t n, ppc_hello *h);
int ppc_welcome_decode(const uint8_t *p, size_t n, ppc_welcome *w);

#endif

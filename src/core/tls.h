/* tls.h - TLS 1.3 on the client <-> ppserver connections (OpenSSL libssl).
 *
 * Two modes, chosen by the ppserver and announced before TLS starts:
 *  - PSK (default): an external pre-shared key derived from the cluster
 *    secret with scrypt (N=2^15, r=8, p=1, about 70 ms and 32 MiB per
 *    derivation) and a random salt the ppserver picks once per process.
 *    The ppserver derives once at start; a client once per node and salt.
 *    Nothing computed from the secret leaves a process except the TLS PSK
 *    binder and Finished MACs, keyed by the stretched key, so a captured
 *    exchange costs one scrypt per guessed secret. (EC)DHE is on
 *    (psk_dhe_ke): recorded traffic stays secret even if the secret leaks.
 *  - CERT: X.509 certificates, verified both ways against the site's CA
 *    (certfile, keyfile, cafile on both sides); no hostname check: any
 *    certificate the CA signed is a member of the cluster.
 *
 * Before TLS the ppserver sends, in the clear, one preamble:
 *   magic "PPCT", u8 format version (1), u8 mode, u16 zero, u8[16] salt
 * (the salt is zero in CERT mode). The scrypt cost is fixed here, never
 * taken from the wire, so a forged preamble cannot make guessing cheap.
 * After the TLS handshake, version and Python-version negotiation run
 * inside the session (auth.h: HELLO / WELCOME). */
#ifndef PPC_TLS_H
#define PPC_TLS_H
#include <stddef.h>
#include <stdint.h>

struct ssl_st;
struct ssl_ctx_st;

#define PPC_TLS_SALT_LEN 16
#define PPC_TLS_KEY_LEN 32
#define PPC_TLS_PREAMBLE_LEN 24
#define PPC_TLS_SCRYPT_LOG2N 15
#define PPC_TLS_SCRYPT_R 8
#define PPC_TLS_SCRYPT_P 1

enum { PPC_TLS_PSK = 1, PPC_TLS_CERT = 2, PPC_TLS_PLAIN = 3 /* benchmarks only */ };

/* Stretch the secret with the salt into a PSK. 0 or -1. */
int ppc_tls_derive(const uint8_t *secret, size_t secret_len, const uint8_t salt[PPC_TLS_SALT_LEN],
                   uint8_t key[PPC_TLS_KEY_LEN]);

void ppc_tls_preamble_encode(int mode, const uint8_t salt[PPC_TLS_SALT_LEN],
                             uint8_t out[PPC_TLS_PREAMBLE_LEN]);
/* 0 with *mode and salt filled; -1 when it is not a ppc preamble. */
int ppc_tls_preamble_decode(const uint8_t *p, size_t n, int *mode,
                            uint8_t salt[PPC_TLS_SALT_LEN]);

/* A context for one side (server 1: ppserver). certfile NULL: PSK mode.
 * NULL with a message in err on error (unreadable files, key mismatch). */
struct ssl_ctx_st *ppc_tls_ctx_new(int server, const char *certfile, const char *keyfile,
                                   const char *cafile, char *err, size_t errlen);
void ppc_tls_ctx_free(struct ssl_ctx_st *ctx);

/* A TLS session on the connected non-blocking socket fd. psk: the
 * stretched key (PSK mode; must outlive the session), NULL in CERT mode.
 * NULL on error. */
struct ssl_st *ppc_tls_new(struct ssl_ctx_st *ctx, int fd, const uint8_t *psk);
void ppc_tls_free(struct ssl_st *ssl);

/* Describe the error of the last failing call on this thread (OpenSSL's
 * queue) into out, prefixed "TLS: ", and clear the queue. */
void ppc_tls_why(char *out, size_t n);

#endif

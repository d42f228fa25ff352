/* announce.h - the wire format of UDP autodiscovery: a node's announcement
 * and a client's query, their codecs, and the announcement key.
 *
 * An announcement names the IPv4 address and TCP port a client should
 * connect to, and the receiver checks that address against the datagram's
 * sender. It is MACed with a key stretched from the secret by scrypt
 * (ppc_announce_key), so one captured datagram lets an attacker test a
 * guess of the secret only at scrypt's cost. All integers little-endian:
 *
 *   announcement (PPC_ANNOUNCE_LEN bytes)
 *     magic "PPCA", u16 version, u16 tcp port, u8[4] IPv4 address (network
 *     order), u64 unix time, u8[16] nonce, u8[16] echo (the query's nonce
 *     when it answers one, zeros when broadcast unasked),
 *     u8[32] HMAC-SHA256(key, "ppc-announce" || all preceding bytes)
 *   query (PPC_QUERY_LEN bytes, the same length: an answer is never larger
 *   than the query that asked for it)
 *     magic "PPCQ", u16 version, u16 zero, u8[16] nonce, zeros to the length
 *
 * Plain C, no I/O; decoders check every length and allocate nothing. */
#ifndef PPC_ANNOUNCE_H
#define PPC_ANNOUNCE_H
#include <stddef.h>
#include <stdint.h>

#define PPC_ANNOUNCE_VERSION 3
#define PPC_ANNOUNCE_NONCE 16
#define PPC_ANNOUNCE_KEY_LEN 32
#define PPC_ANNOUNCE_BODY (4 + 2 + 2 + 4 + 8 + PPC_ANNOUNCE_NONCE + PPC_ANNOUNCE_NONCE)
#define PPC_ANNOUNCE_LEN (PPC_ANNOUNCE_BODY + 32)
#define PPC_QUERY_LEN PPC_ANNOUNCE_LEN

/* scrypt parameters of the announcement key (N = 2^15, r = 8, p = 1: 32 MiB
 * and tens of milliseconds per derivation) and its fixed salt. */
#define PPC_ANNOUNCE_SCRYPT_N 32768
#define PPC_ANNOUNCE_SCRYPT_R 8
#define PPC_ANNOUNCE_SCRYPT_P 1
#define PPC_ANNOUNCE_SALT "ppc-announce-key-v3"

typedef struct ppc_announce {
    uint8_t addr[4]; /* IPv4, network order */
    uint16_t port;
    uint64_t time;   /* unix seconds */
    uint8_t nonce[PPC_ANNOUNCE_NONCE];
    uint8_t echo[PPC_ANNOUNCE_NONCE]; /* zeros: not an answer */
} ppc_announce;

/* The announcement key: scrypt(secret, PPC_ANNOUNCE_SALT). Slow on purpose
 * (derive once per engine). 0 or -1. */
int ppc_announce_key(const uint8_t *secret, size_t secret_len, uint8_t key[PPC_ANNOUNCE_KEY_LEN]);

/* Fill buf with cryptographically random bytes. 0 or -1. */
int ppc_announce_random(uint8_t *buf, size_t n);

/* Encode a with its MAC into out. 0 or -1. */
int ppc_announce_encode(const uint8_t key[PPC_ANNOUNCE_KEY_LEN], const ppc_announce *a,
                        uint8_t out[PPC_ANNOUNCE_LEN]);
/* Decode and authenticate: 0 when length, magic, version and MAC are
 * right (a filled), -1 otherwise. Freshness, sender and replay are the
 * caller's checks. */
int ppc_announce_decode(const uint8_t key[PPC_ANNOUNCE_KEY_LEN], const uint8_t *p, size_t n,
                        ppc_announce *a);
/* 1 when |t - now| <= max_age (no overflow at the u64 edges). */
int ppc_announce_fresh(uint64_t t, uint64_t now, uint64_t max_age);
/* 1 when the echo field is all zeros (an unasked announcement). */
int ppc_announce_unasked(const ppc_announce *a);

void ppc_query_encode(const uint8_t nonce[PPC_ANNOUNCE_NONCE], uint8_t out[PPC_QUERY_LEN]);
/* 0 when p is a well-formed query (exact length, magic, version, zero
 * padding), its nonce in nonce; -1 otherwise. */
int ppc_query_decode(const uint8_t *p, size_t n, uint8_t nonce[PPC_ANNOUNCE_NONCE]);

#endif

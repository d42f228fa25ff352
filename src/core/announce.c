/* announce.c - codecs of discovery announcements and queries, and the
 * scrypt-stretched announcement key (see announce.h). OpenSSL libcrypto
 * does the cryptography; nothing here does I/O. */
#include "announce.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

static const uint8_t ANN_MAGIC[4] = {'P', 'P', 'C', 'A'};
static const uint8_t QUERY_MAGIC[4] = {'P', 'P', 'C', 'Q'};
static const char LABEL[] = "ppc-announce";

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int ppc_announce_key(const uint8_t *secret, size_t secret_len, uint8_t key[PPC_ANNOUNCE_KEY_LEN])
{
    static const uint8_t empty[1] = {0};
    /* maxmem: 128 * N * r bytes are needed; allow twice that */
    uint64_t maxmem = (uint64_t)2 * 128 * PPC_ANNOUNCE_SCRYPT_N * PPC_ANNOUNCE_SCRYPT_R;
    return EVP_PBE_scrypt((const char *)(secret_len ? secret : empty), secret_len,
                          (const unsigned char *)PPC_ANNOUNCE_SALT, sizeof PPC_ANNOUNCE_SALT - 1,
                          PPC_ANNOUNCE_SCRYPT_N, PPC_ANNOUNCE_SCRYPT_R, PPC_ANNOUNCE_SCRYPT_P,
                          maxmem, key, PPC_ANNOUNCE_KEY_LEN) == 1
               ? 0
               : -1;
}

int ppc_announce_random(uint8_t *buf, size_t n)
{
    if (n > 0x7fffffff)
        return -1;
    return RAND_bytes(buf, (int)n) == 1 ? 0 : -1;
}

static int mac(const uint8_t key[PPC_ANNOUNCE_KEY_LEN], const uint8_t body[PPC_ANNOUNCE_BODY],
               uint8_t out[32])
{
    uint8_t msg[sizeof LABEL - 1 + PPC_ANNOUNCE_BODY];
    memcpy(msg, LABEL, sizeof LABEL - 1);
    memcpy(msg + sizeof LABEL - 1, body, PPC_ANNOUNCE_BODY);
    unsigned int outl = 0;
    if (!HMAC(EVP_sha256(), key, PPC_ANNOUNCE_KEY_LEN, msg, sizeof msg, out, &outl) || outl != 32)
        return -1;
    return 0;
}

int ppc_announce_encode(const uint8_t key[PPC_ANNOUNCE_KEY_LEN], const ppc_announce *a,
                        uint8_t out[PPC_ANNOUNCE_LEN])
{
    memcpy(out, ANN_MAGIC, 4);
    put_u16(out + 4, PPC_ANNOUNCE_VERSION);
    put_u16(out + 6, a->port);
    memcpy(out + 8, a->addr, 4);
    put_u64(out + 12, a->time);
    memcpy(out + 20, a->nonce, PPC_ANNOUNCE_NONCE);
    memcpy(out + 20 + PPC_ANNOUNCE_NONCE, a->echo, PPC_ANNOUNCE_NONCE);
    return mac(key, out, out + PPC_ANNOUNCE_BODY);
}

int ppc_announce_decode(const uint8_t key[PPC_ANNOUNCE_KEY_LEN], const uint8_t *p, size_t n,
                        ppc_announce *a)
{
    if (n != PPC_ANNOUNCE_LEN || memcmp(p, ANN_MAGIC, 4) != 0 ||
        get_u16(p + 4) != PPC_ANNOUNCE_VERSION)
        return -1;
    uint8_t m[32];
    if (mac(key, p, m) < 0 || CRYPTO_memcmp(m, p + PPC_ANNOUNCE_BODY, 32) != 0)
        return -1;
    a->port = get_u16(p + 6);
    memcpy(a->addr, p + 8, 4);
    a->time = get_u64(p + 12);
    memcpy(a->nonce, p + 20, PPC_ANNOUNCE_NONCE);
    memcpy(a->echo, p + 20 + PPC_ANNOUNCE_NONCE, PPC_ANNOUNCE_NONCE);
    return 0;
}

int ppc_announce_fresh(uint64_t t, uint64_t now, uint64_t max_age)
{
    return t > now ? t - now <= max_age : now - t <= max_age;
}

int ppc_announce_unasked(const ppc_announce *a)
{
    uint8_t any = 0;
    for (int i = 0; i < PPC_ANNOUNCE_NONCE; i++)
        any |= a->echo[i];
    return any == 0;
}

void ppc_query_encode(const uint8_t nonce[PPC_ANNOUNCE_NONCE], uint8_t out[PPC_QUERY_LEN])
{
    memset(out, 0, PPC_QUERY_LEN);
    memcpy(out, QUERY_MAGIC, 4);
    put_u16(out + 4, PPC_ANNOUNCE_VERSION);
    memcpy(out + 8, nonce, PPC_ANNOUNCE_NONCE);
}

int ppc_query_decode(const uint8_t *p, size_t n, uint8_t nonce[PPC_ANNOUNCE_NONCE])
{
    if (n != PPC_QUERY_LEN || memcmp(p, QUERY_MAGIC, 4) != 0 ||
        get_u16(p + 4) != PPC_ANNOUNCE_VERSION || get_u16(p + 6) != 0)
        return -1;
    for (size_t i = 8 + PPC_ANNOUNCE_NONCE; i < PPC_QUERY_LEN; i++)
        if (p[i])
            return -1;
    memcpy(nonce, p + 8, PPC_ANNOUNCE_NONCE);
    return 0;
}

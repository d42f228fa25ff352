/* auth.c - the in-TLS handshake payload codecs, HMAC helpers and the
 * discovery announcements (see auth.h). Cryptography is OpenSSL's;
 * nothing here does I/O. */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

#include "frame.h"

static const uint8_t HELLO_MAGIC[4] = {'P', 'P', 'C', 2};

int ppc_random(uint8_t *buf, size_t n)
{
    if (n > 0x7fffffff)
        return -1;
    return RAND_bytes(buf, (int)n) == 1 ? 0 : -1;
}

int ppc_auth_proof(const uint8_t *secret, size_t secret_len, const char *label,
                   const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                   uint8_t out[PPC_MAC_LEN])
{
    if (secret_len > 0x7fffffff)
        return -1;
    int rc = -1;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    if (!ctx)
        goto out;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                           OSSL_PARAM_construct_end()};
    static const uint8_t empty[1] = {0};
    size_t outl = 0;
    if (EVP_MAC_init(ctx, secret_len ? secret : empty, secret_len, params) != 1 ||
        EVP_MAC_update(ctx, (const uint8_t *)label, strlen(label)) != 1 ||
        (alen && EVP_MAC_update(ctx, a, alen) != 1) || (blen && EVP_MAC_update(ctx, b, blen) != 1) ||
        EVP_MAC_final(ctx, out, &outl, PPC_MAC_LEN) != 1 || outl != PPC_MAC_LEN)
        goto out;
    rc = 0;
out:
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return rc;
}

int ppc_auth_equal(const uint8_t a[PPC_MAC_LEN], const uint8_t b[PPC_MAC_LEN])
{
    return CRYPTO_memcmp(a, b, PPC_MAC_LEN) == 0;
}

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

void ppc_hello_encode(const ppc_hello *h, uint8_t out[PPC_HELLO_LEN])
{
    memcpy(out, HELLO_MAGIC, 4);
    put_u16(out + 4, h->version);
    out[6] = h->py_major;
    out[7] = h->py_minor;
}

int ppc_hello_decode(const uint8_t *p, size_t n, ppc_hello *h)
{
    if (n != PPC_HELLO_LEN || memcmp(p, HELLO_MAGIC, 4) != 0)
        return -1;
    h->version = get_u16(p + 4);
    h->py_major = p[6];
    h->py_minor = p[7];
    return 0;
}

void ppc_welcome_encode(const ppc_welcome *w, uint8_t out[PPC_WELCOME_LEN])
{
    ppc_hello_encode(&w->h, out);
    ppc_put_u32(out + PPC_HELLO_LEN, w->ncpus);
    ppc_put_u32(out + PPC_HELLO_LEN + 4, w->liveness_ms);
}

int ppc_welcome_decode(const uint8_t *p, size_t n, ppc_welcome *w)
{
    if (n != PPC_WELCOME_LEN || ppc_hello_decode(p, PPC_HELLO_LEN, &w->h) < 0)
        return -1;
    w->ncpus = ppc_get_u32(p + PPC_HELLO_LEN);
    w->liveness_ms = ppc_get_u32(p + PPC_HELLO_LEN + 4);
    return 0;
}

/* fuzz_handshake.c - libFuzzer target for the handshake codecs of
 * src/core/auth.c and src/core/tls.c (HELLO / WELCOME inside TLS, the
 * cleartext TLS preamble) and the HMAC logic of the announcements, driven
 * by structured input.
 *
 * Where fuzz_frames.c throws raw peer bytes at the decoders (and so can
 * almost never produce a valid MAC), this target reads field values from
 * the input - secret, versions, nonces, ncpus, port, clock, max age, a byte
 * to corrupt, a wrong length - builds the messages of a full exchange
 * with them and checks the properties auth.h promises:
 *  - HELLO / WELCOME encode -> decode gives the same fields, and decode
 *    rejects every other length and any corrupted magic;
 *  - the TLS preamble decodes exactly what was encoded, rejects every other
 *    length and any other header, and arbitrary 24 bytes decode only when
 *    re-encoding them gives the same bytes;
 *  - an HMAC proof verifies under the same secret and nonces and not
 *    under another secret, other nonces, another label or one corrupted
 *    byte.
 * (Discovery announcements: fuzz_announce.c.)
 * The input is read as a sequence of fields; past its end every field
 * reads as zero, so every input is valid. See fuzz/make_corpus.py for the
 * layout of the seeds. */
#include <stdint.h>
#include <string.h>

#include "auth.h"
#include "frame.h"
#include "tls.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NONCE_LEN 32

typedef struct reader {
    const uint8_t *p;
    size_t n, i;
} reader;

static void rd(reader *r, void *out, size_t n)
{
    uint8_t *o = out;
    for (size_t k = 0; k < n; k++)
        o[k] = r->i < r->n ? r->p[r->i++] : 0;
}
static uint8_t rd8(reader *r)
{
    uint8_t v;
    rd(r, &v, 1);
    return v;
}
static uint16_t rd16(reader *r)
{
    uint8_t b[2];
    rd(r, b, 2);
    return (uint16_t)(b[0] | b[1] << 8);
}
static uint32_t rd32(reader *r)
{
    uint8_t b[4];
    rd(r, b, 4);
    return ppc_get_u32(b);
}

/* HMAC pads a key shorter than the block (64 bytes for SHA-256) with
 * zeros, so two secrets that differ only in trailing zero bytes are the
 * same key. Secrets here are at most 64 bytes long. */
static int same_key(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    while (al && a[al - 1] == 0)
        al--;
    while (bl && b[bl - 1] == 0)
        bl--;
    return al == bl && (al == 0 || memcmp(a, b, al) == 0);
}

static void proof(const uint8_t *s, size_t sl, const char *label, const uint8_t *a,
                  const uint8_t *b, uint8_t out[PPC_MAC_LEN])
{
    FUZZ_ASSERT(ppc_auth_proof(s, sl, label, a, NONCE_LEN, b, NONCE_LEN, out) == 0);
}

static void check_hello(const ppc_hello *h, uint16_t flip_at, uint8_t flip_mask)
{
    uint8_t enc[PPC_HELLO_LEN + 1];
    memset(enc, 0xa5, sizeof enc);
    ppc_hello_encode(h, enc);
    FUZZ_ASSERT(enc[PPC_HELLO_LEN] == 0xa5); /* wrote exactly PPC_HELLO_LEN */
    ppc_hello d;
    FUZZ_ASSERT(ppc_hello_decode(enc, PPC_HELLO_LEN, &d) == 0);
    FUZZ_ASSERT(d.version == h->version && d.py_major == h->py_major &&
                d.py_minor == h->py_minor);
    for (size_t n = 0; n <= PPC_HELLO_LEN + 1; n++)
        if (n != PPC_HELLO_LEN)
            FUZZ_ASSERT(ppc_hello_decode(enc, n, &d) < 0);
    size_t k = flip_at % PPC_HELLO_LEN;
    enc[k] ^= flip_mask;
    int rc = ppc_hello_decode(enc, PPC_HELLO_LEN, &d);
    FUZZ_ASSERT((rc == 0) == (k >= 4));
}

static void check_welcome(const ppc_welcome *w, uint16_t flip_at, uint8_t flip_mask)
{
    uint8_t enc[PPC_WELCOME_LEN + 1];
    memset(enc, 0x5a, sizeof enc);
    ppc_welcome_encode(w, enc);
    FUZZ_ASSERT(enc[PPC_WELCOME_LEN] == 0x5a);
    ppc_welcome d;
    FUZZ_ASSERT(ppc_welcome_decode(enc, PPC_WELCOME_LEN, &d) == 0);
    FUZZ_ASSERT(d.h.version == w->h.version && d.h.py_major == w->h.py_major &&
                d.h.py_minor == w->h.py_minor && d.ncpus == w->ncpus &&
                d.liveness_ms == w->liveness_ms);
    for (size_t n = 0; n <= PPC_WELCOME_LEN + 1; n++)
        if (n != PPC_WELCOME_LEN)
            FUZZ_ASSERT(ppc_welcome_decode(enc, n, &d) < 0);
    /* a HELLO is not a WELCOME, nor the reverse */
    FUZZ_ASSERT(ppc_hello_decode(enc, PPC_WELCOME_LEN, (ppc_hello *)&d) < 0);
    size_t k = flip_at % PPC_WELCOME_LEN;
    enc[k] ^= flip_mask;
    int rc = ppc_welcome_decode(enc, PPC_WELCOME_LEN, &d);
    FUZZ_ASSERT((rc == 0) == (k >= 4));
}

/* The cleartext TLS preamble: raw are 24 input bytes. */
static void check_preamble(const uint8_t raw[PPC_TLS_PREAMBLE_LEN], uint8_t mode_in,
                           uint16_t flip_at, uint8_t flip_mask)
{
    int mode = -1;
    uint8_t salt[PPC_TLS_SALT_LEN], enc[PPC_TLS_PREAMBLE_LEN + 1];
    /* arbitrary bytes: accepted only when they are a canonical preamble */
    if (ppc_tls_preamble_decode(raw, PPC_TLS_PREAMBLE_LEN, &mode, salt) == 0) {
        FUZZ_ASSERT(mode == PPC_TLS_PSK || mode == PPC_TLS_CERT || mode == PPC_TLS_PLAIN);
        ppc_tls_preamble_encode(mode, salt, enc);
        FUZZ_ASSERT(memcmp(enc, raw, PPC_TLS_PREAMBLE_LEN) == 0);
    }
    /* encode -> decode */
    int m = (mode_in & 1) ? PPC_TLS_CERT : PPC_TLS_PSK;
    memset(enc, 0x77, sizeof enc);
    ppc_tls_preamble_encode(m, raw + 8, enc);
    FUZZ_ASSERT(enc[PPC_TLS_PREAMBLE_LEN] == 0x77);
    FUZZ_ASSERT(ppc_tls_preamble_decode(enc, PPC_TLS_PREAMBLE_LEN, &mode, salt) == 0);
    FUZZ_ASSERT(mode == m && memcmp(salt, raw + 8, PPC_TLS_SALT_LEN) == 0);
    for (size_t n = 0; n <= PPC_TLS_PREAMBLE_LEN + 1; n++)
        if (n != PPC_TLS_PREAMBLE_LEN)
            FUZZ_ASSERT(ppc_tls_preamble_decode(enc, n, &mode, salt) < 0);
    /* one changed byte: in the header it is refused (a mode byte changed
     * to another mode's value is still a valid preamble); in the salt it
     * gives that other salt */
    size_t k = flip_at % PPC_TLS_PREAMBLE_LEN;
    enc[k] ^= flip_mask;
    int rc = ppc_tls_preamble_decode(enc, PPC_TLS_PREAMBLE_LEN, &mode, salt);
    if (k >= 8)
        FUZZ_ASSERT(rc == 0 && salt[k - 8] == (uint8_t)(raw[k] ^ flip_mask));
    else if (k == 5)
        FUZZ_ASSERT((rc == 0) ==
                    (enc[5] == PPC_TLS_PSK || enc[5] == PPC_TLS_CERT || enc[5] == PPC_TLS_PLAIN));
    else
        FUZZ_ASSERT(rc < 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size, 0};
    uint8_t secret[64], alt[64];
    size_t sl = rd8(&r) % (sizeof secret + 1);
    rd(&r, secret, sl);

    ppc_hello h;
    uint8_t cnonce[NONCE_LEN], snonce[NONCE_LEN];
    h.version = rd16(&r);
    h.py_major = rd8(&r);
    h.py_minor = rd8(&r);
    rd(&r, cnonce, NONCE_LEN);

    ppc_welcome w;
    w.h.version = rd16(&r);
    w.h.py_major = rd8(&r);
    w.h.py_minor = rd8(&r);
    rd(&r, snonce, NONCE_LEN);
    w.ncpus = rd32(&r);
    w.liveness_ms = (uint32_t)(w.ncpus * 2654435761u);

    uint16_t flip_at = rd16(&r);
    uint8_t flip_mask = rd8(&r);
    if (!flip_mask)
        flip_mask = 1;

    check_hello(&h, flip_at, flip_mask);
    check_welcome(&w, flip_at, flip_mask);
    uint8_t pre[PPC_TLS_PREAMBLE_LEN];
    memcpy(pre, cnonce, PPC_TLS_PREAMBLE_LEN);
    check_preamble(pre, h.py_major, flip_at, flip_mask);

    /* HMAC proofs (the announcements' MAC): a label and both nonces bind */
    uint8_t sproof[PPC_MAC_LEN], cp[PPC_MAC_LEN], sp[PPC_MAC_LEN], x[PPC_MAC_LEN];
    proof(sl ? secret : NULL, sl, "ppc-server", cnonce, snonce, sproof);
    proof(secret, sl, "ppc-client", cnonce, snonce, cp);
    proof(secret, sl, "ppc-client", cnonce, snonce, sp);
    FUZZ_ASSERT(ppc_auth_equal(cp, sp)); /* deterministic */
    FUZZ_ASSERT(!ppc_auth_equal(cp, sproof));
    uint8_t tampered[PPC_MAC_LEN];
    memcpy(tampered, cp, sizeof tampered);
    tampered[flip_at % PPC_MAC_LEN] ^= flip_mask;
    FUZZ_ASSERT(!ppc_auth_equal(cp, tampered));
    if (memcmp(cnonce, snonce, NONCE_LEN) != 0) {
        proof(secret, sl, "ppc-server", snonce, cnonce, x);
        FUZZ_ASSERT(!ppc_auth_equal(x, sproof));
    }

    /* the rest of the input is a second secret */
    size_t altl = rd8(&r) % (sizeof alt + 1);
    rd(&r, alt, altl);
    if (!same_key(alt, altl, secret, sl)) {
        proof(alt, altl, "ppc-server", cnonce, snonce, x);
        FUZZ_ASSERT(!ppc_auth_equal(x, sproof));
    }
    return 0;
}

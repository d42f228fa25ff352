/* fuzz_handshake.c - libFuzzer target for the handshake codecs and the
 * authentication logic of src/core/auth.c, driven by structured input.
 *
 * Where fuzz_frames.c throws raw peer bytes at the decoders (and so can
 * almost never produce a valid MAC), this target reads field values from
 * the input - secret, versions, nonces, ncpus, port, clock, max age, a byte
 * to corrupt, a wrong length - builds the messages of a full exchange
 * with them and checks the properties auth.h promises:
 *  - HELLO / CHALLENGE encode -> decode gives the same fields, and decode
 *    rejects every other length and any corrupted magic;
 *  - the server's proof verifies under the same secret and nonces and not
 *    under another secret, other nonces, the client's label or one
 *    corrupted byte; the client's proof likewise.
 * (Discovery announcements: fuzz_announce.c.)
 * The input is read as a sequence of fields; past its end every field
 * reads as zero, so every input is valid. See fuzz/make_corpus.py for the
 * layout of the seeds. */
#include <stdint.h>
#include <string.h>

#include "auth.h"
#include "frame.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
    FUZZ_ASSERT(ppc_auth_proof(s, sl, label, a, PPC_NONCE_LEN, b, PPC_NONCE_LEN, out) == 0);
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
                d.py_minor == h->py_minor && memcmp(d.nonce, h->nonce, PPC_NONCE_LEN) == 0);
    for (size_t n = 0; n <= PPC_HELLO_LEN + 1; n++)
        if (n != PPC_HELLO_LEN)
            FUZZ_ASSERT(ppc_hello_decode(enc, n, &d) < 0);
    size_t k = flip_at % PPC_HELLO_LEN;
    enc[k] ^= flip_mask;
    int rc = ppc_hello_decode(enc, PPC_HELLO_LEN, &d);
    FUZZ_ASSERT((rc == 0) == (k >= 4));
}

static void check_challenge(const ppc_challenge *c, uint16_t flip_at, uint8_t flip_mask,
                            const uint8_t *secret, size_t sl, const uint8_t *cnonce)
{
    uint8_t enc[PPC_CHALLENGE_LEN + 1];
    memset(enc, 0x5a, sizeof enc);
    ppc_challenge_encode(c, enc);
    FUZZ_ASSERT(enc[PPC_CHALLENGE_LEN] == 0x5a);
    ppc_challenge d;
    FUZZ_ASSERT(ppc_challenge_decode(enc, PPC_CHALLENGE_LEN, &d) == 0);
    FUZZ_ASSERT(d.h.version == c->h.version && d.h.py_major == c->h.py_major &&
                d.h.py_minor == c->h.py_minor &&
                memcmp(d.h.nonce, c->h.nonce, PPC_NONCE_LEN) == 0 &&
                memcmp(d.proof, c->proof, PPC_MAC_LEN) == 0 && d.ncpus == c->ncpus);
    for (size_t n = 0; n <= PPC_CHALLENGE_LEN + 1; n++)
        if (n != PPC_CHALLENGE_LEN)
            FUZZ_ASSERT(ppc_challenge_decode(enc, n, &d) < 0);

    /* The client checks the server's proof it just decoded. */
    uint8_t want[PPC_MAC_LEN];
    proof(secret, sl, "ppc-server", cnonce, d.h.nonce, want);
    FUZZ_ASSERT(ppc_auth_equal(want, d.proof));

    /* One corrupted byte: bad magic fails to decode, a corrupted nonce or
     * proof fails the proof check, the rest decodes to other fields. */
    size_t k = flip_at % PPC_CHALLENGE_LEN;
    enc[k] ^= flip_mask;
    int rc = ppc_challenge_decode(enc, PPC_CHALLENGE_LEN, &d);
    FUZZ_ASSERT((rc == 0) == (k >= 4));
    if (rc == 0) {
        proof(secret, sl, "ppc-server", cnonce, d.h.nonce, want);
        int ok = ppc_auth_equal(want, d.proof);
        int in_nonce_or_proof = k >= 8 && k < PPC_HELLO_LEN + PPC_MAC_LEN;
        FUZZ_ASSERT(ok == !in_nonce_or_proof);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size, 0};
    uint8_t secret[64], alt[64];
    size_t sl = rd8(&r) % (sizeof secret + 1);
    rd(&r, secret, sl);

    ppc_hello h;
    h.version = rd16(&r);
    h.py_major = rd8(&r);
    h.py_minor = rd8(&r);
    rd(&r, h.nonce, PPC_NONCE_LEN);

    ppc_challenge c;
    c.h.version = rd16(&r);
    c.h.py_major = rd8(&r);
    c.h.py_minor = rd8(&r);
    rd(&r, c.h.nonce, PPC_NONCE_LEN);
    c.ncpus = rd32(&r);

    uint16_t flip_at = rd16(&r);
    uint8_t flip_mask = rd8(&r);
    if (!flip_mask)
        flip_mask = 1;

    /* server side: proof over both nonces */
    proof(sl ? secret : NULL, sl, "ppc-server", h.nonce, c.h.nonce, c.proof);

    check_hello(&h, flip_at, flip_mask);
    check_challenge(&c, flip_at, flip_mask, secret, sl, h.nonce);

    /* client side: its proof is a different MAC, and the server accepts it */
    uint8_t cp[PPC_MAC_LEN], sp[PPC_MAC_LEN], x[PPC_MAC_LEN];
    proof(secret, sl, "ppc-client", h.nonce, c.h.nonce, cp);
    proof(secret, sl, "ppc-client", h.nonce, c.h.nonce, sp);
    FUZZ_ASSERT(ppc_auth_equal(cp, sp)); /* deterministic */
    FUZZ_ASSERT(!ppc_auth_equal(cp, c.proof));
    uint8_t tampered[PPC_MAC_LEN];
    memcpy(tampered, cp, sizeof tampered);
    tampered[flip_at % PPC_MAC_LEN] ^= flip_mask;
    FUZZ_ASSERT(!ppc_auth_equal(cp, tampered));
    /* swapped nonces (a reflected exchange) give another proof */
    if (memcmp(h.nonce, c.h.nonce, PPC_NONCE_LEN) != 0) {
        proof(secret, sl, "ppc-server", c.h.nonce, h.nonce, x);
        FUZZ_ASSERT(!ppc_auth_equal(x, c.proof));
    }

    /* the rest of the input is a second secret */
    size_t altl = rd8(&r) % (sizeof alt + 1);
    rd(&r, alt, altl);
    if (!same_key(alt, altl, secret, sl)) {
        proof(alt, altl, "ppc-server", h.nonce, c.h.nonce, x);
        FUZZ_ASSERT(!ppc_auth_equal(x, c.proof));
    }
    return 0;
}

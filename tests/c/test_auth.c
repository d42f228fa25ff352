/* test_auth.c - unit tests of src/core/auth.c and the pure parts of
 * src/core/tls.c: HMAC-SHA256 proofs (RFC 4231 vectors), constant-time MAC
 * comparison, HELLO / WELCOME payload codecs, the TLS preamble codec and
 * the scrypt PSK derivation (announcements: test_announce.c).
 * Decoders are given heap copies of exactly the length they are told, so
 * that a read past it is an ASan error in the -asan build. */
#define _GNU_SOURCE
#include "ctest.h"

#include "auth.h"
#include "frame.h"
#include "tls.h"

static const uint8_t SECRET[] = "shared secret";
#define SECRET_LEN (sizeof SECRET - 1)

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 37 + seed * 11 + 1);
}

static int unhex(const char *hex, uint8_t *out, size_t n)
{
    if (strlen(hex) != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

/* A heap copy of exactly n bytes (at least one byte allocated). */
static uint8_t *exact_copy(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    if (c && n)
        memcpy(c, p, n);
    return c;
}

/* ------------------------------------------------------------- proofs */

TEST(hmac_rfc4231_vectors)
{
    static const struct {
        uint8_t key_byte; /* 0: key is 0x01..0x19 (test case 4) */
        size_t key_len;
        uint8_t data_byte; /* 0: data is the string */
        size_t data_len;
        const char *data;
        const char *mac;
    } v[] = {
        /* RFC 4231 test cases 1, 2, 3, 4 and 6 (HMAC-SHA-256) */
        {0x0b, 20, 0, 0, "Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {'J', 4, 0, 0, "what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {0xaa, 20, 0xdd, 50, NULL,
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
        {0, 25, 0xcd, 50, NULL,
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        {0xaa, 131, 0, 0, "Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint8_t key[131], data[64], want[PPC_MAC_LEN], got[PPC_MAC_LEN];
        if (v[i].key_byte == 'J')
            memcpy(key, "Jefe", 4);
        else
            for (size_t k = 0; k < v[i].key_len; k++)
                key[k] = v[i].key_byte ? v[i].key_byte : (uint8_t)(k + 1);
        REQUIRE(unhex(v[i].mac, want, sizeof want) == 0);
        if (v[i].data) {
            /* data as the label */
            CHECK_EQ_INT(ppc_auth_proof(key, v[i].key_len, v[i].data, NULL, 0, NULL, 0, got), 0);
            CHECK_MEM(got, sizeof got, want, sizeof want);
            /* the same bytes split over label, a and b give the same MAC */
            size_t n = strlen(v[i].data), s1 = n / 3, s2 = n / 2;
            char label[64];
            memcpy(label, v[i].data, s1);
            label[s1] = 0;
            memset(got, 0, sizeof got);
            CHECK_EQ_INT(ppc_auth_proof(key, v[i].key_len, label, (const uint8_t *)v[i].data + s1,
                                        s2 - s1, (const uint8_t *)v[i].data + s2, n - s2, got),
                         0);
            CHECK_MEM(got, sizeof got, want, sizeof want);
        } else {
            /* binary data: empty label, data in a (then split over a and b) */
            memset(data, v[i].data_byte, v[i].data_len);
            CHECK_EQ_INT(ppc_auth_proof(key, v[i].key_len, "", data, v[i].data_len, NULL, 0, got),
                         0);
            CHECK_MEM(got, sizeof got, want, sizeof want);
            memset(got, 0, sizeof got);
            CHECK_EQ_INT(ppc_auth_proof(key, v[i].key_len, "", data, 1, data + 1,
                                        v[i].data_len - 1, got),
                         0);
            CHECK_MEM(got, sizeof got, want, sizeof want);
        }
    }
}

TEST(proof_depends_on_label_nonces_and_secret)
{
    uint8_t cn[32], sn[32], base[PPC_MAC_LEN], x[PPC_MAC_LEN];
    fill(cn, sizeof cn, 1);
    fill(sn, sizeof sn, 2);
    REQUIRE(ppc_auth_proof(SECRET, SECRET_LEN, "ppc-server", cn, sizeof cn, sn, sizeof sn, base) ==
            0);
    /* deterministic */
    CHECK_EQ_INT(ppc_auth_proof(SECRET, SECRET_LEN, "ppc-server", cn, sizeof cn, sn, sizeof sn, x),
                 0);
    CHECK(ppc_auth_equal(base, x));
    /* the other side's label: a server proof cannot be replayed as a client's */
    CHECK_EQ_INT(ppc_auth_proof(SECRET, SECRET_LEN, "ppc-client", cn, sizeof cn, sn, sizeof sn, x),
                 0);
    CHECK(!ppc_auth_equal(base, x));
    /* swapped nonces (a reflected exchange) */
    CHECK_EQ_INT(ppc_auth_proof(SECRET, SECRET_LEN, "ppc-server", sn, sizeof sn, cn, sizeof cn, x),
                 0);
    CHECK(!ppc_auth_equal(base, x));
    /* any byte of either nonce */
    for (size_t i = 0; i < 32; i++) {
        cn[i] ^= 0x01;
        CHECK_EQ_INT(
            ppc_auth_proof(SECRET, SECRET_LEN, "ppc-server", cn, sizeof cn, sn, sizeof sn, x), 0);
        CHECK_MSG(!ppc_auth_equal(base, x), "client nonce byte %zu ignored", i);
        cn[i] ^= 0x01;
        sn[i] ^= 0x80;
        CHECK_EQ_INT(
            ppc_auth_proof(SECRET, SECRET_LEN, "ppc-server", cn, sizeof cn, sn, sizeof sn, x), 0);
        CHECK_MSG(!ppc_auth_equal(base, x), "server nonce byte %zu ignored", i);
        sn[i] ^= 0x80;
    }
    /* another secret, a prefix of the secret, a longer secret, no secret */
    static const uint8_t other[] = "shared secreT";
    static const uint8_t longer[] = "shared secret!";
    CHECK_EQ_INT(ppc_auth_proof(other, SECRET_LEN, "ppc-server", cn, sizeof cn, sn, sizeof sn, x),
                 0);
    CHECK(!ppc_auth_equal(base, x));
    CHECK_EQ_INT(
        ppc_auth_proof(SECRET, SECRET_LEN - 1, "ppc-server", cn, sizeof cn, sn, sizeof sn, x), 0);
    CHECK(!ppc_auth_equal(base, x));
    CHECK_EQ_INT(
        ppc_auth_proof(longer, SECRET_LEN + 1, "ppc-server", cn, sizeof cn, sn, sizeof sn, x), 0);
    CHECK(!ppc_auth_equal(base, x));
    CHECK_EQ_INT(ppc_auth_proof(NULL, 0, "ppc-server", cn, sizeof cn, sn, sizeof sn, x), 0);
    CHECK(!ppc_auth_equal(base, x));
    /* an impossible secret length is refused before anything is read */
    CHECK_EQ_INT(ppc_auth_proof(SECRET, (size_t)1 << 31, "ppc-server", cn, sizeof cn, sn,
                                sizeof sn, x),
                 -1);
}

TEST(auth_equal)
{
    uint8_t a[PPC_MAC_LEN], b[PPC_MAC_LEN];
    fill(a, sizeof a, 3);
    memcpy(b, a, sizeof b);
    CHECK_EQ_INT(ppc_auth_equal(a, b), 1);
    CHECK_EQ_INT(ppc_auth_equal(a, a), 1);
    for (size_t i = 0; i < PPC_MAC_LEN; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            b[i] ^= (uint8_t)(1u << bit);
            CHECK_MSG(ppc_auth_equal(a, b) == 0, "difference in byte %zu bit %u missed", i, bit);
            b[i] ^= (uint8_t)(1u << bit);
        }
    }
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    CHECK_EQ_INT(ppc_auth_equal(a, b), 1);
}

TEST(random_bytes)
{
    uint8_t a[32] = {0}, b[32] = {0};
    CHECK_EQ_INT(ppc_random(a, sizeof a), 0);
    CHECK_EQ_INT(ppc_random(b, sizeof b), 0);
    CHECK(memcmp(a, b, sizeof a) != 0);
    CHECK_EQ_INT(ppc_random(a, 0), 0);
    /* refused before anything is written */
    CHECK_EQ_INT(ppc_random(a, (size_t)1 << 31), -1);
}

/* ----------------------------------------------------- HELLO / WELCOME */

TEST(hello_roundtrip)
{
    ppc_hello h = {.version = 0x1234, .py_major = 3, .py_minor = 12}, d;
    uint8_t enc[PPC_HELLO_LEN + 1];
    memset(enc, 0xee, sizeof enc);
    ppc_hello_encode(&h, enc);
    CHECK_EQ_INT(enc[PPC_HELLO_LEN], 0xee); /* exactly PPC_HELLO_LEN bytes */
    CHECK_MEM(enc, 4, "PPC\2", 4);
    CHECK_EQ_INT(enc[4], 0x34); /* little endian */
    CHECK_EQ_INT(enc[5], 0x12);
    CHECK_EQ_INT(enc[6], 3);
    CHECK_EQ_INT(enc[7], 12);
    memset(&d, 0, sizeof d);
    uint8_t *c = exact_copy(enc, PPC_HELLO_LEN);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(ppc_hello_decode(c, PPC_HELLO_LEN, &d), 0);
    free(c);
    CHECK_EQ_INT(d.version, 0x1234);
    CHECK_EQ_INT(d.py_major, 3);
    CHECK_EQ_INT(d.py_minor, 12);
    /* the decoder leaves version checks to its caller */
    h.version = PPC_PROTO_VERSION + 1;
    ppc_hello_encode(&h, enc);
    CHECK_EQ_INT(ppc_hello_decode(enc, PPC_HELLO_LEN, &d), 0);
    CHECK_EQ_INT(d.version, PPC_PROTO_VERSION + 1);
}

TEST(hello_decode_rejects_wrong_length_and_magic)
{
    ppc_hello h = {.version = PPC_PROTO_VERSION, .py_major = 3, .py_minor = 11}, d;
    uint8_t enc[PPC_WELCOME_LEN + 2];
    memset(enc, 0, sizeof enc);
    ppc_hello_encode(&h, enc);
    for (size_t n = 0; n <= PPC_HELLO_LEN + 1; n++) {
        if (n == PPC_HELLO_LEN)
            continue;
        uint8_t *c = exact_copy(enc, n);
        REQUIRE(c != NULL);
        CHECK_MSG(ppc_hello_decode(c, n, &d) == -1, "length %zu accepted", n);
        free(c);
    }
    for (size_t i = 0; i < 4; i++) {
        for (unsigned mask = 1; mask < 256; mask <<= 1) {
            enc[i] ^= (uint8_t)mask;
            CHECK_MSG(ppc_hello_decode(enc, PPC_HELLO_LEN, &d) == -1,
                      "magic byte %zu ^ 0x%02x accepted", i, mask);
            enc[i] ^= (uint8_t)mask;
        }
    }
    CHECK_EQ_INT(ppc_hello_decode(enc, PPC_HELLO_LEN, &d), 0);
    /* a WELCOME payload is not a HELLO */
    ppc_welcome w = {.h = h, .ncpus = 4, .liveness_ms = 9};
    ppc_welcome_encode(&w, enc);
    CHECK_EQ_INT(ppc_hello_decode(enc, PPC_WELCOME_LEN, &d), -1);
}

TEST(welcome_roundtrip_and_lengths)
{
    ppc_welcome w = {.h = {.version = PPC_PROTO_VERSION, .py_major = 3, .py_minor = 13},
                     .ncpus = 0x01020304,
                     .liveness_ms = 0xa0b0c0d0},
                d;
    uint8_t enc[PPC_WELCOME_LEN + 1];
    memset(enc, 0xee, sizeof enc);
    ppc_welcome_encode(&w, enc);
    CHECK_EQ_INT(enc[PPC_WELCOME_LEN], 0xee);
    CHECK_MEM(enc, 4, "PPC\2", 4);
    CHECK_EQ_INT(enc[PPC_HELLO_LEN], 0x04); /* little endian */
    CHECK_EQ_INT(enc[PPC_HELLO_LEN + 7], 0xa0);
    for (size_t n = 0; n <= PPC_WELCOME_LEN + 1; n++) {
        uint8_t *cp = exact_copy(enc, n);
        REQUIRE(cp != NULL);
        memset(&d, 0, sizeof d);
        int rc = ppc_welcome_decode(cp, n, &d);
        free(cp);
        if (n != PPC_WELCOME_LEN) {
            CHECK_MSG(rc == -1, "length %zu accepted", n);
            continue;
        }
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(d.h.version, PPC_PROTO_VERSION);
        CHECK_EQ_INT(d.h.py_minor, 13);
        CHECK_EQ_U64(d.ncpus, 0x01020304);
        CHECK_EQ_U64(d.liveness_ms, 0xa0b0c0d0u);
    }
    enc[2] ^= 0x20;
    CHECK_EQ_INT(ppc_welcome_decode(enc, PPC_WELCOME_LEN, &d), -1);
}

/* ------------------------------------------------- TLS preamble, the PSK */

TEST(preamble_roundtrip_and_rejects)
{
    uint8_t salt[PPC_TLS_SALT_LEN], got[PPC_TLS_SALT_LEN], enc[PPC_TLS_PREAMBLE_LEN + 1];
    fill(salt, sizeof salt, 12);
    memset(enc, 0xee, sizeof enc);
    ppc_tls_preamble_encode(PPC_TLS_PSK, salt, enc);
    CHECK_EQ_INT(enc[PPC_TLS_PREAMBLE_LEN], 0xee);
    CHECK_MEM(enc, 4, "PPCT", 4);
    int mode = 0;
    for (size_t n = 0; n <= PPC_TLS_PREAMBLE_LEN + 1; n++) {
        uint8_t *cp = exact_copy(enc, n);
        REQUIRE(cp != NULL);
        int rc = ppc_tls_preamble_decode(cp, n, &mode, got);
        free(cp);
        CHECK_MSG(rc == (n == PPC_TLS_PREAMBLE_LEN ? 0 : -1), "length %zu: %d", n, rc);
    }
    CHECK_EQ_INT(mode, PPC_TLS_PSK);
    CHECK_MEM(got, sizeof got, salt, sizeof salt);
    /* every header byte matters: magic, format, mode, the zero bytes */
    for (size_t i = 0; i < 8; i++) {
        enc[i] ^= 0x40;
        CHECK_MSG(ppc_tls_preamble_decode(enc, PPC_TLS_PREAMBLE_LEN, &mode, got) == -1,
                  "header byte %zu changed but accepted", i);
        enc[i] ^= 0x40;
    }
    ppc_tls_preamble_encode(PPC_TLS_CERT, NULL, enc);
    CHECK_EQ_INT(ppc_tls_preamble_decode(enc, PPC_TLS_PREAMBLE_LEN, &mode, got), 0);
    CHECK_EQ_INT(mode, PPC_TLS_CERT);
    enc[5] = PPC_TLS_PLAIN; /* the benchmarks' cleartext mode decodes (a client refuses it) */
    CHECK_EQ_INT(ppc_tls_preamble_decode(enc, PPC_TLS_PREAMBLE_LEN, &mode, got), 0);
    enc[5] = 4;
    CHECK_EQ_INT(ppc_tls_preamble_decode(enc, PPC_TLS_PREAMBLE_LEN, &mode, got), -1);
}

TEST(psk_derivation)
{
    uint8_t salt[PPC_TLS_SALT_LEN], a[PPC_TLS_KEY_LEN], b[PPC_TLS_KEY_LEN];
    fill(salt, sizeof salt, 13);
    REQUIRE(ppc_tls_derive(SECRET, SECRET_LEN, salt, a) == 0);
    REQUIRE(ppc_tls_derive(SECRET, SECRET_LEN, salt, b) == 0);
    CHECK_MEM(a, sizeof a, b, sizeof b); /* deterministic */
    salt[0] ^= 1;
    REQUIRE(ppc_tls_derive(SECRET, SECRET_LEN, salt, b) == 0);
    CHECK(memcmp(a, b, sizeof a) != 0); /* the salt matters */
    salt[0] ^= 1;
    REQUIRE(ppc_tls_derive(SECRET, SECRET_LEN - 1, salt, b) == 0);
    CHECK(memcmp(a, b, sizeof a) != 0); /* every byte of the secret */
    CHECK_EQ_INT(ppc_tls_derive(NULL, 0, salt, b), 0);
    CHECK(memcmp(a, b, sizeof a) != 0);
}

int main(int argc, char **argv) { return ctest_main(argc, argv); }

/* test_auth.c - unit tests of src/core/auth.c: HMAC-SHA256 proofs (RFC 4231
 * vectors), constant-time MAC comparison and HELLO / CHALLENGE payload
 * codecs (announcements: test_announce.c).
 * Decoders are given heap copies of exactly the length they are told, so
 * that a read past it is an ASan error in the -asan build. */
#define _GNU_SOURCE
#include "ctest.h"

#include "auth.h"
#include "frame.h"

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
    uint8_t cn[PPC_NONCE_LEN], sn[PPC_NONCE_LEN], base[PPC_MAC_LEN], x[PPC_MAC_LEN];
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
    for (size_t i = 0; i < PPC_NONCE_LEN; i++) {
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
    uint8_t a[PPC_NONCE_LEN] = {0}, b[PPC_NONCE_LEN] = {0};
    CHECK_EQ_INT(ppc_random(a, sizeof a), 0);
    CHECK_EQ_INT(ppc_random(b, sizeof b), 0);
    CHECK(memcmp(a, b, sizeof a) != 0);
    CHECK_EQ_INT(ppc_random(a, 0), 0);
    /* refused before anything is written */
    CHECK_EQ_INT(ppc_random(a, (size_t)1 << 31), -1);
}

/* --------------------------------------------------- HELLO / CHALLENGE */

TEST(hello_roundtrip)
{
    ppc_hello h = {.version = 0x1234, .py_major = 3, .py_minor = 12}, d;
    fill(h.nonce, sizeof h.nonce, 4);
    uint8_t enc[PPC_HELLO_LEN + 1];
    memset(enc, 0xee, sizeof enc);
    ppc_hello_encode(&h, enc);
    CHECK_EQ_INT(enc[PPC_HELLO_LEN], 0xee); /* exactly PPC_HELLO_LEN bytes */
    CHECK_MEM(enc, 4, "PPC\1", 4);
    CHECK_EQ_INT(enc[4], 0x34); /* little endian */
    CHECK_EQ_INT(enc[5], 0x12);
    CHECK_EQ_INT(enc[6], 3);
    CHECK_EQ_INT(enc[7], 12);
    CHECK_MEM(enc + 8, PPC_NONCE_LEN, h.nonce, PPC_NONCE_LEN);
    memset(&d, 0, sizeof d);
    uint8_t *c = exact_copy(enc, PPC_HELLO_LEN);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(ppc_hello_decode(c, PPC_HELLO_LEN, &d), 0);
    free(c);
    CHECK_EQ_INT(d.version, 0x1234);
    CHECK_EQ_INT(d.py_major, 3);
    CHECK_EQ_INT(d.py_minor, 12);
    CHECK_MEM(d.nonce, sizeof d.nonce, h.nonce, sizeof h.nonce);
    /* the decoder leaves version checks to its caller */
    h.version = PPC_PROTO_VERSION + 1;
    ppc_hello_encode(&h, enc);
    CHECK_EQ_INT(ppc_hello_decode(enc, PPC_HELLO_LEN, &d), 0);
    CHECK_EQ_INT(d.version, PPC_PROTO_VERSION + 1);
}

TEST(hello_decode_rejects_wrong_length_and_magic)
{
    ppc_hello h = {.version = PPC_PROTO_VERSION, .py_major = 3, .py_minor = 11}, d;
    fill(h.nonce, sizeof h.nonce, 5);
    uint8_t enc[PPC_HELLO_LEN + 2];
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
    /* a CHALLENGE payload is not a HELLO */
    uint8_t ch[PPC_CHALLENGE_LEN] = {0};
    ppc_challenge cc = {.h = h, .ncpus = 4};
    ppc_challenge_encode(&cc, ch);
    CHECK_EQ_INT(ppc_hello_decode(ch, sizeof ch, &d), -1);
}

TEST(challenge_roundtrip)
{
    ppc_challenge c = {.h = {.version = PPC_PROTO_VERSION, .py_major = 3, .py_minor = 13},
                       .ncpus = 0x01020304},
                  d;
    fill(c.h.nonce, sizeof c.h.nonce, 6);
    fill(c.proof, sizeof c.proof, 7);
    uint8_t enc[PPC_CHALLENGE_LEN + 1];
    memset(enc, 0xee, sizeof enc);
    ppc_challenge_encode(&c, enc);
    CHECK_EQ_INT(enc[PPC_CHALLENGE_LEN], 0xee);
    CHECK_MEM(enc, 4, "PPC\1", 4);
    CHECK_MEM(enc + 8, PPC_NONCE_LEN, c.h.nonce, PPC_NONCE_LEN);
    CHECK_MEM(enc + PPC_HELLO_LEN, PPC_MAC_LEN, c.proof, PPC_MAC_LEN);
    CHECK_EQ_INT(enc[PPC_HELLO_LEN + PPC_MAC_LEN], 0x04); /* little endian */
    CHECK_EQ_INT(enc[PPC_HELLO_LEN + PPC_MAC_LEN + 3], 0x01);
    memset(&d, 0, sizeof d);
    uint8_t *cp = exact_copy(enc, PPC_CHALLENGE_LEN);
    REQUIRE(cp != NULL);
    CHECK_EQ_INT(ppc_challenge_decode(cp, PPC_CHALLENGE_LEN, &d), 0);
    free(cp);
    CHECK_EQ_INT(d.h.version, PPC_PROTO_VERSION);
    CHECK_EQ_INT(d.h.py_major, 3);
    CHECK_EQ_INT(d.h.py_minor, 13);
    CHECK_MEM(d.h.nonce, sizeof d.h.nonce, c.h.nonce, sizeof c.h.nonce);
    CHECK_MEM(d.proof, sizeof d.proof, c.proof, sizeof c.proof);
    CHECK_EQ_U64(d.ncpus, 0x01020304);
}

TEST(challenge_decode_rejects_wrong_length_and_magic)
{
    ppc_challenge c = {.h = {.version = PPC_PROTO_VERSION, .py_major = 3, .py_minor = 11},
                       .ncpus = 8},
                  d;
    fill(c.h.nonce, sizeof c.h.nonce, 8);
    fill(c.proof, sizeof c.proof, 9);
    uint8_t enc[PPC_CHALLENGE_LEN + 2];
    memset(enc, 0, sizeof enc);
    ppc_challenge_encode(&c, enc);
    for (size_t n = 0; n <= PPC_CHALLENGE_LEN + 1; n++) {
        if (n == PPC_CHALLENGE_LEN)
            continue;
        uint8_t *cp = exact_copy(enc, n);
        REQUIRE(cp != NULL);
        CHECK_MSG(ppc_challenge_decode(cp, n, &d) == -1, "length %zu accepted", n);
        free(cp);
    }
    for (size_t i = 0; i < 4; i++) {
        enc[i] ^= 0x20;
        CHECK_MSG(ppc_challenge_decode(enc, PPC_CHALLENGE_LEN, &d) == -1,
                  "magic byte %zu changed but accepted", i);
        enc[i] ^= 0x20;
    }
    CHECK_EQ_INT(ppc_challenge_decode(enc, PPC_CHALLENGE_LEN, &d), 0);
}

/* The whole exchange as the two sides would run it. */
TEST(handshake_proofs)
{
    ppc_hello ch = {.version = PPC_PROTO_VERSION, .py_major = 3, .py_minor = 11};
    REQUIRE(ppc_random(ch.nonce, sizeof ch.nonce) == 0);
    uint8_t hello[PPC_HELLO_LEN];
    ppc_hello_encode(&ch, hello);

    /* server */
    ppc_hello got_hello;
    REQUIRE(ppc_hello_decode(hello, sizeof hello, &got_hello) == 0);
    ppc_challenge sc = {.h = {.version = PPC_PROTO_VERSION, .py_major = 3, .py_minor = 11},
                        .ncpus = 16};
    REQUIRE(ppc_random(sc.h.nonce, sizeof sc.h.nonce) == 0);
    REQUIRE(ppc_auth_proof(SECRET, SECRET_LEN, "ppc-server", got_hello.nonce, PPC_NONCE_LEN,
                           sc.h.nonce, PPC_NONCE_LEN, sc.proof) == 0);
    uint8_t chal[PPC_CHALLENGE_LEN];
    ppc_challenge_encode(&sc, chal);

    /* client: checks the server, answers with its own proof */
    ppc_challenge got;
    REQUIRE(ppc_challenge_decode(chal, sizeof chal, &got) == 0);
    uint8_t want[PPC_MAC_LEN], cproof[PPC_MAC_LEN];
    REQUIRE(ppc_auth_proof(SECRET, SECRET_LEN, "ppc-server", ch.nonce, PPC_NONCE_LEN,
                           got.h.nonce, PPC_NONCE_LEN, want) == 0);
    CHECK(ppc_auth_equal(want, got.proof));
    REQUIRE(ppc_auth_proof(SECRET, SECRET_LEN, "ppc-client", ch.nonce, PPC_NONCE_LEN,
                           got.h.nonce, PPC_NONCE_LEN, cproof) == 0);
    CHECK(!ppc_auth_equal(cproof, got.proof));
    CHECK_EQ_U64(got.ncpus, 16);

    /* server: checks the client */
    REQUIRE(ppc_auth_proof(SECRET, SECRET_LEN, "ppc-client", got_hello.nonce, PPC_NONCE_LEN,
                           sc.h.nonce, PPC_NONCE_LEN, want) == 0);
    CHECK(ppc_auth_equal(want, cproof));

    /* a client with another secret rejects the server */
    static const uint8_t wrong[] = "not the secret";
    REQUIRE(ppc_auth_proof(wrong, sizeof wrong - 1, "ppc-server", ch.nonce, PPC_NONCE_LEN,
                           got.h.nonce, PPC_NONCE_LEN, want) == 0);
    CHECK(!ppc_auth_equal(want, got.proof));
}

int main(int argc, char **argv) { return ctest_main(argc, argv); }

/* test_buf_frame.c - unit tests of the engine's plain data structures:
 * buf (growable buffer), frame (encoder and bounds-checked decoder), u64set
 * (id set) and job/blob reference counting. No processes, no threads. */
#define _GNU_SOURCE
#include "ctest.h"

#include <stdatomic.h>

#include "buf.h"
#include "frame.h"
#include "job.h"
#include "u64set.h"

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + seed);
}

/* ---------------------------------------------------------------- buf */

TEST(buf_empty_and_zero_append)
{
    ppc_buf b = {0};
    CHECK_EQ_INT(ppc_buf_unread(&b), 0);
    CHECK_EQ_INT(ppc_buf_append(&b, NULL, 0), 0);
    CHECK(b.data == NULL);
    CHECK_EQ_INT(b.cap, 0);
    ppc_buf_consume(&b, 10); /* consuming from an empty buffer is a no-op */
    CHECK_EQ_INT(b.off, 0);
    CHECK_EQ_INT(b.len, 0);
    ppc_buf_shrink(&b, 0);
    ppc_buf_free(&b);
    ppc_buf_free(&b); /* twice is harmless */
    CHECK(b.data == NULL);
}

TEST(buf_append_consume)
{
    ppc_buf b = {0};
    uint8_t src[10000];
    fill(src, sizeof src, 3);
    size_t total = 0;
    for (int i = 0; i < 10; i++) {
        REQUIRE(ppc_buf_append(&b, src + total, 1000) == 0);
        total += 1000;
    }
    CHECK_EQ_INT(ppc_buf_unread(&b), 10000);
    CHECK(b.cap >= 10000);
    CHECK_EQ_INT(b.cap & (b.cap - 1), 0); /* geometric growth from 4096 */
    CHECK_MEM(ppc_buf_head(&b), 10000, src, 10000);

    ppc_buf_consume(&b, 2500);
    CHECK_EQ_INT(ppc_buf_unread(&b), 7500);
    CHECK_MEM(ppc_buf_head(&b), 7500, src + 2500, 7500);

    /* consuming more than is there is clamped and resets the buffer */
    ppc_buf_consume(&b, 100000);
    CHECK_EQ_INT(ppc_buf_unread(&b), 0);
    CHECK_EQ_INT(b.off, 0);
    CHECK_EQ_INT(b.len, 0);
    CHECK(b.data != NULL); /* memory kept for reuse */

    /* exactly draining resets too */
    REQUIRE(ppc_buf_append(&b, "abc", 3) == 0);
    ppc_buf_consume(&b, 1);
    CHECK_MEM(ppc_buf_head(&b), ppc_buf_unread(&b), "bc", 2);
    ppc_buf_consume(&b, 2);
    CHECK_EQ_INT(b.off, 0);
    CHECK_EQ_INT(b.len, 0);
    ppc_buf_free(&b);
}

TEST(buf_reserve)
{
    ppc_buf b = {0};
    REQUIRE(ppc_buf_reserve(&b, 1) == 0);
    CHECK_EQ_INT(b.cap, 4096);
    CHECK_EQ_INT(b.len, 0);
    REQUIRE(ppc_buf_reserve(&b, 4096) == 0);
    CHECK_EQ_INT(b.cap, 4096); /* already enough room */
    REQUIRE(ppc_buf_reserve(&b, 4097) == 0);
    CHECK_EQ_INT(b.cap, 8192);
    REQUIRE(ppc_buf_reserve(&b, 100000) == 0);
    CHECK_EQ_INT(b.cap, 131072);
    CHECK(b.cap - b.len >= 100000);
    /* the reserved room is writable (ASan checks the bounds) */
    memset(b.data + b.len, 0x5a, b.cap - b.len);

    /* overflowing requests fail and leave the buffer as it was */
    REQUIRE(ppc_buf_append(&b, "xyz", 3) == 0);
    uint8_t *d = b.data;
    size_t cap = b.cap;
    CHECK_EQ_INT(ppc_buf_reserve(&b, SIZE_MAX), -1);
    CHECK_EQ_INT(ppc_buf_reserve(&b, SIZE_MAX - 2), -1);
    CHECK_EQ_INT(ppc_buf_reserve(&b, SIZE_MAX / 2 + 10), -1);
    CHECK(b.data == d);
    CHECK_EQ_INT(b.cap, cap);
    CHECK_MEM(ppc_buf_head(&b), ppc_buf_unread(&b), "xyz", 3);
    CHECK_EQ_INT(ppc_buf_append(&b, "q", SIZE_MAX), -1);
    CHECK_MEM(ppc_buf_head(&b), ppc_buf_unread(&b), "xyz", 3);
    ppc_buf_free(&b);

    /* on an empty buffer too */
    ppc_buf e = {0};
    CHECK_EQ_INT(ppc_buf_reserve(&e, SIZE_MAX), -1);
    CHECK(e.data == NULL);
    CHECK_EQ_INT(e.cap, 0);
    ppc_buf_free(&e);
}

TEST(buf_compaction)
{
    ppc_buf b = {0};
    uint8_t src[4096];
    fill(src, sizeof src, 9);
    REQUIRE(ppc_buf_append(&b, src, 4096) == 0);
    REQUIRE(b.cap == 4096);
    uint8_t *d = b.data;
    ppc_buf_consume(&b, 3000); /* the read part is more than half of cap */
    REQUIRE(ppc_buf_reserve(&b, 2000) == 0);
    /* compacted in place: no new memory, unread bytes moved to the front */
    CHECK(b.data == d);
    CHECK_EQ_INT(b.cap, 4096);
    CHECK_EQ_INT(b.off, 0);
    CHECK_EQ_INT(b.len, 1096);
    CHECK_MEM(ppc_buf_head(&b), ppc_buf_unread(&b), src + 3000, 1096);
    CHECK(b.cap - b.len >= 2000);

    /* a small read part does not compact: the buffer grows instead */
    ppc_buf c = {0};
    REQUIRE(ppc_buf_append(&c, src, 4096) == 0);
    ppc_buf_consume(&c, 100);
    REQUIRE(ppc_buf_reserve(&c, 50) == 0);
    CHECK(c.cap > 4096);
    CHECK_EQ_INT(c.off, 100);
    CHECK_MEM(ppc_buf_head(&c), ppc_buf_unread(&c), src + 100, 3996);

    /* a stream pushed through a small window keeps its bytes in order */
    ppc_buf s = {0};
    uint8_t big[50000], out[50000];
    fill(big, sizeof big, 1);
    size_t in = 0, got = 0;
    while (got < sizeof big) {
        size_t n = sizeof big - in < 1500 ? sizeof big - in : 1500;
        if (n) {
            REQUIRE(ppc_buf_append(&s, big + in, n) == 0);
            in += n;
        }
        size_t m = ppc_buf_unread(&s) < 1300 ? ppc_buf_unread(&s) : 1300;
        memcpy(out + got, ppc_buf_head(&s), m);
        ppc_buf_consume(&s, m);
        got += m;
    }
    CHECK_MEM(out, got, big, sizeof big);
    CHECK(s.cap <= 16384); /* compaction kept it small (unread peaks near 8.3 kB) */
    ppc_buf_free(&s);
    ppc_buf_free(&c);
    ppc_buf_free(&b);
}

TEST(buf_reserve_resets_drained)
{
    ppc_buf b = {0};
    REQUIRE(ppc_buf_append(&b, "hello", 5) == 0);
    b.off = b.len; /* drained by hand, without consume's reset */
    REQUIRE(ppc_buf_reserve(&b, 10) == 0);
    CHECK_EQ_INT(b.off, 0);
    CHECK_EQ_INT(b.len, 0);
    ppc_buf_free(&b);
}

TEST(buf_shrink)
{
    ppc_buf b = {0};
    uint8_t src[20000];
    fill(src, sizeof src, 5);
    REQUIRE(ppc_buf_append(&b, src, sizeof src) == 0);
    size_t cap = b.cap;
    ppc_buf_shrink(&b, 0); /* not empty: kept */
    CHECK(b.data != NULL);
    CHECK_EQ_INT(b.cap, cap);
    CHECK_MEM(ppc_buf_head(&b), ppc_buf_unread(&b), src, sizeof src);
    ppc_buf_consume(&b, sizeof src);
    ppc_buf_shrink(&b, cap); /* empty but not larger than keep: kept */
    CHECK(b.data != NULL);
    CHECK_EQ_INT(b.cap, cap);
    ppc_buf_shrink(&b, 4096); /* empty and larger: released */
    CHECK(b.data == NULL);
    CHECK_EQ_INT(b.cap, 0);
    CHECK_EQ_INT(b.off, 0);
    CHECK_EQ_INT(b.len, 0);
    /* usable again */
    REQUIRE(ppc_buf_append(&b, "x", 1) == 0);
    CHECK_MEM(ppc_buf_head(&b), 1, "x", 1);
    ppc_buf_free(&b);
}

/* -------------------------------------------------------------- frame */

static const uint8_t known_types[] = {PPC_F_INIT,      PPC_F_FUNC,  PPC_F_JOB,  PPC_F_RESULT, PPC_F_SHMDROP, PPC_F_SHMRET, PPC_F_VMOK,
                                      PPC_F_HELLO,     PPC_F_CHALLENGE, PPC_F_AUTH, PPC_F_WELCOME,
                                      PPC_F_PING,      PPC_F_PONG,  PPC_F_ERROR, PPC_F_BYE, PPC_F_KILL};

static int is_known(unsigned t)
{
    for (size_t i = 0; i < sizeof known_types; i++)
        if (known_types[i] == t)
            return 1;
    return 0;
}

/* Parse from an exact-size heap copy, so ASan sees any read past avail. */
static int parse_copy(const uint8_t *data, size_t avail, uint64_t max, ppc_frame *f)
{
    uint8_t *c = malloc(avail ? avail : 1);
    if (!c)
        abort();
    if (avail)
        memcpy(c, data, avail);
    int rc = ppc_frame_parse(c, avail, max, f);
    /* payload pointed into c: translate it back into data */
    if (rc == PPC_FRAME_OK)
        f->payload = data + (f->payload - c);
    free(c);
    return rc;
}

static void make_header(uint8_t *h, uint64_t len, uint64_t id, uint8_t type)
{
    memset(h, 0, PPC_FRAME_HDR);
    ppc_put_u64(h, len);
    ppc_put_u64(h + 8, id);
    h[16] = type;
}

TEST(frame_header_layout)
{
    ppc_buf b = {0};
    REQUIRE(ppc_frame_put(&b, PPC_F_JOB, 0xab, 0x1234, 0xdeadbeef, 0x0102030405060708ull, "xy", 2,
                          "z", 1) == 0);
    REQUIRE(ppc_buf_unread(&b) == PPC_FRAME_HDR + 3);
    const uint8_t *h = ppc_buf_head(&b);
    static const uint8_t want[] = {3, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1,
                                   3, 0xab, 0x34, 0x12, 0xef, 0xbe, 0xad, 0xde, 'x', 'y', 'z'};
    CHECK_MEM(h, ppc_buf_unread(&b), want, sizeof want);
    ppc_buf_free(&b);

    uint8_t p[8];
    ppc_put_u64(p, 0x8877665544332211ull);
    CHECK_EQ_U64(ppc_get_u64(p), 0x8877665544332211ull);
    CHECK_EQ_INT(p[0], 0x11);
    ppc_put_u32(p, 0xcafebabe);
    CHECK_EQ_U64(ppc_get_u32(p), 0xcafebabe);
    CHECK_EQ_INT(p[0], 0xbe);
}

TEST(frame_round_trip_all_types)
{
    ppc_buf b = {0};
    uint8_t pay[300];
    fill(pay, sizeof pay, 77);
    size_t n = sizeof known_types;
    for (size_t i = 0; i < n; i++) {
        size_t n1 = i * 11 % 120, n2 = i * 7 % 50;
        REQUIRE(ppc_frame_put(&b, known_types[i], (uint8_t)i, (uint16_t)(i * 1000 + 1),
                              (uint32_t)(i * 100000 + 3), 0xff00000000000000ull + i, pay, n1,
                              pay + 150, n2) == 0);
    }
    /* an empty payload from two NULL parts */
    REQUIRE(ppc_frame_put(&b, PPC_F_INIT, 0, 0, 0, 0, NULL, 0, NULL, 0) == 0);
    for (size_t i = 0; i < n; i++) {
        ppc_frame f;
        size_t n1 = i * 11 % 120, n2 = i * 7 % 50;
        int rc = parse_copy(ppc_buf_head(&b), ppc_buf_unread(&b), 1000, &f);
        REQUIRE(rc == PPC_FRAME_OK);
        CHECK_EQ_INT(f.type, known_types[i]);
        CHECK_EQ_INT(f.flags, i);
        CHECK_EQ_INT(f.aux, (uint16_t)(i * 1000 + 1));
        CHECK_EQ_U64(f.extra, (uint32_t)(i * 100000 + 3));
        CHECK_EQ_U64(f.id, 0xff00000000000000ull + i);
        CHECK_EQ_U64(f.len, n1 + n2);
        CHECK(f.payload == ppc_buf_head(&b) + PPC_FRAME_HDR);
        CHECK_MEM(f.payload, n1, pay, n1);
        CHECK_MEM(f.payload + n1, n2, pay + 150, n2);
        ppc_buf_consume(&b, PPC_FRAME_HDR + (size_t)f.len);
    }
    ppc_frame f;
    REQUIRE(parse_copy(ppc_buf_head(&b), ppc_buf_unread(&b), 0, &f) == PPC_FRAME_OK);
    CHECK_EQ_INT(f.type, PPC_F_INIT);
    CHECK_EQ_U64(f.len, 0);
    ppc_buf_consume(&b, PPC_FRAME_HDR);
    CHECK_EQ_INT(ppc_buf_unread(&b), 0);
    /* nothing left: need more, length unknown */
    CHECK_EQ_INT(ppc_frame_parse(ppc_buf_head(&b), 0, 1000, &f), PPC_FRAME_NEED_MORE);
    CHECK_EQ_U64(f.len, 0);
    ppc_buf_free(&b);
}

TEST(frame_every_prefix_needs_more)
{
    uint8_t pay[100];
    fill(pay, sizeof pay, 2);
    for (size_t plen = 0; plen <= sizeof pay; plen += 33) {
        ppc_buf b = {0};
        REQUIRE(ppc_frame_put(&b, PPC_F_RESULT, 1, 2, 3, 42, pay, plen, NULL, 0) == 0);
        size_t total = ppc_buf_unread(&b);
        REQUIRE(total == PPC_FRAME_HDR + plen);
        for (size_t k = 0; k < total; k++) {
            ppc_frame f;
            memset(&f, 0xee, sizeof f);
            int rc = parse_copy(ppc_buf_head(&b), k, 1 << 20, &f);
            CHECK_MSG(rc == PPC_FRAME_NEED_MORE, "prefix %zu of %zu: rc %d", k, total, rc);
            if (k < PPC_FRAME_HDR)
                CHECK_MSG(f.len == 0, "prefix %zu: len %" PRIu64 " before the header", k, f.len);
            else
                CHECK_MSG(f.len == plen, "prefix %zu: len %" PRIu64 " != %zu", k, f.len, plen);
        }
        ppc_frame f;
        CHECK_EQ_INT(parse_copy(ppc_buf_head(&b), total, 1 << 20, &f), PPC_FRAME_OK);
        CHECK_MEM(f.payload, f.len, pay, plen);
        ppc_buf_free(&b);
    }
}

TEST(frame_unknown_type)
{
    uint8_t h[PPC_FRAME_HDR];
    int nunknown = 0;
    for (unsigned t = 0; t < 256; t++) {
        make_header(h, 0, 1, (uint8_t)t);
        ppc_frame f;
        int rc = parse_copy(h, sizeof h, 1000, &f);
        if (is_known(t)) {
            CHECK_MSG(rc == PPC_FRAME_OK, "type %u: rc %d", t, rc);
        } else {
            nunknown++;
            CHECK_MSG(rc == PPC_FRAME_ETYPE, "type %u: rc %d", t, rc);
        }
    }
    CHECK_EQ_INT(nunknown, 256 - (int)sizeof known_types);
    /* an unknown type is rejected even when its payload is not there yet
     * and even when its length is absurd */
    make_header(h, 5000, 1, 200);
    ppc_frame f;
    CHECK_EQ_INT(parse_copy(h, sizeof h, 1 << 20, &f), PPC_FRAME_ETYPE);
    make_header(h, (uint64_t)1 << 63, 1, 0);
    CHECK(parse_copy(h, sizeof h, 1 << 20, &f) < 0);
}

TEST(frame_too_big)
{
    uint8_t h[PPC_FRAME_HDR];
    ppc_frame f;
    make_header(h, 1001, 7, PPC_F_RESULT);
    CHECK_EQ_INT(parse_copy(h, sizeof h, 1000, &f), PPC_FRAME_ETOOBIG);
    make_header(h, 1000, 7, PPC_F_RESULT);
    CHECK_EQ_INT(parse_copy(h, sizeof h, 1000, &f), PPC_FRAME_NEED_MORE); /* at the limit: ok */
    CHECK_EQ_U64(f.len, 1000);
    make_header(h, 1, 7, PPC_F_RESULT);
    CHECK_EQ_INT(parse_copy(h, sizeof h, 0, &f), PPC_FRAME_ETOOBIG);

    /* a header claiming 2^63 bytes (or the whole u64 range) */
    make_header(h, (uint64_t)1 << 63, 7, PPC_F_RESULT);
    CHECK_EQ_INT(parse_copy(h, sizeof h, (uint64_t)1 << 40, &f), PPC_FRAME_ETOOBIG);
    make_header(h, UINT64_MAX, 7, PPC_F_JOB);
    CHECK_EQ_INT(parse_copy(h, sizeof h, (uint64_t)1 << 40, &f), PPC_FRAME_ETOOBIG);
    CHECK_EQ_INT(parse_copy(h, sizeof h, UINT64_MAX - 1, &f), PPC_FRAME_ETOOBIG);
    /* with no limit it is merely incomplete: no overflow in the arithmetic */
    make_header(h, (uint64_t)1 << 63, 7, PPC_F_RESULT);
    CHECK_EQ_INT(parse_copy(h, sizeof h, UINT64_MAX, &f), PPC_FRAME_NEED_MORE);
    make_header(h, UINT64_MAX, 7, PPC_F_RESULT);
    CHECK_EQ_INT(parse_copy(h, sizeof h, UINT64_MAX, &f), PPC_FRAME_NEED_MORE);

    /* the limit is checked on the header alone, before the payload arrives */
    uint8_t two[PPC_FRAME_HDR + 10];
    make_header(two, 10, 1, PPC_F_FUNC);
    CHECK_EQ_INT(parse_copy(two, sizeof two, 9, &f), PPC_FRAME_ETOOBIG);
    CHECK_EQ_INT(parse_copy(two, PPC_FRAME_HDR, 9, &f), PPC_FRAME_ETOOBIG);
}

TEST(frame_stream_of_frames_byte_by_byte)
{
    /* feed a stream of frames one byte at a time through a buf, as a pipe
     * reader would, and get every frame back exactly once */
    ppc_buf src = {0};
    uint8_t pay[5000];
    fill(pay, sizeof pay, 4);
    int nframes = 40;
    for (int i = 0; i < nframes; i++)
        REQUIRE(ppc_frame_put(&src, known_types[i % sizeof known_types], 0, 0, 0, (uint64_t)i + 1,
                              pay, (size_t)(i * 97 % 5000), NULL, 0) == 0);
    ppc_buf in = {0};
    int got = 0;
    size_t total = ppc_buf_unread(&src);
    for (size_t k = 0; k < total; k++) {
        REQUIRE(ppc_buf_append(&in, ppc_buf_head(&src) + k, 1) == 0);
        for (;;) {
            ppc_frame f;
            int rc = ppc_frame_parse(ppc_buf_head(&in), ppc_buf_unread(&in), 5000, &f);
            REQUIRE(rc >= 0);
            if (rc == PPC_FRAME_NEED_MORE)
                break;
            CHECK_EQ_U64(f.id, (uint64_t)got + 1);
            CHECK_MEM(f.payload, f.len, pay, (size_t)(got * 97 % 5000));
            ppc_buf_consume(&in, PPC_FRAME_HDR + (size_t)f.len);
            got++;
        }
    }
    CHECK_EQ_INT(got, nframes);
    CHECK_EQ_INT(ppc_buf_unread(&in), 0);
    ppc_buf_free(&in);
    ppc_buf_free(&src);
}

TEST(frame_put_overflow)
{
    ppc_buf b = {0};
    REQUIRE(ppc_buf_append(&b, "keep", 4) == 0);
    /* n1 + n2 wraps around, or the total plus the header does not fit:
     * refused without touching the parts or the buffer */
    CHECK_EQ_INT(ppc_frame_put(&b, PPC_F_JOB, 0, 0, 0, 1, "a", SIZE_MAX, "b", 2), -1);
    CHECK_EQ_INT(ppc_frame_put(&b, PPC_F_JOB, 0, 0, 0, 1, "a", SIZE_MAX - 10, NULL, 0), -1);
    CHECK_EQ_INT(ppc_frame_put(&b, PPC_F_JOB, 0, 0, 0, 1, "a", SIZE_MAX / 2, "b", SIZE_MAX / 2),
                 -1);
    CHECK_MEM(ppc_buf_head(&b), ppc_buf_unread(&b), "keep", 4);
    ppc_buf_free(&b);
}

/* ------------------------------------------------------------- u64set */

TEST(u64set_basic)
{
    ppc_u64set s = {0};
    CHECK_EQ_INT(ppc_u64set_has(&s, 1), 0);
    CHECK_EQ_INT(ppc_u64set_has(&s, 0), 0);
    CHECK_EQ_INT(ppc_u64set_add(&s, 0), -1); /* 0 is not a key */
    CHECK_EQ_INT(s.n, 0);
    CHECK_EQ_INT(ppc_u64set_add(&s, 5), 0);
    CHECK_EQ_INT(ppc_u64set_has(&s, 5), 1);
    CHECK_EQ_INT(ppc_u64set_has(&s, 6), 0);
    CHECK_EQ_INT(ppc_u64set_has(&s, 0), 0);
    CHECK_EQ_INT(ppc_u64set_add(&s, 5), 0); /* again: still one */
    CHECK_EQ_INT(s.n, 1);
    CHECK_EQ_INT(ppc_u64set_add(&s, UINT64_MAX), 0);
    CHECK_EQ_INT(ppc_u64set_has(&s, UINT64_MAX), 1);
    CHECK_EQ_INT(s.n, 2);
    ppc_u64set_free(&s);
    CHECK(s.keys == NULL);
    CHECK_EQ_INT(s.cap, 0);
    CHECK_EQ_INT(s.n, 0);
    CHECK_EQ_INT(ppc_u64set_has(&s, 5), 0);
    ppc_u64set_free(&s);
}

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

TEST(u64set_many_and_grow)
{
    ppc_u64set s = {0};
    const uint64_t N = 100000;
    size_t prev_cap = 0;
    int grew = 0;
    for (uint64_t i = 1; i <= N; i++) {
        REQUIRE(ppc_u64set_add(&s, mix(i) | 1) == 0);
        if (s.cap != prev_cap) {
            grew++;
            prev_cap = s.cap;
        }
    }
    CHECK(grew > 5);
    CHECK_EQ_U64(s.n, N);
    CHECK_EQ_INT(s.cap & (s.cap - 1), 0);
    CHECK(s.n * 2 <= s.cap); /* load factor at most 1/2 */
    int missing = 0, extra = 0;
    for (uint64_t i = 1; i <= N; i++)
        missing += !ppc_u64set_has(&s, mix(i) | 1);
    for (uint64_t i = N + 1; i <= 2 * N; i++)
        extra += ppc_u64set_has(&s, (mix(i) | 1) ^ 1); /* even numbers: never added */
    CHECK_EQ_INT(missing, 0);
    CHECK_EQ_INT(extra, 0);
    for (uint64_t i = 1; i <= N; i += 7)
        REQUIRE(ppc_u64set_add(&s, mix(i) | 1) == 0);
    CHECK_EQ_U64(s.n, N);

    /* sequential and colliding-looking ids (multiples of a large power of
     * two) */
    ppc_u64set t = {0};
    for (uint64_t i = 1; i <= 5000; i++) {
        REQUIRE(ppc_u64set_add(&t, i) == 0);
        REQUIRE(ppc_u64set_add(&t, i << 40) == 0);
    }
    CHECK_EQ_INT(t.n, 10000);
    int bad = 0;
    for (uint64_t i = 1; i <= 5000; i++)
        bad += !ppc_u64set_has(&t, i) + !ppc_u64set_has(&t, i << 40) + ppc_u64set_has(&t, i + 5000);
    CHECK_EQ_INT(bad, 0);
    ppc_u64set_free(&t);
    ppc_u64set_free(&s);
}

/* ---------------------------------------------------------- job, blob */

TEST(blob_refcount)
{
    ppc_blob *b = ppc_blob_new(42, "code", 4);
    REQUIRE(b != NULL);
    CHECK_EQ_INT(atomic_load(&b->refs), 1);
    CHECK_EQ_U64(b->id, 42);
    CHECK_MEM(b->data, b->len, "code", 4);
    ppc_blob_incref(b);
    ppc_blob_incref(b);
    CHECK_EQ_INT(atomic_load(&b->refs), 3);
    ppc_blob_decref(b);
    ppc_blob_decref(b);
    CHECK_EQ_INT(atomic_load(&b->refs), 1);
    ppc_blob_decref(b); /* freed: ASan's leak check tells if not */
    ppc_blob_decref(NULL);

    ppc_blob *e = ppc_blob_new(1, NULL, 0);
    REQUIRE(e != NULL);
    CHECK_EQ_INT(e->len, 0);
    ppc_blob_decref(e);
    CHECK(ppc_blob_new(1, "x", SIZE_MAX - 4) == NULL); /* size overflow refused */
}

TEST(job_refcount)
{
    ppc_blob *b = ppc_blob_new(7, "fn", 2);
    REQUIRE(b != NULL);
    uint8_t args[1000];
    fill(args, sizeof args, 8);
    ppc_job *j = ppc_job_new(b, args, sizeof args);
    REQUIRE(j != NULL);
    CHECK_EQ_INT(atomic_load(&b->refs), 2); /* the job holds the blob */
    CHECK_EQ_INT(atomic_load(&j->refs), 1);
    CHECK_EQ_INT(atomic_load(&j->state), PPC_JOB_QUEUED);
    CHECK_EQ_INT(j->status, PPC_JOB_OK);
    CHECK(j->fn == b);
    CHECK(j->result == NULL);
    CHECK(j->next == NULL);
    CHECK_MEM(j->args, j->args_len, args, sizeof args);

    ppc_job *k = ppc_job_new(b, NULL, 0);
    REQUIRE(k != NULL);
    CHECK_EQ_INT(atomic_load(&b->refs), 3);
    CHECK_EQ_INT(k->args_len, 0);

    ppc_job_incref(j);
    CHECK_EQ_INT(atomic_load(&j->refs), 2);
    ppc_job_decref(j);
    CHECK_EQ_INT(atomic_load(&b->refs), 3); /* job still alive */
    ppc_job_decref(j);
    CHECK_EQ_INT(atomic_load(&b->refs), 2); /* job freed, blob released */
    ppc_job_decref(k);
    CHECK_EQ_INT(atomic_load(&b->refs), 1);
    ppc_blob_decref(b);
    ppc_job_decref(NULL);

    ppc_job *n = ppc_job_new(NULL, "a", 1); /* no function */
    REQUIRE(n != NULL);
    CHECK(n->fn == NULL);
    ppc_job_decref(n);
    CHECK(ppc_job_new(NULL, "a", SIZE_MAX - 8) == NULL);
}

TEST(job_fail_and_results)
{
    ppc_job *j = ppc_job_new(NULL, NULL, 0);
    REQUIRE(j != NULL);
    j->result = malloc(5);
    REQUIRE(j->result != NULL);
    memcpy(j->result, "hello", 5);
    j->result_len = 5;
    ppc_job_fail(j, PPC_JOB_EWORKER, "worker died");
    CHECK_EQ_INT(j->status, PPC_JOB_EWORKER);
    CHECK_MEM(j->result, j->result_len, "worker died", 11);
    CHECK_EQ_INT(j->result[11], 0); /* NUL-terminated for callers */
    ppc_job_fail(j, PPC_JOB_ENONODE, "");
    CHECK_EQ_INT(j->status, PPC_JOB_ENONODE);
    CHECK_EQ_INT(j->result_len, 0);
    ppc_job_fail(j, PPC_JOB_EDESTROYED, "the server was destroyed");
    CHECK_EQ_INT(j->status, PPC_JOB_EDESTROYED);
    CHECK_CONTAINS(j->result, j->result_len, "destroyed");
    ppc_job_decref(j); /* frees the result too (leak check) */
}

int main(int argc, char **argv)
{
    return ctest_main(argc, argv);
}

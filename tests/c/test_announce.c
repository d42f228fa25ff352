/* test_announce.c - unit tests of discovery's plain-C parts: the
 * announcement and query codecs and key (announce.c), the ppservers
 * discovery entries (discfilter.c), and the engine's bounded, level-filtered
 * log queue that strangers' datagrams could otherwise grow (engine.c). */
#define _GNU_SOURCE
#include "ctest.h"

#include "announce.h"
#include "discfilter.h"
#include "engine.h"
#include "engine_int.h"

static uint8_t *exact_copy(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    if (c && n)
        memcpy(c, p, n);
    return c;
}

static const uint8_t SECRET[] = "shared secret";
static uint8_t KEY[PPC_ANNOUNCE_KEY_LEN];
static int have_key;

static const uint8_t *key(void)
{
    if (!have_key && ppc_announce_key(SECRET, sizeof SECRET - 1, KEY) == 0)
        have_key = 1;
    return KEY;
}

static ppc_announce sample(void)
{
    ppc_announce a;
    memset(&a, 0, sizeof a);
    a.addr[0] = 10, a.addr[1] = 1, a.addr[2] = 2, a.addr[3] = 3;
    a.port = 60000;
    a.time = 1700000000u;
    for (int i = 0; i < PPC_ANNOUNCE_NONCE; i++)
        a.nonce[i] = (uint8_t)(i + 1);
    return a;
}

TEST(key_is_scrypt_of_secret_and_deterministic)
{
    uint8_t k2[PPC_ANNOUNCE_KEY_LEN], k3[PPC_ANNOUNCE_KEY_LEN];
    REQUIRE(have_key || key());
    REQUIRE(ppc_announce_key(SECRET, sizeof SECRET - 1, k2) == 0);
    CHECK(memcmp(KEY, k2, sizeof k2) == 0);
    REQUIRE(ppc_announce_key((const uint8_t *)"shared secreT", 13, k3) == 0);
    CHECK(memcmp(KEY, k3, sizeof k3) != 0);
    /* the key is not the secret, nor an HMAC of it: nothing fast from the
     * secret goes on the wire (compare with Python's hashlib.scrypt in
     * tests/test_discovery.py) */
    CHECK(memcmp(KEY, SECRET, 13) != 0);
    REQUIRE(ppc_announce_key(NULL, 0, k3) == 0);
}

TEST(announce_roundtrip_and_fields)
{
    ppc_announce a = sample(), b;
    uint8_t m[PPC_ANNOUNCE_LEN];
    REQUIRE(ppc_announce_encode(key(), &a, m) == 0);
    CHECK(memcmp(m, "PPCA", 4) == 0);
    uint8_t *c = exact_copy(m, sizeof m);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(ppc_announce_decode(key(), c, sizeof m, &b), 0);
    free(c);
    CHECK(memcmp(a.addr, b.addr, 4) == 0);
    CHECK_EQ_INT(b.port, 60000);
    CHECK(b.time == a.time);
    CHECK(memcmp(a.nonce, b.nonce, sizeof a.nonce) == 0);
    CHECK(ppc_announce_unasked(&b));
    a.echo[5] = 1;
    REQUIRE(ppc_announce_encode(key(), &a, m) == 0);
    CHECK_EQ_INT(ppc_announce_decode(key(), m, sizeof m, &b), 0);
    CHECK(!ppc_announce_unasked(&b));
}

TEST(announce_rejects_every_flipped_byte_wrong_key_and_length)
{
    ppc_announce a = sample(), b;
    uint8_t m[PPC_ANNOUNCE_LEN + 1];
    memset(m, 0, sizeof m);
    REQUIRE(ppc_announce_encode(key(), &a, m) == 0);
    for (size_t i = 0; i < PPC_ANNOUNCE_LEN; i++)
        for (int bit = 0; bit < 8; bit++) {
            m[i] ^= (uint8_t)(1 << bit);
            CHECK_MSG(ppc_announce_decode(key(), m, PPC_ANNOUNCE_LEN, &b) == -1,
                      "byte %zu bit %d flipped accepted", i, bit);
            m[i] ^= (uint8_t)(1 << bit);
        }
    uint8_t other[PPC_ANNOUNCE_KEY_LEN];
    memcpy(other, key(), sizeof other);
    other[0] ^= 1;
    CHECK_EQ_INT(ppc_announce_decode(other, m, PPC_ANNOUNCE_LEN, &b), -1);
    for (size_t n = 0; n <= PPC_ANNOUNCE_LEN + 1; n++) {
        if (n == PPC_ANNOUNCE_LEN)
            continue;
        uint8_t *c = exact_copy(m, n);
        REQUIRE(c != NULL);
        CHECK_MSG(ppc_announce_decode(key(), c, n, &b) == -1, "length %zu accepted", n);
        free(c);
    }
    CHECK_EQ_INT(ppc_announce_decode(key(), m, PPC_ANNOUNCE_LEN, &b), 0);
}

TEST(announce_freshness_edges)
{
    CHECK(ppc_announce_fresh(100, 100, 0));
    CHECK(ppc_announce_fresh(160, 100, 60));
    CHECK(ppc_announce_fresh(40, 100, 60));
    CHECK(!ppc_announce_fresh(161, 100, 60));
    CHECK(!ppc_announce_fresh(39, 100, 60));
    CHECK(!ppc_announce_fresh(UINT64_MAX, 0, 10));
    CHECK(!ppc_announce_fresh(0, UINT64_MAX, 10));
    CHECK(ppc_announce_fresh(UINT64_MAX, UINT64_MAX - 10, 10));
    CHECK(ppc_announce_fresh(0, UINT64_MAX, UINT64_MAX));
}

TEST(query_codec_and_padding)
{
    uint8_t nonce[PPC_ANNOUNCE_NONCE], got[PPC_ANNOUNCE_NONCE], q[PPC_QUERY_LEN + 1];
    for (int i = 0; i < PPC_ANNOUNCE_NONCE; i++)
        nonce[i] = (uint8_t)(0xa0 + i);
    ppc_query_encode(nonce, q);
    q[PPC_QUERY_LEN] = 0;
    /* an answer is never larger than the query */
    _Static_assert(PPC_QUERY_LEN >= PPC_ANNOUNCE_LEN, "answer larger than query");
    CHECK_EQ_INT(ppc_query_decode(q, PPC_QUERY_LEN, got), 0);
    CHECK(memcmp(nonce, got, sizeof got) == 0);
    for (size_t n = 0; n <= PPC_QUERY_LEN + 1; n++)
        if (n != PPC_QUERY_LEN)
            CHECK_MSG(ppc_query_decode(q, n, got) == -1, "query of %zu bytes accepted", n);
    /* the old 8-byte query is refused */
    static const uint8_t old[8] = {'P', 'P', 'C', 'Q', 1, 0, 0, 0};
    CHECK_EQ_INT(ppc_query_decode(old, sizeof old, got), -1);
    /* padding and reserved bytes must be zero, magic and version right */
    size_t must[] = {0, 3, 4, 5, 6, 7, PPC_QUERY_LEN - 1, 8 + PPC_ANNOUNCE_NONCE};
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++) {
        q[must[i]] ^= 0x40;
        CHECK_MSG(ppc_query_decode(q, PPC_QUERY_LEN, got) == -1, "byte %zu changed accepted",
                  must[i]);
        q[must[i]] ^= 0x40;
    }
}

static int parse(const char *s, uint32_t net, uint32_t mask, int port)
{
    ppc_disc_filter f;
    int r = ppc_disc_filter_parse(s, &f);
    if (r != 1)
        return r;
    return f.net == net && f.mask == mask && f.port == port ? 1 : 99;
}

TEST(discovery_entries)
{
    CHECK_EQ_INT(parse("*", 0, 0, 0), 1);
    CHECK_EQ_INT(parse("*:35000", 0, 0, 35000), 1);
    CHECK_EQ_INT(parse("192.168.1.*", 0xc0a80100u, 0xffffff00u, 0), 1);
    CHECK_EQ_INT(parse("192.168.1.*:60001", 0xc0a80100u, 0xffffff00u, 60001), 1);
    CHECK_EQ_INT(parse("10.*", 0x0a000000u, 0xff000000u, 0), 1);
    CHECK_EQ_INT(parse("172.16.*", 0xac100000u, 0xffff0000u, 0), 1);
    CHECK_EQ_INT(parse("127.0.0.*:1", 0x7f000000u, 0xffffff00u, 1), 1);
    ppc_disc_filter f;
    CHECK_EQ_INT(ppc_disc_filter_parse("node1:60000", &f), 0);
    CHECK_EQ_INT(ppc_disc_filter_parse("10.0.0.1", &f), 0);
    const char *bad[] = {"**", "*.1", "1*", "1.*.3.*", "192.168.1.2.*", "256.*", "1.2.3.4*",
                         "*:0", "*:65536", "*:", "*:x", "*:+5", "*:-5", "1..*", ".*",
                         "1.2.3.*:5:6", "a.*", "1234.*", "*:60000 ", " *"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(ppc_disc_filter_parse(bad[i], &f) == -1, "%s accepted", bad[i]);
}

/* ------------------------------------------------------------ log queue */

static ppc_engine *plain_engine(int level)
{
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.listen_port = -1;
    o.log_level = level;
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    if (!e)
        fprintf(stderr, "ppc_engine_new: %s\n", err);
    return e;
}

static int drain(ppc_engine *e, ppc_event *last, int *below)
{
    int n = 0;
    ppc_event ev;
    while (ppc_engine_next_event(e, 0, &ev) == PPC_EV_LOG) {
        n++;
        if (below && ev.level < *below)
            (*below)++;
        *last = ev;
    }
    return n;
}

TEST(log_queue_is_bounded_and_reports_drops)
{
    ppc_engine *e = plain_engine(PPC_LOG_DEBUG);
    REQUIRE(e != NULL);
    for (int i = 0; i < 100000; i++)
        ppc_engine_log(e, PPC_LOG_INFO, "message %d", i);
    ppc_event last;
    int n = drain(e, &last, NULL);
    CHECK_EQ_INT(n, PPC_LOG_MAX_QUEUED + 1);
    CHECK_EQ_INT(last.level, PPC_LOG_WARNING);
    char want[64];
    snprintf(want, sizeof want, "%d log message(s) dropped", 100000 - PPC_LOG_MAX_QUEUED);
    CHECK_MSG(strstr(last.msg, want) != NULL, "last message: %s", last.msg);
    /* drained: room again, and no second report */
    ppc_engine_log(e, PPC_LOG_INFO, "after");
    n = drain(e, &last, NULL);
    CHECK_EQ_INT(n, 1);
    CHECK(strcmp(last.msg, "after") == 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
}

TEST(log_queue_filters_by_level)
{
    ppc_engine *e = plain_engine(PPC_LOG_WARNING);
    REQUIRE(e != NULL);
    for (int i = 0; i < 1000; i++) {
        ppc_engine_log(e, PPC_LOG_DEBUG, "debug %d", i);
        ppc_engine_log(e, PPC_LOG_INFO, "info %d", i);
    }
    ppc_engine_log(e, PPC_LOG_WARNING, "warning");
    ppc_event last;
    CHECK_EQ_INT(drain(e, &last, NULL), 1); /* nothing dropped: never queued */
    CHECK(strcmp(last.msg, "warning") == 0);
    ppc_engine_set_log_level(e, PPC_LOG_INFO);
    ppc_engine_log(e, PPC_LOG_DEBUG, "debug");
    ppc_engine_log(e, PPC_LOG_INFO, "info");
    CHECK_EQ_INT(drain(e, &last, NULL), 1);
    CHECK(strcmp(last.msg, "info") == 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
}

int main(int argc, char **argv) { return ctest_main(argc, argv); }

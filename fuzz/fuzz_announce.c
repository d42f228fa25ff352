/* fuzz_announce.c - libFuzzer target for discovery's decoders: datagrams
 * any host on the network may send to the discovery port (announce.h) and
 * the ppservers discovery entries (discfilter.h).
 *
 * The same input is read three ways:
 *  - as a datagram: ppc_query_decode and ppc_announce_decode (MAC under a
 *    fixed key, scrypt of FUZZ_SECRET derived once) accept only exactly
 *    PPC_ANNOUNCE_LEN bytes with the right magic and version, and
 *    re-encoding what they accepted gives back the same bytes; an accepted
 *    announcement fails under another key and with any one byte changed;
 *  - as a NUL-terminated string: ppc_disc_filter_parse returns 0 exactly
 *    when there is no '*', and an accepted filter is a /0, /8, /16 or /24
 *    network with no host bits and a port of 0..65535;
 *  - as fields (address, port, time, now, max age, nonce, echo): the
 *    encoder's output decodes to the same fields, and ppc_announce_fresh
 *    agrees with exact 128-bit arithmetic, u64 edges included.
 * The seeds (fuzz/corpus/announce/) are written by
 * fuzz/make_announce_corpus.py. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "announce.h"
#include "discfilter.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t KEY[PPC_ANNOUNCE_KEY_LEN], OTHER[PPC_ANNOUNCE_KEY_LEN];
static int have_key;

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void as_datagram(const uint8_t *data, size_t size)
{
    uint8_t nonce[PPC_ANNOUNCE_NONCE], out[PPC_ANNOUNCE_LEN];
    if (ppc_query_decode(data, size, nonce) == 0) {
        FUZZ_ASSERT(size == PPC_QUERY_LEN);
        ppc_query_encode(nonce, out);
        FUZZ_ASSERT(memcmp(out, data, PPC_QUERY_LEN) == 0);
    }
    ppc_announce a, b;
    if (ppc_announce_decode(KEY, data, size, &a) == 0) {
        FUZZ_ASSERT(size == PPC_ANNOUNCE_LEN);
        FUZZ_ASSERT(ppc_announce_encode(KEY, &a, out) == 0);
        FUZZ_ASSERT(memcmp(out, data, PPC_ANNOUNCE_LEN) == 0);
        FUZZ_ASSERT(ppc_announce_decode(OTHER, data, size, &b) < 0);
        size_t at = fuzz_hash(data, size) % PPC_ANNOUNCE_LEN;
        out[at] ^= (uint8_t)(1 + (fuzz_hash(data, size) >> 32) % 255);
        FUZZ_ASSERT(ppc_announce_decode(KEY, out, PPC_ANNOUNCE_LEN, &b) < 0);
    }
}

static void as_string(const uint8_t *data, size_t size)
{
    char s[80];
    size_t n = size < sizeof s - 1 ? size : sizeof s - 1;
    memcpy(s, data, n);
    s[n] = 0;
    ppc_disc_filter f;
    memset(&f, 0xa5, sizeof f);
    int r = ppc_disc_filter_parse(s, &f);
    FUZZ_ASSERT(r == -1 || r == 0 || r == 1);
    FUZZ_ASSERT((r == 0) == (strchr(s, '*') == NULL));
    if (r == 1) {
        FUZZ_ASSERT(f.mask == 0 || f.mask == 0xff000000u || f.mask == 0xffff0000u ||
                    f.mask == 0xffffff00u);
        FUZZ_ASSERT((f.net & ~f.mask) == 0);
        FUZZ_ASSERT(strchr(s, ':') != NULL || f.port == 0);
    }
}

static void as_fields(const uint8_t *data, size_t size)
{
    if (size < 4 + 2 + 8 + 8 + 8 + 2 * PPC_ANNOUNCE_NONCE)
        return;
    ppc_announce a, b;
    memset(&a, 0, sizeof a);
    memcpy(a.addr, data, 4);
    a.port = (uint16_t)(data[4] | data[5] << 8);
    a.time = rd64(data + 6);
    uint64_t now = rd64(data + 14), max_age = rd64(data + 22);
    memcpy(a.nonce, data + 30, PPC_ANNOUNCE_NONCE);
    memcpy(a.echo, data + 30 + PPC_ANNOUNCE_NONCE, PPC_ANNOUNCE_NONCE);
    uint8_t m[PPC_ANNOUNCE_LEN];
    FUZZ_ASSERT(ppc_announce_encode(KEY, &a, m) == 0);
    FUZZ_ASSERT(ppc_announce_decode(KEY, m, sizeof m, &b) == 0);
    FUZZ_ASSERT(memcmp(a.addr, b.addr, 4) == 0 && a.port == b.port && a.time == b.time);
    FUZZ_ASSERT(memcmp(a.nonce, b.nonce, sizeof a.nonce) == 0);
    FUZZ_ASSERT(memcmp(a.echo, b.echo, sizeof a.echo) == 0);
    uint8_t zero[PPC_ANNOUNCE_NONCE] = {0};
    FUZZ_ASSERT(ppc_announce_unasked(&b) == !memcmp(a.echo, zero, sizeof zero));
    __int128 d = (__int128)a.time - (__int128)now;
    if (d < 0)
        d = -d;
    FUZZ_ASSERT(ppc_announce_fresh(a.time, now, max_age) == (d <= (__int128)max_age));
    FUZZ_ASSERT(ppc_announce_decode(KEY, m, sizeof m - 1, &b) < 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!have_key) {
        FUZZ_ASSERT(ppc_announce_key((const uint8_t *)FUZZ_SECRET, FUZZ_SECRET_LEN, KEY) == 0);
        FUZZ_ASSERT(ppc_announce_key((const uint8_t *)"other", 5, OTHER) == 0);
        have_key = 1;
    }
    as_datagram(data, size);
    as_string(data, size);
    as_fields(data, size);
    return 0;
}

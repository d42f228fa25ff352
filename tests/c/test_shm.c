/* test_shm.c - unit tests of shm.c: segments, growth, the pool's reuse and
 * cap, mapping a segment through /proc/<pid>/fd (here our own pid, a
 * refused open, a file that could shrink), the seal that keeps a segment
 * from shrinking, prefaulting a range, the OOB blob layout and its bounds
 * checks, and the loader's private copy (a layout rewritten after loading,
 * or all the while by another thread, changes nothing the reader uses). */
#define _GNU_SOURCE
#include "ctest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "frame.h"
#include "shm.h"

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

TEST(shm_create_grow_free)
{
    int before = count_fds();
    ppc_shm_seg *s = ppc_shm_create(100, 7);
    REQUIRE(s != NULL);
    CHECK_EQ_U64(s->id, 7);
    CHECK_EQ_U64(s->cap, PPC_SHM_ROUND);
    memset(s->map, 0xab, s->cap);
    CHECK_EQ_INT(ppc_shm_reserve(s, 10u << 20), 0);
    CHECK(s->cap >= (10u << 20));
    CHECK(s->cap % PPC_SHM_ROUND == 0);
    CHECK_EQ_INT(s->map[PPC_SHM_ROUND - 1], 0xab); /* contents kept */
    s->map[s->cap - 1] = 1;
    ppc_shm_free(s);
    CHECK_EQ_INT(count_fds(), before);
}

TEST(shm_map_peer_self)
{
    ppc_shm_seg *s = ppc_shm_create(1u << 20, 1);
    REQUIRE(s != NULL);
    memcpy(s->map, "hello", 5);
    size_t len = 0;
    uint8_t *m = ppc_shm_map_peer(getpid(), s->fd, 5, 1, &len);
    REQUIRE(m != NULL);
    CHECK_EQ_U64(len, s->cap);
    CHECK_MEM(m, 5, "hello", 5);
    m[0] = 'j'; /* shared both ways */
    CHECK_EQ_INT(s->map[0], 'j');
    ppc_shm_unmap(m, len);
    /* asking for more than the file holds is refused */
    CHECK(ppc_shm_map_peer(getpid(), s->fd, s->cap + 1, 0, &len) == NULL);
    /* a fd that is not open, a bad pid */
    CHECK(ppc_shm_map_peer(getpid(), 100000, 5, 0, &len) == NULL);
    CHECK(ppc_shm_map_peer(0, s->fd, 5, 0, &len) == NULL);
    /* a pipe is not a segment */
    int pfd[2];
    REQUIRE(pipe(pfd) == 0);
    CHECK(ppc_shm_map_peer(getpid(), pfd[0], 1, 0, &len) == NULL);
    close(pfd[0]);
    close(pfd[1]);
    /* a memfd without the seal: its owner could shrink it under our mapping */
    int f = memfd_create("loose", MFD_CLOEXEC);
    REQUIRE(f >= 0);
    REQUIRE(ftruncate(f, 1 << 20) == 0);
    errno = 0;
    CHECK(ppc_shm_map_peer(getpid(), f, 5, 0, &len) == NULL && errno == EINVAL);
    close(f);
    ppc_shm_free(s);
}

/* A segment cannot shrink (nor take other seals), only grow: a peer that
 * maps it never loses pages under its reads. */
TEST(shm_segment_sealed_against_shrinking)
{
    ppc_shm_seg *s = ppc_shm_create(1u << 20, 1);
    REQUIRE(s != NULL);
    int seals = fcntl(s->fd, F_GET_SEALS);
    CHECK(seals >= 0 && (seals & F_SEAL_SHRINK) && (seals & F_SEAL_SEAL));
    CHECK(ftruncate(s->fd, 4096) < 0 && errno == EPERM);
    CHECK(fcntl(s->fd, F_ADD_SEALS, F_SEAL_GROW) < 0);
    CHECK_EQ_INT(ppc_shm_reserve(s, 5u << 20), 0);
    s->map[s->cap - 1] = 7;
    ppc_shm_free(s);
}

TEST(shm_pool_reuse_and_cap)
{
    ppc_shm_pool p;
    REQUIRE(ppc_shm_pool_init(&p, 8u << 20) == 0);
    ppc_shm_seg *a = ppc_shm_pool_get(&p, 3u << 20);
    ppc_shm_seg *b = ppc_shm_pool_get(&p, 3u << 20);
    REQUIRE(a && b);
    CHECK(a->id != b->id);
    uint64_t dropped[4];
    CHECK_EQ_U64(ppc_shm_pool_put(&p, a, dropped, 4), 0);
    ppc_shm_seg *c = ppc_shm_pool_get(&p, 1u << 20);
    CHECK(c == a); /* reused, same id: peers keep their mapping */
    CHECK_EQ_U64(c->used, 0);
    /* the largest free one is grown when none fits */
    CHECK_EQ_U64(ppc_shm_pool_put(&p, c, dropped, 4), 0);
    ppc_shm_seg *d = ppc_shm_pool_get(&p, 6u << 20);
    CHECK(d == a);
    CHECK(d->cap >= (6u << 20));
    /* over the cap: the least recently returned goes */
    uint64_t bid = b->id;
    CHECK_EQ_U64(ppc_shm_pool_put(&p, b, dropped, 4), 0);
    size_t nd = ppc_shm_pool_put(&p, d, dropped, 4);
    CHECK_EQ_U64(nd, 1);
    CHECK_EQ_U64(dropped[0], bid);
    CHECK(p.free_bytes <= p.max_free);
    ppc_shm_pool_destroy(&p);
}

TEST(oob_layout_roundtrip_and_bounds)
{
    uint8_t blob[512];
    memset(blob, 0, sizeof blob);
    memcpy(blob, "stream", 6);
    size_t o1 = ppc_oob_align(6), o2 = ppc_oob_align(o1 + 10);
    memset(blob + o1, 1, 10);
    memset(blob + o2, 2, 20);
    uint64_t offs[2] = {o1, o2}, lens[2] = {10, 20};
    size_t at = o2 + 20, n = at + ppc_oob_tail_len(2);
    ppc_oob_finish(blob, at, 6, 2, offs, lens);
    size_t sl;
    uint32_t nb;
    REQUIRE(ppc_oob_parse(blob, n, &sl, &nb) == 0);
    CHECK_EQ_U64(sl, 6);
    CHECK_EQ_INT(nb, 2);
    ppc_oob o;
    REQUIRE(ppc_oob_load(blob, n, &o) == 0);
    CHECK_EQ_U64(o.stream_len, 6);
    REQUIRE(o.nbufs == 2 && o.bufs != NULL);
    CHECK_EQ_U64(o.bufs[0], o1);
    CHECK_EQ_U64(o.bufs[1], 10);
    CHECK_EQ_U64(o.bufs[2], o2);
    CHECK_EQ_U64(o.bufs[3], 20);
    /* loaded once: rewriting the blob's table and trailer changes nothing */
    uint8_t keep[512];
    memcpy(keep, blob, n);
    memset(blob + at, 0xff, n - at);
    CHECK(o.stream_len == 6 && o.nbufs == 2 && o.bufs[2] == o2 && o.bufs[3] == 20);
    memcpy(blob, keep, n);
    ppc_oob_release(&o);
    CHECK(o.bufs == NULL && o.nbufs == 0);
    /* every truncation is refused or still in bounds */
    for (size_t k = 0; k < n; k++)
        CHECK(ppc_oob_parse(blob, k, &sl, &nb) < 0);
    /* a buffer running past the table, a huge count, a long stream */
    uint8_t bad[512];
    memcpy(bad, blob, n);
    ppc_put_u64(bad + at + 16 + 8, 1000);
    CHECK(ppc_oob_parse(bad, n, &sl, &nb) < 0);
    memcpy(bad, blob, n);
    ppc_put_u64(bad + at + 16, UINT64_MAX - 5);
    CHECK(ppc_oob_parse(bad, n, &sl, &nb) < 0);
    memcpy(bad, blob, n);
    ppc_put_u32(bad + n - 8, 0xffffffffu);
    CHECK(ppc_oob_parse(bad, n, &sl, &nb) < 0);
    memcpy(bad, blob, n);
    ppc_put_u64(bad + n - 16, n);
    CHECK(ppc_oob_parse(bad, n, &sl, &nb) < 0);
    memcpy(bad, blob, n);
    bad[n - 1] ^= 1; /* magic */
    CHECK(ppc_oob_parse(bad, n, &sl, &nb) < 0);
    /* no buffers: just a stream */
    uint8_t s0[32];
    memcpy(s0, "abc", 3);
    ppc_oob_finish(s0, 3, 3, 0, NULL, NULL);
    CHECK(ppc_oob_parse(s0, 3 + PPC_OOB_TRAILER, &sl, &nb) == 0 && sl == 3 && nb == 0);
    ppc_oob o0;
    CHECK(ppc_oob_load(s0, 3 + PPC_OOB_TRAILER, &o0) == 0 && o0.bufs == NULL);
    ppc_oob_release(&o0);
}

/* Counts beyond the limit or the blob's room are refused before anything
 * is allocated: a count of 2^24 + 1 in a blob big enough for it, and the
 * largest u32 in a small one. */
TEST(oob_hostile_counts)
{
    size_t n = ((size_t)PPC_OOB_MAX_BUFS + 1) * 16 + PPC_OOB_TRAILER;
    uint8_t *big = calloc(1, n);
    REQUIRE(big != NULL);
    ppc_put_u32(big + n - 8, PPC_OOB_MAX_BUFS + 1); /* the trailer: stream 0, count, magic */
    ppc_put_u32(big + n - 4, PPC_OOB_MAGIC);
    ppc_oob o;
    CHECK(ppc_oob_load(big, n, &o) < 0 && o.bufs == NULL);
    free(big);
    uint8_t small[64] = {0};
    ppc_oob_finish(small, 64 - PPC_OOB_TRAILER, 0, 0, NULL, NULL);
    ppc_put_u32(small + 64 - 8, 0xffffffffu);
    CHECK(ppc_oob_load(small, 64, &o) < 0);
}

/* Another thread flips the table and trailer while the reader loads and
 * copies the buffers out, again and again: whatever load accepts stays
 * inside the blob (ASan would report a read past it otherwise). */
struct oob_flipper {
    uint8_t *tail; /* the table (2 entries) and trailer */
    uint8_t good[48]; /* their true bytes, put back now and then */
    atomic_int stop;
};

static void *flip_oob(void *arg)
{
    struct oob_flipper *f = arg;
    uint32_t x = 777;
    while (!atomic_load_explicit(&f->stop, memory_order_relaxed)) {
        x = x * 1103515245u + 12345u;
        volatile uint8_t *t = f->tail;
        int at = (int)((x >> 8) % 48); /* any byte of 2 entries + trailer */
        if (at == 44 || at == 45 || at == 46 || at == 47)
            continue; /* keep the magic: most rounds get past it */
        t[at] = (uint8_t)(x >> 20);
        if ((x >> 28) < 4) /* a quarter of the time all valid again, so loads also succeed */
            for (int i = 0; i < 48; i++)
                t[i] = f->good[i];
    }
    return NULL;
}

TEST(oob_rewritten_while_read)
{
    size_t at = 256, n = at + ppc_oob_tail_len(2);
    uint8_t *blob = calloc(1, n);
    REQUIRE(blob != NULL);
    uint64_t offs[2] = {64, 128}, lens[2] = {32, 100};
    ppc_oob_finish(blob, at, 10, 2, offs, lens);
    struct oob_flipper f = {.tail = blob + at};
    memcpy(f.good, blob + at, sizeof f.good);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, flip_oob, &f) == 0);
    int accepted = 0;
    unsigned sum = 0;
    for (int round = 0; round < 200000; round++) {
        ppc_oob o;
        if (ppc_oob_load(blob, n, &o) < 0)
            continue;
        accepted++;
        size_t table = n - ppc_oob_tail_len(o.nbufs);
        CHECK(o.stream_len <= table);
        for (uint32_t i = 0; i < o.nbufs; i++) {
            uint64_t off = o.bufs[2 * i], len = o.bufs[2 * i + 1];
            CHECK(off <= table && len <= table - off);
            for (uint64_t k = 0; k < len; k++) /* every byte: ASan checks them */
                sum += blob[off + k];
        }
        ppc_oob_release(&o);
    }
    atomic_store(&f.stop, 1);
    pthread_join(th, NULL);
    CHECK(accepted > 0);
    (void)sum;
    free(blob);
}

TEST(shm_ref_roundtrip)
{
    ppc_shm_ref r = {123, 45, 0x1122334455667788ull, 99}, q;
    uint8_t b[PPC_SHM_REF_LEN];
    ppc_shm_ref_put(b, &r);
    ppc_shm_ref_get(b, &q);
    CHECK(q.pid == 123 && q.fd == 45 && q.id == r.id && q.len == 99);
}

/* Pages of s's file present in [off, off+len), counted by mincore. */
static size_t resident_pages(ppc_shm_seg *s, size_t off, size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), n = len / pg, k = 0;
    unsigned char *v = calloc(n ? n : 1, 1);
    if (!v || mincore(s->map + off, len, v) < 0) {
        free(v);
        return (size_t)-1;
    }
    for (size_t i = 0; i < n; i++)
        k += v[i] & 1;
    free(v);
    return k;
}

TEST(shm_prefault)
{
    ppc_shm_seg *s = ppc_shm_create(8u << 20, 1);
    REQUIRE(s != NULL);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), mb = 1u << 20;
    CHECK_EQ_U64(resident_pages(s, 0, 4 * mb), 0);
    /* the range gets its pages, the rest of the segment none; contents stay zero */
    ppc_shm_prefault(s, mb, 2 * mb);
    CHECK_EQ_U64(resident_pages(s, mb, 2 * mb), 2 * mb / pg);
    CHECK_EQ_U64(resident_pages(s, 0, mb), 0);
    CHECK_EQ_U64(resident_pages(s, 3 * mb, mb), 0);
    CHECK(s->map[mb] == 0 && s->map[3 * mb - 1] == 0);
    /* data written stays when the range is prefaulted again (a reused segment) */
    memset(s->map, 0x5a, 3 * mb);
    ppc_shm_prefault(s, 0, 3 * mb);
    ppc_shm_prefault(s, 0, 3 * mb);
    CHECK(s->map[0] == 0x5a && s->map[3 * mb - 1] == 0x5a && s->map[3 * mb] == 0);
    /* ranges past the segment are ignored */
    ppc_shm_prefault(s, s->cap, 1);
    ppc_shm_prefault(s, 4 * mb, SIZE_MAX);
    CHECK_EQ_U64(resident_pages(s, 4 * mb, 4 * mb), 0);
    ppc_shm_free(s);
}

int main(int argc, char **argv)
{
    return ctest_main(argc, argv);
}

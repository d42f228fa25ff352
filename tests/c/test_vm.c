/* test_vm.c - unit tests of vm.c: the hole table (round trip and every
 * rejection), the parser's private copy (a table rewritten after parsing,
 * or all the while by another thread, changes nothing the reader uses;
 * hostile counts are refused before anything is allocated), reading
 * memory across processes both ways (pinned and not; from a forked child,
 * and of a process that is gone), the access probe, telling pages shared
 * copy-on-write, copying a blob with holes, and filling a segment's holes
 * from our own memory (from the owner's private list, never the table). */
#define _GNU_SOURCE
#include "ctest.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "shm.h"
#include "vm.h"

static const uint64_t probe_word = PPC_VM_PROBE;

TEST(vm_table_roundtrip_and_rejections)
{
    uint8_t m[256];
    memset(m, 0xee, sizeof m);
    ppc_vm_gap g[2] = {{8, 16, 0x1000}, {30, 10, 0x2000}};
    size_t blob = 45, at = ppc_vm_table_at(blob);
    CHECK_EQ_U64(at, 48);
    ppc_vm_table_put(m + at, 1234, 0, g, 2);
    size_t end = at + ppc_vm_table_len(2);
    ppc_vm_src src;
    REQUIRE(ppc_vm_table_parse(m, end, blob, &src) == 0);
    CHECK_EQ_INT(src.pid, 1234);
    CHECK_EQ_INT((int)src.ngaps, 2);
    ppc_vm_gap q;
    ppc_vm_gap_get(&src, 1, &q);
    CHECK(q.off == 30 && q.len == 10 && q.addr == 0x2000);
    CHECK_EQ_INT(src.unpinned, 0);
    ppc_vm_src_free(&src);
    CHECK(src.gaps == NULL && src.ngaps == 0);
    ppc_vm_table_put(m + at, 1234, PPC_VM_F_SHARED, g, 2);
    REQUIRE(ppc_vm_table_parse(m, end, blob, &src) == 0);
    CHECK_EQ_INT(src.unpinned, 1);
    ppc_vm_src_free(&src);
    ppc_vm_table_put(m + at, 1234, 2, g, 2); /* an unknown flag */
    CHECK(ppc_vm_table_parse(m, end, blob, &src) < 0);
    /* truncated mapping, blob beyond the mapping, table missing */
    CHECK(ppc_vm_table_parse(m, end - 1, blob, &src) < 0);
    CHECK(ppc_vm_table_parse(m, 40, blob, &src) < 0);
    CHECK(ppc_vm_table_parse(m, end, 60, &src) < 0);
    /* a hole reaching past the blob, overlapping, empty, out of order */
    ppc_vm_gap bad[][2] = {{{8, 16, 1}, {30, 16, 1}},
                           {{8, 16, 1}, {20, 4, 1}},
                           {{8, 0, 1}, {30, 4, 1}},
                           {{30, 4, 1}, {8, 4, 1}}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ppc_vm_table_put(m + at, 1234, 0, bad[i], 2);
        CHECK_MSG(ppc_vm_table_parse(m, end, blob, &src) < 0, "bad table %zu accepted", i);
    }
    /* bad magic, pid 0, too many holes */
    ppc_vm_table_put(m + at, 1234, 0, g, 2);
    m[at] ^= 1;
    CHECK(ppc_vm_table_parse(m, end, blob, &src) < 0);
    ppc_vm_table_put(m + at, 0, 0, g, 2);
    CHECK(ppc_vm_table_parse(m, end, blob, &src) < 0);
    ppc_vm_table_put(m + at, 1234, 0, g, 2);
    ppc_put_u32(m + at + 4, PPC_VM_MAX_GAPS + 1);
    CHECK(ppc_vm_table_parse(m, end, blob, &src) < 0);
    ppc_put_u32(m + at + 4, 0);
    CHECK(ppc_vm_table_parse(m, end, blob, &src) < 0);
    CHECK(src.gaps == NULL); /* a refused table leaves nothing to free */
}

/* The parser reads the table once, into private memory: rewriting the
 * mapping afterwards changes nothing the reader uses. A count beyond the
 * limit, or beyond the mapping, is refused before anything is allocated
 * (an allocation of 0xffffffff entries would fail under ASan's limit). */
TEST(vm_table_parse_private_copy)
{
    uint8_t m[512];
    memset(m, 0, sizeof m);
    ppc_vm_gap g[2] = {{8, 16, 0x1000}, {30, 10, 0x2000}};
    size_t blob = 45, at = ppc_vm_table_at(blob), end = at + ppc_vm_table_len(2);
    ppc_vm_table_put(m + at, 1234, 0, g, 2);
    ppc_vm_src src;
    REQUIRE(ppc_vm_table_parse(m, end, blob, &src) == 0);
    CHECK(src.gaps != NULL && ((const uint8_t *)src.gaps < m || (const uint8_t *)src.gaps >= m + sizeof m));
    /* the peer rewrites everything: count, pid, offsets, lengths, addresses */
    memset(m + at, 0xff, end - at);
    CHECK_EQ_INT(src.pid, 1234);
    CHECK_EQ_INT((int)src.ngaps, 2);
    for (uint32_t i = 0; i < 2; i++) {
        ppc_vm_gap q;
        ppc_vm_gap_get(&src, i, &q);
        CHECK(q.off == g[i].off && q.len == g[i].len && q.addr == g[i].addr);
    }
    ppc_vm_src_free(&src);
    /* hostile counts: the limit, the mapping's room, the largest u32 */
    uint32_t counts[] = {PPC_VM_MAX_GAPS + 1, 3, 0xffffffffu};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        ppc_vm_table_put(m + at, 1234, 0, g, 2);
        ppc_put_u32(m + at + 4, counts[i]);
        CHECK_MSG(ppc_vm_table_parse(m, end, blob, &src) < 0, "count %u accepted", counts[i]);
    }
}

/* A peer flipping its table's count, offsets, lengths and flags from
 * another thread while the reader parses and copies, again and again:
 * whatever parse accepts, the copy stays inside the reader's buffer
 * (ASan would report an overflow otherwise) and fills the blob exactly. */
struct flipper {
    uint8_t *table;
    size_t blob;
    atomic_int stop;
};

static void *flip_table(void *arg)
{
    struct flipper *f = arg;
    uint32_t x = 12345;
    while (!atomic_load_explicit(&f->stop, memory_order_relaxed)) {
        x = x * 1103515245u + 12345u;
        volatile uint8_t *t = f->table;
        switch (x >> 29) {
        case 0:
            t[4] = (uint8_t)(x >> 8) & 3; /* the count: 0..3 */
            break;
        case 1:
            t[16 + 8] = (uint8_t)(x >> 8); /* hole 0's length */
            break;
        case 2:
            t[16] = (uint8_t)(x >> 8); /* hole 0's offset */
            break;
        case 3:
            t[16 + PPC_VM_ENTRY + 8] = (uint8_t)(x >> 8); /* hole 1's length */
            break;
        case 4:
            t[16 + PPC_VM_ENTRY + 15] = (uint8_t)(x >> 8); /* hole 1's length, high byte */
            break;
        default:
            t[16] = 4; /* valid again: hole 0 at 4 */
            t[16 + 8] = 6;
            t[16 + PPC_VM_ENTRY + 8] = 3;
            t[16 + PPC_VM_ENTRY + 15] = 0;
            t[4] = 2;
            break;
        }
    }
    return NULL;
}

TEST(vm_table_rewritten_while_read)
{
    static const char h1[] = "123456", h2[] = "xyz";
    size_t blob = 16, at = ppc_vm_table_at(blob);
    uint8_t *m = calloc(1, 4096);
    REQUIRE(m != NULL);
    memcpy(m, "AAAA......BB...C", 16);
    ppc_vm_gap g[2] = {{4, 6, (uint64_t)(uintptr_t)h1}, {12, 3, (uint64_t)(uintptr_t)h2}};
    ppc_vm_table_put(m + at, (int)getpid(), 0, g, 2);
    struct flipper f = {m + at, blob, 0};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, flip_table, &f) == 0);
    int accepted = 0;
    for (int round = 0; round < 20000; round++) {
        ppc_vm_src src;
        if (ppc_vm_table_parse(m, 4096, blob, &src) < 0)
            continue;
        accepted++;
        uint8_t *out = malloc(blob); /* exactly the blob: an overflow is an ASan error */
        REQUIRE(out != NULL);
        uint64_t end = 0;
        for (uint32_t i = 0; i < src.ngaps; i++) {
            CHECK(src.gaps[i].off >= end && src.gaps[i].off + src.gaps[i].len <= blob);
            end = src.gaps[i].off + src.gaps[i].len;
        }
        /* the holes' addresses may be flipped to nonsense: a read error,
         * never a write outside out */
        (void)ppc_vm_copy_blob(out, m, blob, &src);
        free(out);
        ppc_vm_src_free(&src);
    }
    atomic_store(&f.stop, 1);
    pthread_join(th, NULL);
    CHECK(accepted > 0);
    free(m);
}

TEST(vm_read_across_a_fork)
{
    size_t n = 3u << 20;
    uint8_t *src = malloc(n);
    REQUIRE(src != NULL);
    for (size_t i = 0; i < n; i++)
        src[i] = (uint8_t)(i * 7 + 3);
    int pfd[2];
    REQUIRE(pipe(pfd) == 0);
    pid_t parent = getpid();
    pid_t c = fork();
    REQUIRE(c >= 0);
    if (c == 0) {
        /* the child reads its parent (pages shared copy-on-write) both ways */
        uint8_t *d = malloc(n);
        int ok = d && ppc_vm_probe(parent, (uint64_t)(uintptr_t)&probe_word);
        for (int unpinned = 0; ok && unpinned < 2; unpinned++) {
            memset(d, 0, n);
            ok = ppc_vm_read(parent, d, (uint64_t)(uintptr_t)src, n, unpinned) == 0 &&
                 memcmp(d, src, n) == 0;
        }
        char r = ok ? 'y' : 'n';
        if (write(pfd[1], &r, 1) != 1)
            _exit(2);
        pause(); /* stay alive for the parent's read */
        _exit(0);
    }
    close(pfd[1]);
    char r = 0;
    CHECK(read(pfd[0], &r, 1) == 1 && r == 'y');
    /* the parent reads the child: the probe word at the same address */
    CHECK(ppc_vm_probe(c, (uint64_t)(uintptr_t)&probe_word));
    CHECK(!ppc_vm_probe(c, (uint64_t)(uintptr_t)src)); /* not the probe value */
    uint8_t small[64];
    CHECK(ppc_vm_read(c, small, (uint64_t)(uintptr_t)src, sizeof small, 0) == 0 &&
          memcmp(small, src, sizeof small) == 0);
    /* a bad address fails cleanly */
    errno = 0;
    CHECK(ppc_vm_read(c, small, 8, sizeof small, 0) < 0 && errno == EFAULT);
    CHECK(ppc_vm_read(c, small, 8, sizeof small, 1) < 0);
    CHECK(ppc_vm_read(c, small, UINT64_MAX - 4, sizeof small, 0) < 0);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    /* a process that is gone */
    CHECK(ppc_vm_read(c, small, (uint64_t)(uintptr_t)src, sizeof small, 0) < 0);
    CHECK(ppc_vm_read(c, small, (uint64_t)(uintptr_t)src, sizeof small, 1) < 0);
    CHECK(!ppc_vm_probe(c, (uint64_t)(uintptr_t)&probe_word));
    close(pfd[0]);
    free(src);
}

/* Unpinned reads of pages shared copy-on-write since a fork return the
 * owner's bytes: its changes since the fork, not the reader's. */
TEST(vm_read_unpinned_sees_owner_changes)
{
    size_t ps = (size_t)sysconf(_SC_PAGESIZE), n = 64 * ps;
    uint8_t *buf = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(buf != MAP_FAILED);
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)(i * 11 + 5);
    int to_child[2], from_child[2];
    REQUIRE(pipe(to_child) == 0 && pipe(from_child) == 0);
    pid_t parent = getpid();
    pid_t c = fork();
    REQUIRE(c >= 0);
    if (c == 0) {
        char go, r = 'y';
        uint8_t *d = malloc(n), *want = malloc(n);
        if (!d || !want || read(to_child[0], &go, 1) != 1)
            _exit(2);
        memcpy(want, buf, n);
        want[40 * ps + 1] = 0x5a; /* the parent's change since the fork */
        if (ppc_vm_read(parent, d, (uint64_t)(uintptr_t)(buf + 100), 39 * ps, 1) < 0 ||
            memcmp(d, want + 100, 39 * ps) != 0)
            r = 'a';
        if (ppc_vm_read(parent, d, (uint64_t)(uintptr_t)buf, n, 1) < 0 || memcmp(d, want, n) != 0)
            r = 'b';
        /* a page we change ourselves: the parent's bytes still */
        buf[3 * ps] ^= 0xff;
        if (ppc_vm_read(parent, d, (uint64_t)(uintptr_t)(buf + 100), 39 * ps, 1) < 0 ||
            memcmp(d, want + 100, 39 * ps) != 0)
            r = 'c';
        if (write(from_child[1], &r, 1) != 1)
            _exit(2);
        _exit(0);
    }
    buf[40 * ps + 1] = 0x5a;
    CHECK(write(to_child[1], "g", 1) == 1);
    char r = 0;
    CHECK(read(from_child[0], &r, 1) == 1);
    CHECK_MSG(r == 'y', "child check %c failed", r);
    waitpid(c, NULL, 0);
    munmap(buf, n);
    close(to_child[0]);
    close(to_child[1]);
    close(from_child[0]);
    close(from_child[1]);
}

TEST(vm_maybe_shared_follows_fork)
{
    size_t n = 4u << 20;
    uint8_t *p = malloc(n);
    REQUIRE(p != NULL);
    memset(p, 1, n);
    CHECK_EQ_INT(ppc_vm_maybe_shared(p, n), 0);
    int pfd[2];
    REQUIRE(pipe(pfd) == 0);
    pid_t c = fork();
    REQUIRE(c >= 0);
    if (c == 0) {
        char r = 'r';
        if (write(pfd[1], &r, 1) != 1)
            _exit(2);
        pause();
        _exit(0);
    }
    char r;
    REQUIRE(read(pfd[0], &r, 1) == 1);
    CHECK_EQ_INT(ppc_vm_maybe_shared(p, n), 1); /* copy-on-write with the child */
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    CHECK_EQ_INT(ppc_vm_maybe_shared(p, n), 0);
    uint8_t *q = malloc(n); /* never touched: nothing to share */
    REQUIRE(q != NULL);
    CHECK_EQ_INT(ppc_vm_maybe_shared(q, n), 0);
    close(pfd[0]);
    close(pfd[1]);
    free(p);
    free(q);
}

TEST(vm_copy_blob_and_fill_own)
{
    /* a blob "AAAA" hole(6) "BB" hole(3) "C" whose holes are our own data */
    const char *h1 = "123456", *h2 = "xyz";
    ppc_shm_seg *s = ppc_shm_create(4096, 1);
    REQUIRE(s != NULL);
    memcpy(s->map, "AAAA", 4);
    memcpy(s->map + 10, "BB", 2);
    memcpy(s->map + 15, "C", 1);
    s->used = 16;
    ppc_vm_gap g[2] = {{4, 6, (uint64_t)(uintptr_t)h1}, {12, 3, (uint64_t)(uintptr_t)h2}};
    REQUIRE(ppc_vm_seg_set_holes(s, (int)getpid(), 0, g, 2) == 0);
    CHECK_EQ_INT((int)s->ngaps, 2);
    ppc_vm_src src;
    REQUIRE(ppc_vm_table_parse(s->map, s->cap, 16, &src) == 0);
    uint8_t out[16];
    for (int unpinned = 0; unpinned < 2; unpinned++) {
        memset(out, 0, sizeof out);
        src.unpinned = unpinned;
        CHECK(ppc_vm_copy_blob(out, s->map, 16, &src) == 0);
        CHECK_MEM(out, 16, "AAAA123456BBxyzC", 16);
    }
    ppc_vm_src_free(&src);
    /* a peer rewrites the table in the segment (address and length of a
     * hole): the owner fills from its own list, not from the table */
    uint8_t *e0 = s->map + ppc_vm_table_at(16) + 16;
    ppc_put_u64(e0 + 8, 4000);
    ppc_put_u64(e0 + 16, 8);
    ppc_vm_fill_own(s);
    CHECK_EQ_INT((int)s->ngaps, 0);
    CHECK(s->gaps == NULL);
    CHECK_MEM(s->map, 16, "AAAA123456BBxyzC", 16);
    /* set again, then given back to a pool: the list goes with it */
    REQUIRE(ppc_vm_seg_set_holes(s, (int)getpid(), 0, g, 1) == 0);
    ppc_shm_free(s);
}

int main(int argc, char **argv)
{
    return ctest_main(argc, argv);
}

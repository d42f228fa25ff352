/* test_vm.c - unit tests of vm.c: the hole table (round trip and every
 * rejection), reading memory across processes both ways (pinned and not;
 * from a forked child, and of a process that is gone), the access probe,
 * telling pages shared copy-on-write,
 * copying a blob with holes, and filling a segment's holes from our own
 * memory. */
#define _GNU_SOURCE
#include "ctest.h"

#include <errno.h>
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
    ppc_vm_table_put(m + at, 1234, PPC_VM_F_SHARED, g, 2);
    REQUIRE(ppc_vm_table_parse(m, end, blob, &src) == 0);
    CHECK_EQ_INT(src.unpinned, 1);
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

/* Unpinned reads copy whole pages that are the same frames in both
 * processes from our own memory; a page changed on either side since the
 * fork comes from the owner. */
TEST(vm_read_same_frames_locally)
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
        /* pages 1..39 are shared frames: copied here (when frames are shown) */
        uint64_t b0 = ppc_vm_local_bytes();
        if (ppc_vm_read(parent, d, (uint64_t)(uintptr_t)(buf + 100), 39 * ps, 1) < 0 ||
            memcmp(d, want + 100, 39 * ps) != 0)
            r = 'a';
        int local = ppc_vm_local_bytes() > b0;
        /* a range with the parent's changed page: all from the parent */
        b0 = ppc_vm_local_bytes();
        if (ppc_vm_read(parent, d, (uint64_t)(uintptr_t)buf, n, 1) < 0 || memcmp(d, want, n) != 0 ||
            ppc_vm_local_bytes() != b0)
            r = 'b';
        /* a page we change ourselves: from the parent too */
        buf[3 * ps] ^= 0xff;
        if (ppc_vm_read(parent, d, (uint64_t)(uintptr_t)(buf + 100), 39 * ps, 1) < 0 ||
            memcmp(d, want + 100, 39 * ps) != 0 || ppc_vm_local_bytes() != b0)
            r = 'c';
        if (r == 'y' && !local)
            r = 's';
        if (write(from_child[1], &r, 1) != 1)
            _exit(2);
        _exit(0);
    }
    buf[40 * ps + 1] = 0x5a;
    CHECK(write(to_child[1], "g", 1) == 1);
    char r = 0;
    CHECK(read(from_child[0], &r, 1) == 1);
    CHECK_MSG(r == 'y' || r == 's', "child check %c failed", r);
    if (r == 's')
        printf("  skip (local copies): page frame numbers are not shown to this process "
               "(no CAP_SYS_ADMIN); all reads went to the owner and were checked\n");
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
    ppc_vm_table_put(s->map + ppc_vm_table_at(16), (int)getpid(), 0, g, 2);
    s->ngaps = 2;
    ppc_vm_src src;
    REQUIRE(ppc_vm_table_parse(s->map, s->cap, 16, &src) == 0);
    uint8_t out[16];
    for (int unpinned = 0; unpinned < 2; unpinned++) {
        memset(out, 0, sizeof out);
        src.unpinned = unpinned;
        CHECK(ppc_vm_copy_blob(out, s->map, 16, &src) == 0);
        CHECK_MEM(out, 16, "AAAA123456BBxyzC", 16);
    }
    ppc_vm_fill_own(s);
    CHECK_EQ_INT((int)s->ngaps, 0);
    CHECK_MEM(s->map, 16, "AAAA123456BBxyzC", 16);
    ppc_shm_free(s);
}

int main(int argc, char **argv)
{
    return ctest_main(argc, argv);
}

/* vm.c - gap tables and cross-process reads (see vm.h). Every offset and
 * length from a peer is checked before use. */
#define _GNU_SOURCE
#include "vm.h"

#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <stdio.h>
#include <unistd.h>

#include "frame.h"

void ppc_vm_table_put(uint8_t *p, int pid, uint32_t flags, const ppc_vm_gap *g, uint32_t n)
{
    ppc_put_u32(p, PPC_VM_MAGIC);
    ppc_put_u32(p + 4, n);
    ppc_put_u32(p + 8, (uint32_t)pid);
    ppc_put_u32(p + 12, flags);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *e = p + 16 + (size_t)i * PPC_VM_ENTRY;
        ppc_put_u64(e, g[i].off);
        ppc_put_u64(e + 8, g[i].len);
        ppc_put_u64(e + 16, g[i].addr);
    }
}

int ppc_vm_table_parse(const uint8_t *map, size_t map_len, size_t blob_len, ppc_vm_src *src)
{
    if (!map || blob_len > map_len)
        return -1;
    size_t at = ppc_vm_table_at(blob_len);
    if (at < blob_len || at > map_len || map_len - at < 16)
        return -1;
    const uint8_t *t = map + at;
    uint32_t n = ppc_get_u32(t + 4);
    uint32_t pid = ppc_get_u32(t + 8);
    if (ppc_get_u32(t) != PPC_VM_MAGIC || n == 0 || n > PPC_VM_MAX_GAPS || pid == 0 ||
        pid > 0x7fffffffu || (ppc_get_u32(t + 12) & ~PPC_VM_F_SHARED) || (map_len - at - 16) / PPC_VM_ENTRY < n)
        return -1;
    uint64_t end = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = t + 16 + (size_t)i * PPC_VM_ENTRY;
        uint64_t off = ppc_get_u64(e), len = ppc_get_u64(e + 8);
        if (len == 0 || off < end || off > blob_len || len > blob_len - off)
            return -1;
        end = off + len;
    }
    src->pid = (int)pid;
    src->ngaps = n;
    src->unpinned = (ppc_get_u32(t + 12) & PPC_VM_F_SHARED) != 0;
    src->entries = t + 16;
    return 0;
}

void ppc_vm_gap_get(const ppc_vm_src *src, uint32_t i, ppc_vm_gap *g)
{
    const uint8_t *e = src->entries + (size_t)i * PPC_VM_ENTRY;
    g->off = ppc_get_u64(e);
    g->len = ppc_get_u64(e + 8);
    g->addr = ppc_get_u64(e + 16);
}

/* process_vm_readv: one copy, the owner's pages pinned while read. */
static int read_pinned(int pid, uint8_t *d, uint64_t addr, size_t len)
{
    while (len > 0) {
        struct iovec l = {d, len}, r = {(void *)(uintptr_t)addr, len};
        ssize_t k = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = EFAULT;
            return -1;
        }
        d += k;
        addr += (uint64_t)k;
        len -= (size_t)k;
    }
    return 0;
}

/* /proc/<pid>/mem: the kernel copies page by page through a buffer of its
 * own, taking page references without pinning. */
static int read_unpinned(int pid, uint8_t *d, uint64_t addr, size_t len)
{
    char path[48];
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = 0;
    while (len > 0) {
        ssize_t k = pread(fd, d, len, (off_t)addr);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = EFAULT;
            rc = -1;
            break;
        }
        d += k;
        addr += (uint64_t)k;
        len -= (size_t)k;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* ---------------------------------------------- pages shared since a fork */

#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_EXCLUSIVE (1ull << 56) /* page mapped by this process only */
#define PM_PFN_MASK ((1ull << 55) - 1)
#define SAME_MIN ((size_t)1 << 16) /* below this, reading the owner is as cheap */
#define PM_CHUNK 512u              /* pagemap entries read at once */

static _Atomic uint64_t local_bytes;
static _Atomic int pfns_shown = -1; /* -1: not known yet */

uint64_t ppc_vm_local_bytes(void)
{
    return atomic_load(&local_bytes);
}

static size_t page_size(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? (size_t)ps : 4096;
}

/* Whether /proc/<pid>/pagemap shows us page frame numbers (CAP_SYS_ADMIN):
 * judged once, by a page of our own that is surely present. */
static int pfns_visible(int self_fd)
{
    int v = atomic_load(&pfns_shown);
    if (v >= 0)
        return v;
    const char *off = getenv("PPC_VM_FRAMES"); /* 0: never (for comparisons) */
    if (off && !strcmp(off, "0")) {
        atomic_store(&pfns_shown, 0);
        return 0;
    }
    static volatile uint64_t word = 1;
    word++;
    uint64_t e = 0;
    off_t at = (off_t)((uintptr_t)&word / page_size()) * (off_t)sizeof e;
    v = pread(self_fd, &e, sizeof e, at) == (ssize_t)sizeof e && (e & PM_PRESENT) &&
        (e & PM_PFN_MASK) != 0;
    atomic_store(&pfns_shown, v);
    return v;
}

/* The whole pages [lo, hi) inside [addr, addr + len): 1 when each is
 * present in both pid and us as the same page frame, so its bytes here
 * are its bytes there. */
static int same_pages(int pid, uint64_t lo, uint64_t hi)
{
    int self = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (self < 0)
        return 0;
    int ok = 0;
    if (pfns_visible(self)) {
        char path[48];
        snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
        int peer = open(path, O_RDONLY | O_CLOEXEC);
        if (peer >= 0) {
            size_t ps = page_size();
            uint64_t a[PM_CHUNK], b[PM_CHUNK];
            ok = 1;
            for (uint64_t p = lo; ok && p < hi;) {
                size_t n = (size_t)((hi - p) / ps);
                if (n > PM_CHUNK)
                    n = PM_CHUNK;
                off_t at = (off_t)(p / ps) * (off_t)sizeof a[0];
                ssize_t want = (ssize_t)(n * sizeof a[0]);
                if (pread(peer, a, (size_t)want, at) != want || pread(self, b, (size_t)want, at) != want) {
                    ok = 0;
                    break;
                }
                for (size_t i = 0; i < n; i++) {
                    uint64_t pfn = a[i] & PM_PFN_MASK;
                    if (!(a[i] & PM_PRESENT) || (a[i] & PM_SWAPPED) || !pfn ||
                        !(b[i] & PM_PRESENT) || (b[i] & PM_SWAPPED) || (b[i] & PM_PFN_MASK) != pfn) {
                        ok = 0;
                        break;
                    }
                }
                p += n * ps;
            }
            close(peer);
        }
    }
    close(self);
    return ok;
}

int ppc_vm_read(int pid, void *dst, uint64_t addr, size_t len, int unpinned)
{
    if (pid <= 0 || addr > UINT64_MAX - len || addr + len > (uint64_t)INT64_MAX) {
        errno = EFAULT;
        return -1;
    }
    if (!unpinned)
        return read_pinned(pid, dst, addr, len);
    size_t ps = page_size();
    uint64_t lo = (addr + ps - 1) & ~(uint64_t)(ps - 1), hi = (addr + len) & ~(uint64_t)(ps - 1);
    if (len < SAME_MIN || hi <= lo || !same_pages(pid, lo, hi))
        return read_unpinned(pid, dst, addr, len);
    /* the same frames: the bytes are ours already (immutable while the
     * owner keeps the object alive); the partial pages at the ends may hold
     * other data and are read from the owner */
    uint8_t *d = dst;
    memcpy(d + (lo - addr), (const void *)(uintptr_t)lo, (size_t)(hi - lo));
    atomic_fetch_add(&local_bytes, hi - lo);
    if (lo > addr && read_unpinned(pid, d, addr, (size_t)(lo - addr)) < 0)
        return -1;
    if (addr + len > hi && read_unpinned(pid, d + (hi - addr), hi, (size_t)(addr + len - hi)) < 0)
        return -1;
    return 0;
}

int ppc_vm_maybe_shared(const void *p, size_t len)
{
    size_t ps = page_size();
    if (len == 0)
        return 1;
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 1;
    uintptr_t a = (uintptr_t)p;
    uintptr_t pages[3] = {a, a + len / 2, a + len - 1};
    int shared = 0;
    for (int i = 0; i < 3 && !shared; i++) {
        uint64_t e;
        off_t at = (off_t)(pages[i] / (uintptr_t)ps) * (off_t)sizeof e;
        if (pread(fd, &e, sizeof e, at) != (ssize_t)sizeof e) {
            shared = 1;
            break;
        }
        if (e & PM_PRESENT)
            shared = !(e & PM_EXCLUSIVE);
    }
    close(fd);
    return shared;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels answer EINVAL: a hint only */
#endif

int ppc_fill_fresh(void *dst, size_t len, const void *local, int pid, uint64_t addr, int unpinned)
{
    uintptr_t pg = page_size();
    uintptr_t lo = ((uintptr_t)dst + pg - 1) & ~(pg - 1), hi = ((uintptr_t)dst + len) & ~(pg - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
    if (local) {
        memcpy(dst, local, len);
        return 0;
    }
    return ppc_vm_read(pid, dst, addr, len, unpinned);
}

int ppc_vm_probe(int pid, uint64_t addr)
{
    uint64_t v = 0;
    return pid > 0 && addr && ppc_vm_read(pid, &v, addr, sizeof v, 0) == 0 && v == PPC_VM_PROBE;
}

int ppc_vm_copy_blob(uint8_t *dst, const uint8_t *map, size_t blob_len, const ppc_vm_src *src)
{
    size_t at = 0;
    for (uint32_t i = 0; i < src->ngaps; i++) {
        ppc_vm_gap g;
        ppc_vm_gap_get(src, i, &g);
        memcpy(dst + at, map + at, (size_t)g.off - at);
        if (ppc_vm_read(src->pid, dst + g.off, g.addr, (size_t)g.len, src->unpinned) < 0)
            return -1;
        at = (size_t)(g.off + g.len);
    }
    memcpy(dst + at, map + at, blob_len - at);
    return 0;
}

void ppc_vm_fill_own(ppc_shm_seg *s)
{
    if (!s || !s->ngaps)
        return;
    ppc_vm_src src;
    if (ppc_vm_table_parse(s->map, s->cap, s->used, &src) == 0) {
        for (uint32_t i = 0; i < src.ngaps; i++) {
            ppc_vm_gap g;
            ppc_vm_gap_get(&src, i, &g);
            memcpy(s->map + g.off, (const void *)(uintptr_t)g.addr, (size_t)g.len);
        }
    }
    s->ngaps = 0;
}

/* vm.c - gap tables and cross-process reads (see vm.h). A peer's table is
 * copied into private memory once and checked there; nothing is read from
 * the peer's memory twice. */
#define _GNU_SOURCE
#include "vm.h"

#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
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
    memset(src, 0, sizeof *src);
    if (!map || blob_len > map_len)
        return -1;
    size_t at = ppc_vm_table_at(blob_len);
    if (at < blob_len || at > map_len || map_len - at < 16)
        return -1;
    uint8_t h[16]; /* read once: the peer may be rewriting it */
    memcpy(h, map + at, sizeof h);
    uint32_t n = ppc_get_u32(h + 4), pid = ppc_get_u32(h + 8), flags = ppc_get_u32(h + 12);
    if (ppc_get_u32(h) != PPC_VM_MAGIC || n == 0 || n > PPC_VM_MAX_GAPS || pid == 0 ||
        pid > 0x7fffffffu || (flags & ~PPC_VM_F_SHARED) || (map_len - at - 16) / PPC_VM_ENTRY < n)
        return -1;
    ppc_vm_gap *gaps = malloc((size_t)n * sizeof *gaps);
    if (!gaps)
        return -1;
    uint64_t end = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t e[PPC_VM_ENTRY]; /* each entry read once */
        memcpy(e, map + at + 16 + (size_t)i * PPC_VM_ENTRY, sizeof e);
        ppc_vm_gap *g = &gaps[i];
        g->off = ppc_get_u64(e);
        g->len = ppc_get_u64(e + 8);
        g->addr = ppc_get_u64(e + 16);
        /* in the blob, in order, without overlap */
        if (g->len == 0 || g->off < end || g->off > blob_len || g->len > blob_len - g->off) {
            free(gaps);
            return -1;
        }
        end = g->off + g->len;
    }
    src->pid = (int)pid;
    src->ngaps = n;
    src->unpinned = (flags & PPC_VM_F_SHARED) != 0;
    src->gaps = gaps;
    return 0;
}

void ppc_vm_src_free(ppc_vm_src *src)
{
    free(src->gaps);
    memset(src, 0, sizeof *src);
}

void ppc_vm_gap_get(const ppc_vm_src *src, uint32_t i, ppc_vm_gap *g)
{
    *g = src->gaps[i];
}

int ppc_vm_seg_set_holes(ppc_shm_seg *s, int pid, uint32_t flags, const ppc_vm_gap *g,
                         uint32_t n)
{
    ppc_vm_gap *own = n ? malloc((size_t)n * sizeof *own) : NULL;
    if (n && !own)
        return -1;
    if (n)
        memcpy(own, g, (size_t)n * sizeof *own);
    free(s->gaps);
    s->gaps = own;
    s->ngaps = n;
    if (n)
        ppc_vm_table_put(s->map + ppc_vm_table_at(s->used), pid, flags, g, n);
    return 0;
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
#define PM_EXCLUSIVE (1ull << 56) /* page mapped by this process only */

static size_t page_size(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? (size_t)ps : 4096;
}

int ppc_vm_read(int pid, void *dst, uint64_t addr, size_t len, int unpinned)
{
    if (pid <= 0 || addr > UINT64_MAX - len || addr + len > (uint64_t)INT64_MAX) {
        errno = EFAULT;
        return -1;
    }
    return unpinned ? read_unpinned(pid, dst, addr, len) : read_pinned(pid, dst, addr, len);
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
    for (uint32_t i = 0; s->gaps && i < s->ngaps; i++)
        memcpy(s->map + s->gaps[i].off, (const void *)(uintptr_t)s->gaps[i].addr,
               (size_t)s->gaps[i].len);
    free(s->gaps);
    s->gaps = NULL;
    s->ngaps = 0;
}

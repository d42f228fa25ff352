/* shm.c - memfd segments, peer mappings, the segment pool and the OOB blob
 * layout (see shm.h). No Python; what a peer wrote is copied out once and
 * checked in the copy. */
#define _GNU_SOURCE
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "frame.h"

static size_t round_cap(size_t n)
{
    if (n > SIZE_MAX - PPC_SHM_ROUND)
        return 0;
    size_t r = (n + PPC_SHM_ROUND - 1) / PPC_SHM_ROUND * PPC_SHM_ROUND;
    return r ? r : PPC_SHM_ROUND;
}

ppc_shm_seg *ppc_shm_create(size_t min_cap, uint64_t id)
{
    size_t cap = round_cap(min_cap);
    if (!cap)
        return NULL;
    ppc_shm_seg *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    /* sealed against shrinking: a peer's mapping can never lose pages */
    s->fd = memfd_create("ppc", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (s->fd < 0 || ftruncate(s->fd, (off_t)cap) < 0 ||
        fcntl(s->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) < 0)
        goto fail;
    s->map = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        goto fail;
    }
    madvise(s->map, cap, MADV_HUGEPAGE); /* effective where shmem THP is allowed */
    s->cap = cap;
    s->id = id;
    return s;
fail:
    if (s->fd >= 0)
        close(s->fd);
    free(s);
    return NULL;
}

int ppc_shm_reserve(ppc_shm_seg *s, size_t need)
{
    if (need <= s->cap)
        return 0;
    size_t cap = round_cap(need + need / 4);
    if (!cap || ftruncate(s->fd, (off_t)cap) < 0)
        return -1;
    void *m = mremap(s->map, s->cap, cap, MREMAP_MAYMOVE);
    if (m == MAP_FAILED) {
        /* the file stays grown (sealed against shrinking); it is used at
         * the old size until a later reserve maps it whole */
        return -1;
    }
    madvise(m, cap, MADV_HUGEPAGE);
    s->map = m;
    s->cap = cap;
    return 0;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels answer EINVAL */
#endif

void ppc_shm_prefault(ppc_shm_seg *s, size_t off, size_t len)
{
    if (off > s->cap || len > s->cap - off)
        return;
    size_t end = off + len, from = off > s->backed ? off : s->backed;
    if (end <= from)
        return;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t lo = from / pg * pg, hi = (end + pg - 1) / pg * pg;
    if (hi > s->cap)
        hi = s->cap;
    /* fallocate gives the pages, POPULATE_WRITE maps them in one go */
    int ok = fallocate(s->fd, FALLOC_FL_KEEP_SIZE, (off_t)lo, (off_t)(hi - lo)) == 0;
    ok = madvise(s->map + lo, hi - lo, MADV_POPULATE_WRITE) == 0 || ok;
    if (ok && off <= s->backed)
        s->backed = end;
}

void ppc_shm_free(ppc_shm_seg *s)
{
    if (!s)
        return;
    if (s->map)
        munmap(s->map, s->cap);
    if (s->fd >= 0)
        close(s->fd);
    free(s->gaps);
    free(s);
}

void *ppc_shm_map_peer(int pid, int fd, size_t need, int flags, size_t *maplen)
{
    int writable = flags & PPC_MAP_WRITE;
    char path[64];
    if (pid <= 0 || fd < 0 || need == 0) {
        errno = EINVAL;
        return NULL;
    }
    snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
    int f = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (f < 0)
        return NULL;
    struct stat st;
    int seals = fcntl(f, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK) || fstat(f, &st) < 0 || !S_ISREG(st.st_mode) ||
        st.st_size < 0 || (uint64_t)st.st_size < need) {
        close(f);
        errno = EINVAL;
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    void *m = (flags & PPC_MAP_PRIVATE)
                  ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, f, 0)
                  : mmap(NULL, len, PROT_READ | (writable ? PROT_WRITE : 0),
                         MAP_SHARED | ((flags & PPC_MAP_LAZY) ? 0 : MAP_POPULATE), f, 0);
    int saved = errno;
    close(f);
    if (m == MAP_FAILED) {
        errno = saved;
        return NULL;
    }
    *maplen = len;
    return m;
}

void ppc_shm_unmap(void *p, size_t len)
{
    if (p && len)
        munmap(p, len);
}

void ppc_shm_ref_put(uint8_t *p, const ppc_shm_ref *r)
{
    ppc_put_u32(p, r->pid);
    ppc_put_u32(p + 4, r->fd);
    ppc_put_u64(p + 8, r->id);
    ppc_put_u64(p + 16, r->len);
}

void ppc_shm_ref_get(const uint8_t *p, ppc_shm_ref *r)
{
    r->pid = ppc_get_u32(p);
    r->fd = ppc_get_u32(p + 4);
    r->id = ppc_get_u64(p + 8);
    r->len = ppc_get_u64(p + 16);
}

int ppc_shm_pool_init(ppc_shm_pool *p, size_t max_free)
{
    memset(p, 0, sizeof *p);
    p->max_free = max_free;
    p->next_id = 1;
    return pthread_mutex_init(&p->mu, NULL) == 0 ? 0 : -1;
}

ppc_shm_seg *ppc_shm_pool_get(ppc_shm_pool *p, size_t need)
{
    pthread_mutex_lock(&p->mu);
    ppc_shm_seg **best = NULL, **largest = NULL;
    for (ppc_shm_seg **sp = &p->free; *sp; sp = &(*sp)->next) {
        ppc_shm_seg *s = *sp;
        if (s->cap >= need && (!best || s->cap < (*best)->cap))
            best = sp;
        if (!largest || s->cap > (*largest)->cap)
            largest = sp;
    }
    ppc_shm_seg **pick = best ? best : largest;
    ppc_shm_seg *s = NULL;
    if (pick) {
        s = *pick;
        *pick = s->next;
        p->free_bytes -= s->cap;
        s->next = NULL;
    }
    uint64_t id = p->next_id++;
    pthread_mutex_unlock(&p->mu);
    if (s && ppc_shm_reserve(s, need) < 0) {
        ppc_shm_free(s);
        s = NULL;
    }
    if (!s)
        s = ppc_shm_create(need, id);
    if (s) {
        s->used = 0;
        s->ngaps = 0;
        free(s->gaps);
        s->gaps = NULL;
    }
    return s;
}

size_t ppc_shm_pool_put(ppc_shm_pool *p, ppc_shm_seg *s, uint64_t *dropped, size_t maxdrop)
{
    size_t nd = 0;
    ppc_shm_seg *gone = NULL;
    s->ngaps = 0;
    free(s->gaps);
    s->gaps = NULL;
    pthread_mutex_lock(&p->mu);
    s->next = p->free;
    p->free = s;
    p->free_bytes += s->cap;
    /* over the cap: free the least recently returned (the list's tail) */
    while (p->free_bytes > p->max_free && p->free) {
        ppc_shm_seg **sp = &p->free;
        while ((*sp)->next)
            sp = &(*sp)->next;
        ppc_shm_seg *t = *sp;
        *sp = NULL;
        p->free_bytes -= t->cap;
        t->next = gone;
        gone = t;
    }
    pthread_mutex_unlock(&p->mu);
    while (gone) {
        ppc_shm_seg *nx = gone->next;
        if (nd < maxdrop)
            dropped[nd] = gone->id;
        nd++;
        ppc_shm_free(gone);
        gone = nx;
    }
    return nd;
}

void ppc_shm_pool_destroy(ppc_shm_pool *p)
{
    pthread_mutex_lock(&p->mu);
    ppc_shm_seg *s = p->free;
    p->free = NULL;
    p->free_bytes = 0;
    pthread_mutex_unlock(&p->mu);
    while (s) {
        ppc_shm_seg *nx = s->next;
        ppc_shm_free(s);
        s = nx;
    }
    pthread_mutex_destroy(&p->mu);
}

/* area: where the buffers must lie, as a length from offset 0 of the
 * blob, or of another area when the caller says so; NULL: in the blob,
 * before the table. */
static int oob_load(const uint8_t *data, size_t n, const size_t *area, ppc_oob *o)
{
    memset(o, 0, sizeof *o);
    if (!data || n < PPC_OOB_TRAILER)
        return -1;
    uint8_t t[PPC_OOB_TRAILER]; /* read once: the peer may be rewriting it */
    memcpy(t, data + n - PPC_OOB_TRAILER, sizeof t);
    if (ppc_get_u32(t + 12) != PPC_OOB_MAGIC)
        return -1;
    uint64_t sl = ppc_get_u64(t);
    uint32_t nb = ppc_get_u32(t + 8);
    size_t room = n - PPC_OOB_TRAILER;
    if (nb > PPC_OOB_MAX_BUFS || (uint64_t)nb > room / 16)
        return -1;
    size_t table = room - (size_t)nb * 16;
    if (sl > table)
        return -1;
    size_t lim = area ? *area : table;
    uint64_t *bufs = nb ? malloc((size_t)nb * 2 * sizeof *bufs) : NULL;
    if (nb && !bufs)
        return -1;
    for (uint32_t i = 0; i < nb; i++) {
        uint8_t e[16]; /* each entry read once */
        memcpy(e, data + table + (size_t)i * 16, sizeof e);
        uint64_t off = ppc_get_u64(e), len = ppc_get_u64(e + 8);
        if (off > lim || len > lim - off) {
            free(bufs);
            return -1;
        }
        bufs[2 * i] = off;
        bufs[2 * i + 1] = len;
    }
    o->stream_len = (size_t)sl;
    o->nbufs = nb;
    o->bufs = bufs;
    return 0;
}

int ppc_oob_load(const uint8_t *data, size_t n, ppc_oob *o)
{
    return oob_load(data, n, NULL, o);
}

int ppc_oob_load_in(const uint8_t *data, size_t n, size_t area_len, ppc_oob *o)
{
    return oob_load(data, n, &area_len, o);
}

void ppc_oob_release(ppc_oob *o)
{
    free(o->bufs);
    memset(o, 0, sizeof *o);
}

int ppc_oob_parse(const uint8_t *data, size_t n, size_t *stream_len, uint32_t *nbufs)
{
    ppc_oob o;
    if (ppc_oob_load(data, n, &o) < 0)
        return -1;
    *stream_len = o.stream_len;
    *nbufs = o.nbufs;
    ppc_oob_release(&o);
    return 0;
}

void ppc_oob_finish(uint8_t *data, size_t at, size_t stream_len, uint32_t nbufs,
                    const uint64_t *offs, const uint64_t *lens)
{
    for (uint32_t i = 0; i < nbufs; i++) {
        ppc_put_u64(data + at + (size_t)i * 16, offs[i]);
        ppc_put_u64(data + at + (size_t)i * 16 + 8, lens[i]);
    }
    uint8_t *t = data + at + (size_t)nbufs * 16;
    ppc_put_u64(t, stream_len);
    ppc_put_u32(t + 8, nbufs);
    ppc_put_u32(t + 12, PPC_OOB_MAGIC);
}

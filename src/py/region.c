/* region.c - big objects in shared-memory regions: the allocator wrappers of
 * workers and clients, lending, adoption and fork handling (see region.h). */
#define _GNU_SOURCE 1 /* as pyconfig.h of CPython 3.9/3.10 defines it */
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* The bytes object layout this relies on: header, hash, then the data. */
#define BYTES_HDR offsetof(PyBytesObject, ob_sval)
_Static_assert(offsetof(PyBytesObject, ob_sval) == sizeof(PyVarObject) + sizeof(Py_hash_t),
               "ob_shash is expected right before ob_sval");

typedef struct region {
    struct region *next;  /* hash chain (by base address) */
    struct region *fnext; /* free pool, most recently freed first */
    uint8_t *base;
    size_t cap;           /* mapping length */
    int fd;               /* ours: the memfd (-1 once not needed); adopted: -1 */
    uint64_t rid;
    uint8_t adopted;      /* mapped from a worker (client side) */
    uint8_t anon;         /* ours, turned into private memory at a fork */
    uint8_t in_use;       /* ours: an object lives here */
    uint8_t forked;       /* a fork happened while mapped: never reuse */
    uint32_t holds;       /* ours: client mappings (RGNKEEP minus RGNRET) */
    int wpid;             /* adopted: the worker */
    pid_t owner;          /* adopted: the process that adopted it */
    ppc_region_chan *chan;
} region;

#define NBUCKETS 1024u

static struct {
    int installed;         /* our wrapper is in the allocator chain */
    size_t nlive;          /* objects living in regions (ours and adopted) */
    int lend;              /* we make regions for objects (worker) */
    size_t page;
    PyMemAllocatorEx prev; /* what we wrapped */
    region *tab[NBUCKETS];
    region *pool;          /* free regions of ours */
    size_t pool_bytes, npool;
    int nown;              /* regions of ours, in use or pooled */
    uint64_t next_rid;
    struct {
        uint64_t made, reused, adopted, lent, adopted_live;
    } st;
} g;

static size_t bucket(const void *p)
{
    uintptr_t a = (uintptr_t)p >> 12;
    return (size_t)((a ^ (a >> 10) ^ (a >> 20)) & (NBUCKETS - 1));
}

static region *find(const void *p)
{
    if (!p || ((uintptr_t)p & (g.page - 1)))
        return NULL;
    for (region *r = g.tab[bucket(p)]; r; r = r->next)
        if (r->base == p)
            return r;
    return NULL;
}

static void tab_add(region *r)
{
    size_t b = bucket(r->base);
    r->next = g.tab[b];
    g.tab[b] = r;
}

static void tab_del(region *r)
{
    for (region **rp = &g.tab[bucket(r->base)]; *rp; rp = &(*rp)->next) {
        if (*rp == r) {
            *rp = r->next;
            return;
        }
    }
}

static region *by_rid(uint64_t rid)
{
    for (size_t b = 0; b < NBUCKETS; b++)
        for (region *r = g.tab[b]; r; r = r->next)
            if (r->rid == rid && !r->adopted)
                return r;
    return NULL;
}

static size_t round_page(size_t n)
{
    return (n + g.page - 1) & ~(g.page - 1);
}

/* ------------------------------------------------------------ ours */

static void destroy(region *r)
{
    tab_del(r);
    munmap(r->base, r->cap);
    if (r->fd >= 0)
        close(r->fd);
    g.nown--;
    free(r);
}

static void pool_unlink(region *r)
{
    for (region **rp = &g.pool; *rp; rp = &(*rp)->fnext) {
        if (*rp == r) {
            *rp = r->fnext;
            g.pool_bytes -= r->cap;
            g.npool--;
            return;
        }
    }
}

/* Neither our object nor a client uses it any more. */
static void recycle(region *r)
{
    if (r->forked || r->anon || r->fd < 0) {
        destroy(r);
        return;
    }
    r->fnext = g.pool;
    g.pool = r;
    g.pool_bytes += r->cap;
    g.npool++;
    while (g.pool_bytes > PPC_REGION_POOL && g.pool) {
        region *last = g.pool;
        while (last->fnext)
            last = last->fnext;
        pool_unlink(last);
        destroy(last);
    }
}

/* Shrink a free region to cap bytes (its tail pages are freed). */
static void shrink(region *r, size_t cap)
{
    if (cap >= r->cap || ftruncate(r->fd, (off_t)cap) < 0)
        return;
    munmap(r->base + cap, r->cap - cap);
    r->cap = cap;
}

static void *region_alloc(size_t n)
{
    size_t cap = round_page(n);
    region *best = NULL;
    for (region *r = g.pool; r; r = r->fnext)
        if (r->cap >= cap && (!best || r->cap < best->cap))
            best = r;
    if (best) {
        pool_unlink(best);
        if (best->cap - cap > (2u << 20) && best->cap / 2 > cap)
            shrink(best, cap);
        best->in_use = 1;
        g.st.reused++;
        return best->base;
    }
    if (g.nown >= PPC_REGION_MAX)
        return NULL;
    region *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    int fd = memfd_create("ppc-region", MFD_CLOEXEC);
    if (fd < 0) {
        free(r);
        return NULL;
    }
    /* all pages at once: cheaper than faulting them in one by one */
    if (fallocate(fd, 0, 0, (off_t)cap) < 0 && (errno == ENOSPC || ftruncate(fd, (off_t)cap) < 0)) {
        close(fd);
        free(r);
        return NULL;
    }
    void *m = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        close(fd);
        free(r);
        return NULL;
    }
    r->base = m;
    r->cap = cap;
    r->fd = fd;
    r->rid = ++g.next_rid;
    r->in_use = 1;
    tab_add(r);
    g.nown++;
    g.st.made++;
    return m;
}

/* Our object in r is freed. */
static void release_own(region *r)
{
    r->in_use = 0;
    if (r->holds == 0)
        recycle(r);
}

/* ------------------------------------------------------------ adopted */

static void release_adopted(region *r)
{
    tab_del(r);
    munmap(r->base, r->cap);
    ppc_region_chan *c = r->chan;
    if (c) {
        if (c->note && r->owner == getpid())
            c->note(c->ctx, r->wpid, r->rid, 0, r->forked);
        if (--c->refs == 0)
            free(c);
    }
    g.st.adopted_live--;
    free(r);
}

static void maybe_uninstall(void);

/* The object living in r has been freed. */
static void release(region *r)
{
    if (r->adopted)
        release_adopted(r);
    else
        release_own(r);
    g.nlive--;
    maybe_uninstall();
}

/* ------------------------------------------------------------ wrappers */

/* realloc of a region: only a bytes object still being built is resized,
 * never one of ours; should it happen, the object moves out. */
static void *h_realloc(void *ctx, void *p, size_t n)
{
    region *r = find(p);
    if (!r)
        return g.prev.realloc(ctx, p, n);
    void *q = g.prev.malloc(g.prev.ctx, n ? n : 1);
    if (!q)
        return NULL;
    memcpy(q, r->base, n < r->cap ? n : r->cap);
    release(r);
    return q;
}

static void h_free(void *ctx, void *p)
{
    region *r = find(p);
    if (r)
        release(r);
    else
        g.prev.free(ctx, p);
}

/* ------------------------------------------------------------ fork */

/* Before a fork (GIL held by the forking thread): live objects of ours move
 * to private memory at the same address, so parent and child each have
 * their own from here; regions a client maps stay open until it gives them
 * back, then go. */
static void at_prepare(void)
{
    if (!PyGILState_Check())
        return;
    for (size_t b = 0; b < NBUCKETS; b++) {
        for (region *r = g.tab[b]; r; r = r->next) {
            if (r->adopted) {
                r->forked = 1;
                continue;
            }
            if (!r->in_use || r->anon)
                continue;
            void *tmp = mmap(NULL, r->cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                             -1, 0);
            if (tmp == MAP_FAILED)
                continue; /* left shared: the child and we see each other's writes */
            memcpy(tmp, r->base, r->cap);
            if (mremap(tmp, r->cap, r->cap, MREMAP_MAYMOVE | MREMAP_FIXED, r->base) ==
                MAP_FAILED) {
                munmap(tmp, r->cap);
                continue;
            }
            r->anon = 1;
            r->forked = 1;
            if (r->holds == 0 && r->fd >= 0) {
                close(r->fd);
                r->fd = -1;
            }
        }
    }
}

/* In the child: no regions of our own (the pool and the descriptors are the
 * parent's), nothing lent, nobody to tell about adopted ones. */
static void at_child(void)
{
    g.lend = 0;
    while (g.pool) {
        region *r = g.pool;
        pool_unlink(r);
        destroy(r);
    }
    for (size_t b = 0; b < NBUCKETS; b++) {
        region *r = g.tab[b];
        while (r) {
            region *nx = r->next;
            if (!r->adopted) {
                r->holds = 0;
                if (!r->in_use) {
                    destroy(r); /* lent by the parent, its object gone: not ours */
                } else if (r->fd >= 0) {
                    close(r->fd);
                    r->fd = -1;
                }
            }
            r = nx;
        }
    }
}

static void setup(void)
{
    if (g.page)
        return;
    long pg = sysconf(_SC_PAGESIZE);
    g.page = pg > 0 ? (size_t)pg : 4096;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
        seed = (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)&seed;
    /* ids unlikely to match a dead worker's whose pid came back */
    g.next_rid = seed & ~(uint64_t)0xffffffffu;
    pthread_atfork(at_prepare, NULL, at_child);
}

static int tracing(void);

/* The wrapper is in place only while objects live in regions: every free
 * in the process passes through it meanwhile (one call and one test more,
 * measured at ~5% of allocation-heavy Python code under callgrind). -1:
 * not now (tracemalloc traces). */
static int ensure_installed(void)
{
    setup();
    if (g.installed)
        return 0;
    if (tracing())
        return -1;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &g.prev);
    /* allocations go straight to what we wrap (its own context): only
     * realloc and free need to tell regions apart */
    PyMemAllocatorEx h = {g.prev.ctx, g.prev.malloc, g.prev.calloc, h_realloc, h_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &h);
    g.installed = 1;
    return 0;
}

/* The last object in a region is gone: step out, unless something wrapped
 * us meanwhile (then we stay, passing everything on). */
static void maybe_uninstall(void)
{
    if (g.nlive || !g.installed)
        return;
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &cur);
    if (cur.free == h_free && cur.realloc == h_realloc && cur.ctx == g.prev.ctx) {
        PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &g.prev);
        g.installed = 0;
    }
}

/* tracemalloc restores the allocator it saved when it stops: if it traces
 * now, a wrapper installed on top of it would be dropped then. */
static int tracing(void)
{
    PyObject *name = PyUnicode_FromString("tracemalloc");
    if (!name) {
        PyErr_Clear();
        return 1;
    }
    PyObject *mod = PyImport_GetModule(name);
    Py_DECREF(name);
    if (!mod) {
        PyErr_Clear();
        return 0;
    }
    PyObject *r = PyObject_CallMethod(mod, "is_tracing", NULL);
    Py_DECREF(mod);
    int t = r ? PyObject_IsTrue(r) != 0 : 1;
    Py_XDECREF(r);
    PyErr_Clear();
    return t;
}

/* ------------------------------------------------------------ API */

void ppc_region_worker_start(void)
{
    setup();
    g.lend = 1;
}

PyObject *ppc_region_bytes(size_t len)
{
    if (!g.lend || len > PY_SSIZE_T_MAX - BYTES_HDR - 1 || ensure_installed() < 0)
        return NULL;
    uint8_t *m = region_alloc(BYTES_HDR + len + 1);
    if (!m) {
        maybe_uninstall();
        return NULL;
    }
    g.nlive++;
    Py_hash_t h = -1;
    memcpy(m + BYTES_HDR - sizeof h, &h, sizeof h);
    m[BYTES_HDR + len] = 0;
    PyObject_InitVar((PyVarObject *)m, &PyBytes_Type, (Py_ssize_t)len);
    return (PyObject *)m;
}

int ppc_region_lendable(PyObject *o, uint64_t *rid, uint32_t *fd)
{
    if (!g.nlive || !PyBytes_CheckExact(o))
        return 0;
    region *r = find(o);
    if (!r || r->adopted || r->anon || r->forked || !r->in_use || r->fd < 0 ||
        BYTES_HDR + (size_t)PyBytes_GET_SIZE(o) + 1 > r->cap)
        return 0;
    *rid = r->rid;
    *fd = (uint32_t)r->fd;
    return 1;
}

void ppc_region_keep(uint64_t rid)
{
    region *r = by_rid(rid);
    if (r && r->fd >= 0) {
        r->holds++;
        g.st.lent++;
    }
}

void ppc_region_give_back(uint64_t rid, int drop)
{
    region *r = by_rid(rid);
    if (!r || r->holds == 0)
        return;
    r->holds--;
    if (drop)
        r->forked = 1;
    if (r->holds == 0 && !r->in_use)
        recycle(r);
    else if (r->holds == 0 && r->anon && r->fd >= 0) {
        close(r->fd); /* moved to private memory at a fork: nobody maps the memfd now */
        r->fd = -1;
    }
}

ppc_region_chan *ppc_region_chan_new(void (*note)(void *, int, uint64_t, int, int), void *ctx)
{
    ppc_region_chan *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    c->refs = 1;
    c->note = note;
    c->ctx = ctx;
    return c;
}

void ppc_region_chan_close(ppc_region_chan *c)
{
    if (!c)
        return;
    c->note = NULL;
    c->ctx = NULL;
    if (--c->refs == 0)
        free(c);
}

static PyObject *adopt(ppc_region_chan *c, int pid, uint32_t fd, uint64_t rid, size_t len)
{
    size_t maplen = round_page(BYTES_HDR + len + 1);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%u", pid, fd);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return NULL;
    struct stat st;
    void *m = MAP_FAILED;
    if (fstat(f, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 0 &&
        (uint64_t)st.st_size >= maplen)
        m = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE, f, 0);
    close(f);
    if (m == MAP_FAILED)
        return NULL;
    /* the worker's object: len bytes and the terminating zero */
    uint8_t *b = m;
    if (Py_SIZE((PyVarObject *)m) != (Py_ssize_t)len || b[BYTES_HDR + len] != 0) {
        munmap(m, maplen);
        return NULL;
    }
    region *r = calloc(1, sizeof *r);
    if (!r) {
        munmap(m, maplen);
        return NULL;
    }
    r->base = m;
    r->cap = maplen;
    r->fd = -1;
    r->rid = rid;
    r->adopted = 1;
    r->wpid = pid;
    r->owner = getpid();
    r->chan = c;
    c->refs++;
    tab_add(r);
    /* ours now: a fresh header (this page becomes a private copy) */
    Py_hash_t h = -1;
    memcpy(b + BYTES_HDR - sizeof h, &h, sizeof h);
    PyObject_InitVar((PyVarObject *)m, &PyBytes_Type, (Py_ssize_t)len);
    c->note(c->ctx, pid, rid, 1, 0);
    g.st.adopted++;
    g.st.adopted_live++;
    g.nlive++;
    return (PyObject *)m;
}

PyObject *ppc_region_adopt(ppc_region_chan *c, int pid, uint32_t fd, uint64_t rid, size_t len)
{
    if (!c || !c->note || pid <= 0 || fd > 0x7fffffffu || len > PY_SSIZE_T_MAX - BYTES_HDR - 1)
        return NULL;
    if (ensure_installed() < 0)
        return NULL;
    PyObject *o = adopt(c, pid, fd, rid, len);
    if (!o)
        maybe_uninstall();
    return o;
}

PyObject *ppc_region_stats_dict(void)
{
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsK}", "wrapped", (unsigned long long)g.installed,
                         "made", (unsigned long long)g.st.made, "reused",
                         (unsigned long long)g.st.reused, "adopted",
                         (unsigned long long)g.st.adopted, "lent", (unsigned long long)g.st.lent,
                         "live", (unsigned long long)(g.nown - (int)g.npool), "pooled",
                         (unsigned long long)g.npool, "pool_bytes",
                         (unsigned long long)g.pool_bytes, "adopted_live",
                         (unsigned long long)g.st.adopted_live);
}

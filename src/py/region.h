/* region.h - big bytes objects in shared-memory regions, handed to another
 * process by mapping instead of copying.
 *
 * A worker makes the big bytes objects it builds itself (a job's big bytes
 * argument, a big bytes result copied) in regions: one object alone in a
 * memfd whose pages are allocated at once, mapped shared. Such a result is
 * "lent": its hole in the result (vm.h) names the region, and the client
 * maps the region copy-on-write and makes the object its own by writing a
 * fresh header (one page copied). The data is never copied into the
 * client, which on a virtual machine, where first touch of fresh memory
 * costs more than the copy, is most of the cost of a big result.
 *
 * Freeing such an object must not reach the allocator, so both sides wrap
 * the object allocator's realloc and free (as tracemalloc wraps all four;
 * malloc and calloc stay the wrapped allocator's own): a region is told
 * apart by its page-aligned address, which pymalloc blocks and glibc chunks
 * practically never have, then a hash lookup. The client unmaps an adopted
 * object and tells the worker (RGNRET, via the engine); the worker reuses a
 * region when its own object is gone and no client maps it; free regions
 * stay in a pool, warm, up to a cap. Objects the user's code makes are
 * never put in regions.
 *
 * Fork: a child must see the objects as they were at the fork, which shared
 * pages would break. Before a fork, every live region of ours is turned into
 * private anonymous memory at the same address (one copy); regions the
 * client maps are marked so the worker never reuses them; the child drops
 * its view of the pool and makes no regions.
 *
 * The client does not wrap while tracemalloc traces (stopping it would
 * reinstall the allocator it saved and orphan adopted objects): it copies
 * then. Every function here needs the GIL. */
#ifndef PPC_REGION_H
#define PPC_REGION_H
#include <Python.h>
#include <stdint.h>

#define PPC_REGION_MIN ((size_t)1 << 20)        /* bytes objects from this size get regions */
#define PPC_REGION_POOL ((size_t)256 << 20)     /* free regions kept per process, bytes */
#define PPC_REGION_MAX 512                      /* regions of ours (descriptors) at once */

/* Worker: from now on, big bytes objects we make get regions. */
void ppc_region_worker_start(void);
/* Worker: a new bytes object of len bytes (contents unset) alone in a
 * region, or NULL without an exception when regions are off or none can be
 * made (the caller makes an ordinary one). */
PyObject *ppc_region_bytes(size_t len);
/* Worker: 1 when o is a bytes object alone at the start of a live region of
 * ours that may be lent (*rid, *fd set), else 0. */
int ppc_region_lendable(PyObject *o, uint64_t *rid, uint32_t *fd);
/* Worker: the client maps region rid (RGNKEEP), or no longer (RGNRET; drop:
 * never reuse it). Unknown ids are ignored. */
void ppc_region_keep(uint64_t rid);
void ppc_region_give_back(uint64_t rid, int drop);

/* Client: where the worker hears of adopted regions (keep = 1 on adoption,
 * 0 when freed; drop: a fork may still map it). One per Server; note is
 * cleared when the Server's engine goes, after which frees only unmap. */
typedef struct ppc_region_chan {
    Py_ssize_t refs;
    void (*note)(void *ctx, int pid, uint64_t rid, int keep, int drop);
    void *ctx;
} ppc_region_chan;
ppc_region_chan *ppc_region_chan_new(void (*note)(void *, int, uint64_t, int, int), void *ctx);
/* The Server is done with it: no more notes; freed with its last region. */
void ppc_region_chan_close(ppc_region_chan *c);

/* Client: the bytes object of len bytes that worker pid lent in region rid
 * (descriptor fd there), mapped and made ours. NULL without an exception
 * when that cannot be done (the caller copies instead). */
PyObject *ppc_region_adopt(ppc_region_chan *c, int pid, uint32_t fd, uint64_t rid, size_t len);

/* This process's region counters as a dict (a new reference), for tests and
 * _data_stats: totals made, reused, adopted, lent; now live, pooled,
 * pool_bytes, adopted_live, and wrapped (1 while our realloc/free wrapper
 * is installed). */
PyObject *ppc_region_stats_dict(void);

#endif

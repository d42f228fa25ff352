/* shm.h - shared-memory segments for large arguments and results.
 *
 * A segment is an anonymous memfd mapped MAP_SHARED in its owner. A peer
 * process of the same user maps it by opening /proc/<pid>/fd/<fd>: no name
 * is ever created in /dev/shm, and a segment dies with the last process
 * that maps it. Owners keep segments in a pool and reuse them, so their
 * pages are faulted in once, not per job.
 *
 * A segment (or any byte area) holds one "OOB blob": a pickle stream
 * followed by its out-of-band buffers, described by a trailer at the end:
 *
 *   stream[stream_len] pad buf0 pad buf1 ... table[nbufs](u64 off, u64 len)
 *   u64 stream_len, u32 nbufs, u32 magic
 *
 * The trailer is at the end because the stream is written before the
 * number of buffers is known.
 *
 * A peer can write a segment at any time (a worker maps its client's
 * argument segments read-write; any process of the user can open a
 * segment through /proc). So nothing is read from a segment twice:
 * ppc_oob_load copies the trailer and buffer table into private memory
 * once and checks the copy; every later use reads the copy. Segments are
 * sealed against shrinking (F_SEAL_SHRINK) when made, and a peer's
 * segment is mapped only when it carries that seal: a mapping of a file
 * its owner could truncate would fault (SIGBUS) on the pages cut off.
 * Nothing here knows Python; the pool is thread-safe. */
#ifndef PPC_SHM_H
#define PPC_SHM_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define PPC_SHM_MIN_BYTES (1u << 20)  /* payloads from this size use segments */
#define PPC_SHM_ROUND (2u << 20)      /* capacity granularity */
#define PPC_OOB_MAGIC 0x42435050u     /* "PPCB" */
#define PPC_OOB_TRAILER 16u
#define PPC_OOB_ALIGN 64u
#define PPC_SHM_REF_LEN 24u           /* u32 pid, u32 fd, u64 id, u64 blob length */
#define PPC_OOB_MAX_BUFS (1u << 24)   /* out-of-band buffers in one blob, at most */

struct ppc_vm_gap;
typedef struct ppc_shm_seg {
    struct ppc_shm_seg *next;
    uint64_t id;
    int fd;
    uint8_t *map;
    size_t cap;  /* file size and mapping length */
    size_t used; /* bytes of the blob it holds */
    uint32_t ngaps; /* holes in the blob, filled from their owner's memory (vm.h) */
    size_t backed;  /* bytes from 0 known to have pages (ppc_shm_prefault) */
    struct ppc_vm_gap *gaps; /* our own copy of those holes (malloc'd, ngaps entries) */
} ppc_shm_seg;

/* A new segment of at least min_cap bytes (rounded up), or NULL. */
ppc_shm_seg *ppc_shm_create(size_t min_cap, uint64_t id);
/* Grow to at least need bytes, keeping the contents. 0 or -1. */
int ppc_shm_reserve(ppc_shm_seg *s, size_t need);
void ppc_shm_free(ppc_shm_seg *s);
/* Give [off, off+len) its pages before a big copy into it: on a virtual
 * machine faulting fresh shared pages in one by one costs more than the
 * copy; fallocate and one madvise(MADV_POPULATE_WRITE) are cheaper. Ranges
 * below s->backed (a reused segment) are skipped. A hint only: where the
 * kernel refuses, the copy faults the pages in. */
void ppc_shm_prefault(ppc_shm_seg *s, size_t off, size_t len);

/* Map a peer's segment: /proc/<pid>/fd/<fd>, a file sealed against
 * shrinking that holds at least need bytes (a file without the seal is
 * refused with EINVAL: its owner could cut it under our views). Returns the
 * mapping (length in *maplen) or NULL with errno set. flags: PPC_MAP_WRITE: PROT_WRITE too (the worker's view of argument
 * segments); PPC_MAP_LAZY: no MAP_POPULATE (a segment with holes: faulting
 * them in would allocate pages nobody writes); PPC_MAP_PRIVATE: mapped
 * copy-on-write, readable and writable, never populated (a populated
 * writable private mapping would copy every page): the client's view of a
 * result segment whose buffers it hands out as arrays. */
#define PPC_MAP_WRITE 1
#define PPC_MAP_LAZY 2
#define PPC_MAP_PRIVATE 4
void *ppc_shm_map_peer(int pid, int fd, size_t need, int flags, size_t *maplen);
void ppc_shm_unmap(void *p, size_t len);

/* Reference to a segment's blob: what travels in a frame. */
typedef struct ppc_shm_ref {
    uint32_t pid, fd;
    uint64_t id, len;
} ppc_shm_ref;
void ppc_shm_ref_put(uint8_t *p, const ppc_shm_ref *r);
void ppc_shm_ref_get(const uint8_t *p, ppc_shm_ref *r);

/* A pool of free segments, capped in bytes; least recently used go first. */
typedef struct ppc_shm_pool {
    pthread_mutex_t mu;
    ppc_shm_seg *free; /* most recently returned first */
    size_t free_bytes, max_free;
    uint64_t next_id;
} ppc_shm_pool;

int ppc_shm_pool_init(ppc_shm_pool *p, size_t max_free);
/* A segment of at least need bytes: a free one (the smallest that fits, or
 * the largest, grown) or a new one. NULL when none can be made. */
ppc_shm_seg *ppc_shm_pool_get(ppc_shm_pool *p, size_t need);
/* Give a segment back. Segments beyond the cap are freed; their ids are
 * written to dropped (at most maxdrop) and counted in the return value. */
size_t ppc_shm_pool_put(ppc_shm_pool *p, ppc_shm_seg *s, uint64_t *dropped, size_t maxdrop);
void ppc_shm_pool_destroy(ppc_shm_pool *p);

/* A blob's trailer and buffer table, copied out of the blob and checked:
 * stream_len <= the start of the table; each buffer inside [0, table). */
typedef struct ppc_oob {
    size_t stream_len;
    uint32_t nbufs;
    uint64_t *bufs; /* nbufs x (off, len), malloc'd (NULL when nbufs is 0) */
} ppc_oob;
/* Copy and check the layout of the blob data[0..n): 0, or -1 when it is
 * malformed or memory runs out (o zeroed). The buffer count is checked
 * against PPC_OOB_MAX_BUFS and n before anything is allocated. */
int ppc_oob_load(const uint8_t *data, size_t n, ppc_oob *o);
/* The same for a blob whose buffers lie in another area of area_len bytes
 * (a result naming ranges of its job's argument segment): each buffer
 * inside [0, area_len) instead. */
int ppc_oob_load_in(const uint8_t *data, size_t n, size_t area_len, ppc_oob *o);
void ppc_oob_release(ppc_oob *o);
/* Only the sizes: 0 when data[0..n) is a valid blob (stream_len and nbufs
 * set), -1 otherwise. */
int ppc_oob_parse(const uint8_t *data, size_t n, size_t *stream_len, uint32_t *nbufs);
/* Writing: the table and trailer for nbufs buffers take this many bytes. */
static inline size_t ppc_oob_tail_len(uint32_t nbufs)
{
    return (size_t)nbufs * 16u + PPC_OOB_TRAILER;
}
static inline size_t ppc_oob_align(size_t x)
{
    return (x + PPC_OOB_ALIGN - 1) & ~(size_t)(PPC_OOB_ALIGN - 1);
}
/* Write table and trailer at data + at (offs/lens of nbufs buffers). */
void ppc_oob_finish(uint8_t *data, size_t at, size_t stream_len, uint32_t nbufs,
                    const uint64_t *offs, const uint64_t *lens);

#endif

/* vm.h - large immutable buffers read straight from a peer's memory.
 *
 * A big bytes object (an argument, a result) need not be copied into a
 * shared-memory segment by its owner: the pickle stream is written into the
 * segment with a hole where the object's bytes belong, and a "gap table"
 * after the blob names the owner's process and, per hole, the address the
 * bytes are at. The reader fills a hole with a read of the owner's memory,
 * straight into the object it is building, so the owner spends no time on
 * the data and the bytes are copied once, by the side that needs them. The
 * owner keeps the objects alive until the reader is done (a job's result
 * came back; a result segment was given back).
 *
 * Reading another process's memory needs ptrace access to it (same user;
 * Yama may restrict it to ancestors, or forbid it): both directions are
 * probed, and a side that cannot read falls back to segments with the
 * holes filled by their owner (ppc_vm_fill_own).
 *
 * Table, at ppc_vm_table_at(blob length) in the segment:
 *   u32 magic, u32 ngaps, u32 pid, u32 flags,
 *   ngaps x (u64 off, u64 len, u64 addr)
 * flags: PPC_VM_F_SHARED when some of the bytes sit on pages the owner
 * shares copy-on-write (data older than a fork): the reader then reads
 * without pinning (see ppc_vm_read).
 * Holes lie inside the blob, in increasing order, without overlap. The
 * table sits in memory its peer can still write, so ppc_vm_table_parse
 * copies it into private memory once and checks the copy; everything after
 * reads only the copy. The owner of a segment never reads its own table
 * back: it keeps its holes privately (ppc_vm_seg_set_holes). Nothing here
 * knows Python. */
#ifndef PPC_VM_H
#define PPC_VM_H
#include <stddef.h>
#include <stdint.h>

#include "shm.h"

#define PPC_VM_MIN_BYTES (1u << 20) /* bytes objects from this size are left as holes */
#define PPC_VM_MAGIC 0x56435050u    /* "PPCV" */
#define PPC_VM_MAX_GAPS 4096u
#define PPC_VM_PROBE 0x45424f5250435050ull /* "PPCPROBE": read by the peer to test access */
#define PPC_VM_F_SHARED 1u

typedef struct ppc_vm_gap {
    uint64_t off, len, addr;
} ppc_vm_gap;
#define PPC_VM_ENTRY 24u

/* A parsed table: where the holes of a blob are and whose memory fills
 * them, in private memory (ppc_vm_src_free releases it). */
typedef struct ppc_vm_src {
    int pid;
    uint32_t ngaps;
    int unpinned;     /* how to read (ppc_vm_read): the table's PPC_VM_F_SHARED */
    ppc_vm_gap *gaps; /* ngaps entries, malloc'd, checked by ppc_vm_table_parse */
} ppc_vm_src;

static inline size_t ppc_vm_table_at(size_t blob_len)
{
    return (blob_len + 7) & ~(size_t)7;
}
static inline size_t ppc_vm_table_len(uint32_t ngaps)
{
    return 16u + (size_t)ngaps * PPC_VM_ENTRY;
}

/* Write a table of n gaps for process pid at p. */
void ppc_vm_table_put(uint8_t *p, int pid, uint32_t flags, const ppc_vm_gap *g, uint32_t n);
/* The table after a blob of blob_len bytes in a mapping of map_len bytes,
 * copied out and checked: 0 with *src filled (free it with
 * ppc_vm_src_free), or -1 (*src zeroed) when it is missing, truncated,
 * has more than PPC_VM_MAX_GAPS holes, names holes outside the blob, out
 * of order or overlapping, or memory runs out. */
int ppc_vm_table_parse(const uint8_t *map, size_t map_len, size_t blob_len, ppc_vm_src *src);
void ppc_vm_src_free(ppc_vm_src *src);
void ppc_vm_gap_get(const ppc_vm_src *src, uint32_t i, ppc_vm_gap *g);
/* The owner's side: write the table of n holes (for process pid) after the
 * blob of s (s->used bytes, room reserved by the caller) and keep a private
 * copy of the holes in s (ppc_vm_fill_own reads that, never the table a
 * peer can write). 0, or -1 when memory runs out (nothing written). */
int ppc_vm_seg_set_holes(ppc_shm_seg *s, int pid, uint32_t flags, const ppc_vm_gap *g,
                         uint32_t n);

/* Copy len bytes at addr in process pid to dst. 0, or -1 with errno set
 * (EPERM/EACCES/ENOSYS: no access at all; EFAULT: a bad address; ESRCH or
 * ENOENT: the process is gone). Two ways, both unprivileged:
 * - pinned (process_vm_readv): one copy, the fastest, but pinning a page the
 *   owner shares copy-on-write with another process breaks the sharing:
 *   the kernel copies the page in the owner first, and flushes TLBs on
 *   every CPU the owner runs on, for each page;
 * - unpinned (/proc/<pid>/mem): page references without pins, the data
 *   copied through a kernel page. A forked worker reads its client this
 *   way when the table says the owner's pages are shared. */
int ppc_vm_read(int pid, void *dst, uint64_t addr, size_t len, int unpinned);
/* 1 when a page of ours in [p, p + len) is also mapped by another process
 * (copy-on-write after a fork), judged by its first, middle and last pages
 * in /proc/self/pagemap ("exclusively mapped" bit); 1 too when that cannot
 * be read, since an unpinned read is only slower, a pinned one of shared
 * pages much slower. */
int ppc_vm_maybe_shared(const void *p, size_t len);
/* Fill dst[0..len), fresh memory, from local (our own memory) or, local
 * being NULL, from pid's memory at addr, after faulting its pages in with
 * one madvise(MADV_POPULATE_WRITE) rather than one fault each: on a virtual
 * machine, first touch of fresh memory costs more than the copy. (Filling
 * the two halves from two threads was measured too: no gain on 2 CPUs, the
 * other processes of a transfer keep both busy.) 0 or -1 (errno). */
int ppc_fill_fresh(void *dst, size_t len, const void *local, int pid, uint64_t addr,
                   int unpinned);
/* 1 when this process may read pid's memory (8 bytes at addr must hold
 * PPC_VM_PROBE), else 0. */
int ppc_vm_probe(int pid, uint64_t addr);

/* Copy a blob of blob_len bytes whose holes src describes into dst: the
 * parts between holes from the mapping, the holes from the peer. 0 or -1
 * (errno set). */
int ppc_vm_copy_blob(uint8_t *dst, const uint8_t *map, size_t blob_len, const ppc_vm_src *src);

/* Fill the holes of a segment of our own from our own memory (the objects
 * must still be alive), as the private copy in s names them: afterwards it
 * is an ordinary segment. */
void ppc_vm_fill_own(ppc_shm_seg *s);

#endif

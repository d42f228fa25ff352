/* u64set.h - a small open-addressing set of non-zero 64-bit ids.
 *
 * Used to remember which function blobs a worker (or a connection) already
 * has, so each blob crosses a pipe once. Insert-only; 0 is not a valid key. */
#ifndef PPC_U64SET_H
#define PPC_U64SET_H
#include <stddef.h>
#include <stdint.h>

typedef struct ppc_u64set {
    uint64_t *keys;
    size_t cap; /* power of two, or 0 */
    size_t n;
} ppc_u64set;

int ppc_u64set_has(const ppc_u64set *s, uint64_t k);
/* 0 on success (also when already present), -1 when memory is exhausted. */
int ppc_u64set_add(ppc_u64set *s, uint64_t k);
void ppc_u64set_free(ppc_u64set *s);

#endif

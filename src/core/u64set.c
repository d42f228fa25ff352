/* u64set.c - open-addressing id set (see u64set.h). */
#include "u64set.h"

#include <stdlib.h>

static size_t slot(uint64_t k, size_t cap)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k & (cap - 1);
}

int ppc_u64set_has(const ppc_u64set *s, uint64_t k)
{
    if (!s->cap || k == 0)
        return 0;
    for (size_t i = slot(k, s->cap);; i = (i + 1) & (s->cap - 1)) {
        if (s->keys[i] == k)
            return 1;
        if (s->keys[i] == 0)
            return 0;
    }
}

static int grow(ppc_u64set *s)
{
    size_t ncap = s->cap ? s->cap * 2 : 16;
    if (ncap > SIZE_MAX / sizeof(uint64_t))
        return -1;
    uint64_t *nk = calloc(ncap, sizeof(uint64_t));
    if (!nk)
        return -1;
    for (size_t i = 0; i < s->cap; i++) {
        uint64_t k = s->keys[i];
        if (k) {
            size_t j = slot(k, ncap);
            while (nk[j])
                j = (j + 1) & (ncap - 1);
            nk[j] = k;
        }
    }
    free(s->keys);
    s->keys = nk;
    s->cap = ncap;
    return 0;
}

int ppc_u64set_add(ppc_u64set *s, uint64_t k)
{
    if (k == 0)
        return -1;
    if (ppc_u64set_has(s, k))
        return 0;
    if ((s->n + 1) * 2 > s->cap && grow(s) < 0)
        return -1;
    size_t i = slot(k, s->cap);
    while (s->keys[i])
        i = (i + 1) & (s->cap - 1);
    s->keys[i] = k;
    s->n++;
    return 0;
}

void ppc_u64set_free(ppc_u64set *s)
{
    free(s->keys);
    s->keys = NULL;
    s->cap = s->n = 0;
}

/* buf.c - growable byte buffer (see buf.h). Plain C, no I/O. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

int ppc_buf_reserve(ppc_buf *b, size_t extra)
{
    if (b->off > 0 && b->off == b->len) {
        b->off = b->len = 0;
    }
    if (b->cap - b->len >= extra)
        return 0;
    /* Compact first when the read part is large enough to make room. */
    if (b->off > 0 && b->cap - (b->len - b->off) >= extra && b->off >= b->cap / 2) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        return 0;
    }
    size_t need = b->len + extra;
    if (need < b->len) /* overflow */
        return -1;
    size_t ncap = b->cap ? b->cap : 4096;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return -1;
        ncap *= 2;
    }
    uint8_t *nd = realloc(b->data, ncap);
    if (!nd)
        return -1;
    b->data = nd;
    b->cap = ncap;
    return 0;
}

int ppc_buf_append(ppc_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (ppc_buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void ppc_buf_consume(ppc_buf *b, size_t n)
{
    if (n > b->len - b->off)
        n = b->len - b->off;
    b->off += n;
    if (b->off == b->len)
        b->off = b->len = 0;
}

void ppc_buf_shrink(ppc_buf *b, size_t keep)
{
    if (b->off == b->len && b->cap > keep) {
        free(b->data);
        b->data = NULL;
        b->off = b->len = b->cap = 0;
    }
}

void ppc_buf_free(ppc_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

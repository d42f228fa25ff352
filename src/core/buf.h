/* buf.h - growable byte buffer with a read offset.
 *
 * Used for every outgoing and incoming byte stream of the engine (worker
 * pipes, later node sockets). Appends grow the buffer geometrically;
 * consuming advances the read offset and compacts lazily. It never aborts:
 * growth failures return -1 and leave the buffer as it was. */
#ifndef PPC_BUF_H
#define PPC_BUF_H
#include <stddef.h>
#include <stdint.h>

typedef struct ppc_buf {
    uint8_t *data;
    size_t off; /* first unread byte */
    size_t len; /* end of valid bytes */
    size_t cap;
} ppc_buf;

/* Make room for at least `extra` bytes after len. 0 or -1 (ENOMEM). */
int ppc_buf_reserve(ppc_buf *b, size_t extra);
int ppc_buf_append(ppc_buf *b, const void *p, size_t n);
/* Mark n bytes (n <= unread) as read; resets to empty when drained. */
void ppc_buf_consume(ppc_buf *b, size_t n);
/* Release the memory when the buffer is empty and larger than keep. */
void ppc_buf_shrink(ppc_buf *b, size_t keep);
void ppc_buf_free(ppc_buf *b);

static inline size_t ppc_buf_unread(const ppc_buf *b) { return b->len - b->off; }
/* The unread bytes; a buffer that owns no memory yet gives a valid empty
 * pointer (NULL + 0 is undefined behaviour). */
static inline uint8_t *ppc_buf_head(const ppc_buf *b)
{
    static uint8_t none[1];
    return b->data ? b->data + b->off : none;
}

#endif

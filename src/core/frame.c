/* frame.c - frame encoder and bounds-checked decoder (see frame.h). */
#include "frame.h"

#include <string.h>

static int known_type(uint8_t t)
{
    return (t >= PPC_F_INIT && t <= PPC_F_VMOK) || (t >= PPC_F_HELLO && t <= PPC_F_TYPE_MAX) ||
           t == PPC_F_KILL;
}

int ppc_frame_parse(const uint8_t *data, size_t avail, uint64_t max_len, ppc_frame *f)
{
    if (avail < PPC_FRAME_HDR) {
        f->len = 0;
        return PPC_FRAME_NEED_MORE;
    }
    f->len = ppc_get_u64(data);
    f->id = ppc_get_u64(data + 8);
    f->type = data[16];
    f->flags = data[17];
    f->aux = (uint16_t)(data[18] | data[19] << 8);
    f->extra = ppc_get_u32(data + 20);
    f->payload = NULL;
    if (!known_type(f->type))
        return PPC_FRAME_ETYPE;
    if (f->len > max_len)
        return PPC_FRAME_ETOOBIG;
    if (avail - PPC_FRAME_HDR < f->len)
        return PPC_FRAME_NEED_MORE;
    f->payload = data + PPC_FRAME_HDR;
    return PPC_FRAME_OK;
}

int ppc_frame_put(ppc_buf *b, uint8_t type, uint8_t flags, uint16_t aux, uint32_t extra,
                  uint64_t id, const void *p1, size_t n1, const void *p2, size_t n2)
{
    size_t total = n1 + n2;
    if (total < n1 || total > SIZE_MAX - PPC_FRAME_HDR)
        return -1;
    if (ppc_buf_reserve(b, PPC_FRAME_HDR + total) < 0)
        return -1;
    uint8_t *h = b->data + b->len;
    ppc_put_u64(h, (uint64_t)total);
    ppc_put_u64(h + 8, id);
    h[16] = type;
    h[17] = flags;
    h[18] = (uint8_t)(aux & 0xff);
    h[19] = (uint8_t)(aux >> 8);
    ppc_put_u32(h + 20, extra);
    if (n1)
        memcpy(h + PPC_FRAME_HDR, p1, n1);
    if (n2)
        memcpy(h + PPC_FRAME_HDR + n1, p2, n2);
    b->len += PPC_FRAME_HDR + total;
    return 0;
}

/* result.c - encoder and decoder of a job's result layout (result.h). */
#include "result.h"

#include <stdlib.h>
#include <string.h>

#include "frame.h"

uint8_t *ppc_result_put(ppc_buf *b, uint64_t id, uint16_t aux, uint64_t exec_ns, uint8_t kind,
                        const void *out, size_t outlen, size_t datalen)
{
    if (outlen > UINT32_MAX || datalen > SIZE_MAX - 8 - PPC_RESULT_BODY_HEAD - outlen)
        return NULL;
    size_t total = 8 + PPC_RESULT_BODY_HEAD + outlen + datalen;
    if (total > SIZE_MAX - PPC_FRAME_HDR || ppc_buf_reserve(b, PPC_FRAME_HDR + total) < 0)
        return NULL;
    uint8_t head[8 + PPC_RESULT_BODY_HEAD];
    ppc_put_u64(head, exec_ns);
    head[8] = kind;
    ppc_put_u32(head + 9, (uint32_t)outlen);
    size_t at = b->len;
    if (ppc_frame_put(b, PPC_F_RESULT, 0, aux, 0, id, head, sizeof head, out, outlen) < 0)
        return NULL; /* cannot happen: reserved above */
    /* the frame was written without its data: its length covers it too */
    ppc_put_u64(b->data + at, (uint64_t)total);
    uint8_t *data = b->data + b->len;
    b->len += datalen;
    return data;
}

uint8_t *ppc_result_body_new(uint8_t kind, const uint8_t *out, size_t outlen, size_t datalen,
                             uint8_t **body, size_t *len)
{
    if (outlen > UINT32_MAX || datalen > SIZE_MAX - PPC_RESULT_BODY_HEAD - outlen)
        return NULL;
    size_t n = PPC_RESULT_BODY_HEAD + outlen + datalen;
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return NULL;
    p[0] = kind;
    ppc_put_u32(p + 1, (uint32_t)outlen);
    if (outlen)
        memcpy(p + PPC_RESULT_BODY_HEAD, out, outlen);
    *body = p;
    *len = n;
    return p + PPC_RESULT_BODY_HEAD + outlen;
}

int ppc_result_split(const uint8_t *payload, size_t n, uint64_t *exec_ns, const uint8_t **body,
                     size_t *bodylen)
{
    if (!payload || n < 8)
        return -1;
    *exec_ns = ppc_get_u64(payload);
    *body = payload + 8;
    *bodylen = n - 8;
    return 0;
}

int ppc_result_parse(const uint8_t *body, size_t n, ppc_result *r)
{
    if (!body || n < PPC_RESULT_BODY_HEAD || body[0] > PPC_R_EXCEPTION)
        return -1;
    size_t outlen = ppc_get_u32(body + 1);
    if (outlen > n - PPC_RESULT_BODY_HEAD)
        return -1;
    r->kind = body[0];
    r->out = body + PPC_RESULT_BODY_HEAD;
    r->outlen = outlen;
    r->data = r->out + outlen;
    r->datalen = n - PPC_RESULT_BODY_HEAD - outlen;
    return 0;
}

int ppc_result_ref(const ppc_result *r, ppc_shm_ref *ref)
{
    if (r->datalen != PPC_SHM_REF_LEN)
        return -1;
    ppc_shm_ref_get(r->data, ref);
    return ref->len ? 0 : -1;
}

/* frame.h - the engine's wire frames.
 *
 * Every byte stream of the engine (client <-> local worker pipes, and
 * client <-> ppserver sockets) is a sequence of frames:
 *
 *   u64 len    payload length in bytes (little endian)
 *   u64 id     job id, function id or sequence number, by type
 *   u8  type   PPC_F_*
 *   u8  flags
 *   u16 aux
 *   u32 extra
 *   payload[len]
 *
 * The decoder never trusts a length: a frame whose length exceeds the
 * caller's limit, or whose type is unknown, is rejected before anything is
 * allocated for it. This file does no I/O and knows nothing of Python. */
#ifndef PPC_FRAME_H
#define PPC_FRAME_H
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define PPC_FRAME_HDR 24u

enum ppc_frame_type {
    PPC_F_INIT = 1,    /* client -> worker: opaque start-up payload */
    PPC_F_FUNC = 2,    /* client -> worker: function blob, id = function id */
    PPC_F_JOB = 3,     /* client -> worker: id = job id, extra unused,
                          payload = u64 function id + opaque args */
    PPC_F_RESULT = 4,  /* worker -> client: id = job id,
                          payload = u64 exec ns + opaque result */
    PPC_F_SHMDROP = 5, /* client -> worker: id = a client segment destroyed:
                          forget its mapping */
    PPC_F_SHMRET = 6,  /* client -> worker: id = the worker's result segment,
                          read and free for reuse; aux PPC_AUX_SHM_DROP:
                          another process (a fork of the client) may still
                          map it: free it, never reuse it */
    PPC_F_VMOK = 7,    /* client -> worker: the client can read the worker's
                          memory: results may leave holes (vm.h) */
    PPC_F_HELLO = 16,  /* network handshake frames, inside TLS (auth.h) */
    PPC_F_CHALLENGE = 17, /* 17, 18: unused since TLS (protocol 3) */
    PPC_F_AUTH = 18,
    PPC_F_WELCOME = 19,
    PPC_F_PING = 20,
    PPC_F_PONG = 21,
    PPC_F_ERROR = 22,
    PPC_F_BYE = 23,
    PPC_F_TYPE_MAX = 23,
    PPC_F_KILL = 34    /* client -> ppserver: id = the client's job id: kill
                          the worker running it (or drop it, queued); the
                          job's RESULT says PPC_JOB_EKILLED */
};

/* aux bits of JOB and RESULT frames (shm.h has the layouts):
 * OOB: the args (or the pickle part of the result) are an OOB blob;
 * SHM: they are a ppc_shm_ref to a blob in a segment (local workers only);
 * PINNED (RESULT): the job's argument segment is still referenced by the
 *   worker: the client must not reuse it;
 * NOSHM (RESULT): the worker could not map the argument segment; the job did
 *   not run and must be sent again inline;
 * VM (with SHM): the blob has holes to fill from its owner's memory, and a
 *   gap table after it (vm.h);
 * NOVM (RESULT): the worker cannot read the client's memory; the job did not
 *   run and must be sent again with its holes filled;
 * INARG (JOB, with SHM): the result may lie in this argument segment (a local
 *   client, no holes); (RESULT) it does: the result is an OOB blob whose
 *   buffer table gives offsets in the job's argument segment, not in the
 *   blob; the client keeps that segment for the result (PPC_AUX_PINNED: and
 *   never reuses it). The worker no longer maps it writable. */
#define PPC_AUX_OOB 1u
#define PPC_AUX_SHM 2u
#define PPC_AUX_PINNED 4u
#define PPC_AUX_NOSHM 8u
#define PPC_AUX_VM 16u
#define PPC_AUX_NOVM 32u
#define PPC_AUX_INARG 64u
#define PPC_AUX_SHM_DROP 1u /* SHMRET only */

typedef struct ppc_frame {
    uint64_t len;
    uint64_t id;
    uint8_t type;
    uint8_t flags;
    uint16_t aux;
    uint32_t extra;
    const uint8_t *payload; /* points into the parsed buffer */
} ppc_frame;

enum {
    PPC_FRAME_NEED_MORE = 0,
    PPC_FRAME_OK = 1,
    PPC_FRAME_ETOOBIG = -1,
    PPC_FRAME_ETYPE = -2
};

/* Parse one frame from data[0..avail). Returns PPC_FRAME_OK with *f filled
 * (payload pointing into data) when a whole frame is there,
 * PPC_FRAME_NEED_MORE when more bytes are needed (f->len is then valid once
 * the header is complete, 0 before), or a negative PPC_FRAME_E* when the
 * stream is invalid. max_len bounds the payload length. */
int ppc_frame_parse(const uint8_t *data, size_t avail, uint64_t max_len, ppc_frame *f);

/* Append a frame whose payload is the concatenation of p1[n1] and p2[n2]
 * (either may be empty). 0 or -1 when memory is exhausted. */
int ppc_frame_put(ppc_buf *b, uint8_t type, uint8_t flags, uint16_t aux, uint32_t extra,
                  uint64_t id, const void *p1, size_t n1, const void *p2, size_t n2);

/* Little-endian helpers shared by frame users. */
static inline void ppc_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint64_t ppc_get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline void ppc_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t ppc_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif

/* result.h - the layout of a job's result: one encoder and one decoder for
 * the worker (which writes it), the engine (which checks it, and copies a
 * segment's result inline for a ppserver's clients) and the binding (which
 * unpacks it for job()).
 *
 * A RESULT frame's payload:
 *   u64 exec_ns   the job's execution time in the worker
 *   body:
 *     u8  kind    PPC_R_VALUE or PPC_R_EXCEPTION
 *     u32 outlen  what the job printed (UTF-8), outlen bytes
 *     out[outlen]
 *     data        by the frame's aux: a pickle (none), an OOB blob
 *                 (PPC_AUX_OOB, shm.h), or a ppc_shm_ref naming a blob in
 *                 the worker's segment (PPC_AUX_SHM)
 * A job keeps the body (ppc_job.result) and the aux bits. Little endian;
 * nothing here knows Python. */
#ifndef PPC_RESULT_H
#define PPC_RESULT_H
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "shm.h"

enum { PPC_R_VALUE = 0, PPC_R_EXCEPTION = 1 };

#define PPC_RESULT_BODY_HEAD 5u /* kind, outlen */

typedef struct ppc_result {
    uint8_t kind;
    const uint8_t *out; /* outlen bytes the job printed */
    size_t outlen;
    const uint8_t *data; /* datalen bytes: pickle, OOB blob or segment reference */
    size_t datalen;
} ppc_result;

/* Append a RESULT frame for job id to b: the head and out[outlen] written,
 * datalen bytes of data left to the caller at the returned pointer (valid
 * until b changes). NULL when memory is exhausted (b as it was). */
uint8_t *ppc_result_put(ppc_buf *b, uint64_t id, uint16_t aux, uint64_t exec_ns, uint8_t kind,
                        const void *out, size_t outlen, size_t datalen);

/* A body in fresh malloc'd memory (*len bytes): kind, out[outlen] copied,
 * datalen bytes of data left to the caller at the returned pointer. NULL
 * when memory is exhausted or the sizes overflow. The body is *body. */
uint8_t *ppc_result_body_new(uint8_t kind, const uint8_t *out, size_t outlen, size_t datalen,
                             uint8_t **body, size_t *len);

/* Split a RESULT frame's payload: 0 with *exec_ns, *body, *bodylen set, or
 * -1 when it is shorter than its exec time. */
int ppc_result_split(const uint8_t *payload, size_t n, uint64_t *exec_ns, const uint8_t **body,
                     size_t *bodylen);

/* Parse a body: 0 with *r set (pointers into body), -1 when it is
 * truncated, its output runs past its end or its kind is unknown. */
int ppc_result_parse(const uint8_t *body, size_t n, ppc_result *r);

/* The segment reference of a parsed body whose data is one (aux
 * PPC_AUX_SHM): 0 with *ref set, -1 when the data is not exactly a
 * reference or names no blob (length 0). */
int ppc_result_ref(const ppc_result *r, ppc_shm_ref *ref);

#endif

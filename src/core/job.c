/* job.c - allocation and reference counting of jobs and blobs (job.h). */
#include "job.h"

#include <stdlib.h>
#include <string.h>

ppc_blob *ppc_blob_new(uint64_t id, const void *data, size_t len)
{
    if (len > SIZE_MAX - sizeof(ppc_blob))
        return NULL;
    ppc_blob *b = malloc(sizeof(ppc_blob) + len);
    if (!b)
        return NULL;
    atomic_init(&b->refs, 1);
    b->id = id;
    b->flags = 0;
    b->len = len;
    if (len)
        memcpy(b->data, data, len);
    return b;
}

void ppc_blob_incref(ppc_blob *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

void ppc_blob_decref(ppc_blob *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        free(b);
}

ppc_job *ppc_job_new(ppc_blob *fn, const void *args, size_t args_len)
{
    if (args_len > SIZE_MAX - sizeof(ppc_job))
        return NULL;
    ppc_job *j = malloc(sizeof(ppc_job) + args_len);
    if (!j)
        return NULL;
    memset(j, 0, sizeof(*j));
    atomic_init(&j->state, PPC_JOB_QUEUED);
    atomic_init(&j->refs, 1);
    atomic_init(&j->claim, PPC_CLAIM_QUEUED);
    atomic_init(&j->killreq, 0);
    j->fn = fn;
    if (fn)
        ppc_blob_incref(fn);
    j->args_len = args_len;
    if (args_len && args)
        memcpy(j->args, args, args_len);
    return j;
}

void ppc_job_incref(ppc_job *j)
{
    atomic_fetch_add_explicit(&j->refs, 1, memory_order_relaxed);
}

void ppc_job_decref(ppc_job *j)
{
    if (j && atomic_fetch_sub_explicit(&j->refs, 1, memory_order_acq_rel) == 1) {
        ppc_blob_decref(j->fn);
        ppc_shm_free(j->args_seg);
        ppc_shm_free(j->result_seg);
        free(j->result);
        free(j);
    }
}

void ppc_job_fail(ppc_job *j, int status, const char *msg)
{
    free(j->result);
    j->result = NULL;
    j->result_len = 0;
    j->status = status;
    j->result_aux = 0;
    size_t n = strlen(msg);
    j->result = malloc(n + 1);
    if (j->result) {
        memcpy(j->result, msg, n + 1);
        j->result_len = n;
    }
}

ppc_job *ppc_job_list_reverse(ppc_job *head)
{
    ppc_job *rev = NULL;
    while (head) {
        ppc_job *nx = head->next;
        head->next = rev;
        rev = head;
        head = nx;
    }
    return rev;
}

int ppc_job_take(ppc_job *j)
{
    int expect = PPC_CLAIM_QUEUED;
    return atomic_compare_exchange_strong(&j->claim, &expect, PPC_CLAIM_TAKEN) ||
           expect == PPC_CLAIM_TAKEN;
}

int ppc_job_cancel(ppc_job *j)
{
    int expect = PPC_CLAIM_QUEUED;
    return atomic_compare_exchange_strong(&j->claim, &expect, PPC_CLAIM_CANCELLED) ||
           expect == PPC_CLAIM_CANCELLED;
}

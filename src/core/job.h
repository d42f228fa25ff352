/* job.h - jobs and function blobs as the engine sees them.
 *
 * The engine knows a job only as opaque bytes: the arguments payload, the
 * function blob it needs (sent once per worker and cached there), and the
 * result payload coming back. Jobs are reference counted because two sides
 * hold them: the engine while the job is queued or running, and the caller
 * (the Python Job object) until it is dropped. Nothing here knows Python. */
#ifndef PPC_JOB_H
#define PPC_JOB_H
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shm.h"

/* Blob flags */
#define PPC_BLOB_SAME_PY 1u /* carries code objects: needs the client's Python */

typedef struct ppc_blob {
    atomic_size_t refs;
    uint64_t id;
    uint32_t flags;
    size_t len;
    uint8_t data[];
} ppc_blob;

ppc_blob *ppc_blob_new(uint64_t id, const void *data, size_t len);
void ppc_blob_incref(ppc_blob *b);
void ppc_blob_decref(ppc_blob *b);

enum ppc_job_state {
    PPC_JOB_QUEUED = 0,  /* waiting in a queue */
    PPC_JOB_RUNNING = 1, /* handed to a node */
    PPC_JOB_COMPLETE = 2,/* result in, callback not yet run */
    PPC_JOB_DONE = 3     /* visible as finished to waiters */
};

enum ppc_job_status {
    PPC_JOB_OK = 0,         /* result holds the worker's opaque result */
    PPC_JOB_EWORKER = 1,    /* result holds a message: worker died */
    PPC_JOB_EDESTROYED = 2, /* the engine was destroyed first */
    PPC_JOB_ENONODE = 3,    /* no node can run it; result holds a message */
    PPC_JOB_ECANCELLED = 4, /* cancelled while queued: it never ran */
    PPC_JOB_EKILLED = 5,    /* its worker was killed on request (kill) */
    PPC_JOB_ETIMEOUT = 6    /* its worker was killed: it ran past its timeout */
};

/* claim: who has the job while it is queued (cancel races dispatch) */
enum { PPC_CLAIM_QUEUED = 0, PPC_CLAIM_TAKEN = 1, PPC_CLAIM_CANCELLED = 2 };

typedef struct ppc_job {
    struct ppc_job *next; /* link for whichever queue holds the job */
    uint64_t id;
    ppc_blob *fn;
    atomic_int state;
    atomic_int refs;
    int status;
    uint32_t group;
    uint32_t node;      /* node index that ran it */
    uint8_t has_cb;     /* caller finishes it (ppc_engine_callback_done) */
    uint8_t tries;      /* nodes lost while it ran there */
    uint8_t cancelled;  /* its requester is gone: drop it, do not run it */
    void *origin;       /* ppserver side: the client connection it came from */
    uint64_t client_id; /* ppserver side: the job's id at the client */
    uint64_t exec_ns;   /* execution time reported by the worker */
    void *user;         /* caller's pointer, never touched by the engine */
    ppc_shm_seg *args_seg; /* args in a segment (args_len is then 0) */
    uint16_t args_aux;     /* PPC_AUX_OOB: args[] is an OOB blob */
    uint16_t result_aux;   /* PPC_AUX_OOB / PPC_AUX_SHM / PPC_AUX_INARG: form of the result */
    uint8_t result_seg_pinned; /* result_seg must not be reused */
    ppc_shm_seg *result_seg;   /* PPC_AUX_INARG: the argument segment holding the result */
    uint8_t *result;    /* malloc'd; result payload or error text */
    size_t result_len;
    /* futures: cancel, kill, timeout, retries, done notification */
    atomic_int claim;     /* PPC_CLAIM_*: set TAKEN once by the scheduler, CANCELLED by cancel */
    atomic_int killreq;   /* 0, or PPC_JOB_EKILLED / PPC_JOB_ETIMEOUT: stop it where it runs */
    uint8_t notify;       /* (engine lock) the caller wants an event when it is done */
    uint8_t retries;      /* runs again after this many worker deaths under it */
    uint8_t retried;
    uint32_t timeout_ms;  /* 0: none; a job running longer has its worker killed */
    int64_t started_ms;   /* when it began on its worker (local) or was sent (remote) */
    size_t args_len;
    uint8_t args[];
} ppc_job;

/* A new job holding a reference to fn and a copy of args (args NULL: the
 * caller fills the args_len bytes); refs = 1. */
ppc_job *ppc_job_new(ppc_blob *fn, const void *args, size_t args_len);
void ppc_job_incref(ppc_job *j);
void ppc_job_decref(ppc_job *j);
/* Replace the result with a copy of a message (for failures). */
void ppc_job_fail(ppc_job *j, int status, const char *msg);
/* Reverse a list linked by next; returns the new head. (Requeueing a
 * node's in-flight jobs at the front of the run queue, in their order,
 * takes them last to first.) */
ppc_job *ppc_job_list_reverse(ppc_job *head);
/* The scheduler takes a queued job for a node: 1, or 0 when the caller
 * cancelled it first (it must then never run). */
int ppc_job_take(ppc_job *j);
/* The caller cancels a job not yet taken: 1, or 0 when too late. */
int ppc_job_cancel(ppc_job *j);

#endif

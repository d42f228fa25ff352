/* ppc_py.h - declarations shared by the CPython binding files.
 *
 * The binding turns Python objects into the opaque bytes the core engine
 * moves (function blobs, argument and result pickles) and back. It owns no
 * scheduling or I/O logic: that is src/core's. */
#ifndef PPC_PY_H
#define PPC_PY_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "../core/engine.h"
#include "../core/proc.h"
#include "../core/result.h"

/* Module-wide objects, set up once at import (module.c). */
typedef struct {
    PyObject *pickle_dumps;
    PyObject *pickle_loads;
    PyObject *DestroyedServerError;
    PyObject *WorkerError;
    PyObject *RemoteError;
    PyObject *RemoteTraceback;
    PyObject *str_default;
    PyObject *empty_tuple;
} ppc_globals;
extern ppc_globals G;

extern PyTypeObject ppc_ServerType;
extern PyTypeObject ppc_JobType;

typedef struct {
    PyObject_HEAD
    ppc_engine *engine;
    PyObject *fn_cache;   /* key -> capsule(ppc_blob), or None: encode each time */
    PyObject *fn_volatile;/* blob bytes -> capsule, for blobs holding state */
    PyObject *groups;     /* group object -> int */
    PyObject *group_names;/* list: int -> group object */
    int events_started; /* its events thread runs (server.c events_thread) */
    PyObject *events;     /* capsule shared with the events thread: it owns the
                             engine, so the thread never keeps the Server alive */
    struct ppc_events *ev; /* its contents */
    PyObject *ppservers;
    PyObject *secret;
    PyObject *last_key[4]; /* func, depfuncs, modules, globals flag of the */
    PyObject *last_cap;    /* last submit, and its blob: the common case */
    PyObject *last_group; /* borrowed (kept alive by group_names) */
    uint32_t last_gid;
    PyObject *proto_obj;  /* proto as an int object, for the pickler */
    uint64_t next_fid;
    int proto;
    int shm; /* large arguments and results through shared memory */
    PyObject *test; /* pp.Server(_test={...}): switches for tests, or NULL */
    PyObject *vm_held; /* list of (capsule(job), pins): bytes of dropped Job
                          objects whose jobs have not finished yet */
    uint64_t vm_arg_holes, vm_result_holes; /* bytes objects left in place */
    struct ppc_retchan *retchan; /* how mapped results go back (shmmap.c), or NULL */
    int restart;
    int forked; /* first workers forked from this process (0: all spawned) */
    int owner_pid; /* the process that made it (forked children may not use it) */
    int raise_exceptions;
    int destroyed;
    double socket_timeout;
    double created;
} ppc_Server;

typedef struct {
    PyObject_HEAD
    ppc_Server *server;
    ppc_job *job;
    PyObject *callback;     /* NULL when none */
    PyObject *callbackargs;
    PyObject *value;        /* unpacked result, or NULL */
    PyObject *exc;          /* unpacked exception, or NULL */
    PyObject *pins;         /* bytes a worker reads from our memory, or NULL */
    int unpacked;
    PyObject *done_cbs;     /* add_done_callback's functions not yet run, or NULL */
    int watched;            /* the engine sends an event when it is done */
} ppc_Job;

/* ship.c: Chunk, Server.map's unit of work (pp._ppc.Chunk) */
extern PyTypeObject ppc_ChunkType;

/* pyjob.c */
ppc_Job *ppc_job_wrap(ppc_Server *s, ppc_job *j, PyObject *callback, PyObject *cbargs);
/* Unpack the result once (prints captured output). 0 or -1 with an error. */
int ppc_job_unpack(ppc_Job *self);
/* Run the done callbacks not yet run (each once), fn(job); errors are
 * reported as unraisable, never raised. */
void ppc_job_fire_done(ppc_Job *self);
/* pp._ppc._future_result and _executor_submit: pp.Executor's fast paths. */
int ppc_job_add_executor_methods(PyObject *m);
/* server.c: keep the pins of a dropped Job until its job has finished;
 * release those whose jobs have (all: every one, the engine being stopped). */
int ppc_server_hold_pins(ppc_Server *s, ppc_job *j, PyObject *pins);
void ppc_server_sweep_pins(ppc_Server *s, int all);
/* RuntimeError (-1) in a child forked after the Server was made: its
 * engine and workers belong to the parent. */
int ppc_server_check_owner(ppc_Server *s);
/* 1 when the calling thread is the Server's events thread (in a callback). */
int ppc_server_in_callback(ppc_Server *s);
/* Wait for DONE, releasing the GIL; handles Ctrl-C. 0 or -1. */
int ppc_wait_interruptible(ppc_engine *e, ppc_job *j, uint32_t group, int is_group);

/* shipcache.c: the function blob for a call, cached per server. Returns a
 * new reference to a capsule holding a ppc_blob, or NULL with an error. */
PyObject *ppc_ship_blob(ppc_Server *s, PyObject *func, PyObject *depfuncs, PyObject *modules,
                        PyObject *globals, const char *args_pickle, size_t n);

/* ship.c: the function-shipping format (layout in its top comment).
 * Encode a call's function into blob bytes; globals is a dict or None,
 * main_names a tuple of names of __main__ (or NULL) whose objects travel
 * as deps; *vol set when the blob holds state, *same_py when it holds code
 * objects. New reference, or NULL with an error. */
PyObject *ppc_ship_encode(PyObject *func, PyObject *depfuncs, PyObject *modules,
                          PyObject *globals, PyObject *main_names, int proto, int *vol,
                          int *same_py);
/* Names of __main__ objects a pickle refers to, as a sorted tuple. */
PyObject *ppc_ship_main_names(const char *pickle, size_t n);
/* In a worker: run a blob's imports and deps in the namespace ns; new
 * reference to the job's function, or NULL with an error. */
PyObject *ppc_ship_install(PyObject *ns, const uint8_t *blob, size_t n);

/* Large data through shared-memory segments (shm.h, vm.h) */
#include "../core/shm.h"
#include "../core/vm.h"

/* shmmap.c: mappings as Python objects */
/* Where a client's mapped result segments are given back: give_back(ctx,
 * worker pid, segment id, drop) until the Server's destroy() closes it;
 * then mappings that die only unmap. Counted references under the GIL. */
typedef struct ppc_retchan {
    Py_ssize_t refs;
    void (*give_back)(void *ctx, int pid, uint64_t seg_id, int drop);
    /* a segment of our own that held a result (PPC_AUX_INARG), back to the
     * engine's pool; NULL: freed instead */
    void (*give_seg)(void *ctx, ppc_shm_seg *seg);
    void *ctx;
} ppc_retchan;
/* NULL: out of memory (error set) */
ppc_retchan *ppc_retchan_new(void (*give_back)(void *, int, uint64_t, int), void *ctx);
void ppc_retchan_close(ppc_retchan *c); /* the Server's reference */

typedef struct {
    PyObject_HEAD
    void *addr;
    size_t len;
    Py_ssize_t exports; /* buffers handed out and not yet released */
    uint64_t id;
    int readonly;
    int owned; /* munmap at dealloc */
    /* a worker's result segment mapped copy-on-write (ppc_shmmap_lent):
     * given back to the worker when this mapping dies */
    ppc_retchan *ret;
    int ret_pid;
    uint64_t ret_id;
    long maker;          /* the process that mapped it */
    unsigned long forks; /* forks of that process before it mapped it */
    /* or one of our own argument segments holding the result (ppc_shmmap_own) */
    ppc_shm_seg *seg;
    int seg_pinned;
} ppc_ShmMap;
extern PyTypeObject ppc_ShmMapType;
ppc_ShmMap *ppc_shmmap_new(void *addr, size_t len, int readonly, int owned);
/* m maps result segment seg_id of worker pid: when m dies (the last array
 * or buffer viewing it with it), the segment goes back to the worker
 * through c, or is dropped (never reused) when this process has forked
 * since, its child still mapping it; nothing is sent from a child. */
void ppc_shmmap_lent(ppc_ShmMap *m, ppc_retchan *c, int pid, uint64_t seg_id);
/* m maps seg, our own argument segment that holds a job's result: m owns
 * seg, which goes back to the engine's pool through c when m dies, or is
 * freed (never reused) when pinned (a worker still views it), when this
 * process has forked since, or when c is closed. */
void ppc_shmmap_own(ppc_ShmMap *m, ppc_retchan *c, ppc_shm_seg *seg, int pinned);

/* segwrite.c: the segment writer */
/* Pickle obj into seg as an OOB blob (seg->used set). Blob size or -1.
 * pins: a list, or NULL: big bytes objects are left as holes (vm.h; the
 * table follows the blob, seg->ngaps set) and appended to pins, which the
 * caller keeps until the reader is done. */
Py_ssize_t ppc_pickle_into_seg(PyObject *obj, int proto, ppc_shm_seg *seg, PyObject *pins);
/* An existing pickle into seg as a blob without buffers. 0 or -1. */
int ppc_bytes_into_seg(const char *p, size_t n, ppc_shm_seg *seg);
/* Bytes in large buffers reachable from o, looking depth levels into
 * containers: a cheap guess at whether a pickle of o will be large. */
size_t ppc_big_estimate(PyObject *o, int depth);

/* payload.c: the payload codec */
/* Load an OOB blob p[0..n); exporter: object whose buffer starts at p (its
 * views become the buffers), or NULL to copy buffers into bytearrays; vm:
 * the blob's holes and whose memory fills them, or NULL. */
/* A list of views of exporter's buffer, one per range of o (the buffers
 * of an out-of-band pickle), or NULL with an error. */
PyObject *ppc_oob_views(PyObject *exporter, const ppc_oob *o);
PyObject *ppc_loads_blob(const uint8_t *p, size_t n, PyObject *exporter, const ppc_vm_src *vm);
/* A payload that travelled inline (in the frame): an out-of-band blob when
 * oob, else a pickle, read by hand when fastpickle.c takes it. */
PyObject *ppc_loads_inline(const uint8_t *p, size_t n, int oob);

/* worker.c */
PyObject *ppc_worker_main(PyObject *mod, PyObject *args); /* _ppcw.worker_main */
/* A fresh __main__ module in sys.modules; new reference to its dict. */
PyObject *ppc_worker_fresh_ns(void);
/* The worker loop on fd_in/fd_out, shipped code living in ns, until the
 * client closes the pipe: 0, or -1 with a Python error set. */
int ppc_worker_run(int fd_in, int fd_out, PyObject *ns);

/* fastpickle.c: scalars, tuples of them and lists of scalars as pickle
 * opcodes by hand. ppc_fast_dumps: length of the pickle in b->data, 0 when
 * not handled (never raises); b starts on the stack and grows on the heap
 * (ppc_fastbuf_free). ppc_fast_loads: new object, or NULL without an
 * exception when not handled (then use _pickle). */
typedef struct {
    uint8_t *data;
    size_t len, cap;
    int owned;
    int complex_memo; /* builtins.complex is memo 0 already */
    uint8_t stack[512];
} ppc_fastbuf;
void ppc_fastbuf_init(ppc_fastbuf *b);
void ppc_fastbuf_free(ppc_fastbuf *b);
size_t ppc_fast_dumps(PyObject *obj, int proto, ppc_fastbuf *b);
PyObject *ppc_fast_loads(const uint8_t *p, size_t n);

/* pyutil.c helpers */
/* A pickle of protocol 4 or 5 whose whole body is one FRAME: its
 * 9-byte frame opcode can go (framing is optional for the unpickler),
 * which matters for tiny jobs and results. Returns the bytes to skip after
 * the 2-byte PROTO opcode (9), or 0 to keep the pickle as it is. */
static inline size_t ppc_pickle_frame_skip(const char *p, size_t n)
{
    if (n < 12 || (unsigned char)p[0] != 0x80 || (unsigned char)p[1] < 4 ||
        (unsigned char)p[2] != 0x95)
        return 0;
    uint64_t flen = 0;
    for (int i = 0; i < 8; i++)
        flen |= (uint64_t)(unsigned char)p[3 + i] << (8 * i);
    return flen == n - 11 ? 9 : 0;
}

/* Copy a pickle of n bytes to dst without its frame opcode (skip from
 * ppc_pickle_frame_skip, 0 to copy as it is); returns the bytes written. */
static inline size_t ppc_pickle_copy_unframed(uint8_t *dst, const char *p, size_t n, size_t skip)
{
    if (!skip) {
        memcpy(dst, p, n);
        return n;
    }
    memcpy(dst, p, 2);
    memcpy(dst + 2, p + 2 + skip, n - 2 - skip);
    return n - skip;
}

PyObject *ppc_import_attr(const char *module, const char *attr);
int ppc_globals_init(void); /* pickle.dumps/loads into G */
int ppc_declare_gil_used(PyObject *m); /* Py_MOD_GIL_USED on free-threaded builds */

#endif

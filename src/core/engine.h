/* engine.h - the client engine: one thread running the event loop over all
 * nodes (the local worker pool today; remote nodes plug in as further
 * nodes), the job queue, the scheduler, completion and statistics.
 *
 * Threads: any number of caller threads may submit and wait; exactly one
 * engine thread does all I/O; one caller-owned "event" thread may take
 * callbacks and log messages with ppc_engine_next_event. The engine never
 * calls back into the caller from its own thread. Nothing here knows
 * Python: jobs are opaque bytes (job.h). */
#ifndef PPC_ENGINE_H
#define PPC_ENGINE_H
#include <stddef.h>
#include <stdint.h>

#include "job.h"

typedef struct ppc_engine ppc_engine;

/* A local worker the caller started itself (e.g. forked): a direct child
 * of this process that reads frames from fd_to_worker's other end and
 * writes to fd_from_worker's. */
typedef struct ppc_prestarted {
    int pid;
    int fd_to_worker;   /* our write end */
    int fd_from_worker; /* our read end */
} ppc_prestarted;

typedef struct ppc_engine_opts {
    int nworkers;             /* local workers to start (0 allowed) */
    /* workers already running, counted in nworkers: the pool adopts them
     * instead of starting that many; they are supervised, reaped and
     * replaced (by worker_argv processes) like the ones it starts. The
     * engine owns them from the call on, also when it fails (then they
     * are closed, killed and reaped). */
    const ppc_prestarted *prestarted;
    int nprestarted;
    char *const *worker_argv; /* command for a worker, NULL-terminated; the
                                 worker reads frames on fd 3, writes on fd 4 */
    char *const *worker_env;  /* its environment (NULL: this process's) */
    const uint8_t *init;      /* INIT payload sent first to every worker */
    size_t init_len;
    int restart;              /* a fresh worker process for every job */
    uint64_t max_frame;       /* largest frame accepted from a worker */

    /* cluster client: remote nodes to use */
    const char *const *ppservers; /* "host:port" entries, NULL-terminated */
    const uint8_t *secret;        /* shared secret (client and ppserver) */
    size_t secret_len;
    int liveness_ms;              /* a peer silent this long is dead */
    int py_major, py_minor;       /* this process's Python, for the handshake */

    /* ppserver: accept clients on this address (listen_port >= 0) */
    const char *listen_host;
    int listen_port;              /* -1: no listening socket; 0: any port */
    uint64_t max_net_frame;       /* largest frame accepted from the network */

    /* autodiscovery: UDP port for announcements (0: off) */
    int discover_port;
    const char *broadcast;        /* ppserver: where to announce */
    int announce;                 /* ppserver: announce itself */
    int discover;                 /* client: connect to announced nodes */

    /* large data: 1 turns shared-memory segments off (everything inline) */
    int no_shm;
    size_t shm_pool_bytes;        /* cap of free argument segments kept (0: 1 GiB) */
    /* big bytes read from the owner's memory (vm.h): no_vm 1 turns it off;
     * vm_no_results 1 keeps workers' results copied into segments */
    int no_vm;
    int vm_no_results;

    /* tests: reap exited workers by polling on the loop's timer, as where
     * pidfd_open is missing (ENOSYS) */
    int test_no_pidfd;

    /* discovery (discfilter.h): the "*" entries of ppservers ("*", "*:port",
     * "192.168.1.*[:port]"), NULL-terminated; none with discover set: "*".
     * Tests may shorten the defaults (0: default): the window a client
     * listens for (5000 ms), how old an unasked announcement may be (60 s),
     * how long a discovered node may stay unreachable (30000 ms). */
    const char *const *discover_patterns;
    int discover_window_ms;
    int announce_max_age_s;
    int discover_expire_ms;
    /* log messages below this level are not queued (see also
     * ppc_engine_set_log_level); 0 queues every level */
    int log_level;
    /* TLS certificate mode (tls.h): all three, PEM files, read at start;
     * NULL: PSK mode from the secret */
    const char *certfile, *keyfile, *cafile;
    /* benchmarks only (never a user option): node links without TLS, for
     * a side-by-side measurement. A node with it offers cleartext in its
     * preamble; a client accepts that only when it has it set too, so no
     * one on the path can talk a client out of TLS. */
    int test_plaintext;
    /* connect-back (nodes dial the client; no inbound port on nodes):
     * client: a listening socket whose connections become nodes (used
     * when has_rendezvous; the engine keeps a duplicate); ppserver: dial
     * connect_host:connect_port and serve that client (NULL: off) */
    int rendezvous_fd;
    int has_rendezvous;
    const char *connect_host;
    int connect_port;
    /* status page (status.h): served when status_on, on status_host (NULL:
     * 127.0.0.1) and status_port (0: any free port); the page's files are
     * copied (path such as "/index.html", content type, bytes) */
    int status_on;
    const char *status_host;
    int status_port;
    const struct ppc_status_asset *status_assets;
    int nstatus_assets;
} ppc_engine_opts;

typedef struct ppc_status_asset {
    const char *path;
    const char *type;
    const uint8_t *data;
    size_t len;
} ppc_status_asset;

#define PPC_GROUP_ALL UINT32_MAX

/* Create and start the engine (its thread and its workers). NULL on error
 * with a message in err. */
ppc_engine *ppc_engine_new(const ppc_engine_opts *o, char *err, size_t errlen);

/* Stop: every job not yet done completes with PPC_JOB_EDESTROYED, workers
 * are stopped and reaped, the engine thread is joined. Idempotent. */
void ppc_engine_stop(ppc_engine *e);
/* Free after stop. Jobs still referenced by callers stay valid. */
void ppc_engine_free(ppc_engine *e);
/* 1 in a child forked after the engine was made: the engine thread and
 * the workers belong to the parent, the descriptors were closed at the
 * fork (proc.h). Nothing else may be called then; stop and free do
 * nothing (the child's copy of the memory is left as it is). */
int ppc_engine_foreign(const ppc_engine *e);

/* Hand a job to the engine (thread-safe). The engine takes its own
 * reference. group indexes the caller's groups (small integers). Returns 0,
 * or -1 if the engine is stopped (the job is then untouched). */
int ppc_engine_submit(ppc_engine *e, ppc_job *j, uint32_t group, int has_cb);

/* Large arguments: a segment of at least need bytes from the engine's
 * reuse pool (thread-safe), to be attached to a job as args_seg with its
 * blob length in used; NULL when segments are off or none can be made. The
 * engine gives it back to the pool when the job completes on a worker that
 * no longer references it. */
ppc_shm_seg *ppc_engine_shm_get(ppc_engine *e, size_t need);
/* Put back a segment that was never attached to a submitted job. */
void ppc_engine_shm_put(ppc_engine *e, ppc_shm_seg *s);
/* A result segment of local worker pid has been read: let the worker reuse
 * it, or (drop: a fork of this process may still map it) free it
 * (thread-safe; nothing happens when that worker is gone). */
void ppc_engine_shm_return(ppc_engine *e, int pid, uint64_t seg_id, int drop);
/* 1 when local workers may be given segment references. */
int ppc_engine_shm_on(ppc_engine *e);
/* 1 when argument segments may have holes that workers fill from this
 * process's memory (vm.h). */
int ppc_engine_vm_on(ppc_engine *e);

/* Wait until the job is DONE. timeout_ms < 0 waits forever. 1 when done,
 * 0 on timeout. */
int ppc_engine_wait_job(ppc_engine *e, ppc_job *j, int timeout_ms);
/* Wait until no job of the group (or PPC_GROUP_ALL) is pending. */
int ppc_engine_wait_group(ppc_engine *e, uint32_t group, int timeout_ms);

enum ppc_event_kind { PPC_EV_NONE = 0, PPC_EV_JOB = 1, PPC_EV_LOG = 2, PPC_EV_STOP = 3,
                      PPC_EV_DONE = 4 /* a watched job (ppc_engine_watch) is DONE; the
                                         caller owns one reference */ };
enum ppc_log_level { PPC_LOG_DEBUG = 10, PPC_LOG_INFO = 20, PPC_LOG_WARNING = 30, PPC_LOG_ERROR = 40 };

typedef struct ppc_event {
    int kind;
    ppc_job *job; /* PPC_EV_JOB: a COMPLETE job with a callback; the caller
                     owns one reference and must call ppc_engine_callback_done */
    int level;    /* PPC_EV_LOG */
    char msg[256];
} ppc_event;

/* Next event for the event thread; PPC_EV_NONE on timeout. After stop and
 * once drained, PPC_EV_STOP. */
int ppc_engine_next_event(ppc_engine *e, int timeout_ms, ppc_event *ev);
/* The callback of a job has run: mark it DONE and wake its waiters. */
void ppc_engine_callback_done(ppc_engine *e, ppc_job *j);

/* Futures. Before submit, a job may get timeout_ms (its worker is killed
 * when it runs longer; status PPC_JOB_ETIMEOUT) and retries (it runs again
 * when its worker dies under it). */
/* Cancel a job not yet taken for a node: 1 (it never runs; it completes
 * with PPC_JOB_ECANCELLED), 0 when too late. */
int ppc_engine_cancel(ppc_engine *e, ppc_job *j);
/* Stop a job (why: PPC_JOB_EKILLED): 1 when it was still queued (cancelled
 * as by ppc_engine_cancel), 2 when its worker is being killed (locally, or
 * by a KILL frame on a ppserver) and it completes with status why, 0 when
 * it is done already or the engine is stopped. */
int ppc_engine_kill(ppc_engine *e, ppc_job *j, int why);
/* Ask for a PPC_EV_DONE event when a job without callback is DONE (a job
 * with a callback gives its PPC_EV_JOB anyway): 1 when an event will come,
 * 0 when it is DONE already. */
int ppc_engine_watch(ppc_engine *e, ppc_job *j);

/* Change the number of local workers while jobs run. */
int ppc_engine_set_workers(ppc_engine *e, int n);
int ppc_engine_get_workers(ppc_engine *e);

typedef struct ppc_node_stats {
    char name[300];
    int active; /* connected and usable now */
    int ncpus;
    uint64_t njobs;
    uint64_t time_ns;
} ppc_node_stats;

/* Copy up to max node statistics; returns the number of nodes. */
int ppc_engine_stats(ppc_engine *e, ppc_node_stats *out, int max);
/* Jobs submitted and not yet done. */
size_t ppc_engine_pending(ppc_engine *e);
/* ppserver: the port it listens on, clients connected now, ms since the
 * last client activity. A node that dials its client: 1 while connected
 * to it, and ms since it was last. */
void ppc_engine_server_info(ppc_engine *e, int *port, int *nclients, int64_t *idle_ms);

/* The status page's port, or 0 when it is not served. */
int ppc_engine_status_port(ppc_engine *e);

/* Process ids of the live local workers; returns count (<= max). */
int ppc_engine_worker_pids(ppc_engine *e, int *pids, int max);

/* Discovery: open a new window (a query, then listen; thread-safe). -1
 * when this engine does not discover. */
int ppc_engine_rescan(ppc_engine *e);
/* Log messages below level are dropped before they are queued; at most
 * PPC_LOG_MAX_QUEUED wait for ppc_engine_next_event, the others are counted
 * and reported as one message (thread-safe). */
#define PPC_LOG_MAX_QUEUED 256
void ppc_engine_set_log_level(ppc_engine *e, int level);

#endif

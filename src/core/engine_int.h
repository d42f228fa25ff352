/* engine_int.h - state shared by the engine's own files (engine.c, pool.c,
 * remote.c, serve.c, conn.c, discover.c).
 *
 * Not a public header. The engine thread owns everything below that is not
 * marked "locked"; fields marked locked are shared with caller threads and
 * guarded by ppc_engine.mu. */
#ifndef PPC_ENGINE_INT_H
#define PPC_ENGINE_INT_H
#include <sys/epoll.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/types.h>
#include <stdatomic.h>

#include "buf.h"
#include "engine.h"
#include "proc.h"
#include "shm.h"
#include "u64set.h"

/* What an epoll registration points at. */
enum {
    PPC_SRC_WAKE = 1,
    PPC_SRC_WREAD = 2,
    PPC_SRC_WWRITE = 3,
    PPC_SRC_RNODE = 4,  /* client side: connection to a ppserver */
    PPC_SRC_LISTEN = 5, /* ppserver: listening socket */
    PPC_SRC_SCONN = 6,  /* ppserver: connection from a client */
    PPC_SRC_UDP = 7,    /* autodiscovery socket */
    PPC_SRC_WPID = 8,   /* pidfd of a worker whose pipe closed: it exited */
    PPC_SRC_RDV = 9,    /* client: rendezvous socket, nodes dial in (connect-back) */
    PPC_SRC_STATUS = 10 /* the status page's HTTP epoll fd (status.c) */
};
typedef struct ppc_evsrc {
    int kind;
    void *obj;
} ppc_evsrc;

typedef struct ppc_pool ppc_pool;

typedef struct ppc_worker {
    struct ppc_worker *next;
    pid_t pid;
    int fd_w; /* engine -> worker (worker's fd 3) */
    int fd_r; /* worker -> engine (worker's fd 4) */
    ppc_evsrc src_r, src_w, src_pid;
    int out_armed;
    int ready;    /* worker finished its start-up */
    int retiring; /* takes no new jobs; closed once idle */
    ppc_buf out, in;
    ppc_job *fl_head, *fl_tail; /* jobs sent, in order */
    int inflight;
    int lent; /* result segments of this worker the client still reads from */
    ppc_u64set fns; /* function ids this worker has */
    uint64_t done;
    double avg_ns;
    /* gone (pipe closed), waiting to be reaped: */
    int pidfd;          /* watched by epoll; -1: polled on the loop's timer */
    int64_t gone_since; /* ms */
    int killed;         /* we sent SIGKILL */
    int kill_sent;      /* SIGKILLed for a job's kill()/timeout: the job may
                           finish before the signal lands, and the next one
                           dies of it instead (settle requeues that one) */
    int expected;       /* it was told to go and had nothing left to do */
    char why[96];       /* the engine's reason (a broken protocol), or "" */
    int64_t busy_since; /* loop time (ms) its current job started; status page */
} ppc_worker;

/* A framed, non-blocking stream socket (either side of the network). */
typedef struct ppc_conn {
    int fd;
    ppc_evsrc src;
    ppc_buf in, out;
    uint32_t armed; /* epoll events registered */
    int64_t last_rx, last_tx;
    struct ssl_st *ssl; /* TLS session (tls.h), NULL before it starts */
    int tls;            /* 0: cleartext (the preamble), 1: handshake, 2: up */
    char why[160];      /* the last TLS failure, for the log */
} ppc_conn;

/* conn.c */
int ppc_conn_register(ppc_engine *e, ppc_conn *c);
/* Write what is buffered; arms EPOLLOUT when the socket is full. 0 or -1. */
int ppc_conn_flush(ppc_engine *e, ppc_conn *c);
/* Read what is there into c->in. 1 data read, 0 nothing more now, -1 EOF
 * or error (errno set, 0 for EOF). want: bytes to make room for. */
int ppc_conn_read(ppc_conn *c, size_t want);
/* Start TLS on the connection (ssl from ppc_tls_new; the conn owns it). */
void ppc_conn_tls_start(ppc_conn *c, struct ssl_st *ssl, int server);
/* Advance the TLS handshake: 1 done, 0 waiting for the socket, -1 failed
 * (reason in c->why). */
int ppc_conn_tls_step(ppc_engine *e, ppc_conn *c);
/* Why the last read or flush failed: the TLS reason, or errno's, or EOF. */
const char *ppc_conn_why(ppc_conn *c, const char *eof);
void ppc_conn_close(ppc_engine *e, ppc_conn *c);
int ppc_conn_put(ppc_conn *c, uint8_t type, uint8_t flags, uint64_t id, const void *p1, size_t n1,
                 const void *p2, size_t n2);
int ppc_conn_put_aux(ppc_conn *c, uint8_t type, uint8_t flags, uint16_t aux, uint64_t id,
                     const void *p1, size_t n1, const void *p2, size_t n2);

/* Client side: one ppserver node. */
enum { R_DOWN = 0, R_CONNECTING, R_HELLO, R_AUTH, R_READY, R_FAILED };
typedef struct ppc_rnode {
    int index; /* node number in statistics: 1 + position */
    char host[256];
    char port[8];
    char name[300];
    int state;
    int persistent; /* given by the user: reconnect when lost */
    ppc_conn c;
    uint8_t cnonce[32];
    int ncpus;
    int same_py;
    int peer_liveness_ms;
    ppc_job *fl_head, *fl_tail;
    int inflight;
    ppc_u64set fns;
    double avg_ns;
    uint64_t done;
    int64_t state_since, next_attempt, down_since;
    int backoff_ms;
    int ever_ready;
    char why[200];
    /* locked: statistics */
    uint64_t njobs, time_ns;
    /* TLS PSK stretched for the node's salt (tls.h), derived once per salt */
    uint8_t tls_salt[16], tls_key[32];
    int tls_have_key;
    struct ppc_kdf *tls_kdf; /* a derivation running on a thread of its own */
    uint8_t tls_pend_salt[16]; /* the connection waits for this salt's key */
    int tls_wait_key;
    int adopted; /* it dialed our rendezvous socket: never redialed by us */
} ppc_rnode;

/* ppserver side: one client connection. */
enum { S_HELLO = 0, S_AUTH, S_READY, S_CLOSING };
typedef struct ppc_sconn {
    struct ppc_sconn *next;
    int state;
    ppc_conn c;
    char peer[64];
    uint8_t cnonce[32], snonce[32];
    struct ppc_fnmap *fns; /* client function id -> blob */
    size_t nfns, capfns;
    size_t active; /* its jobs queued or running */
    int64_t accepted_ms; /* the handshake must end within HANDSHAKE_MS of it */
    char addr[64];       /* the peer's address without the port (fair slots) */
    int counted;         /* authenticated: counted in nclients */
    int dialed; /* we dialed the client (connect-back), serve.c redials it */
} ppc_sconn;

typedef struct ppc_logmsg {
    struct ppc_logmsg *next;
    int level;
    char msg[256];
} ppc_logmsg;

struct ppc_engine {
    pthread_mutex_t mu;
    pthread_cond_t cv_done;
    pthread_cond_t cv_ev;
    pthread_t thread;
    int thread_started;
    unsigned fork_gen; /* ppc_fork_generation() when made: another value
                          means this is a forked child's copy */
    int epfd;
    int wakefd;
    ppc_evsrc wake_src;

    /* locked */
    ppc_job *in_head, *in_tail; /* submitted, not yet taken */
    int sleeping;
    int saturated; /* sleeping with jobs queued that no node can take yet */
    int waiters;
    int stopping;
    int stopped;
    int want_workers; /* -1: no request */
    ppc_job *cb_head, *cb_tail; /* complete jobs with callbacks */
    ppc_logmsg *log_head, *log_tail;
    size_t *group_pending;
    size_t ngroups;
    size_t total_pending;
    uint64_t next_id;
    int ncpus;            /* local worker target, as reported */
    uint64_t local_njobs; /* statistics of the local node */
    uint64_t local_time_ns;
    int *pids;
    int npids;
    ppc_rnode **rn; /* remote nodes; the array only grows (resized locked) */
    int nrn, caprn;
    int nclients;
    int64_t last_client_activity;
    /* frames for local workers from other threads, sent in order: result
     * segments given back (SHMRET) */
    struct ppc_shmret { int pid; uint8_t type; uint8_t aux; uint64_t id; } *shmret;
    size_t nshmret, capshmret;

    /* thread-safe itself */
    ppc_shm_pool shm;
    atomic_int shm_on; /* segments in use for local workers */
    atomic_int vm_on;  /* workers read big bytes from our memory (vm.h) */
    int listen_port_actual;

    /* engine thread */
    ppc_job *rq_head, *rq_tail;
    size_t rq_len;
    ppc_job *done_head, *done_tail;
    ppc_pool *pool;
    ppc_engine_opts opts;
    char **argv_copy;
    char **env_copy;
    uint8_t *init_copy;
    uint8_t *secret_copy;
    char *listen_host_copy;
    char *broadcast_copy;
    int listen_fd;
    ppc_evsrc listen_src;
    ppc_sconn *sconns;
    uint64_t next_blob_id; /* ppserver: blob ids of its own */
    int udp_fd;
    ppc_evsrc udp_src;
    int64_t next_announce;
    int64_t created_ms;
    /* the epoll batch being handled: events for an object freed while the
     * batch runs are dropped by ppc_engine_forget (no stale pointer read) */
    struct epoll_event *batch;
    int batch_n;
    /* discovery state (discover.c) */
    struct ppc_disc *disc;
    /* the log queue's bounds (ppc_engine_log) */
    size_t nlog;          /* locked: messages queued */
    uint64_t log_dropped; /* locked: dropped since the queue last drained */
    atomic_int log_level; /* below it nothing is queued */
    /* TLS (tls.h): contexts of both sides; the ppserver's PSK and salt */
    struct ssl_ctx_st *tls_cctx, *tls_sctx;
    int tls_mode;
    uint8_t tls_salt[16], tls_key[32];
    /* connect-back: the client's rendezvous socket (remote.c), the
     * address a node dials (serve.c) and when it dials next */
    int rdv_fd;
    ppc_evsrc rdv_src;
    char dial_host[256];
    char dial_port[8];
    int64_t dial_next;
    int dial_fd, dial_pending; /* a dial in progress (not yet connected) */
    int64_t dial_started;
    int dial_backoff_ms;
    /* locked: the dialed client is reachable (connected), and since when
     * it is not (ppc_engine_server_info reports it to the idle timeout) */
    int dial_alive;
    int64_t dial_last_alive;
    struct ppc_status *status; /* the status page, or NULL (status.c) */
    int64_t loop_ms;           /* this loop turn's time, kept while status is on */
    int status_port;           /* its port, fixed before the thread starts */
    /* futures (locked): kill requests for the engine thread (each holds a
     * job reference), cancels not yet swept from the run queue */
    ppc_job **kills;
    size_t nkills, capkills;
    int cancels;
    atomic_int ntimed; /* jobs with a timeout submitted and not yet done */
};

/* engine.c services for the nodes */
/* Call before freeing an object of `size` bytes that holds evsrcs: events
 * still pending for it in the current epoll batch are dropped. */
void ppc_engine_forget(ppc_engine *e, const void *obj, size_t size);
void ppc_engine_complete(ppc_engine *e, ppc_job *j);
void ppc_engine_requeue_front(ppc_engine *e, ppc_job *j);
void ppc_engine_log(ppc_engine *e, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int64_t ppc_now_ms(void);
/* A job whose worker died under it: requeued at the front when it has
 * retries left and nobody asked to stop it (1), else 0. */
int ppc_engine_retry(ppc_engine *e, ppc_job *j);

/* pool.c: large data */
/* A frame without payload for local worker pid, if it is alive (SHMRET also
 * counts its lent segments down). */
void ppc_pool_note(ppc_pool *p, int pid, uint8_t type, uint8_t aux, uint64_t id);
/* The job no longer needs its argument segment: back to the pool, or
 * destroyed (pinned: a worker still uses it); workers forget dropped ones. */
void ppc_pool_args_done(ppc_pool *p, ppc_job *j, int pinned);

/* remote.c: client-side nodes (ppservers) */
int ppc_remote_add(ppc_engine *e, const char *host, const char *port, int persistent);
ppc_rnode *ppc_remote_pick(ppc_engine *e, ppc_job *j, size_t qlen);
int ppc_remote_dispatch(ppc_engine *e, ppc_rnode *r, ppc_job *j);
void ppc_remote_event(ppc_engine *e, ppc_rnode *r, uint32_t events);
int ppc_remote_tick(ppc_engine *e); /* ms until it wants to run again, -1 */
void ppc_remote_flush(ppc_engine *e);
/* 1 when some remote node runs, or may soon run, a job with these flags */
int ppc_remote_may_run(ppc_engine *e, uint32_t blob_flags);
void ppc_remote_shutdown(ppc_engine *e);
void ppc_remote_free(ppc_engine *e);
/* TLS contexts from o's certfile/keyfile/cafile (none: PSK mode), at
 * engine start; frees them in ppc_remote_free. 0 or -1 with err. */
int ppc_tls_engine_init(ppc_engine *e, const ppc_engine_opts *o, char *err, size_t errlen);
/* Connect-back: watch the caller's listening socket (a duplicate is kept);
 * each connection accepted there becomes a node (ppc_remote_adopt). */
int ppc_remote_listen(ppc_engine *e, int fd, char *err, size_t errlen);
void ppc_remote_accept(ppc_engine *e);
/* Take a connected socket as a node: it enters the handshake exactly as a
 * node we connected to; lost, it is not redialed (it dials again). */
int ppc_remote_adopt(ppc_engine *e, int fd);
/* kill(): ask the node running j to kill it (a KILL frame): 1 when j is on
 * a node, else 0. */
int ppc_remote_kill_job(ppc_engine *e, ppc_job *j);
/* Jobs on nodes past their timeout get a KILL; ms until the next one is
 * due, or -1. */
int ppc_remote_timeouts(ppc_engine *e, int64_t now);

/* serve.c: the ppserver side */
int ppc_serve_start(ppc_engine *e, char *err, size_t errlen);
void ppc_serve_accept(ppc_engine *e);
void ppc_serve_event(ppc_engine *e, ppc_sconn *s, uint32_t events);
/* A job of a client finished: send its result back. Takes the reference. */
void ppc_serve_result(ppc_engine *e, ppc_job *j);
int ppc_serve_tick(ppc_engine *e);
void ppc_serve_flush(ppc_engine *e);
void ppc_serve_shutdown(ppc_engine *e);
/* Connect-back: dial the client at opts.connect_host:connect_port and
 * serve it over that socket; redialed with backoff whenever it closes. */
int ppc_serve_dial_start(ppc_engine *e, char *err, size_t errlen);
int ppc_serve_dial_tick(ppc_engine *e); /* ms until it wants to run again, -1 */
/* Serve a socket we dialed: it enters the handshake as an accepted one. */
ppc_sconn *ppc_serve_adopt(ppc_engine *e, int fd);

/* discover.c: autodiscovery over UDP broadcast */
int ppc_discover_start(ppc_engine *e, char *err, size_t errlen);
void ppc_discover_event(ppc_engine *e);
int ppc_discover_tick(ppc_engine *e);
void ppc_discover_stop(ppc_engine *e);
void ppc_discover_free(ppc_engine *e);
/* 1 while a client's discovery window is open (or about to open) */
int ppc_discover_window_open(ppc_engine *e);

/* pool.c: the local worker pool node */
ppc_pool *ppc_pool_new(ppc_engine *e);
void ppc_pool_free(ppc_pool *p);
void ppc_pool_set_target(ppc_pool *p, int n);
/* A worker started by the caller (a direct child; our pipe ends): 0, or -1
 * after closing, killing and reaping it. Before the engine thread runs, or on it. */
int ppc_pool_adopt(ppc_pool *p, int pid, int fd_w, int fd_r);
void ppc_pool_retarget(ppc_pool *p, int n); /* set_ncpus: also clears a start failure */
/* A worker that can take one more job now, given the run queue length. */
ppc_worker *ppc_pool_pick(ppc_pool *p, size_t qlen);
int ppc_pool_dispatch(ppc_pool *p, ppc_worker *w, ppc_job *j);
void ppc_pool_event(ppc_pool *p, ppc_evsrc *src, uint32_t events);
void ppc_pool_flush(ppc_pool *p);
/* Reap exited workers; returns the ms until it wants to run again, -1 none. */
int ppc_pool_tick(ppc_pool *p);
/* Non-zero when the pool can never run a job (no workers wanted, or they
 * keep failing to start); msg says why. */
int ppc_pool_dead(ppc_pool *p, const char **msg);
/* Fail in-flight jobs with EDESTROYED and stop every worker. */
void ppc_pool_shutdown(ppc_pool *p);
/* The live workers, in a list linked by next (engine thread: status page). */
ppc_worker *ppc_pool_workers(ppc_pool *p);
/* Cancel the jobs of a gone requester: workers running them are stopped. */
void ppc_pool_cancel_origin(ppc_pool *p, void *origin);
/* kill(): the worker running j is killed now, or once j is the job it runs
 * (j->killreq set by the caller): 1 when j is on a worker, else 0. */
int ppc_pool_kill_job(ppc_pool *p, ppc_job *j);
/* ppserver: the same for a client's job, named by its client id. */
int ppc_pool_kill_client_job(ppc_pool *p, void *origin, uint64_t client_id);
/* Workers whose job ran past its timeout are killed; ms until the next
 * deadline, or -1. */
int ppc_pool_timeouts(ppc_pool *p, int64_t now);

#endif

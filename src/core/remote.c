/* remote.c - the client side of the cluster: each ppserver is a node with
 * slots, reached over one TCP connection that pipelines many jobs.
 *
 * A node goes DOWN -> CONNECTING -> HELLO (the node's cleartext preamble,
 * then the TLS handshake, tls.h) -> AUTH (our HELLO sent inside TLS,
 * waiting for its WELCOME: versions) -> READY. TLS authenticates both
 * sides (a PSK stretched from the secret, or certificates), so a stranger
 * cannot lure jobs, and protects every frame. Function blobs are sent once per
 * connection. Liveness is by heartbeat: a PING whenever we have been quiet
 * for a heartbeat interval, and a node silent for the liveness interval is
 * lost; a job may still run for hours. A lost node's jobs go back to the
 * queue (bounded retries) and the node is reconnected with backoff; so is
 * a node whose handshake failed (wrong secret, other version, a forged or
 * altered frame): the backoff grows to BACKOFF_MAX_MS, nothing disables a
 * node for good. Engine thread. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "engine_int.h"
#include "frame.h"
#include "net.h"
#include "tls.h"
#include "vm.h"

#define HANDSHAKE_MS 10000
#define GRACE_MS 5000
#define MAX_TRIES 3
#define BACKOFF_MAX_MS 30000
#define HANDSHAKE_MAX_FRAME 4096
#define AHEAD_NS 4000000.0
/* connect-back: how long after the start queued jobs wait for a first
 * node to dial in when no node could run them */
#define RDV_GRACE_MS 30000

static int hb_ms(ppc_engine *e, ppc_rnode *r)
{
    int l = e->opts.liveness_ms;
    if (r->peer_liveness_ms > 0 && r->peer_liveness_ms < l)
        l = r->peer_liveness_ms;
    int hb = l / 3;
    if (hb > 5000)
        hb = 5000;
    if (hb < 50)
        hb = 50;
    return hb;
}

int ppc_remote_add(ppc_engine *e, const char *host, const char *port, int persistent)
{
    for (int i = 0; i < e->nrn; i++)
        if (!strcmp(e->rn[i]->host, host) && !strcmp(e->rn[i]->port, port))
            return 0;
    ppc_rnode *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    snprintf(r->host, sizeof r->host, "%s", host);
    snprintf(r->port, sizeof r->port, "%s", port);
    snprintf(r->name, sizeof r->name, "%s:%s", host, port);
    r->persistent = persistent;
    r->c.fd = -1;
    r->c.src.kind = PPC_SRC_RNODE;
    r->c.src.obj = r;
    r->state = R_DOWN;
    r->backoff_ms = 500;
    r->next_attempt = 0;
    r->down_since = ppc_now_ms();
    pthread_mutex_lock(&e->mu);
    if (e->nrn == e->caprn) {
        int ncap = e->caprn ? e->caprn * 2 : 8;
        ppc_rnode **n = realloc(e->rn, (size_t)ncap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&e->mu);
            free(r);
            return -1;
        }
        e->rn = n;
        e->caprn = ncap;
    }
    r->index = e->nrn + 1;
    e->rn[e->nrn++] = r;
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static void set_state(ppc_engine *e, ppc_rnode *r, int st)
{
    pthread_mutex_lock(&e->mu); /* readers of statistics look at state */
    r->state = st;
    pthread_mutex_unlock(&e->mu);
    r->state_since = ppc_now_ms();
}

/* Put the node's jobs back in the queue (or fail them after MAX_TRIES). */
static int settle_jobs(ppc_engine *e, ppc_rnode *r)
{
    int n = 0;
    ppc_job *rev = ppc_job_list_reverse(r->fl_head);
    r->fl_head = r->fl_tail = NULL;
    r->inflight = 0;
    while (rev) {
        ppc_job *nx = rev->next;
        rev->next = NULL;
        if (++rev->tries >= MAX_TRIES) {
            char msg[400];
            snprintf(msg, sizeof msg, "job lost %d times with the node running it (last: %s)",
                     (int)rev->tries, r->name);
            ppc_job_fail(rev, PPC_JOB_EWORKER, msg);
            ppc_engine_complete(e, rev);
        } else {
            ppc_engine_requeue_front(e, rev);
            n++;
        }
        rev = nx;
    }
    return n;
}

static void drop_conn(ppc_engine *e, ppc_rnode *r)
{
    r->tls_wait_key = 0; /* a derivation still running is kept for later */
    ppc_conn_close(e, &r->c);
    ppc_u64set_free(&r->fns); /* a new connection starts with no blobs */
}

/* The connection failed, was lost, or its handshake failed (refused, wrong
 * secret, other version): retried later with the growing backoff. */
static void lost(ppc_engine *e, ppc_rnode *r, const char *why_in)
{
    char why[200]; /* why_in may live in the connection closed below */
    snprintf(why, sizeof why, "%s", why_in);
    int was_ready = r->state == R_READY;
    drop_conn(e, r);
    int n = settle_jobs(e, r);
    int64_t now = ppc_now_ms();
    if (was_ready || r->why[0] == 0 || strcmp(r->why, why) != 0) {
        if (was_ready)
            ppc_engine_log(e, PPC_LOG_WARNING, "node %s lost: %s; %d job(s) rescheduled", r->name,
                           why, n);
        else
            ppc_engine_log(e, PPC_LOG_ERROR, "node %s unreachable: %s", r->name, why);
    }
    snprintf(r->why, sizeof r->why, "%s", why);
    if (was_ready)
        r->down_since = now;
    set_state(e, r, R_DOWN);
    r->next_attempt = now + r->backoff_ms;
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}


static void start_connect(ppc_engine *e, ppc_rnode *r)
{
    char err[256] = "";
    r->c.fd = ppc_net_connect(r->host, r->port, err, sizeof err);
    if (r->c.fd < 0) {
        lost(e, r, err);
        return;
    }
    if (ppc_conn_register(e, &r->c) < 0) {
        lost(e, r, "epoll registration failed");
        return;
    }
    set_state(e, r, R_CONNECTING);
}

/* Start the handshake on r's connected, registered socket: wait for the
 * node's preamble, then TLS. */
static void start_handshake(ppc_engine *e, ppc_rnode *r)
{
    ppc_buf_consume(&r->c.in, ppc_buf_unread(&r->c.in));
    set_state(e, r, R_HELLO);
}

static void send_hello(ppc_engine *e, ppc_rnode *r);

/* A PSK derivation (scrypt, ~75 ms) on a thread of its own, so that the
 * engine thread keeps serving local workers and other nodes meanwhile; it
 * wakes the engine when done, and ppc_remote_tick picks the key up. */
typedef struct ppc_kdf {
    pthread_t th;
    atomic_int done;
    int ok;
    int wakefd;
    const uint8_t *secret; /* the engine's copy: joined before it is freed */
    size_t secret_len;
    uint8_t salt[PPC_TLS_SALT_LEN], key[PPC_TLS_KEY_LEN];
} ppc_kdf;

static void *kdf_main(void *arg)
{
    ppc_kdf *k = arg;
    k->ok = ppc_tls_derive(k->secret, k->secret_len, k->salt, k->key) == 0;
    atomic_store(&k->done, 1);
    uint64_t one = 1;
    ssize_t w = write(k->wakefd, &one, sizeof one);
    (void)w; /* EAGAIN: a wake-up is pending anyway */
    return NULL;
}

static void kdf_reap(ppc_rnode *r)
{
    ppc_kdf *k = r->tls_kdf;
    pthread_join(k->th, NULL);
    if (k->ok) {
        memcpy(r->tls_salt, k->salt, sizeof r->tls_salt);
        memcpy(r->tls_key, k->key, sizeof r->tls_key);
        r->tls_have_key = 1;
    }
    OPENSSL_cleanse(k->key, sizeof k->key);
    free(k);
    r->tls_kdf = NULL;
}

/* Derive the key for r->tls_pend_salt: on a thread, or here when no
 * thread can be made. 0, or -1 when it cannot be derived. */
static int kdf_start(ppc_engine *e, ppc_rnode *r)
{
    ppc_kdf *k = calloc(1, sizeof *k);
    if (k) {
        k->wakefd = e->wakefd;
        k->secret = e->opts.secret;
        k->secret_len = e->opts.secret_len;
        memcpy(k->salt, r->tls_pend_salt, sizeof k->salt);
        if (pthread_create(&k->th, NULL, kdf_main, k) == 0) {
            r->tls_kdf = k;
            return 0;
        }
        free(k);
    }
    if (ppc_tls_derive(e->opts.secret, e->opts.secret_len, r->tls_pend_salt, r->tls_key) < 0)
        return -1;
    memcpy(r->tls_salt, r->tls_pend_salt, sizeof r->tls_salt);
    r->tls_have_key = 1;
    return 0;
}

static void start_tls(ppc_engine *e, ppc_rnode *r)
{
    struct ssl_st *ssl =
        e->tls_cctx ? ppc_tls_new(e->tls_cctx, r->c.fd, e->tls_mode == PPC_TLS_PSK ? r->tls_key : NULL)
                    : NULL;
    if (!ssl) {
        lost(e, r, "cannot start TLS (out of memory?)");
        return;
    }
    ppc_conn_tls_start(&r->c, ssl, 0);
}

/* Run the TLS handshake as far as the socket allows; once it is done, send
 * HELLO. 1: HELLO sent (state AUTH), 0: waiting, -1: r was dropped. */
static int tls_advance(ppc_engine *e, ppc_rnode *r)
{
    int rc = ppc_conn_tls_step(e, &r->c);
    if (rc < 0) {
        char m[200];
        snprintf(m, sizeof m, "TLS handshake refused (%s): %s",
                 e->tls_mode == PPC_TLS_PSK ? "wrong secret?" : "certificate not accepted?",
                 ppc_conn_why(&r->c, "connection closed"));
        lost(e, r, m);
        return -1;
    }
    if (rc == 0)
        return 0;
    send_hello(e, r);
    return r->state == R_AUTH ? 1 : -1;
}

/* The key a waiting connection needs may be there now (ppc_remote_tick). */
static void kdf_poll(ppc_engine *e, ppc_rnode *r)
{
    int failed_now = 0;
    if (r->tls_kdf && atomic_load(&r->tls_kdf->done)) {
        failed_now = !r->tls_kdf->ok;
        kdf_reap(r);
    }
    if (!r->tls_wait_key || r->tls_kdf)
        return;
    if (r->c.fd < 0 || r->state != R_HELLO) {
        r->tls_wait_key = 0;
        return;
    }
    if (r->tls_have_key && !memcmp(r->tls_pend_salt, r->tls_salt, sizeof r->tls_salt)) {
        r->tls_wait_key = 0;
        start_tls(e, r);
        if (r->state == R_HELLO && r->c.tls == 1)
            tls_advance(e, r);
        return;
    }
    if (failed_now || kdf_start(e, r) < 0) {
        lost(e, r, "cannot derive the TLS key (out of memory?)");
        return;
    }
    if (!r->tls_kdf) /* derived here: go on at once */
        kdf_poll(e, r);
}

/* The node's cleartext preamble: its mode and salt. Start TLS. */
static void on_preamble(ppc_engine *e, ppc_rnode *r)
{
    int mode;
    uint8_t salt[PPC_TLS_SALT_LEN];
    if (ppc_buf_unread(&r->c.in) != PPC_TLS_PREAMBLE_LEN ||
        ppc_tls_preamble_decode(ppc_buf_head(&r->c.in), PPC_TLS_PREAMBLE_LEN, &mode, salt) < 0) {
        lost(e, r, "not a ppc node (no TLS preamble; an older ppc version?)");
        return;
    }
    ppc_buf_consume(&r->c.in, PPC_TLS_PREAMBLE_LEN);
    if (mode == PPC_TLS_PLAIN && e->opts.test_plaintext) {
        send_hello(e, r); /* a benchmark's cleartext link (engine.h) */
        return;
    }
    if (mode != e->tls_mode) {
        lost(e, r,
               mode == PPC_TLS_CERT
                   ? "the node uses TLS certificates; give this client certfile, keyfile, cafile"
               : mode == PPC_TLS_PLAIN
                   ? "the node offers no TLS (a benchmark's node): refused"
                   : "the node uses a shared secret, this client TLS certificates");
        return;
    }
    if (mode == PPC_TLS_PSK && (!r->tls_have_key || memcmp(salt, r->tls_salt, sizeof salt))) {
        /* once per node process (tls.h): the connection waits for the key */
        memcpy(r->tls_pend_salt, salt, sizeof salt);
        r->tls_wait_key = 1;
        kdf_poll(e, r);
        return;
    }
    start_tls(e, r);
}

/* TLS is up: say who we are inside it. */
static void send_hello(ppc_engine *e, ppc_rnode *r)
{
    ppc_hello h;
    h.version = PPC_PROTO_VERSION;
    h.py_major = (uint8_t)e->opts.py_major;
    h.py_minor = (uint8_t)e->opts.py_minor;
    uint8_t buf[PPC_HELLO_LEN];
    ppc_hello_encode(&h, buf);
    if (ppc_conn_put(&r->c, PPC_F_HELLO, 0, 0, buf, sizeof buf, NULL, 0) < 0 ||
        ppc_conn_flush(e, &r->c) < 0) {
        lost(e, r, ppc_conn_why(&r->c, "connection closed by the node"));
        return;
    }
    set_state(e, r, R_AUTH);
}

static void on_welcome(ppc_engine *e, ppc_rnode *r, const ppc_frame *f)
{
    ppc_welcome w;
    if (ppc_welcome_decode(f->payload, (size_t)f->len, &w) < 0) {
        lost(e, r, "not a ppc node (malformed welcome)");
        return;
    }
    if (w.h.version != PPC_PROTO_VERSION) {
        char m[128];
        snprintf(m, sizeof m, "protocol version %u, this client speaks %u", w.h.version,
                 PPC_PROTO_VERSION);
        lost(e, r, m);
        return;
    }
    r->same_py = w.h.py_major == e->opts.py_major && w.h.py_minor == e->opts.py_minor;
    if (!r->same_py)
        ppc_engine_log(e, PPC_LOG_WARNING,
                       "node %s runs Python %u.%u, this client %d.%d: functions that travel as "
                       "code objects (lambdas, closures, no source) will not be sent there",
                       r->name, w.h.py_major, w.h.py_minor, e->opts.py_major, e->opts.py_minor);
    r->ncpus = (int)(w.ncpus > 4096 ? 4096 : w.ncpus);
    r->peer_liveness_ms = (int)(w.liveness_ms > 2000000000u ? 2000000000u : w.liveness_ms);
    r->backoff_ms = 500;
    r->why[0] = 0;
    r->ever_ready = 1;
    set_state(e, r, R_READY);
    if (r->ncpus <= 0)
        ppc_engine_log(e, PPC_LOG_WARNING, "node %s has no workers: no job will run there",
                       r->name);
    else
        ppc_engine_log(e, PPC_LOG_INFO, "connected to node %s (%d workers)", r->name, r->ncpus);
}

static void on_result(ppc_engine *e, ppc_rnode *r, const ppc_frame *f)
{
    ppc_job *prev = NULL, *j = r->fl_head;
    while (j && j->id != f->id) {
        prev = j;
        j = j->next;
    }
    if (!j)
        return; /* not ours (already settled): ignore */
    if (prev)
        prev->next = j->next;
    else
        r->fl_head = j->next;
    if (r->fl_tail == j)
        r->fl_tail = prev;
    j->next = NULL;
    r->inflight--;
    if (f->flags == PPC_JOB_EWORKER && ppc_engine_retry(e, j))
        return;
    if (j->args_seg && e->pool)
        ppc_pool_args_done(e->pool, j, 0); /* only read from here: reusable */
    if (f->flags == PPC_JOB_OK && f->len >= 8) {
        j->exec_ns = ppc_get_u64(f->payload);
        size_t n = (size_t)f->len - 8;
        free(j->result);
        j->result = malloc(n ? n : 1);
        if (j->result) {
            memcpy(j->result, f->payload + 8, n);
            j->result_len = n;
            j->result_aux = f->aux & PPC_AUX_OOB;
            j->status = PPC_JOB_OK;
        } else {
            ppc_job_fail(j, PPC_JOB_EWORKER, "out of memory for the job's result");
        }
        r->done++;
        double x = (double)j->exec_ns;
        r->avg_ns = r->done == 1 ? x : 0.8 * r->avg_ns + 0.2 * x;
    } else {
        char msg[400];
        snprintf(msg, sizeof msg, "node %s: %.*s", r->name, (int)(f->len > 300 ? 300 : f->len),
                 (const char *)f->payload);
        ppc_job_fail(j, f->flags == PPC_JOB_OK ? PPC_JOB_EWORKER : f->flags, msg);
    }
    ppc_engine_complete(e, j);
}

static void on_frame(ppc_engine *e, ppc_rnode *r, const ppc_frame *f)
{
    if (f->type == PPC_F_ERROR) {
        char msg[300];
        snprintf(msg, sizeof msg, "refused: %.*s", (int)(f->len > 250 ? 250 : f->len),
                 (const char *)f->payload);
        if (r->state == R_READY)
            lost(e, r, msg);
        else
            lost(e, r, msg);
        return;
    }
    switch (r->state) {
    case R_AUTH:
        if (f->type == PPC_F_WELCOME)
            on_welcome(e, r, f);
        else
            lost(e, r, "not a ppc node (unexpected handshake)");
        return;
    case R_READY:
        if (f->type == PPC_F_RESULT)
            on_result(e, r, f);
        else if (f->type == PPC_F_PING)
            ppc_conn_put(&r->c, PPC_F_PONG, 0, f->id, NULL, 0, NULL, 0);
        else if (f->type != PPC_F_PONG)
            lost(e, r, "protocol violation");
        return;
    default:
        return;
    }
}

void ppc_remote_event(ppc_engine *e, ppc_rnode *r, uint32_t events)
{
    if (r->c.fd < 0)
        return;
    if (r->state == R_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        int err = ppc_net_sock_error(r->c.fd);
        if (err) {
            lost(e, r, strerror(err));
            return;
        }
        start_handshake(e, r);
        events |= EPOLLIN;
    }
    if (r->state == R_HELLO && r->c.tls == 0 && !r->c.ssl) {
        for (;;) { /* the preamble, in the clear */
            int rr = ppc_conn_read(&r->c, PPC_TLS_PREAMBLE_LEN);
            if (rr < 0) {
                lost(e, r, ppc_conn_why(&r->c, "connection closed by the node"));
                return;
            }
            if (ppc_buf_unread(&r->c.in) >= PPC_TLS_PREAMBLE_LEN) {
                on_preamble(e, r);
                if (r->state != R_HELLO)
                    return;
                break;
            }
            if (rr == 0)
                return;
        }
    }
    if (r->tls_wait_key)
        return; /* the key is being derived (kdf_poll) */
    if (r->state == R_HELLO && r->c.tls == 1) {
        if (tls_advance(e, r) <= 0)
            return;
        events |= EPOLLIN;
    }
    if ((events & EPOLLOUT) && ppc_conn_flush(e, &r->c) < 0) {
        lost(e, r, ppc_conn_why(&r->c, "connection broken"));
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        ppc_frame f;
        uint64_t lim = r->state == R_READY ? e->opts.max_net_frame : HANDSHAKE_MAX_FRAME;
        int rc = ppc_frame_parse(ppc_buf_head(&r->c.in), ppc_buf_unread(&r->c.in), lim, &f);
        if (rc < 0) {
            lost(e, r, rc == PPC_FRAME_ETOOBIG ? "oversized frame" : "malformed frame");
            return;
        }
        if (rc == PPC_FRAME_OK) {
            int st = r->state;
            on_frame(e, r, &f);
            if (r->c.fd < 0 || (st != r->state && (r->state == R_DOWN || r->state == R_FAILED)))
                return;
            ppc_buf_consume(&r->c.in, PPC_FRAME_HDR + (size_t)f.len);
            continue;
        }
        size_t want = f.len ? PPC_FRAME_HDR + (size_t)f.len - ppc_buf_unread(&r->c.in) : 0;
        int rr = ppc_conn_read(&r->c, want);
        if (rr > 0)
            continue;
        if (rr < 0)
            lost(e, r, ppc_conn_why(&r->c, "connection closed by the node"));
        return;
    }
}

int ppc_remote_may_run(ppc_engine *e, uint32_t flags)
{
    int64_t now = ppc_now_ms();
    if (e->rdv_fd >= 0 && now - e->created_ms < RDV_GRACE_MS)
        return 1; /* nodes may still be dialing in */
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *r = e->rn[i];
        if (r->state == R_FAILED)
            continue;
        if (r->state == R_READY && (flags & PPC_BLOB_SAME_PY) && !r->same_py)
            continue;
        if (r->state == R_READY && r->ncpus <= 0)
            continue; /* a node with no workers (ppserver -w 0) runs nothing */
        if (r->state != R_DOWN || now - r->down_since < GRACE_MS)
            return 1;
    }
    return 0;
}

static int limit(ppc_engine *e, ppc_rnode *r, size_t qlen)
{
    int slots = r->ncpus > 0 ? r->ncpus : 1;
    int lim = slots + 2; /* the reserve: the next jobs already on the wire */
    if (r->done && r->avg_ns > 0) {
        double ahead = AHEAD_NS / r->avg_ns;
        int nready = 0;
        for (int i = 0; i < e->nrn; i++)
            nready += e->rn[i]->state == R_READY;
        double share = (double)qlen / (nready ? nready : 1) / slots;
        double extra = ahead < share ? ahead : share;
        if (extra > 255)
            extra = 255;
        if (slots * (1 + (int)extra) > lim)
            lim = slots * (1 + (int)extra);
    }
    return lim;
}

ppc_rnode *ppc_remote_pick(ppc_engine *e, ppc_job *j, size_t qlen)
{
    ppc_rnode *best = NULL;
    double best_load = 0;
    uint32_t flags = j->fn ? j->fn->flags : 0;
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *r = e->rn[i];
        if (r->state != R_READY || r->ncpus <= 0)
            continue;
        if ((flags & PPC_BLOB_SAME_PY) && !r->same_py)
            continue;
        if (r->inflight >= limit(e, r, qlen))
            continue;
        double load = (double)r->inflight / r->ncpus;
        if (!best || load < best_load) {
            best = r;
            best_load = load;
        }
    }
    return best;
}

int ppc_remote_dispatch(ppc_engine *e, ppc_rnode *r, ppc_job *j)
{
    (void)e;
    uint64_t fid = j->fn ? j->fn->id : 0;
    if (fid && !ppc_u64set_has(&r->fns, fid)) {
        if (ppc_conn_put(&r->c, PPC_F_FUNC, (uint8_t)j->fn->flags, fid, j->fn->data, j->fn->len,
                         NULL, 0) < 0 ||
            ppc_u64set_add(&r->fns, fid) < 0)
            return -1;
    }
    uint8_t pre[8];
    ppc_put_u64(pre, fid);
    /* args in a segment travel inline (read from our own mapping, holes
     * filled from our own memory first) */
    if (j->args_seg)
        ppc_vm_fill_own(j->args_seg);
    int rc = j->args_seg ? ppc_conn_put_aux(&r->c, PPC_F_JOB, 0, PPC_AUX_OOB, j->id, pre, 8,
                                            j->args_seg->map, j->args_seg->used)
                         : ppc_conn_put_aux(&r->c, PPC_F_JOB, 0, j->args_aux & PPC_AUX_OOB, j->id,
                                            pre, 8, j->args, j->args_len);
    if (rc < 0)
        return -1;
    j->next = NULL;
    if (r->fl_tail)
        r->fl_tail->next = j;
    else
        r->fl_head = j;
    r->fl_tail = j;
    r->inflight++;
    j->node = (uint32_t)r->index;
    atomic_store_explicit(&j->state, PPC_JOB_RUNNING, memory_order_relaxed);
    return 0;
}

void ppc_remote_flush(ppc_engine *e)
{
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *r = e->rn[i];
        if (r->c.fd >= 0 && r->state >= R_AUTH && r->state != R_FAILED && ppc_buf_unread(&r->c.out) > 0 &&
            ppc_conn_flush(e, &r->c) < 0)
            lost(e, r, ppc_conn_why(&r->c, "connection broken"));
    }
}

int ppc_remote_tick(ppc_engine *e)
{
    int64_t now = ppc_now_ms();
    int64_t next = -1;
#define WANT(t)                                                                                    \
    do {                                                                                           \
        int64_t d_ = (t)-now;                                                                      \
        if (d_ < 0)                                                                                \
            d_ = 0;                                                                                \
        if (next < 0 || d_ < next)                                                                 \
            next = d_;                                                                             \
    } while (0)
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *r = e->rn[i];
        if (r->tls_kdf || r->tls_wait_key)
            kdf_poll(e, r);
        switch (r->state) {
        case R_DOWN:
            if (r->adopted)
                break; /* it dialed us: it dials again, we cannot */
            if (now >= r->next_attempt)
                start_connect(e, r);
            if (r->state == R_DOWN)
                WANT(r->next_attempt);
            else
                WANT(now + HANDSHAKE_MS);
            if (now - r->down_since < GRACE_MS)
                WANT(r->down_since + GRACE_MS);
            break;
        case R_CONNECTING:
        case R_HELLO:
        case R_AUTH:
            if (now - r->state_since > HANDSHAKE_MS)
                lost(e, r, "handshake timed out");
            else
                WANT(r->state_since + HANDSHAKE_MS);
            break;
        case R_READY: {
            if (now - r->c.last_rx > e->opts.liveness_ms) {
                char m[96];
                snprintf(m, sizeof m, "no heartbeat for %.1f s", (now - r->c.last_rx) / 1000.0);
                lost(e, r, m);
                break;
            }
            int hb = hb_ms(e, r);
            if (now - r->c.last_tx >= hb) {
                if (ppc_conn_put(&r->c, PPC_F_PING, 0, 0, NULL, 0, NULL, 0) == 0 &&
                    ppc_conn_flush(e, &r->c) < 0) {
                    lost(e, r, "connection broken");
                    break;
                }
                r->c.last_tx = now;
            }
            WANT(r->c.last_tx + hb);
            WANT(r->c.last_rx + e->opts.liveness_ms + 1);
            break;
        }
        default:
            break;
        }
    }
    if (e->rdv_fd >= 0 && now - e->created_ms < RDV_GRACE_MS)
        WANT(e->created_ms + RDV_GRACE_MS);
#undef WANT
    return (int)next;
}

void ppc_remote_shutdown(ppc_engine *e)
{
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *r = e->rn[i];
        ppc_job *j;
        while ((j = r->fl_head)) {
            r->fl_head = j->next;
            j->next = NULL;
            ppc_job_fail(j, PPC_JOB_EDESTROYED, "the server was destroyed");
            ppc_engine_complete(e, j);
        }
        r->fl_tail = NULL;
        r->inflight = 0;
        if (r->c.fd >= 0 && r->state == R_READY) {
            ppc_conn_put(&r->c, PPC_F_BYE, 0, 0, NULL, 0, NULL, 0);
            ppc_conn_flush(e, &r->c);
        }
        drop_conn(e, r);
        r->state = R_DOWN;
    }
}

void ppc_remote_free(ppc_engine *e)
{
    for (int i = 0; i < e->nrn; i++) {
        ppc_conn_close(e, &e->rn[i]->c);
        ppc_u64set_free(&e->rn[i]->fns);
        if (e->rn[i]->tls_kdf)
            kdf_reap(e->rn[i]); /* joined before the secret and wakefd go */
        OPENSSL_cleanse(e->rn[i]->tls_key, sizeof e->rn[i]->tls_key);
        free(e->rn[i]);
    }
    free(e->rn);
    e->rn = NULL;
    e->nrn = e->caprn = 0;
    ppc_tls_ctx_free(e->tls_cctx);
    ppc_tls_ctx_free(e->tls_sctx);
    e->tls_cctx = e->tls_sctx = NULL;
    OPENSSL_cleanse(e->tls_key, sizeof e->tls_key);
}

int ppc_tls_engine_init(ppc_engine *e, const ppc_engine_opts *o, char *err, size_t errlen)
{
    const char *cf = o->certfile, *kf = o->keyfile, *ca = o->cafile;
    if ((cf || kf || ca) && !(cf && kf && ca)) {
        snprintf(err, errlen, "TLS certificate mode needs all of certfile, keyfile and cafile");
        return -1;
    }
    e->tls_mode = cf ? PPC_TLS_CERT : PPC_TLS_PSK;
    /* Contexts only for the sides this engine can play: the first one made
     * initialises OpenSSL (over a millisecond), which a Server of local
     * workers alone never needs. */
    if (e->nrn > 0 || o->discover || o->has_rendezvous) { /* it may get nodes */
        e->tls_cctx = ppc_tls_ctx_new(0, cf, kf, ca, err, errlen);
        if (!e->tls_cctx)
            return -1;
    }
    if (o->listen_port >= 0 || o->connect_host) { /* a node: listening or dialing */
        e->tls_sctx = ppc_tls_ctx_new(1, cf, kf, ca, err, errlen);
        if (!e->tls_sctx)
            return -1;
    }
    /* the files are read: the caller's strings are not kept */
    e->opts.certfile = e->opts.keyfile = e->opts.cafile = NULL;
    return 0;
}

/* Connect-back (nodes that dial us: no inbound port on the nodes).
 * Handshakes in progress on adopted sockets: beyond this many, the oldest
 * is dropped, so strangers dialing the rendezvous port cannot pile up. */
#define MAX_ADOPT_PENDING 64

int ppc_remote_listen(ppc_engine *e, int fd, char *err, size_t errlen)
{
    e->rdv_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (e->rdv_fd < 0) {
        snprintf(err, errlen, "rendezvous socket: %s", strerror(errno));
        return -1;
    }
    int fl = fcntl(e->rdv_fd, F_GETFL);
    if (fl < 0 || fcntl(e->rdv_fd, F_SETFL, fl | O_NONBLOCK) < 0 || ppc_fd_own(e->rdv_fd) < 0) {
        snprintf(err, errlen, "rendezvous socket: %s", strerror(errno));
        close(e->rdv_fd);
        e->rdv_fd = -1;
        return -1;
    }
    e->rdv_src.kind = PPC_SRC_RDV;
    e->rdv_src.obj = e;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &e->rdv_src};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->rdv_fd, &ev) < 0) {
        snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
        return -1; /* closed by the engine's free */
    }
    return 0;
}

void ppc_remote_accept(ppc_engine *e)
{
    for (;;) {
        int fd = accept4(e->rdv_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                ppc_engine_log(e, PPC_LOG_ERROR, "cannot accept a node: %s", strerror(errno));
            return;
        }
        if (ppc_remote_adopt(e, fd) < 0)
            close(fd);
    }
}

int ppc_remote_adopt(ppc_engine *e, int fd)
{
    ppc_rnode *r = NULL, *oldest = NULL;
    int pending = 0;
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *x = e->rn[i];
        if (!x->adopted)
            continue;
        if (x->c.fd < 0 && x->inflight == 0 && (x->state == R_DOWN || x->state == R_FAILED)) {
            if (!r)
                r = x; /* a node gone earlier: its slot is reused */
        } else if (x->state != R_READY) {
            pending++;
            if (!oldest || x->state_since < oldest->state_since)
                oldest = x;
        }
    }
    if (pending >= MAX_ADOPT_PENDING && oldest) {
        lost(e, oldest, "too many nodes in the handshake; the oldest is dropped");
        if (!r)
            r = oldest;
    }
    char peer[64];
    ppc_net_peer(fd, peer, sizeof peer);
    if (!r) {
        /* named by its peer address, unique among live connections; port
         * "-" is never a user's entry */
        int n0 = e->nrn;
        if (ppc_remote_add(e, peer, "-", 0) < 0 || e->nrn == n0)
            return -1;
        r = e->rn[e->nrn - 1];
        r->adopted = 1;
    }
    pthread_mutex_lock(&e->mu); /* statistics read the name */
    snprintf(r->name, sizeof r->name, "%s", peer);
    pthread_mutex_unlock(&e->mu);
    ppc_net_tune(fd);
    r->c.fd = fd;
    r->why[0] = 0;
    r->backoff_ms = 500;
    if (ppc_conn_register(e, &r->c) < 0) {
        r->c.fd = -1;
        set_state(e, r, R_DOWN);
        return -1;
    }
    /* connected already: the first writable event sends HELLO, as after
     * our own connect (the same handshake path) */
    set_state(e, r, R_CONNECTING);
    ppc_engine_log(e, PPC_LOG_DEBUG, "node dialed in from %s", peer);
    return 0;
}

int ppc_remote_kill_job(ppc_engine *e, ppc_job *j)
{
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *r = e->rn[i];
        for (ppc_job *x = r->fl_head; x; x = x->next) {
            if (x != j)
                continue;
            if (r->state == R_READY)
                ppc_conn_put(&r->c, PPC_F_KILL, 0, j->id, NULL, 0, NULL, 0);
            return 1;
        }
    }
    return 0;
}

/* The client keeps the clock (one clock, no per-job timers on nodes): a
 * remote job's timeout counts from when it was sent to its node. */
int ppc_remote_timeouts(ppc_engine *e, int64_t now)
{
    int t = -1;
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *r = e->rn[i];
        for (ppc_job *j = r->fl_head; j; j = j->next) {
            if (!j->timeout_ms || atomic_load(&j->killreq))
                continue;
            int64_t left = j->started_ms + (int64_t)j->timeout_ms - now;
            if (left <= 0) {
                int expect = 0;
                if (atomic_compare_exchange_strong(&j->killreq, &expect, PPC_JOB_ETIMEOUT) &&
                    r->state == R_READY)
                    ppc_conn_put(&r->c, PPC_F_KILL, 0, j->id, NULL, 0, NULL, 0);
            } else if (t < 0 || left < t) {
                t = (int)left;
            }
        }
    }
    return t;
}

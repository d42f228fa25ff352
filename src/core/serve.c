/* serve.c - the ppserver side: accept clients, send the cleartext TLS
 * preamble, run the TLS handshake (tls.h: it authenticates both sides),
 * check the client's versions inside TLS (auth.h), then run the jobs they
 * send on the local worker pool and send results back, matched by the
 * client's job ids, as they finish.
 *
 * Before authentication a peer may only complete a TLS handshake and send
 * one tiny HELLO; anything else closes that connection and nothing else.
 * Connections in the handshake are bounded per source address and in
 * all (limit_pending), and are not clients: they neither count for -t nor
 * keep the node busy. A record that fails TLS's integrity check (altered
 * or injected on the wire) closes the connection; the log says why. A
 * client that goes away has its queued jobs dropped and the workers
 * running its jobs stopped. A client silent for the liveness
 * interval is dropped; a client's PING is answered with a PONG at once, so
 * a client whose liveness interval is shorter than ours still hears from
 * us in time. Engine thread only. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "engine_int.h"
#include "frame.h"
#include "net.h"
#include "tls.h"

#define HANDSHAKE_MAX_FRAME 256
#define HANDSHAKE_MS 10000
#define MAX_CLIENTS 1024
/* Connections still in the handshake: beyond this many, a new one pushes
 * out the oldest of the address holding the most, so idle or slow
 * strangers cannot fill MAX_CLIENTS, and one address flooding evicts only
 * its own (a real client authenticates in milliseconds). */
#define MAX_PENDING 256
/* ... and one source address may hold this many: beyond it, its own
 * oldest goes, never another address's. */
#define MAX_PENDING_PER_ADDR 16
#define MAX_FUNCS 1000000

typedef struct ppc_fnmap {
    uint64_t fid; /* 0 = empty */
    ppc_blob *blob;
} ppc_fnmap;

static size_t fn_slot(uint64_t k, size_t cap)
{
    k ^= k >> 31;
    k *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(k >> 17) & (cap - 1);
}

static ppc_blob *fn_get(ppc_sconn *s, uint64_t fid)
{
    if (!s->capfns || !fid)
        return NULL;
    for (size_t i = fn_slot(fid, s->capfns);; i = (i + 1) & (s->capfns - 1)) {
        if (s->fns[i].fid == fid)
            return s->fns[i].blob;
        if (s->fns[i].fid == 0)
            return NULL;
    }
}

static int fn_put(ppc_sconn *s, uint64_t fid, ppc_blob *b)
{
    if ((s->nfns + 1) * 2 > s->capfns) {
        size_t ncap = s->capfns ? s->capfns * 2 : 16;
        ppc_fnmap *n = calloc(ncap, sizeof *n);
        if (!n)
            return -1;
        for (size_t i = 0; i < s->capfns; i++) {
            if (s->fns[i].fid) {
                size_t j = fn_slot(s->fns[i].fid, ncap);
                while (n[j].fid)
                    j = (j + 1) & (ncap - 1);
                n[j] = s->fns[i];
            }
        }
        free(s->fns);
        s->fns = n;
        s->capfns = ncap;
    }
    size_t i = fn_slot(fid, s->capfns);
    while (s->fns[i].fid && s->fns[i].fid != fid)
        i = (i + 1) & (s->capfns - 1);
    if (s->fns[i].fid == fid) {
        ppc_blob_decref(s->fns[i].blob);
    } else {
        s->nfns++;
    }
    s->fns[i].fid = fid;
    s->fns[i].blob = b;
    return 0;
}

/* PSK mode: this node process's salt and the key stretched from the
 * secret with it (once, at start: listening or dialing). */
static int serve_key(ppc_engine *e, char *err, size_t errlen)
{
    if (e->tls_mode == PPC_TLS_PSK &&
        (ppc_random(e->tls_salt, sizeof e->tls_salt) < 0 ||
         ppc_tls_derive(e->opts.secret, e->opts.secret_len, e->tls_salt, e->tls_key) < 0)) {
        snprintf(err, errlen, "cannot derive the TLS key from the secret");
        return -1;
    }
    return 0;
}

int ppc_serve_start(ppc_engine *e, char *err, size_t errlen)
{
    e->listen_fd = ppc_net_listen(e->opts.listen_host, e->opts.listen_port, err, errlen);
    if (e->listen_fd < 0)
        return -1;
    ppc_fd_own(e->listen_fd); /* closed in forked children; best effort */
    e->listen_src.kind = PPC_SRC_LISTEN;
    e->listen_src.obj = e;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &e->listen_src};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->listen_fd, &ev) < 0) {
        snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
        return -1;
    }
    e->listen_port_actual = ppc_net_local_port(e->listen_fd);
    if (serve_key(e, err, errlen) < 0)
        return -1;
    e->last_client_activity = ppc_now_ms();
    return 0;
}

/* Authenticated clients only: connections in the handshake do not count
 * for the -t idle timer. */
static void count_clients(ppc_engine *e, int delta)
{
    pthread_mutex_lock(&e->mu);
    e->nclients += delta;
    e->last_client_activity = ppc_now_ms();
    pthread_mutex_unlock(&e->mu);
}

static void sconn_close(ppc_engine *e, ppc_sconn *s, const char *why);

static int pending_from(ppc_engine *e, const char *addr, ppc_sconn **oldest)
{
    int n = 0;
    *oldest = NULL;
    for (ppc_sconn *s = e->sconns; s; s = s->next) {
        if (s->state == S_READY || strcmp(s->addr, addr) != 0)
            continue;
        n++;
        if (!*oldest || s->accepted_ms < (*oldest)->accepted_ms)
            *oldest = s;
    }
    return n;
}

/* Make room for one more connection in the handshake, from addr. */
static void limit_pending(ppc_engine *e, const char *addr)
{
    ppc_sconn *oldest;
    if (pending_from(e, addr, &oldest) >= MAX_PENDING_PER_ADDR && oldest) {
        sconn_close(e, oldest, "too many connections in the handshake from this address");
        return;
    }
    int pending = 0;
    for (ppc_sconn *s = e->sconns; s; s = s->next)
        pending += s->state != S_READY;
    if (pending < MAX_PENDING)
        return;
    /* the address holding the most goes first (ties: the oldest) */
    ppc_sconn *victim = NULL;
    int most = 0;
    for (ppc_sconn *s = e->sconns; s; s = s->next) {
        if (s->state == S_READY)
            continue;
        ppc_sconn *o;
        int n = pending_from(e, s->addr, &o);
        if (n > most || (n == most && o->accepted_ms < victim->accepted_ms)) {
            most = n;
            victim = o;
        }
    }
    if (victim)
        sconn_close(e, victim, "too many connections in the handshake");
}

/* Serve a connected socket fd: send the preamble, start TLS as its
 * server (the handshake runs on the socket's events). The connection owns fd from here,
 * also on failure. 0 or -1. */
static ppc_sconn *serve_socket(ppc_engine *e, int fd)
{
    char peer[64];
    ppc_net_peer(fd, peer, sizeof peer);
    char addr[64];
    snprintf(addr, sizeof addr, "%s", peer);
    char *colon = strrchr(addr, ':');
    if (colon)
        *colon = 0;
    limit_pending(e, addr);
    ppc_sconn *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        return NULL;
    }
    ppc_net_tune(fd);
    /* the preamble goes first, in the clear: a fresh socket takes 24 bytes */
    uint8_t pre[PPC_TLS_PREAMBLE_LEN];
    int plain = e->opts.test_plaintext;
    ppc_tls_preamble_encode(plain ? PPC_TLS_PLAIN : e->tls_mode,
                            e->tls_mode == PPC_TLS_PSK ? e->tls_salt : NULL, pre);
    if (send(fd, pre, sizeof pre, MSG_NOSIGNAL) != (ssize_t)sizeof pre) {
        close(fd);
        free(s);
        return NULL;
    }
    s->c.fd = fd;
    s->c.src.kind = PPC_SRC_SCONN;
    s->c.src.obj = s;
    memcpy(s->peer, peer, sizeof s->peer);
    memcpy(s->addr, addr, sizeof s->addr);
    struct ssl_st *ssl =
        plain ? NULL : ppc_tls_new(e->tls_sctx, fd, e->tls_mode == PPC_TLS_PSK ? e->tls_key : NULL);
    if ((!ssl && !plain) || ppc_conn_register(e, &s->c) < 0) {
        ppc_tls_free(ssl);
        close(fd);
        free(s);
        return NULL;
    }
    if (ssl)
        ppc_conn_tls_start(&s->c, ssl, 1);
    s->state = S_HELLO;
    s->accepted_ms = ppc_now_ms();
    s->next = e->sconns;
    e->sconns = s;
    ppc_engine_log(e, PPC_LOG_DEBUG, "connection from %s", s->peer);
    return s;
}

void ppc_serve_accept(ppc_engine *e)
{
    for (;;) {
        int fd = accept4(e->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                ppc_engine_log(e, PPC_LOG_ERROR, "cannot accept a client: %s", strerror(errno));
            return;
        }
        if (e->nclients >= MAX_CLIENTS) {
            close(fd);
            continue;
        }
        serve_socket(e, fd);
    }
}

/* Remove the client: drop its queued jobs, stop workers busy with its
 * jobs, free its blobs. */
static void sconn_close(ppc_engine *e, ppc_sconn *s, const char *why)
{
    size_t dropped = 0;
    ppc_job **pp = &e->rq_head, *last = NULL;
    while (*pp) {
        ppc_job *j = *pp;
        if (j->origin == s) {
            *pp = j->next;
            e->rq_len--;
            j->origin = NULL;
            j->cancelled = 1;
            ppc_job_decref(j);
            dropped++;
            continue;
        }
        last = j;
        pp = &j->next;
    }
    e->rq_tail = last;
    /* finished in this loop turn, result not yet sent */
    for (ppc_job *j = e->done_head; j; j = j->next) {
        if (j->origin == s) {
            j->origin = NULL;
            j->cancelled = 1;
        }
    }
    if (s->active > dropped) {
        dropped = s->active;
        ppc_pool_cancel_origin(e->pool, s);
    }
    if (s->state == S_READY || dropped)
        ppc_engine_log(e, dropped ? PPC_LOG_WARNING : PPC_LOG_INFO,
                       "client %s gone (%s); %zu job(s) dropped", s->peer, why, dropped);
    else
        ppc_engine_log(e, PPC_LOG_DEBUG, "client %s gone (%s)", s->peer, why);
    ppc_conn_close(e, &s->c);
    for (size_t i = 0; i < s->capfns; i++)
        if (s->fns[i].fid)
            ppc_blob_decref(s->fns[i].blob);
    free(s->fns);
    for (ppc_sconn **sp = &e->sconns; *sp; sp = &(*sp)->next) {
        if (*sp == s) {
            *sp = s->next;
            break;
        }
    }
    ppc_engine_forget(e, s, sizeof *s);
    int counted = s->counted;
    free(s);
    if (counted)
        count_clients(e, -1);
}

static void refuse(ppc_engine *e, ppc_sconn *s, const char *msg)
{
    ppc_conn_put(&s->c, PPC_F_ERROR, 0, 0, msg, strlen(msg), NULL, 0);
    ppc_conn_flush(e, &s->c);
    s->state = S_CLOSING;
}

/* The client's HELLO, inside TLS: versions. */
static void on_hello(ppc_engine *e, ppc_sconn *s, const ppc_frame *f)
{
    ppc_hello h;
    if (f->type != PPC_F_HELLO || ppc_hello_decode(f->payload, (size_t)f->len, &h) < 0) {
        s->state = S_CLOSING;
        return;
    }
    if (h.version != PPC_PROTO_VERSION) {
        char m[128];
        snprintf(m, sizeof m, "protocol version %u not supported (this node speaks %u)", h.version,
                 PPC_PROTO_VERSION);
        ppc_engine_log(e, PPC_LOG_WARNING, "client %s: %s", s->peer, m);
        refuse(e, s, m);
        return;
    }
    ppc_welcome w;
    w.h.version = PPC_PROTO_VERSION;
    w.h.py_major = (uint8_t)e->opts.py_major;
    w.h.py_minor = (uint8_t)e->opts.py_minor;
    w.ncpus = (uint32_t)e->ncpus;
    w.liveness_ms = (uint32_t)e->opts.liveness_ms;
    uint8_t buf[PPC_WELCOME_LEN];
    ppc_welcome_encode(&w, buf);
    if (ppc_conn_put(&s->c, PPC_F_WELCOME, 0, 0, buf, sizeof buf, NULL, 0) < 0) {
        s->state = S_CLOSING;
        return;
    }
    s->state = S_READY;
    s->counted = 1;
    count_clients(e, 1);
    ppc_engine_log(e, PPC_LOG_INFO, "client %s authenticated", s->peer);
}

static void job_error(ppc_sconn *s, uint64_t id, int status, const char *msg)
{
    ppc_conn_put(&s->c, PPC_F_RESULT, (uint8_t)status, id, msg, strlen(msg), NULL, 0);
}

/* KILL from a client: its job (named by the client's id) is dropped if
 * queued, or its worker killed; the RESULT says PPC_JOB_EKILLED. A client
 * reaches only its own jobs. */
static void on_kill(ppc_engine *e, ppc_sconn *s, uint64_t client_id)
{
    for (ppc_job *j = e->rq_head; j; j = j->next) {
        if (j->origin == s && j->client_id == client_id) {
            atomic_store(&j->killreq, PPC_JOB_EKILLED);
            return;
        }
    }
    ppc_pool_kill_client_job(e->pool, s, client_id);
}

static void on_ready(ppc_engine *e, ppc_sconn *s, const ppc_frame *f)
{
    switch (f->type) {
    case PPC_F_FUNC: {
        if (s->nfns >= MAX_FUNCS || f->id == 0) {
            refuse(e, s, "too many functions");
            return;
        }
        ppc_blob *b = ppc_blob_new(e->next_blob_id++, f->payload, (size_t)f->len);
        if (!b || fn_put(s, f->id, b) < 0) {
            ppc_blob_decref(b);
            refuse(e, s, "out of memory");
            return;
        }
        b->flags = f->flags;
        return;
    }
    case PPC_F_JOB: {
        if (f->len < 8) {
            s->state = S_CLOSING;
            return;
        }
        ppc_blob *b = fn_get(s, ppc_get_u64(f->payload));
        if (!b) {
            job_error(s, f->id, PPC_JOB_ENONODE, "the job's function was never sent");
            return;
        }
        ppc_job *j = ppc_job_new(b, f->payload + 8, (size_t)f->len - 8);
        if (!j) {
            job_error(s, f->id, PPC_JOB_EWORKER, "node out of memory");
            return;
        }
        j->args_aux = f->aux & PPC_AUX_OOB;
        j->origin = s;
        j->client_id = f->id;
        j->id = e->next_blob_id++; /* ids of our own, unique on this node */
        s->active++;
        if (e->rq_tail)
            e->rq_tail->next = j;
        else
            e->rq_head = j;
        e->rq_tail = j;
        e->rq_len++;
        return;
    }
    case PPC_F_KILL:
        on_kill(e, s, f->id);
        return;
    case PPC_F_PING:
        /* answer at once: the client's liveness interval may be shorter
         * than ours, so our own heartbeat period is not enough for it */
        ppc_conn_put(&s->c, PPC_F_PONG, 0, f->id, NULL, 0, NULL, 0);
        return;
    case PPC_F_PONG:
        return;
    case PPC_F_BYE:
        s->state = S_CLOSING;
        return;
    default:
        s->state = S_CLOSING;
        return;
    }
}

void ppc_serve_event(ppc_engine *e, ppc_sconn *s, uint32_t events)
{
    if (s->c.tls == 1) {
        int rc = ppc_conn_tls_step(e, &s->c);
        if (rc < 0) {
            char why[200];
            snprintf(why, sizeof why, "%s", ppc_conn_why(&s->c, "TLS handshake failed"));
            /* a peer that just went away is not worth a warning */
            int eof = strstr(why, "eof") || strstr(why, "closed") || strstr(why, "reset");
            ppc_engine_log(e, eof ? PPC_LOG_DEBUG : PPC_LOG_WARNING,
                           "client %s refused: %s%s", s->peer, why,
                           eof ? "" : " (wrong secret or certificate?)");
            sconn_close(e, s, why);
            return;
        }
        if (rc == 0)
            return;
        events |= EPOLLIN;
    }
    if ((events & EPOLLOUT) && ppc_conn_flush(e, &s->c) < 0) {
        sconn_close(e, s, ppc_conn_why(&s->c, "connection broken"));
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        ppc_frame f;
        uint64_t lim = s->state == S_READY ? e->opts.max_net_frame : HANDSHAKE_MAX_FRAME;
        int rc = ppc_frame_parse(ppc_buf_head(&s->c.in), ppc_buf_unread(&s->c.in), lim, &f);
        if (rc < 0) {
            sconn_close(e, s, rc == PPC_FRAME_ETOOBIG ? "oversized frame" : "malformed frame");
            return;
        }
        if (rc == PPC_FRAME_OK) {
            if (s->state == S_HELLO)
                on_hello(e, s, &f);
            else if (s->state == S_READY)
                on_ready(e, s, &f);
            if (s->state == S_CLOSING) {
                sconn_close(e, s, "protocol violation or refused");
                return;
            }
            ppc_buf_consume(&s->c.in, PPC_FRAME_HDR + (size_t)f.len);
            continue;
        }
        size_t want = f.len ? PPC_FRAME_HDR + (size_t)f.len - ppc_buf_unread(&s->c.in) : 0;
        int rr = ppc_conn_read(&s->c, want);
        if (rr > 0)
            continue;
        if (rr < 0) {
            char why[200];
            snprintf(why, sizeof why, "%s", ppc_conn_why(&s->c, "closed by the client"));
            if (s->c.why[0] && s->state == S_READY)
                ppc_engine_log(e, PPC_LOG_WARNING, "client %s: %s", s->peer, why);
            sconn_close(e, s, why);
        }
        return;
    }
}

void ppc_serve_result(ppc_engine *e, ppc_job *j)
{
    ppc_sconn *s = j->origin;
    (void)e;
    if (s && !j->cancelled) {
        if (s->active > 0)
            s->active--;
        if (j->status == PPC_JOB_OK) {
            uint8_t pre[8];
            ppc_put_u64(pre, j->exec_ns);
            ppc_conn_put_aux(&s->c, PPC_F_RESULT, PPC_JOB_OK, j->result_aux & PPC_AUX_OOB,
                             j->client_id, pre, 8, j->result, j->result_len);
        } else {
            ppc_conn_put(&s->c, PPC_F_RESULT, (uint8_t)j->status, j->client_id, j->result,
                         j->result ? j->result_len : 0, NULL, 0);
        }
    }
    ppc_job_decref(j);
}

void ppc_serve_flush(ppc_engine *e)
{
    for (ppc_sconn *s = e->sconns, *nx; s; s = nx) {
        nx = s->next;
        if (ppc_buf_unread(&s->c.out) > 0 && ppc_conn_flush(e, &s->c) < 0)
            sconn_close(e, s, ppc_conn_why(&s->c, "connection broken"));
    }
}

int ppc_serve_tick(ppc_engine *e)
{
    if (e->listen_fd < 0 && !e->sconns)
        return -1;
    int64_t now = ppc_now_ms();
    int hb = e->opts.liveness_ms / 3;
    if (hb > 5000)
        hb = 5000;
    if (hb < 50)
        hb = 50;
    int64_t next = -1;
    for (ppc_sconn *s = e->sconns, *nx; s; s = nx) {
        nx = s->next;
        if (s->state != S_READY) {
            /* from the accept, not the last byte: a peer trickling bytes
             * does not keep its place */
            if (now - s->accepted_ms > HANDSHAKE_MS) {
                sconn_close(e, s, "handshake timed out");
                continue;
            }
            int64_t d = s->accepted_ms + HANDSHAKE_MS - now;
            if (next < 0 || d < next)
                next = d;
            continue;
        }
        if (now - s->c.last_rx > e->opts.liveness_ms) {
            sconn_close(e, s, "no heartbeat");
            continue;
        }
        if (now - s->c.last_tx >= hb) {
            ppc_conn_put(&s->c, PPC_F_PING, 0, 0, NULL, 0, NULL, 0);
            if (ppc_conn_flush(e, &s->c) < 0) {
                sconn_close(e, s, "connection broken");
                continue;
            }
            s->c.last_tx = now;
        }
        int64_t d = s->c.last_tx + hb - now;
        if (next < 0 || d < next)
            next = d;
        d = s->c.last_rx + e->opts.liveness_ms + 1 - now;
        if (d < next)
            next = d;
    }
    if (e->nclients > 0) {
        pthread_mutex_lock(&e->mu);
        e->last_client_activity = now;
        pthread_mutex_unlock(&e->mu);
    }
    return next < 0 ? -1 : (int)(next < 1 ? 1 : next);
}

void ppc_serve_shutdown(ppc_engine *e)
{
    if (e->dial_pending) {
        close(e->dial_fd);
        e->dial_fd = -1;
        e->dial_pending = 0;
    }
    while (e->sconns)
        sconn_close(e, e->sconns, "the node is shutting down");
    if (e->listen_fd >= 0) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->listen_fd, NULL);
        ppc_fd_close(e->listen_fd);
        e->listen_fd = -1;
    }
}

/* Connect-back: the node dials the client (no inbound port on the node).
 * The socket we dialed is served exactly like an accepted one: the client
 * still speaks first and must authenticate; only the TCP direction differs. */
#define DIAL_BACKOFF_MIN_MS 100
#define DIAL_BACKOFF_MAX_MS 5000
#define DIAL_CONNECT_MS 5000 /* a dial not connected by then is dropped */
#define DIAL_POLL_MS 10      /* how often a dial in progress is looked at */

static int dial_finish(ppc_engine *e, int64_t now);

ppc_sconn *ppc_serve_adopt(ppc_engine *e, int fd)
{
    if (e->nclients >= MAX_CLIENTS) {
        close(fd);
        return NULL;
    }
    return serve_socket(e, fd); /* closes fd when it fails */
}

int ppc_serve_dial_start(ppc_engine *e, char *err, size_t errlen)
{
    const char *h = e->opts.connect_host;
    if (!h || !*h || strlen(h) >= sizeof e->dial_host || e->opts.connect_port <= 0 ||
        e->opts.connect_port > 65535) {
        snprintf(err, errlen, "invalid address to dial");
        return -1;
    }
    if ((!e->opts.secret || e->opts.secret_len == 0) && e->tls_mode != PPC_TLS_CERT) {
        snprintf(err, errlen, "an engine that dials a client needs a secret");
        return -1;
    }
    if (serve_key(e, err, errlen) < 0)
        return -1;
    snprintf(e->dial_host, sizeof e->dial_host, "%s", h);
    snprintf(e->dial_port, sizeof e->dial_port, "%d", e->opts.connect_port);
    e->opts.connect_host = e->dial_host; /* the caller's string is not kept */
    e->dial_next = 0;
    e->dial_backoff_ms = DIAL_BACKOFF_MIN_MS;
    e->dial_last_alive = ppc_now_ms();
    return 0;
}

int ppc_serve_dial_tick(ppc_engine *e)
{
    if (!e->dial_host[0])
        return -1;
    int64_t now = ppc_now_ms();
    if (e->dial_pending)
        return dial_finish(e, now);
    ppc_sconn *d = NULL;
    for (ppc_sconn *s = e->sconns; s && !d; s = s->next)
        if (s->dialed)
            d = s;
    /* reachable: connected (the client's kernel accepted us, so it runs,
     * even while no Server of it takes the connection yet) */
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    int alive =
        d && (d->state == S_READY || getpeername(d->c.fd, (struct sockaddr *)&sa, &sl) == 0);
    if (alive != e->dial_alive) {
        pthread_mutex_lock(&e->mu);
        e->dial_alive = alive;
        if (!alive)
            e->dial_last_alive = now;
        pthread_mutex_unlock(&e->mu);
    }
    if (d) {
        if (d->state == S_READY)
            e->dial_backoff_ms = DIAL_BACKOFF_MIN_MS;
        return -1; /* connected (or connecting): its events take over */
    }
    if (now < e->dial_next)
        return (int)(e->dial_next - now);
    e->dial_next = now + e->dial_backoff_ms;
    e->dial_backoff_ms =
        e->dial_backoff_ms * 2 > DIAL_BACKOFF_MAX_MS ? DIAL_BACKOFF_MAX_MS : e->dial_backoff_ms * 2;
    char err[256] = "";
    int fd = ppc_net_connect(e->dial_host, e->dial_port, err, sizeof err);
    if (fd < 0) {
        ppc_engine_log(e, PPC_LOG_DEBUG, "cannot dial %s:%s: %s", e->dial_host, e->dial_port, err);
        return (int)(e->dial_next - now);
    }
    e->dial_fd = fd;
    e->dial_pending = 1;
    e->dial_started = now;
    return dial_finish(e, now);
}

/* The dial in progress: once connected, the socket is served (the node
 * sends its preamble first, so it must be connected); not connected within
 * DIAL_CONNECT_MS, it is dropped and dialed again after the backoff. Polled
 * on the tick: the engine thread never blocks on it. */
static int dial_finish(ppc_engine *e, int64_t now)
{
    struct pollfd p = {.fd = e->dial_fd, .events = POLLOUT};
    int n = poll(&p, 1, 0);
    if (n == 0) {
        if (now - e->dial_started < DIAL_CONNECT_MS)
            return DIAL_POLL_MS;
        ppc_engine_log(e, PPC_LOG_DEBUG, "cannot dial %s:%s: timed out", e->dial_host, e->dial_port);
    }
    int err = n < 0 ? errno : ppc_net_sock_error(e->dial_fd);
    int fd = e->dial_fd;
    e->dial_pending = 0;
    e->dial_fd = -1;
    if (n == 0 || err) {
        if (err)
            ppc_engine_log(e, PPC_LOG_DEBUG, "cannot dial %s:%s: %s", e->dial_host, e->dial_port,
                           strerror(err));
        close(fd);
        return e->dial_next > now ? (int)(e->dial_next - now) : 0;
    }
    ppc_sconn *s = ppc_serve_adopt(e, fd);
    if (!s)
        return e->dial_next > now ? (int)(e->dial_next - now) : 0;
    s->dialed = 1;
    ppc_engine_log(e, PPC_LOG_DEBUG, "dialed %s:%s", e->dial_host, e->dial_port);
    return -1; /* the connection's events and ppc_serve_tick take over */
}

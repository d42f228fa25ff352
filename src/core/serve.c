/* serve.c - the ppserver side: accept clients, authenticate them (the
 * server proves the secret first, then the client must), then run the
 * jobs they send on the local worker pool and send results back, matched
 * by the client's job ids, as they finish.
 *
 * Before authentication a peer may send only tiny handshake frames; any
 * malformed, oversized or unexpected frame closes that connection and
 * nothing else. A client that goes away has its queued jobs dropped and
 * the workers running its jobs stopped. A client silent for the liveness
 * interval is dropped; a client's PING is answered with a PONG at once, so
 * a client whose liveness interval is shorter than ours still hears from
 * us in time. Engine thread only. */
#define _GNU_SOURCE
#include <errno.h>
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

#define HANDSHAKE_MAX_FRAME 256
#define HANDSHAKE_MS 10000
#define MAX_CLIENTS 1024
/* Connections still in the handshake: beyond this many, a new one pushes
 * out the oldest, so idle or slow strangers cannot fill MAX_CLIENTS and
 * lock real clients out (a real client authenticates in milliseconds). */
#define MAX_PENDING 64
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
    e->last_client_activity = ppc_now_ms();
    return 0;
}

static void count_clients(ppc_engine *e, int delta)
{
    pthread_mutex_lock(&e->mu);
    e->nclients += delta;
    e->last_client_activity = ppc_now_ms();
    pthread_mutex_unlock(&e->mu);
}

static void sconn_close(ppc_engine *e, ppc_sconn *s, const char *why);

/* Make room for one more connection in the handshake. */
static void limit_pending(ppc_engine *e)
{
    int pending = 0;
    ppc_sconn *oldest = NULL;
    for (ppc_sconn *s = e->sconns; s; s = s->next) {
        if (s->state == S_READY)
            continue;
        pending++;
        if (!oldest || s->accepted_ms < oldest->accepted_ms)
            oldest = s;
    }
    if (pending >= MAX_PENDING && oldest)
        sconn_close(e, oldest, "too many connections in the handshake; the oldest is dropped");
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
        limit_pending(e);
        if (e->nclients >= MAX_CLIENTS) {
            close(fd);
            continue;
        }
        ppc_sconn *s = calloc(1, sizeof *s);
        if (!s) {
            close(fd);
            continue;
        }
        ppc_net_tune(fd);
        s->c.fd = fd;
        s->c.src.kind = PPC_SRC_SCONN;
        s->c.src.obj = s;
        ppc_net_peer(fd, s->peer, sizeof s->peer);
        if (ppc_conn_register(e, &s->c) < 0) {
            close(fd);
            free(s);
            continue;
        }
        s->state = S_HELLO;
        s->accepted_ms = ppc_now_ms();
        s->next = e->sconns;
        e->sconns = s;
        count_clients(e, 1);
        ppc_engine_log(e, PPC_LOG_DEBUG, "connection from %s", s->peer);
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
    free(s);
    count_clients(e, -1);
}

static void refuse(ppc_engine *e, ppc_sconn *s, const char *msg)
{
    ppc_conn_put(&s->c, PPC_F_ERROR, 0, 0, msg, strlen(msg), NULL, 0);
    ppc_conn_flush(e, &s->c);
    s->state = S_CLOSING;
}

static void on_hello(ppc_engine *e, ppc_sconn *s, const ppc_frame *f)
{
    ppc_hello h;
    if (f->type != PPC_F_HELLO || ppc_hello_decode(f->payload, (size_t)f->len, &h) < 0) {
        s->state = S_CLOSING;
        return;
    }
    memcpy(s->cnonce, h.nonce, 32);
    if (h.version != PPC_PROTO_VERSION) {
        char m[128];
        snprintf(m, sizeof m, "protocol version %u not supported (this node speaks %u)", h.version,
                 PPC_PROTO_VERSION);
        ppc_engine_log(e, PPC_LOG_WARNING, "client %s: %s", s->peer, m);
        refuse(e, s, m);
        return;
    }
    ppc_challenge c;
    c.h.version = PPC_PROTO_VERSION;
    c.h.py_major = (uint8_t)e->opts.py_major;
    c.h.py_minor = (uint8_t)e->opts.py_minor;
    c.ncpus = (uint32_t)e->ncpus;
    if (ppc_random(c.h.nonce, 32) < 0 ||
        ppc_auth_proof(e->opts.secret, e->opts.secret_len, "ppc-server", s->cnonce, 32, c.h.nonce,
                       32, c.proof) < 0) {
        s->state = S_CLOSING;
        return;
    }
    memcpy(s->snonce, c.h.nonce, 32);
    uint8_t buf[PPC_CHALLENGE_LEN];
    ppc_challenge_encode(&c, buf);
    if (ppc_conn_put(&s->c, PPC_F_CHALLENGE, 0, 0, buf, sizeof buf, NULL, 0) < 0) {
        s->state = S_CLOSING;
        return;
    }
    s->state = S_AUTH;
}

static void on_auth(ppc_engine *e, ppc_sconn *s, const ppc_frame *f)
{
    uint8_t want[PPC_MAC_LEN];
    if (f->type != PPC_F_AUTH || f->len != PPC_AUTH_LEN ||
        ppc_auth_proof(e->opts.secret, e->opts.secret_len, "ppc-client", s->cnonce, 32, s->snonce,
                       32, want) < 0 ||
        !ppc_auth_equal(want, f->payload)) {
        ppc_engine_log(e, PPC_LOG_WARNING, "client %s: authentication failed (wrong secret)",
                       s->peer);
        refuse(e, s, "authentication failed: wrong secret");
        return;
    }
    uint8_t w[8];
    ppc_put_u32(w, (uint32_t)e->ncpus);
    ppc_put_u32(w + 4, (uint32_t)e->opts.liveness_ms);
    if (ppc_conn_put(&s->c, PPC_F_WELCOME, 0, 0, w, sizeof w, NULL, 0) < 0) {
        s->state = S_CLOSING;
        return;
    }
    s->state = S_READY;
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
    if ((events & EPOLLOUT) && ppc_conn_flush(e, &s->c) < 0) {
        sconn_close(e, s, "connection broken");
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
            else if (s->state == S_AUTH)
                on_auth(e, s, &f);
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
        if (rr < 0)
            sconn_close(e, s, errno ? strerror(errno) : "closed by the client");
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
            sconn_close(e, s, "connection broken");
    }
}

int ppc_serve_tick(ppc_engine *e)
{
    if (e->listen_fd < 0)
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
    if (e->sconns) {
        pthread_mutex_lock(&e->mu);
        e->last_client_activity = now;
        pthread_mutex_unlock(&e->mu);
    }
    return next < 0 ? -1 : (int)(next < 1 ? 1 : next);
}

void ppc_serve_shutdown(ppc_engine *e)
{
    while (e->sconns)
        sconn_close(e, e->sconns, "the node is shutting down");
    if (e->listen_fd >= 0) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->listen_fd, NULL);
        ppc_fd_close(e->listen_fd);
        e->listen_fd = -1;
    }
}

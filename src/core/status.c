/* status.c - the engine's HTTP status endpoint: a live page (assets given
 * by the caller), /status as JSON, /metrics in Prometheus text format and
 * /health, plus the counters they show.
 *
 * HTTP is libmicrohttpd in "external epoll" mode: its epoll fd sits in the
 * engine's epoll set, MHD_run is called when it is readable or its timeout
 * passes, and every callback runs on the engine thread, which may read the
 * nodes' state directly. Read-only, GET/HEAD only, bounded: connections in
 * all and per address, memory per connection (oversized URLs and headers
 * are refused by the library), an idle timeout, and a deadline for a whole
 * request (a client that drips its headers is cut off). Bound to 127.0.0.1
 * unless asked otherwise; any other address requires the cluster secret as
 * "Authorization: Bearer <secret>", compared in constant time.
 *
 * Counters: ppc_status_note_job runs for every finished job on the
 * completion path: a per-second ring (jobs/s over the last minute), a
 * fixed-bucket job-time histogram, and a bounded ring of recent errors
 * with their remote traceback text. Fixed memory, no allocation, no lock.
 *
 * libmicrohttpd is loaded with dlopen when the first status page starts,
 * not linked: it brings GnuTLS and several more libraries, whose loading
 * would otherwise cost every `import pp` over a millisecond. */
#define _GNU_SOURCE
#include "status.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"
#include "net.h"
#include "result.h"
#include "tls.h"

/* libmicrohttpd's functions, from dlopen (see the top comment) */
static struct {
    __typeof__(&MHD_get_connection_info) get_connection_info;
    __typeof__(&MHD_create_response_from_buffer) create_response_from_buffer;
    __typeof__(&MHD_add_response_header) add_response_header;
    __typeof__(&MHD_queue_response) queue_response;
    __typeof__(&MHD_destroy_response) destroy_response;
    __typeof__(&MHD_lookup_connection_value) lookup_connection_value;
    __typeof__(&MHD_get_timeout) get_timeout;
    __typeof__(&MHD_run) run;
    __typeof__(&MHD_start_daemon) start_daemon;
    __typeof__(&MHD_get_daemon_info) get_daemon_info;
    __typeof__(&MHD_quiesce_daemon) quiesce_daemon;
    __typeof__(&MHD_stop_daemon) stop_daemon;
} M;
static pthread_once_t mhd_once = PTHREAD_ONCE_INIT;
static char mhd_err[160];

static void mhd_load(void)
{
    static const char *const names[] = {"libmicrohttpd.so.12", "libmicrohttpd.so"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !h; i++)
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(mhd_err, sizeof mhd_err, "cannot load libmicrohttpd: %s", dlerror());
        return;
    }
#define LOAD(f)                                                                                    \
    if (!(*(void **)&M.f = dlsym(h, "MHD_" #f))) {                                                 \
        snprintf(mhd_err, sizeof mhd_err, "libmicrohttpd lacks MHD_" #f);                          \
        return;                                                                                    \
    }
    LOAD(get_connection_info)
    LOAD(create_response_from_buffer)
    LOAD(add_response_header)
    LOAD(queue_response)
    LOAD(destroy_response)
    LOAD(lookup_connection_value)
    LOAD(get_timeout)
    LOAD(run)
    LOAD(start_daemon)
    LOAD(get_daemon_info)
    LOAD(quiesce_daemon)
    LOAD(stop_daemon)
#undef LOAD
}

#define MAX_CONNS 32          /* connections at once */
#define MAX_CONNS_PER_IP 8
#define CONN_MEMORY (16 * 1024) /* per connection: request line and headers must fit */
#define IDLE_TIMEOUT_S 10
#define REQUEST_MS 5000       /* a request's headers must be in within this */
#define NERRORS 16
#define TB_MAX 4096
#define RING 64               /* per-second slots (the last 60 are shown) */

/* Histogram upper bounds in nanoseconds; the last bucket is +Inf. */
static const uint64_t bounds_ns[PPC_STATUS_NBUCKETS - 1] = {
    10000ull, 100000ull, 1000000ull, 10000000ull, 100000000ull,
    1000000000ull, 10000000000ull, 60000000000ull, 600000000000ull};

typedef struct status_err {
    int64_t when;  /* unix seconds */
    uint32_t node; /* node index */
    char type[64];
    char msg[256];
    char tb[TB_MAX];
} status_err;

/* a connection we watch for the whole-request deadline */
typedef struct watched {
    struct MHD_Connection *c;
    int fd;
    int64_t deadline;
} watched;

typedef struct asset {
    char *path;
    char *type;
    uint8_t *data;
    size_t len;
} asset;

struct ppc_status {
    ppc_engine *e;
    struct MHD_Daemon *d;
    int listen_fd;
    int mhd_epfd; /* -1 until the daemon runs */
    ppc_evsrc src;
    int port;
    int need_token;
    int64_t next_run;   /* MHD's timeout, absolute ms; -1 none */
    int64_t started_ms;
    asset *assets;
    int nassets;
    watched conns[MAX_CONNS + 4];
    /* counters (engine thread) */
    int64_t cur_sec;
    uint32_t per_sec[RING];
    uint64_t hist[PPC_STATUS_NBUCKETS];
    uint64_t hist_sum_ns;
    uint64_t nerrors;
    status_err errs[NERRORS];
    uint64_t requests, refused;
};

/* ---- counters ---- */

static void advance(ppc_status *s, int64_t now_ms)
{
    int64_t sec = now_ms / 1000;
    if (sec <= s->cur_sec)
        return;
    int64_t gap = sec - s->cur_sec;
    if (gap > RING)
        gap = RING;
    for (int64_t k = 1; k <= gap; k++)
        s->per_sec[(s->cur_sec + k) % RING] = 0;
    s->cur_sec = sec;
}

static void copy_text(char *dst, size_t cap, const uint8_t *p, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, p, n);
    dst[n] = 0;
}

static uint64_t rd_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* One length-prefixed pickle item: opcode op1, op4 or op8 followed by a
 * 1-, 4- or 8-byte little-endian length and the bytes, then an optional
 * memo opcode. Its bytes in *s, *n and *pp moved past it: 0, or -1 if it
 * is not one. */
static int pk_sized(const uint8_t **pp, const uint8_t *end, uint8_t op1, uint8_t op4,
                    uint8_t op8, const uint8_t **s, size_t *n)
{
    const uint8_t *p = *pp;
    uint64_t len;
    if (p < end && *p == op1 && end - p >= 2) {
        len = p[1];
        p += 2;
    } else if (p < end && *p == op4 && end - p >= 5) {
        len = rd_le(p + 1, 4);
        p += 5;
    } else if (p < end && *p == op8 && end - p >= 9) {
        len = rd_le(p + 1, 8);
        p += 9;
    } else {
        return -1;
    }
    if (len > (uint64_t)(end - p))
        return -1;
    *s = p;
    *n = (size_t)len;
    p += len;
    if (p < end && *p == 0x94)
        p++;
    else if (p < end && *p == 'q' && end - p >= 2)
        p += 2;
    else if (p < end && *p == 'r' && end - p >= 5)
        p += 5;
    *pp = p;
    return 0;
}

/* One string of the exception pickle: SHORT_BINUNICODE, BINUNICODE or
 * BINUNICODE8, then an optional memo opcode. 0, or -1 if it is not one. */
static int pk_str(const uint8_t **pp, const uint8_t *end, const uint8_t **s, size_t *n)
{
    return pk_sized(pp, end, 0x8c, 'X', 0x8d, s, n);
}

/* The worker's exception pickle, (pickled exception or None, traceback,
 * type name, message) at protocol 3 or later, read without Python: 0, or
 * -1 when it is not in that form. */
static int parse_exception(const uint8_t *p, size_t n, status_err *er)
{
    const uint8_t *end = p + n;
    if (p < end && *p == 0x80) /* PROTO */
        p += 2;
    if (p < end && *p == 0x95) /* FRAME */
        p += 9;
    if (p < end && *p == '(') /* MARK: the tuple's items follow */
        p++;
    if (p >= end)
        return -1;
    if (*p == 'N') {
        p++;
    } else { /* the pickled exception: SHORT_BINBYTES, BINBYTES or BINBYTES8 */
        const uint8_t *ex;
        size_t nex;
        if (pk_sized(&p, end, 'C', 'B', 0x8e, &ex, &nex) < 0)
            return -1;
    }
    const uint8_t *tb, *ty, *msg;
    size_t ntb, nty, nmsg;
    if (pk_str(&p, end, &tb, &ntb) < 0 || pk_str(&p, end, &ty, &nty) < 0 ||
        pk_str(&p, end, &msg, &nmsg) < 0)
        return -1;
    /* the end of a long traceback says most: keep its tail */
    if (ntb >= TB_MAX) {
        tb += ntb - (TB_MAX - 1);
        ntb = TB_MAX - 1;
    }
    copy_text(er->tb, sizeof er->tb, tb, ntb);
    copy_text(er->type, sizeof er->type, ty, nty);
    copy_text(er->msg, sizeof er->msg, msg, nmsg);
    return 0;
}

static void note_error(ppc_status *s, const ppc_job *j)
{
    status_err *er = &s->errs[s->nerrors % NERRORS];
    s->nerrors++;
    er->when = (int64_t)time(NULL);
    er->node = j->node;
    er->type[0] = er->msg[0] = er->tb[0] = 0;
    if (j->status != PPC_JOB_OK) {
        snprintf(er->type, sizeof er->type, "%s",
                 j->status == PPC_JOB_EWORKER ? "WorkerError" : "NoNodeError");
        copy_text(er->msg, sizeof er->msg, j->result ? j->result : (const uint8_t *)"",
                  j->result ? j->result_len : 0);
        return;
    }
    ppc_result r;
    if (j->result_aux == 0 && ppc_result_parse(j->result, j->result_len, &r) == 0 &&
        parse_exception(r.data, r.datalen, er) == 0)
        return;
    snprintf(er->type, sizeof er->type, "Exception");
    snprintf(er->msg, sizeof er->msg, "(the job raised; its traceback is with the job)");
}

void ppc_status_note_job(ppc_status *s, const ppc_job *j, int64_t now_ms)
{
    if (j->cancelled || j->status == PPC_JOB_EDESTROYED)
        return;
    if (j->status == PPC_JOB_OK) {
        advance(s, now_ms);
        s->per_sec[s->cur_sec % RING]++;
        int b = 0;
        while (b < PPC_STATUS_NBUCKETS - 1 && j->exec_ns > bounds_ns[b])
            b++;
        s->hist[b]++;
        s->hist_sum_ns += j->exec_ns;
        if (j->result && j->result_len > 0 && j->result[0] == PPC_R_EXCEPTION)
            note_error(s, j);
    } else {
        note_error(s, j);
    }
}

/* ---- text building ---- */

typedef struct out {
    ppc_buf b;
    int oom;
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    for (size_t want = 256;;) {
        if (ppc_buf_reserve(&o->b, want) < 0) {
            o->oom = 1;
            return;
        }
        size_t room = o->b.cap - o->b.len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf((char *)o->b.data + o->b.len, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = 1;
            return;
        }
        if ((size_t)n < room) {
            o->b.len += (size_t)n;
            return;
        }
        want = (size_t)n + 1;
    }
}

/* A JSON string literal (UTF-8 passed through; control characters escaped). */
static void put_jstr(out *o, const char *s)
{
    put(o, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p && !o->oom; p++) {
        if (*p == '"' || *p == '\\')
            put(o, "\\%c", *p);
        else if (*p == '\n')
            put(o, "\\n");
        else if (*p < 0x20 || *p == 0x7f)
            put(o, "\\u%04x", *p);
        else if (ppc_buf_append(&o->b, p, 1) < 0)
            o->oom = 1;
    }
    put(o, "\"");
}

/* A Prometheus label value: backslash, quote and newline escaped. */
static void put_label(out *o, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p && !o->oom; p++) {
        if (*p == '"' || *p == '\\')
            put(o, "\\%c", *p);
        else if (*p == '\n')
            put(o, "\\n");
        else if (ppc_buf_append(&o->b, p, 1) < 0)
            o->oom = 1;
    }
}

static const char *rnode_state(int st)
{
    switch (st) {
    case R_CONNECTING: return "connecting";
    case R_HELLO: return "handshake";
    case R_AUTH: return "handshake";
    case R_READY: return "up";
    case R_FAILED: return "failed";
    default: return "down";
    }
}

static const char *sconn_state(int st)
{
    switch (st) {
    case S_HELLO: return "handshake";
    case S_AUTH: return "handshake";
    case S_READY: return "ready";
    default: return "closing";
    }
}

/* What the engine knows of a link's protection. The handshake is HMAC
 * with the shared secret (auth.h); transport encryption is reported from
 * the node's state once links carry it. */
/* How a link authenticated: TLS 1.3 with the PSK stretched from the
 * secret, or with certificates (tls.h); "none" before the handshake. */
static const char *link_auth(const ppc_engine *e, int ready, int handshake)
{
    if (!ready)
        return handshake ? "in progress" : "none";
    return e->tls_mode == PPC_TLS_CERT ? "certificate" : "psk-scrypt";
}

/* 1 when the link's bytes travel inside an established TLS session */
static int link_tls(const ppc_conn *c)
{
    return c->ssl != NULL && c->tls == 2;
}

static long rss_bytes(int pid)
{
    char path[64], buf[128];
    snprintf(path, sizeof path, "/proc/%d/statm", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    long size, res;
    if (sscanf(buf, "%ld %ld", &size, &res) != 2)
        return -1;
    return res * sysconf(_SC_PAGESIZE);
}

static const char *worker_state(const ppc_worker *w)
{
    if (!w->ready)
        return "starting";
    if (w->retiring)
        return "retiring";
    return w->inflight > 0 ? "busy" : "idle";
}

static const char *node_name(ppc_status *s, uint32_t node)
{
    ppc_engine *e = s->e;
    if (node >= 1 && node <= (uint32_t)e->nrn)
        return e->rn[node - 1]->name;
    return "local";
}

/* What the status views say of the local engine: its counters, read under
 * the engine's lock, and whether its worker pool is dead (why, if it is). */
typedef struct {
    int ncpus, nclients, dead;
    uint64_t lj, lt; /* local jobs done, their time in ns */
    size_t pending;
    const char *why;
} local_view;

static void read_local(ppc_engine *e, local_view *v)
{
    pthread_mutex_lock(&e->mu);
    v->ncpus = e->ncpus;
    v->lj = e->local_njobs;
    v->lt = e->local_time_ns;
    v->pending = e->total_pending;
    v->nclients = e->nclients;
    pthread_mutex_unlock(&e->mu);
    v->why = NULL;
    v->dead = ppc_pool_dead(e->pool, &v->why);
}

static void render_json(ppc_status *s, out *o)
{
    ppc_engine *e = s->e;
    int64_t now = ppc_now_ms();
    advance(s, now);
    local_view v;
    read_local(e, &v);
    put(o, "{\"version\":1,\"role\":\"%s\",\"running\":true,\"uptime_seconds\":%.3f,",
        e->listen_fd >= 0 ? "ppserver" : "client", (double)(now - s->started_ms) / 1000.0);
    put(o, "\"time\":%lld,\"queue\":%zu,\"pending\":%zu,", (long long)time(NULL), e->rq_len,
        v.pending);
    uint64_t total = v.lj;
    for (int i = 0; i < e->nrn; i++)
        total += e->rn[i]->njobs;
    put(o, "\"jobs_done\":%llu,\"errors_total\":%llu,", (unsigned long long)total,
        (unsigned long long)s->nerrors);
    /* nodes */
    int linfl = 0;
    for (ppc_worker *w = ppc_pool_workers(e->pool); w; w = w->next)
        linfl += w->inflight;
    put(o, "\"nodes\":[{\"name\":\"local\",\"address\":\"local\",\"state\":\"%s\",\"cores\":%d,"
           "\"jobs\":%llu,\"job_seconds\":%.6f,\"inflight\":%d,\"link\":null}",
        v.ncpus > 0 && !v.dead ? "up" : "down", v.ncpus, (unsigned long long)v.lj,
        (double)v.lt / 1e9, linfl);
    for (int i = 0; i < e->nrn; i++) {
        ppc_rnode *r = e->rn[i];
        put(o, ",{\"name\":");
        put_jstr(o, r->name);
        put(o, ",\"address\":");
        char addr[300];
        snprintf(addr, sizeof addr, "%s:%s", r->host, r->port);
        put_jstr(o, addr);
        put(o, ",\"state\":\"%s\",\"cores\":%d,\"jobs\":%llu,\"job_seconds\":%.6f,"
               "\"inflight\":%d,\"link\":{\"tls\":%s,\"auth\":\"%s\",\"why\":",
            rnode_state(r->state), r->ncpus, (unsigned long long)r->njobs,
            (double)r->time_ns / 1e9, r->inflight, link_tls(&r->c) ? "true" : "false",
            link_auth(e, r->state == R_READY, r->state == R_HELLO || r->state == R_AUTH));
        put_jstr(o, r->why);
        put(o, "}}");
    }
    put(o, "],");
    /* local workers */
    put(o, "\"workers\":[");
    int first = 1;
    for (ppc_worker *w = ppc_pool_workers(e->pool); w; w = w->next) {
        put(o, "%s{\"pid\":%d,\"state\":\"%s\",\"jobs\":%llu,\"inflight\":%d,", first ? "" : ",",
            (int)w->pid, worker_state(w), (unsigned long long)w->done, w->inflight);
        first = 0;
        if (w->inflight > 0 && w->busy_since > 0)
            put(o, "\"job_age_seconds\":%.3f,", (double)(now - w->busy_since) / 1000.0);
        else
            put(o, "\"job_age_seconds\":null,");
        put(o, "\"rss_bytes\":%ld}", rss_bytes((int)w->pid));
    }
    put(o, "],");
    /* ppserver: its clients */
    put(o, "\"clients\":[");
    first = 1;
    for (ppc_sconn *c = e->sconns; c; c = c->next) {
        put(o, "%s{\"peer\":", first ? "" : ",");
        first = 0;
        put_jstr(o, c->peer);
        put(o, ",\"state\":\"%s\",\"active\":%zu,\"link\":{\"tls\":%s,\"auth\":\"%s\"}}",
            sconn_state(c->state), c->active, link_tls(&c->c) ? "true" : "false",
            link_auth(e, c->state == S_READY, c->state == S_HELLO || c->state == S_AUTH));
    }
    put(o, "],\"nclients\":%d,", v.nclients);
    /* jobs per second over the last minute, oldest first; the last entry is
     * the current (partial) second */
    put(o, "\"jobs_per_second\":[");
    uint64_t sum = 0;
    for (int k = 59; k >= 0; k--) {
        uint32_t v = s->per_sec[(s->cur_sec - k) % RING];
        sum += v;
        put(o, "%u%s", v, k ? "," : "");
    }
    /* the window: 59 whole seconds and the current one so far, or less
     * while the engine is younger */
    double span = 59.0 + (double)(now % 1000) / 1000.0;
    double age = (double)(now - s->started_ms) / 1000.0;
    if (age < span)
        span = age;
    put(o, "],\"jobs_per_second_1m\":%.3f,", span > 0.05 ? (double)sum / span : 0.0);
    /* histogram */
    put(o, "\"histogram\":{\"bounds_seconds\":[");
    for (int b = 0; b < PPC_STATUS_NBUCKETS - 1; b++)
        put(o, "%s%g", b ? "," : "", (double)bounds_ns[b] / 1e9);
    put(o, "],\"counts\":[");
    uint64_t cnt = 0;
    for (int b = 0; b < PPC_STATUS_NBUCKETS; b++) {
        put(o, "%s%llu", b ? "," : "", (unsigned long long)s->hist[b]);
        cnt += s->hist[b];
    }
    put(o, "],\"count\":%llu,\"sum_seconds\":%.6f},", (unsigned long long)cnt,
        (double)s->hist_sum_ns / 1e9);
    /* recent errors, newest first */
    put(o, "\"errors\":[");
    uint64_t nshow = s->nerrors < NERRORS ? s->nerrors : NERRORS;
    for (uint64_t k = 0; k < nshow; k++) {
        const status_err *er = &s->errs[(s->nerrors - 1 - k) % NERRORS];
        put(o, "%s{\"time\":%lld,\"node\":", k ? "," : "", (long long)er->when);
        put_jstr(o, node_name(s, er->node));
        put(o, ",\"type\":");
        put_jstr(o, er->type);
        put(o, ",\"message\":");
        put_jstr(o, er->msg);
        put(o, ",\"traceback\":");
        put_jstr(o, er->tb);
        put(o, "}");
    }
    put(o, "],\"pool_error\":");
    if (v.dead && v.why)
        put_jstr(o, v.why);
    else
        put(o, "null");
    put(o, "}\n");
}

static void metric_head(out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_metrics(ppc_status *s, out *o)
{
    ppc_engine *e = s->e;
    int64_t now = ppc_now_ms();
    local_view v;
    read_local(e, &v);

    metric_head(o, "ppc_jobs_total", "counter", "Jobs completed, by node.");
    put(o, "ppc_jobs_total{node=\"local\"} %llu\n", (unsigned long long)v.lj);
    for (int i = 0; i < e->nrn; i++) {
        put(o, "ppc_jobs_total{node=\"");
        put_label(o, e->rn[i]->name);
        put(o, "\"} %llu\n", (unsigned long long)e->rn[i]->njobs);
    }
    metric_head(o, "ppc_job_time_seconds_total", "counter",
                "Execution time of completed jobs, by node.");
    put(o, "ppc_job_time_seconds_total{node=\"local\"} %.9f\n", (double)v.lt / 1e9);
    for (int i = 0; i < e->nrn; i++) {
        put(o, "ppc_job_time_seconds_total{node=\"");
        put_label(o, e->rn[i]->name);
        put(o, "\"} %.9f\n", (double)e->rn[i]->time_ns / 1e9);
    }
    metric_head(o, "ppc_node_cores", "gauge", "Cores (worker slots) of a node.");
    put(o, "ppc_node_cores{node=\"local\"} %d\n", v.ncpus);
    for (int i = 0; i < e->nrn; i++) {
        put(o, "ppc_node_cores{node=\"");
        put_label(o, e->rn[i]->name);
        put(o, "\"} %d\n", e->rn[i]->ncpus);
    }
    metric_head(o, "ppc_node_up", "gauge", "1 when a node can take jobs.");
    put(o, "ppc_node_up{node=\"local\"} %d\n", v.ncpus > 0 && !v.dead);
    for (int i = 0; i < e->nrn; i++) {
        put(o, "ppc_node_up{node=\"");
        put_label(o, e->rn[i]->name);
        put(o, "\"} %d\n", e->rn[i]->state == R_READY);
    }
    metric_head(o, "ppc_worker_jobs_total", "counter", "Jobs completed by a local worker.");
    for (ppc_worker *w = ppc_pool_workers(e->pool); w; w = w->next)
        put(o, "ppc_worker_jobs_total{node=\"local\",worker=\"%d\"} %llu\n", (int)w->pid,
            (unsigned long long)w->done);
    metric_head(o, "ppc_worker_busy", "gauge", "1 while a local worker runs a job.");
    for (ppc_worker *w = ppc_pool_workers(e->pool); w; w = w->next)
        put(o, "ppc_worker_busy{node=\"local\",worker=\"%d\"} %d\n", (int)w->pid,
            w->inflight > 0);
    metric_head(o, "ppc_worker_resident_memory_bytes", "gauge",
                "Resident memory of a local worker process.");
    for (ppc_worker *w = ppc_pool_workers(e->pool); w; w = w->next) {
        long rss = rss_bytes((int)w->pid);
        if (rss >= 0)
            put(o, "ppc_worker_resident_memory_bytes{node=\"local\",worker=\"%d\"} %ld\n",
                (int)w->pid, rss);
    }
    metric_head(o, "ppc_queue_jobs", "gauge", "Jobs waiting in the run queue.");
    put(o, "ppc_queue_jobs %zu\n", e->rq_len);
    metric_head(o, "ppc_pending_jobs", "gauge", "Jobs submitted and not yet done.");
    put(o, "ppc_pending_jobs %zu\n", v.pending);
    metric_head(o, "ppc_job_errors_total", "counter",
                "Jobs that raised or whose worker failed.");
    put(o, "ppc_job_errors_total %llu\n", (unsigned long long)s->nerrors);
    metric_head(o, "ppc_clients", "gauge", "ppserver: clients connected.");
    put(o, "ppc_clients %d\n", v.nclients);
    metric_head(o, "ppc_job_duration_seconds", "histogram", "Execution time of jobs.");
    uint64_t cum = 0;
    for (int b = 0; b < PPC_STATUS_NBUCKETS; b++) {
        cum += s->hist[b];
        if (b < PPC_STATUS_NBUCKETS - 1)
            put(o, "ppc_job_duration_seconds_bucket{le=\"%g\"} %llu\n",
                (double)bounds_ns[b] / 1e9, (unsigned long long)cum);
        else
            put(o, "ppc_job_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                (unsigned long long)cum);
    }
    put(o, "ppc_job_duration_seconds_sum %.9f\n", (double)s->hist_sum_ns / 1e9);
    put(o, "ppc_job_duration_seconds_count %llu\n", (unsigned long long)cum);
    metric_head(o, "ppc_uptime_seconds", "gauge", "Seconds since the engine started.");
    put(o, "ppc_uptime_seconds %.3f\n", (double)(now - s->started_ms) / 1000.0);
}

/* ---- HTTP ---- */

static watched *find_watch(ppc_status *s, struct MHD_Connection *c)
{
    for (size_t i = 0; i < sizeof s->conns / sizeof s->conns[0]; i++)
        if (s->conns[i].c == c)
            return &s->conns[i];
    return NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    ppc_status *s = cls;
    (void)socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            M.get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        watched *w = find_watch(s, NULL);
        if (w && ci) {
            w->c = c;
            w->fd = ci->connect_fd;
            w->deadline = ppc_now_ms() + REQUEST_MS;
        }
    } else {
        watched *w = find_watch(s, c);
        if (w)
            w->c = NULL;
    }
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type,
                             void *data, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = M.create_response_from_buffer(len, data, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(data);
        return MHD_NO;
    }
    M.add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    M.add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    M.add_response_header(r, "X-Content-Type-Options", "nosniff");
    M.add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; img-src 'self' data:");
    if (code == MHD_HTTP_UNAUTHORIZED)
        M.add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"ppc\"");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        M.add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = M.queue_response(c, code, r);
    M.destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned code, const char *msg)
{
    return reply(c, code, "text/plain; charset=utf-8", (void *)msg, strlen(msg),
                 MHD_RESPMEM_PERSISTENT);
}

static int token_ok(ppc_status *s, struct MHD_Connection *c)
{
    ppc_engine *e = s->e;
    const char *h = M.lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    const char *t = h + 7;
    size_t n = strlen(t), want = e->opts.secret_len;
    if (n != want || want == 0) {
        /* compare anyway, so a wrong length costs the same time */
        (void)CRYPTO_memcmp(e->opts.secret, e->opts.secret, want);
        return 0;
    }
    return CRYPTO_memcmp(t, e->opts.secret, want) == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    ppc_status *s = cls;
    (void)version;
    (void)upload_data;
    (void)con_cls;
    s->requests++;
    /* the next request on this connection gets a fresh deadline */
    watched *w = find_watch(s, c);
    if (w)
        w->deadline = ppc_now_ms() + REQUEST_MS;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        s->refused++;
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "read-only: GET only\n");
    }
    const char *cl = M.lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (*upload_data_size != 0 || (cl && strcmp(cl, "0") != 0) ||
        M.lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        s->refused++;
        return reply_text(c, MHD_HTTP_BAD_REQUEST, "a GET has no body\n");
    }
    /* the page's own files hold no data: only the data needs the token */
    const char *path = strcmp(url, "/") == 0 ? "/index.html" : url;
    for (int i = 0; i < s->nassets; i++)
        if (strcmp(path, s->assets[i].path) == 0)
            return reply(c, MHD_HTTP_OK, s->assets[i].type, s->assets[i].data, s->assets[i].len,
                         MHD_RESPMEM_PERSISTENT);
    int data = strcmp(url, "/health") == 0 || strcmp(url, "/status") == 0 ||
               strcmp(url, "/metrics") == 0;
    if (!data)
        return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: try /, /status, /metrics, /health\n");
    if (s->need_token && !token_ok(s, c)) {
        s->refused++;
        return reply_text(c, MHD_HTTP_UNAUTHORIZED,
                          "this status endpoint needs the cluster secret: "
                          "Authorization: Bearer <secret>\n");
    }
    if (strcmp(url, "/health") == 0)
        return reply_text(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/status") == 0 || strcmp(url, "/metrics") == 0) {
        out o = {{0}, 0};
        int json = url[1] == 's';
        if (json)
            render_json(s, &o);
        else
            render_metrics(s, &o);
        if (o.oom) {
            ppc_buf_free(&o.b);
            return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
        }
        /* the data pointer goes to the library, which frees it */
        size_t len = ppc_buf_unread(&o.b);
        void *data = o.b.data ? o.b.data : malloc(1);
        if (!data)
            return MHD_NO;
        return reply(c, MHD_HTTP_OK,
                     json ? "application/json" : "text/plain; version=0.0.4; charset=utf-8",
                     data, len, MHD_RESPMEM_MUST_FREE);
    }
    return reply_text(c, MHD_HTTP_NOT_FOUND, "not found\n");
}

static void schedule_next(ppc_status *s)
{
    MHD_UNSIGNED_LONG_LONG to;
    if (M.get_timeout(s->d, &to) == MHD_YES)
        s->next_run = ppc_now_ms() + (to > 60000 ? 60000 : (int64_t)to);
    else
        s->next_run = -1;
}

void ppc_status_event(ppc_status *s)
{
    M.run(s->d);
    schedule_next(s);
}

int ppc_status_tick(ppc_status *s)
{
    int64_t now = s->e->loop_ms;
    int64_t next = s->next_run;
    /* connections past their request deadline: cut off (the library then
     * sees the socket end and closes it) */
    int cut = 0;
    for (size_t i = 0; i < sizeof s->conns / sizeof s->conns[0]; i++) {
        watched *w = &s->conns[i];
        if (!w->c)
            continue;
        if (now >= w->deadline) {
            shutdown(w->fd, SHUT_RDWR);
            w->deadline = now + 1000; /* once; the close follows */
            cut = 1;
        }
        if (next < 0 || w->deadline < next)
            next = w->deadline;
    }
    if (cut || (s->next_run >= 0 && now >= s->next_run)) {
        M.run(s->d);
        schedule_next(s);
        next = s->next_run;
        for (size_t i = 0; i < sizeof s->conns / sizeof s->conns[0]; i++)
            if (s->conns[i].c && (next < 0 || s->conns[i].deadline < next))
                next = s->conns[i].deadline;
    }
    if (next < 0)
        return -1;
    return next <= now ? 0 : (int)(next - now > 60000 ? 60000 : next - now);
}

int ppc_status_port(const ppc_status *s)
{
    return s->port;
}

static int is_loopback_name(const char *h)
{
    return !h || !*h || strcmp(h, "127.0.0.1") == 0 || strcmp(h, "localhost") == 0 ||
           strcmp(h, "::1") == 0;
}

static int copy_assets(ppc_status *s, const ppc_engine_opts *o)
{
    if (o->nstatus_assets <= 0)
        return 0;
    s->assets = calloc((size_t)o->nstatus_assets, sizeof *s->assets);
    if (!s->assets)
        return -1;
    for (int i = 0; i < o->nstatus_assets; i++) {
        const ppc_status_asset *a = &o->status_assets[i];
        asset *d = &s->assets[s->nassets++];
        d->path = strdup(a->path);
        d->type = strdup(a->type);
        d->data = malloc(a->len ? a->len : 1);
        if (!d->path || !d->type || !d->data)
            return -1;
        memcpy(d->data, a->data, a->len);
        d->len = a->len;
    }
    return 0;
}

ppc_status *ppc_status_start(ppc_engine *e, char *err, size_t errlen)
{
    const ppc_engine_opts *o = &e->opts;
    pthread_once(&mhd_once, mhd_load);
    if (mhd_err[0]) {
        snprintf(err, errlen, "status page: %s", mhd_err);
        return NULL;
    }
    ppc_status *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->e = e;
    s->listen_fd = s->mhd_epfd = -1;
    s->next_run = -1;
    s->started_ms = ppc_now_ms();
    s->cur_sec = s->started_ms / 1000;
    const char *host = o->status_host && *o->status_host ? o->status_host : "127.0.0.1";
    s->need_token = !is_loopback_name(host);
    if (s->need_token && o->secret_len == 0) {
        snprintf(err, errlen,
                 "a status page on %s (not loopback) needs the cluster secret, which clients "
                 "then send as a bearer token; none is set",
                 host);
        goto fail;
    }
    if (copy_assets(s, o) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    char nerr[200];
    s->listen_fd = ppc_net_listen(host, o->status_port, nerr, sizeof nerr);
    if (s->listen_fd < 0) {
        snprintf(err, errlen, "status page: %s", nerr);
        goto fail;
    }
    ppc_fd_own(s->listen_fd); /* closed in forked children; best effort */
    s->port = ppc_net_local_port(s->listen_fd);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    unsigned flags = MHD_USE_EPOLL;
    if (getsockname(s->listen_fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->d = M.start_daemon(
        flags, 0, NULL, NULL, on_request, s, MHD_OPTION_LISTEN_SOCKET, s->listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)MAX_CONNS_PER_IP, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, s, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "status page: cannot start the HTTP daemon");
        goto fail;
    }
    const union MHD_DaemonInfo *di = M.get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        snprintf(err, errlen, "status page: the HTTP library has no epoll fd");
        goto fail;
    }
    s->mhd_epfd = di->epoll_fd;
    ppc_fd_own(s->mhd_epfd); /* the library's, but no forked child needs it */
    s->src.kind = PPC_SRC_STATUS;
    s->src.obj = s;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->src};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, s->mhd_epfd, &ev) < 0) {
        snprintf(err, errlen, "status page: epoll_ctl: %s", strerror(errno));
        goto fail;
    }
    schedule_next(s);
    return s;
fail:
    ppc_status_free(s);
    return NULL;
}

void ppc_status_free(ppc_status *s)
{
    if (!s)
        return;
    if (s->d) {
        if (s->e->epfd >= 0)
            epoll_ctl(s->e->epfd, EPOLL_CTL_DEL, s->mhd_epfd, NULL);
        /* the listening socket is ours: take it back before the stop */
        ppc_fd_forget(s->mhd_epfd); /* the library closes it */
        M.quiesce_daemon(s->d);
        M.stop_daemon(s->d);
    }
    if (s->listen_fd >= 0)
        ppc_fd_close(s->listen_fd);
    for (int i = 0; i < s->nassets; i++) {
        free(s->assets[i].path);
        free(s->assets[i].type);
        free(s->assets[i].data);
    }
    free(s->assets);
    free(s);
}

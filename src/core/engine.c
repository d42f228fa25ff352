/* engine.c - the engine thread, its event loop, the run queue, the
 * scheduler, completion and the caller-facing API (engine.h).
 *
 * Callers hand jobs over through a locked inbox; the engine thread is woken
 * through an eventfd only when it sleeps, so a busy engine costs submitters
 * no system call. Completed jobs are published to waiters in batches, one
 * lock and at most one broadcast per loop turn. The engine thread never
 * blocks except in epoll_wait, and never runs caller code. */
#define _GNU_SOURCE
#include "engine_int.h"
#include "frame.h"
#include "status.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t ppc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void wake_locked(ppc_engine *e)
{
    if (e->sleeping) {
        uint64_t one = 1;
        ssize_t r = write(e->wakefd, &one, sizeof one);
        (void)r; /* EAGAIN means a wake-up is already pending */
        e->sleeping = 0;
    }
}

/* Bounded: below the level nothing is formatted or allocated; past
 * PPC_LOG_MAX_QUEUED waiting messages a message is only counted, and the
 * count goes out as one message once the queue has drained. */
void ppc_engine_log(ppc_engine *e, int level, const char *fmt, ...)
{
    if (level < atomic_load_explicit(&e->log_level, memory_order_relaxed))
        return;
    pthread_mutex_lock(&e->mu);
    int full = e->nlog >= PPC_LOG_MAX_QUEUED;
    if (full)
        e->log_dropped++;
    pthread_mutex_unlock(&e->mu);
    if (full)
        return;
    ppc_logmsg *m = malloc(sizeof *m);
    if (!m)
        return;
    m->next = NULL;
    m->level = level;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->msg, sizeof m->msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&e->mu);
    if (e->log_tail)
        e->log_tail->next = m;
    else
        e->log_head = m;
    e->log_tail = m;
    e->nlog++;
    pthread_cond_signal(&e->cv_ev);
    pthread_mutex_unlock(&e->mu);
}

void ppc_engine_set_log_level(ppc_engine *e, int level)
{
    atomic_store_explicit(&e->log_level, level, memory_order_relaxed);
}

void ppc_engine_forget(ppc_engine *e, const void *obj, size_t size)
{
    const char *lo = obj, *hi = lo + size;
    for (int i = 0; i < e->batch_n; i++) {
        const char *p = e->batch[i].data.ptr;
        if (p && p >= lo && p < hi)
            e->batch[i].data.ptr = NULL;
    }
}

void ppc_engine_complete(ppc_engine *e, ppc_job *j)
{
    j->next = NULL;
    if (e->done_tail)
        e->done_tail->next = j;
    else
        e->done_head = j;
    e->done_tail = j;
}

void ppc_engine_requeue_front(ppc_engine *e, ppc_job *j)
{
    atomic_store(&j->state, PPC_JOB_QUEUED);
    j->next = e->rq_head;
    e->rq_head = j;
    if (!e->rq_tail)
        e->rq_tail = j;
    e->rq_len++;
}

int ppc_engine_retry(ppc_engine *e, ppc_job *j)
{
    if (atomic_load(&j->killreq) || j->retried >= j->retries)
        return 0;
    j->retried++;
    free(j->result);
    j->result = NULL;
    j->result_len = 0;
    j->result_aux = 0;
    j->status = PPC_JOB_OK;
    ppc_engine_log(e, PPC_LOG_INFO, "job %llu runs again (try %d of %d) after its worker died",
                   (unsigned long long)j->id, j->retried + 1, j->retries + 1);
    ppc_engine_requeue_front(e, j);
    return 1;
}

/* A queued job that must not run (cancelled, or killed or timed out while
 * back in the queue): complete it with its status. */
static void complete_stopped(ppc_engine *e, ppc_job *j)
{
    int why = atomic_load(&j->killreq);
    if (!why)
        why = PPC_JOB_ECANCELLED;
    ppc_job_fail(j, why,
                 why == PPC_JOB_ETIMEOUT  ? "the job ran past its timeout"
                 : why == PPC_JOB_EKILLED ? "the job was killed"
                                          : "the job was cancelled");
    ppc_engine_complete(e, j);
}

static int must_stop(ppc_job *j)
{
    return atomic_load(&j->killreq) || atomic_load(&j->claim) == PPC_CLAIM_CANCELLED;
}

/* Cancelled jobs leave the run queue at once (their waiters and group
 * counts need not wait for the queue to reach them). */
static void sweep_cancelled(ppc_engine *e)
{
    ppc_job **pp = &e->rq_head, *prev = NULL;
    while (*pp) {
        ppc_job *j = *pp;
        if (atomic_load(&j->claim) == PPC_CLAIM_CANCELLED) {
            *pp = j->next;
            e->rq_len--;
            j->next = NULL;
            complete_stopped(e, j);
        } else {
            prev = j;
            pp = &j->next;
        }
    }
    e->rq_tail = prev;
}

/* kill() requests: the node running the job stops it; a job back in the
 * queue is completed by schedule. Each request holds a job reference. */
static void run_kills(ppc_engine *e, ppc_job **kills, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ppc_job *j = kills[i];
        if (atomic_load(&j->state) == PPC_JOB_RUNNING && !ppc_pool_kill_job(e->pool, j))
            ppc_remote_kill_job(e, j);
        ppc_job_decref(j);
    }
    free(kills);
}

static ppc_job *rq_pop(ppc_engine *e)
{
    ppc_job *j = e->rq_head;
    if (j) {
        e->rq_head = j->next;
        if (!e->rq_head)
            e->rq_tail = NULL;
        e->rq_len--;
        j->next = NULL;
    }
    return j;
}

/* Mark one job finished for its group; caller holds the lock. */
static void finish_locked(ppc_engine *e, ppc_job *j)
{
    atomic_store_explicit(&j->state, PPC_JOB_DONE, memory_order_release);
    if (j->group < e->ngroups && e->group_pending[j->group] > 0)
        e->group_pending[j->group]--;
    if (e->total_pending > 0)
        e->total_pending--;
}

/* Publish the completions of this loop turn to waiters. */
static void publish(ppc_engine *e)
{
    if (!e->done_head)
        return;
    ppc_job *list = e->done_head, *drop = NULL, *served = NULL;
    e->done_head = e->done_tail = NULL;
    int cbs = 0;
    if (e->status) /* the status page's counters: outside the lock */
        for (ppc_job *j = list; j; j = j->next)
            ppc_status_note_job(e->status, j, e->loop_ms);
    pthread_mutex_lock(&e->mu);
    while (list) {
        ppc_job *j = list;
        list = j->next;
        j->next = NULL;
        if (j->status == PPC_JOB_OK && !j->cancelled) {
            if (j->node == 0) {
                e->local_njobs++;
                e->local_time_ns += j->exec_ns;
            } else if (j->node <= (uint32_t)e->nrn) {
                e->rn[j->node - 1]->njobs++;
                e->rn[j->node - 1]->time_ns += j->exec_ns;
            }
        }
        if (j->timeout_ms)
            atomic_fetch_sub(&e->ntimed, 1);
        if (j->origin || j->cancelled) {
            /* a ppserver's job for a client (or for a gone one) */
            j->next = served;
            served = j;
        } else if (j->has_cb) {
            atomic_store_explicit(&j->state, PPC_JOB_COMPLETE, memory_order_release);
            if (e->cb_tail)
                e->cb_tail->next = j;
            else
                e->cb_head = j;
            e->cb_tail = j; /* the engine's reference goes with the event */
            cbs++;
        } else if (j->notify) {
            /* watched: the engine's reference goes with a PPC_EV_DONE */
            finish_locked(e, j);
            if (e->cb_tail)
                e->cb_tail->next = j;
            else
                e->cb_head = j;
            e->cb_tail = j;
            cbs++;
        } else {
            finish_locked(e, j);
            j->next = drop;
            drop = j;
        }
    }
    if (e->waiters)
        pthread_cond_broadcast(&e->cv_done);
    if (cbs)
        pthread_cond_signal(&e->cv_ev);
    pthread_mutex_unlock(&e->mu);
    while (drop) {
        ppc_job *j = drop;
        drop = j->next;
        ppc_job_decref(j);
    }
    while (served) {
        ppc_job *j = served;
        served = j->next;
        j->next = NULL;
        ppc_serve_result(e, j);
    }
}

static void fail_queue(ppc_engine *e, int status, const char *msg)
{
    ppc_job *j;
    while ((j = rq_pop(e))) {
        ppc_job_fail(j, status, msg);
        ppc_engine_complete(e, j);
    }
}

/* 1 when some node runs, or may soon run, jobs of this kind. */
static int runnable(ppc_engine *e, uint32_t flags, const char **why)
{
    if (!ppc_pool_dead(e->pool, why))
        return 1;
    if (ppc_remote_may_run(e, flags))
        return 1;
    if (ppc_discover_window_open(e))
        return 1; /* nodes may still announce themselves */
    if (e->nrn > 0)
        *why = "no node can run the job: the local pool has no workers and every remote "
               "node is unreachable or refused us (see the pp logger)";
    else if (e->opts.discover)
        *why = "no node can run the job: the local pool has no workers and no ppserver "
               "announced itself in the discovery window (is one running with -a and "
               "the same secret, reachable by broadcast?)";
    return 0;
}

static void schedule(ppc_engine *e)
{
    while (e->rq_head) {
        ppc_job *j = e->rq_head;
        if (j->cancelled) {
            rq_pop(e);
            ppc_job_decref(j);
            continue;
        }
        if (must_stop(j)) {
            rq_pop(e);
            complete_stopped(e, j);
            continue;
        }
        ppc_worker *w = ppc_pool_pick(e->pool, e->rq_len);
        ppc_rnode *r = w ? NULL : ppc_remote_pick(e, j, e->rq_len);
        if (!w && !r) {
            const char *why;
            if (!runnable(e, j->fn ? j->fn->flags : 0, &why)) {
                rq_pop(e);
                ppc_job_fail(j, PPC_JOB_ENONODE, why);
                ppc_engine_complete(e, j);
                continue;
            }
            break;
        }
        rq_pop(e);
        if (!ppc_job_take(j)) { /* cancelled just now */
            complete_stopped(e, j);
            continue;
        }
        if (j->timeout_ms)
            j->started_ms = ppc_now_ms(); /* a remote job's timeout counts from here */
        int rc = w ? ppc_pool_dispatch(e->pool, w, j) : ppc_remote_dispatch(e, r, j);
        if (rc < 0) {
            ppc_job_fail(j, PPC_JOB_EWORKER, "out of memory while sending the job");
            ppc_engine_complete(e, j);
        }
    }
}

static int min_timeout(int a, int b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

static void *engine_main(void *arg)
{
    ppc_engine *e = arg;
    struct epoll_event evs[64];
    int timeout = 0;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        int idle = !e->in_head && e->want_workers < 0 && !e->stopping && !e->nshmret &&
                   !e->cancels && !e->nkills;
        if (idle) {
            e->sleeping = 1;
            /* every node is full: a new job could not be placed before some
             * node reports back (an epoll event), so submit need not wake us */
            e->saturated = e->rq_head != NULL;
        }
        pthread_mutex_unlock(&e->mu);
        int n = epoll_wait(e->epfd, evs, 64, idle ? timeout : 0);
        if (n < 0 && errno != EINTR)
            n = 0;
        if (e->status)
            e->loop_ms = ppc_now_ms();
        pthread_mutex_lock(&e->mu);
        e->sleeping = 0;
        e->saturated = 0;
        if (e->in_head) {
            if (e->rq_tail)
                e->rq_tail->next = e->in_head;
            else
                e->rq_head = e->in_head;
            e->rq_tail = e->in_tail;
            for (ppc_job *j = e->in_head; j; j = j->next)
                e->rq_len++;
            e->in_head = e->in_tail = NULL;
        }
        int want = e->want_workers;
        e->want_workers = -1;
        int stopping = e->stopping;
        int cancels = e->cancels;
        e->cancels = 0;
        ppc_job **kills = e->kills;
        size_t nkills = e->nkills;
        e->kills = NULL;
        e->nkills = e->capkills = 0;
        struct ppc_shmret *rets = NULL;
        size_t nrets = e->nshmret;
        if (nrets) {
            rets = e->shmret;
            e->shmret = NULL;
            e->nshmret = e->capshmret = 0;
        }
        pthread_mutex_unlock(&e->mu);
        for (size_t i = 0; i < nrets && e->pool; i++)
            ppc_pool_note(e->pool, rets[i].pid, rets[i].type, rets[i].aux, rets[i].id);
        free(rets);

        e->batch = evs;
        e->batch_n = n > 0 ? n : 0;
        for (int i = 0; i < n; i++) {
            ppc_evsrc *src = evs[i].data.ptr;
            if (!src)
                continue; /* its object was freed earlier in this batch */
            if (src->kind == PPC_SRC_WAKE) {
                uint64_t v;
                ssize_t r = read(e->wakefd, &v, sizeof v);
                (void)r;
            } else if (src->kind == PPC_SRC_RNODE) {
                ppc_remote_event(e, src->obj, evs[i].events);
            } else if (src->kind == PPC_SRC_LISTEN) {
                ppc_serve_accept(e);
            } else if (src->kind == PPC_SRC_SCONN) {
                ppc_serve_event(e, src->obj, evs[i].events);
            } else if (src->kind == PPC_SRC_RDV) {
                ppc_remote_accept(e);
            } else if (src->kind == PPC_SRC_UDP) {
                ppc_discover_event(e);
            } else if (src->kind == PPC_SRC_STATUS) {
                ppc_status_event(e->status);
            } else {
                ppc_pool_event(e->pool, src, evs[i].events);
            }
        }
        e->batch_n = 0;
        if (cancels)
            sweep_cancelled(e);
        if (nkills)
            run_kills(e, kills, nkills);
        if (stopping)
            break;
        if (want >= 0)
            ppc_pool_retarget(e->pool, want);
        int t = ppc_remote_tick(e);
        t = min_timeout(t, ppc_serve_tick(e));
        t = min_timeout(t, ppc_serve_dial_tick(e));
        t = min_timeout(t, ppc_discover_tick(e));
        if (e->status)
            t = min_timeout(t, ppc_status_tick(e->status));
        /* before schedule and publish: it may settle a reaped worker's job */
        t = min_timeout(t, ppc_pool_tick(e->pool));
        schedule(e);
        if (atomic_load(&e->ntimed) > 0) { /* after schedule: jobs just sent count */
            int64_t now = ppc_now_ms();
            t = min_timeout(t, ppc_pool_timeouts(e->pool, now));
            t = min_timeout(t, ppc_remote_timeouts(e, now));
        }
        ppc_pool_flush(e->pool);
        ppc_remote_flush(e);
        publish(e);
        ppc_serve_flush(e);
        timeout = t;
        if (e->rq_head && timeout < 0 && e->nrn > 0)
            timeout = 1000; /* re-check whether queued jobs can still run */
    }
    /* no page once the engine stops: /health answers only while it runs */
    ppc_status_free(e->status);
    e->status = NULL;
    ppc_serve_shutdown(e);
    ppc_discover_stop(e);
    fail_queue(e, PPC_JOB_EDESTROYED, "the server was destroyed");
    ppc_remote_shutdown(e);
    ppc_pool_shutdown(e->pool);
    publish(e);
    return NULL;
}

static void free_strv(char **v)
{
    if (v) {
        for (size_t i = 0; v[i]; i++)
            free(v[i]);
        free(v);
    }
}

static char **copy_strv(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **c = calloc(n + 1, sizeof(char *));
    if (!c)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        c[i] = strdup(v[i]);
        if (!c[i]) {
            free_strv(c);
            return NULL;
        }
    }
    return c;
}

/* Prestarted workers from index `from` on that nobody took: close our
 * ends (they see EOF), kill and reap them. */
static void release_prestarted(const ppc_engine_opts *o, int from)
{
    for (int i = from; o->prestarted && i < o->nprestarted; i++) {
        const ppc_prestarted *ps = &o->prestarted[i];
        ppc_fd_close(ps->fd_to_worker);
        ppc_fd_close(ps->fd_from_worker);
        if (ps->pid > 0) {
            kill(ps->pid, SIGKILL);
            waitpid(ps->pid, NULL, 0);
        }
    }
}

static int copy_opts(ppc_engine *e, const ppc_engine_opts *o)
{
    e->opts = *o;
    e->argv_copy = copy_strv(o->worker_argv);
    if (!e->argv_copy)
        return -1;
    e->opts.worker_argv = e->argv_copy;
    if (o->worker_env) {
        e->env_copy = copy_strv(o->worker_env);
        if (!e->env_copy)
            return -1;
    }
    e->opts.worker_env = e->env_copy;
    if (o->init_len) {
        e->init_copy = malloc(o->init_len);
        if (!e->init_copy)
            return -1;
        memcpy(e->init_copy, o->init, o->init_len);
    }
    e->opts.init = e->init_copy;
    if (!e->opts.max_frame)
        e->opts.max_frame = (uint64_t)1 << 40;
    if (!e->opts.max_net_frame)
        e->opts.max_net_frame = (uint64_t)1 << 31;
    if (e->opts.liveness_ms <= 0)
        e->opts.liveness_ms = 3600 * 1000;
    e->secret_copy = malloc(o->secret_len ? o->secret_len : 1);
    if (!e->secret_copy)
        return -1;
    if (o->secret_len)
        memcpy(e->secret_copy, o->secret, o->secret_len);
    e->opts.secret = e->secret_copy;
    if (o->listen_host) {
        e->listen_host_copy = strdup(o->listen_host);
        if (!e->listen_host_copy)
            return -1;
    }
    e->opts.listen_host = e->listen_host_copy;
    if (o->broadcast) {
        e->broadcast_copy = strdup(o->broadcast);
        if (!e->broadcast_copy)
            return -1;
    }
    e->opts.broadcast = e->broadcast_copy;
    e->opts.ppservers = NULL;
    return 0;
}

ppc_engine *ppc_engine_new(const ppc_engine_opts *o, char *err, size_t errlen)
{
    int adopted = 0; /* prestarted workers the pool owns now */
    if (o->nworkers < 0 || (o->nworkers > 0 && (!o->worker_argv || !o->worker_argv[0])) ||
        o->nprestarted < 0 || o->nprestarted > o->nworkers ||
        (o->nprestarted > 0 && !o->prestarted)) {
        snprintf(err, errlen, "invalid engine options");
        release_prestarted(o, 0);
        return NULL;
    }
    ppc_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        release_prestarted(o, 0);
        return NULL;
    }
    e->epfd = e->wakefd = e->listen_fd = e->udp_fd = -1;
    e->rdv_fd = -1;
    e->dial_fd = -1;
    e->created_ms = ppc_now_ms();
    atomic_init(&e->log_level, o->log_level);
    e->fork_gen = ppc_fork_generation();
    /* a ppserver's ids for what it relays to its workers: apart from the
     * ids its own Server gives its local jobs and functions (from 1) */
    e->next_blob_id = (uint64_t)1 << 62;
    e->want_workers = o->nworkers;
    e->ncpus = o->nworkers;
    ppc_shm_pool_init(&e->shm, o->shm_pool_bytes ? o->shm_pool_bytes : (size_t)1 << 30);
    atomic_init(&e->shm_on, !o->no_shm);
    atomic_init(&e->vm_on, !o->no_shm && !o->no_vm);
    e->next_id = 1;
    pthread_mutex_init(&e->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->cv_done, &ca);
    pthread_cond_init(&e->cv_ev, &ca);
    pthread_condattr_destroy(&ca);
    if (copy_opts(e, o) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->epfd < 0 || e->wakefd < 0 || ppc_fd_own(e->epfd) < 0 || ppc_fd_own(e->wakefd) < 0) {
        snprintf(err, errlen, "epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    e->wake_src.kind = PPC_SRC_WAKE;
    e->wake_src.obj = e;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &e->wake_src};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wakefd, &ev) < 0) {
        snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
        goto fail;
    }
    e->pool = ppc_pool_new(e);
    if (!e->pool) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Workers the caller started: the pool owns each from here on (a
     * failed adoption closes and reaps that one); the engine thread starts
     * only the rest. */
    for (; adopted < o->nprestarted; adopted++) {
        const ppc_prestarted *ps = &o->prestarted[adopted];
        if (ppc_pool_adopt(e->pool, ps->pid, ps->fd_to_worker, ps->fd_from_worker) < 0)
            ppc_engine_log(e, PPC_LOG_WARNING, "cannot take over worker %d", ps->pid);
    }
    for (size_t i = 0; o->ppservers && o->ppservers[i]; i++) {
        const char *hp = o->ppservers[i];
        const char *colon = strrchr(hp, ':');
        char host[256];
        size_t hl = colon ? (size_t)(colon - hp) : strlen(hp);
        if (hl >= sizeof host || hl == 0) {
            snprintf(err, errlen, "invalid node address %s", hp);
            goto fail;
        }
        memcpy(host, hp, hl);
        host[hl] = 0;
        if (ppc_remote_add(e, host, colon ? colon + 1 : "60000", 1) < 0) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    if (ppc_tls_engine_init(e, o, err, errlen) < 0)
        goto fail;
    if (o->listen_port >= 0 && (!o->secret || o->secret_len == 0) && !o->certfile) {
        /* never a node that runs anyone's code */
        snprintf(err, errlen, "a listening engine needs a secret");
        goto fail;
    }
    if (o->listen_port >= 0 && ppc_serve_start(e, err, errlen) < 0)
        goto fail;
    if (o->has_rendezvous && ppc_remote_listen(e, o->rendezvous_fd, err, errlen) < 0)
        goto fail;
    if (o->connect_host && ppc_serve_dial_start(e, err, errlen) < 0)
        goto fail;
    if ((o->announce || o->discover) && o->discover_port > 0 &&
        ppc_discover_start(e, err, errlen) < 0)
        goto fail;
    e->opts.discover_patterns = NULL; /* the caller's: parsed by now */
    if (o->status_on) {
        if (!(e->status = ppc_status_start(e, err, errlen)))
            goto fail;
        e->status_port = ppc_status_port(e->status);
        e->loop_ms = ppc_now_ms();
    }
    /* The engine thread takes no signals: SIGPIPE on a dead worker's pipe
     * becomes EPIPE, and the caller's handlers (Ctrl-C) stay with it. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&e->thread, NULL, engine_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "pthread_create: %s", strerror(rc));
        goto fail;
    }
    e->thread_started = 1;
    e->opts.prestarted = NULL;
    e->opts.nprestarted = 0;
    return e;
fail:
    release_prestarted(o, adopted);
    ppc_engine_free(e);
    return NULL;
}

int ppc_engine_foreign(const ppc_engine *e)
{
    return e->fork_gen != ppc_fork_generation();
}

void ppc_engine_stop(ppc_engine *e)
{
    if (ppc_engine_foreign(e))
        return; /* its thread and lock state are the parent's */
    pthread_mutex_lock(&e->mu);
    if (e->stopped || !e->thread_started) {
        e->stopped = 1;
        pthread_mutex_unlock(&e->mu);
        return;
    }
    int first = !e->stopping;
    e->stopping = 1;
    e->sleeping = 1;
    wake_locked(e);
    pthread_mutex_unlock(&e->mu);
    if (first) {
        pthread_join(e->thread, NULL);
        pthread_mutex_lock(&e->mu);
        /* submissions that raced with the stop */
        ppc_job *j = e->in_head;
        e->in_head = e->in_tail = NULL;
        while (j) {
            ppc_job *nx = j->next;
            ppc_job_fail(j, PPC_JOB_EDESTROYED, "the server was destroyed");
            j->has_cb = 0;
            finish_locked(e, j);
            if (j->notify) { /* its watcher gets its event */
                j->next = NULL;
                if (e->cb_tail)
                    e->cb_tail->next = j;
                else
                    e->cb_head = j;
                e->cb_tail = j;
                j = nx;
                continue;
            }
            pthread_mutex_unlock(&e->mu);
            ppc_job_decref(j);
            pthread_mutex_lock(&e->mu);
            j = nx;
        }
        e->stopped = 1;
        e->npids = 0;
        pthread_cond_broadcast(&e->cv_done);
        pthread_cond_broadcast(&e->cv_ev);
        pthread_mutex_unlock(&e->mu);
    } else {
        /* another thread is stopping it: wait for that to finish */
        pthread_mutex_lock(&e->mu);
        while (!e->stopped)
            pthread_cond_wait(&e->cv_done, &e->mu);
        pthread_mutex_unlock(&e->mu);
    }
}

void ppc_engine_free(ppc_engine *e)
{
    if (!e || ppc_engine_foreign(e))
        return;
    ppc_engine_stop(e);
    ppc_job *j;
    while ((j = e->cb_head)) {
        e->cb_head = j->next;
        ppc_job_decref(j);
    }
    for (size_t i = 0; i < e->nkills; i++)
        ppc_job_decref(e->kills[i]);
    free(e->kills);
    ppc_logmsg *m;
    while ((m = e->log_head)) {
        e->log_head = m->next;
        free(m);
    }
    if (e->pool) {
        if (!e->thread_started)
            ppc_pool_shutdown(e->pool); /* adopted workers, if any */
        ppc_pool_free(e->pool);
    }
    ppc_status_free(e->status); /* the engine thread never ran */
    ppc_shm_pool_destroy(&e->shm);
    free(e->shmret);
    ppc_remote_free(e);
    ppc_fd_close(e->listen_fd);
    ppc_fd_close(e->udp_fd);
    ppc_discover_free(e);
    ppc_fd_close(e->rdv_fd);
    free(e->secret_copy);
    free(e->listen_host_copy);
    free(e->broadcast_copy);
    ppc_fd_close(e->epfd);
    ppc_fd_close(e->wakefd);
    free_strv(e->argv_copy);
    free_strv(e->env_copy);
    free(e->init_copy);
    free(e->group_pending);
    free(e->pids);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv_done);
    pthread_cond_destroy(&e->cv_ev);
    free(e);
}

int ppc_engine_submit(ppc_engine *e, ppc_job *j, uint32_t group, int has_cb)
{
    pthread_mutex_lock(&e->mu);
    if (e->stopping || e->stopped) {
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    if (group >= e->ngroups) {
        size_t n = e->ngroups ? e->ngroups : 8;
        while (n <= group)
            n *= 2;
        size_t *g = realloc(e->group_pending, n * sizeof *g);
        if (!g) {
            pthread_mutex_unlock(&e->mu);
            return -2;
        }
        memset(g + e->ngroups, 0, (n - e->ngroups) * sizeof *g);
        e->group_pending = g;
        e->ngroups = n;
    }
    j->id = e->next_id++;
    j->group = group;
    j->has_cb = has_cb ? 1 : 0;
    j->next = NULL;
    ppc_job_incref(j);
    if (j->timeout_ms)
        atomic_fetch_add(&e->ntimed, 1);
    e->group_pending[group]++;
    e->total_pending++;
    if (e->in_tail)
        e->in_tail->next = j;
    else
        e->in_head = j;
    e->in_tail = j;
    if (!e->saturated)
        wake_locked(e);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static int timed_wait(ppc_engine *e, pthread_cond_t *cv, const struct timespec *dl)
{
    if (!dl) {
        pthread_cond_wait(cv, &e->mu);
        return 0;
    }
    return pthread_cond_timedwait(cv, &e->mu, dl) == ETIMEDOUT;
}

int ppc_engine_wait_job(ppc_engine *e, ppc_job *j, int timeout_ms)
{
    if (atomic_load_explicit(&j->state, memory_order_acquire) == PPC_JOB_DONE)
        return 1;
    struct timespec dl;
    if (timeout_ms >= 0)
        deadline_after(&dl, timeout_ms);
    int done;
    pthread_mutex_lock(&e->mu);
    e->waiters++;
    while (!(done = atomic_load(&j->state) == PPC_JOB_DONE)) {
        if (timed_wait(e, &e->cv_done, timeout_ms >= 0 ? &dl : NULL))
            break;
    }
    done = atomic_load(&j->state) == PPC_JOB_DONE;
    e->waiters--;
    pthread_mutex_unlock(&e->mu);
    return done;
}

int ppc_engine_wait_group(ppc_engine *e, uint32_t group, int timeout_ms)
{
    struct timespec dl;
    if (timeout_ms >= 0)
        deadline_after(&dl, timeout_ms);
    int done;
    pthread_mutex_lock(&e->mu);
    e->waiters++;
    for (;;) {
        if (group == PPC_GROUP_ALL)
            done = e->total_pending == 0;
        else
            done = group >= e->ngroups || e->group_pending[group] == 0;
        if (done || timed_wait(e, &e->cv_done, timeout_ms >= 0 ? &dl : NULL))
            break;
    }
    if (group == PPC_GROUP_ALL)
        done = e->total_pending == 0;
    else
        done = group >= e->ngroups || e->group_pending[group] == 0;
    e->waiters--;
    pthread_mutex_unlock(&e->mu);
    return done;
}

int ppc_engine_next_event(ppc_engine *e, int timeout_ms, ppc_event *ev)
{
    struct timespec dl;
    if (timeout_ms >= 0)
        deadline_after(&dl, timeout_ms);
    memset(ev, 0, sizeof *ev);
    pthread_mutex_lock(&e->mu);
    for (;;) {
        if (e->log_head) {
            ppc_logmsg *m = e->log_head;
            e->log_head = m->next;
            if (!e->log_head)
                e->log_tail = NULL;
            e->nlog--;
            ev->kind = PPC_EV_LOG;
            ev->level = m->level;
            memcpy(ev->msg, m->msg, sizeof ev->msg);
            free(m);
            break;
        }
        if (e->log_dropped) {
            ev->kind = PPC_EV_LOG;
            ev->level = PPC_LOG_WARNING;
            snprintf(ev->msg, sizeof ev->msg,
                     "%llu log message(s) dropped: more than %d were waiting",
                     (unsigned long long)e->log_dropped, PPC_LOG_MAX_QUEUED);
            e->log_dropped = 0;
            break;
        }
        if (e->cb_head) {
            ppc_job *j = e->cb_head;
            e->cb_head = j->next;
            if (!e->cb_head)
                e->cb_tail = NULL;
            j->next = NULL;
            ev->kind = j->has_cb ? PPC_EV_JOB : PPC_EV_DONE;
            ev->job = j;
            break;
        }
        if (e->stopped) {
            ev->kind = PPC_EV_STOP;
            break;
        }
        if (timed_wait(e, &e->cv_ev, timeout_ms >= 0 ? &dl : NULL))
            break;
    }
    pthread_mutex_unlock(&e->mu);
    return ev->kind;
}

void ppc_engine_callback_done(ppc_engine *e, ppc_job *j)
{
    pthread_mutex_lock(&e->mu);
    finish_locked(e, j);
    if (e->waiters)
        pthread_cond_broadcast(&e->cv_done);
    pthread_mutex_unlock(&e->mu);
    ppc_job_decref(j);
}

int ppc_engine_set_workers(ppc_engine *e, int n)
{
    if (n < 0)
        return -1;
    pthread_mutex_lock(&e->mu);
    if (e->stopping || e->stopped) {
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    e->want_workers = n;
    e->ncpus = n;
    wake_locked(e);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int ppc_engine_get_workers(ppc_engine *e)
{
    pthread_mutex_lock(&e->mu);
    int n = e->ncpus;
    pthread_mutex_unlock(&e->mu);
    return n;
}

int ppc_engine_stats(ppc_engine *e, ppc_node_stats *out, int max)
{
    if (max < 1)
        return 0;
    pthread_mutex_lock(&e->mu);
    snprintf(out[0].name, sizeof out[0].name, "local");
    out[0].active = e->ncpus > 0;
    out[0].ncpus = e->ncpus;
    out[0].njobs = e->local_njobs;
    out[0].time_ns = e->local_time_ns;
    int n = 1;
    for (int i = 0; i < e->nrn && n < max; i++, n++) {
        ppc_rnode *r = e->rn[i];
        snprintf(out[n].name, sizeof out[n].name, "%s", r->name);
        out[n].active = r->state == R_READY;
        out[n].ncpus = r->ncpus;
        out[n].njobs = r->njobs;
        out[n].time_ns = r->time_ns;
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

void ppc_engine_server_info(ppc_engine *e, int *port, int *nclients, int64_t *idle_ms)
{
    pthread_mutex_lock(&e->mu);
    *port = e->listen_port_actual;
    *nclients = e->nclients;
    *idle_ms = e->nclients > 0 ? 0 : ppc_now_ms() - e->last_client_activity;
    if (e->dial_host[0]) { /* a node that dials: is its client reachable */
        *nclients = e->dial_alive;
        *idle_ms = e->dial_alive ? 0 : ppc_now_ms() - e->dial_last_alive;
    }
    pthread_mutex_unlock(&e->mu);
}

size_t ppc_engine_pending(ppc_engine *e)
{
    pthread_mutex_lock(&e->mu);
    size_t n = e->total_pending;
    pthread_mutex_unlock(&e->mu);
    return n;
}

int ppc_engine_status_port(ppc_engine *e)
{
    return e->status_port; /* set before the engine thread starts */
}

int ppc_engine_worker_pids(ppc_engine *e, int *pids, int max)
{
    pthread_mutex_lock(&e->mu);
    int n = e->npids < max ? e->npids : max;
    if (n > 0)
        memcpy(pids, e->pids, (size_t)n * sizeof(int));
    pthread_mutex_unlock(&e->mu);
    return n;
}

ppc_shm_seg *ppc_engine_shm_get(ppc_engine *e, size_t need)
{
    if (!atomic_load(&e->shm_on))
        return NULL;
    return ppc_shm_pool_get(&e->shm, need);
}

void ppc_engine_shm_put(ppc_engine *e, ppc_shm_seg *s)
{
    uint64_t dropped[8];
    /* never seen by a worker: nobody to tell about dropped ones either,
     * except workers that used them before; their caches are bounded */
    ppc_shm_pool_put(&e->shm, s, dropped, 8);
}

int ppc_engine_shm_on(ppc_engine *e)
{
    return atomic_load(&e->shm_on);
}

int ppc_engine_vm_on(ppc_engine *e)
{
    return atomic_load(&e->vm_on) && atomic_load(&e->shm_on);
}

static void worker_note(ppc_engine *e, int pid, uint8_t type, uint8_t aux, uint64_t id)
{
    pthread_mutex_lock(&e->mu);
    if (!e->stopping && !e->stopped) {
        if (e->nshmret == e->capshmret) {
            size_t cap = e->capshmret ? e->capshmret * 2 : 16;
            struct ppc_shmret *n = realloc(e->shmret, cap * sizeof *n);
            if (n) {
                e->shmret = n;
                e->capshmret = cap;
            }
        }
        if (e->nshmret < e->capshmret) {
            e->shmret[e->nshmret].pid = pid;
            e->shmret[e->nshmret].type = type;
            e->shmret[e->nshmret].aux = aux;
            e->shmret[e->nshmret].id = id;
            e->nshmret++;
            wake_locked(e);
        }
    }
    pthread_mutex_unlock(&e->mu);
}

void ppc_engine_shm_return(ppc_engine *e, int pid, uint64_t seg_id, int drop)
{
    worker_note(e, pid, PPC_F_SHMRET, drop ? PPC_AUX_SHM_DROP : 0, seg_id);
}

int ppc_engine_cancel(ppc_engine *e, ppc_job *j)
{
    if (!ppc_job_cancel(j))
        return 0;
    pthread_mutex_lock(&e->mu);
    e->cancels++;
    wake_locked(e);
    pthread_mutex_unlock(&e->mu);
    return 1;
}

int ppc_engine_kill(ppc_engine *e, ppc_job *j, int why)
{
    if (ppc_engine_cancel(e, j))
        return 1;
    int rc = 0;
    pthread_mutex_lock(&e->mu);
    int expect = 0;
    if (!e->stopping && !e->stopped && atomic_load(&j->state) < PPC_JOB_COMPLETE &&
        atomic_compare_exchange_strong(&j->killreq, &expect, why)) {
        if (e->nkills == e->capkills) {
            size_t cap = e->capkills ? e->capkills * 2 : 8;
            ppc_job **n = realloc(e->kills, cap * sizeof *n);
            if (n) {
                e->kills = n;
                e->capkills = cap;
            }
        }
        if (e->nkills < e->capkills) {
            ppc_job_incref(j);
            e->kills[e->nkills++] = j;
            rc = 2;
        } else {
            atomic_store(&j->killreq, 0); /* out of memory: not asked */
        }
        wake_locked(e);
    } else if (atomic_load(&j->killreq) && atomic_load(&j->state) < PPC_JOB_COMPLETE) {
        rc = 2;
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int ppc_engine_watch(ppc_engine *e, ppc_job *j)
{
    pthread_mutex_lock(&e->mu);
    int done = atomic_load(&j->state) == PPC_JOB_DONE;
    if (!done)
        j->notify = 1;
    pthread_mutex_unlock(&e->mu);
    return !done;
}

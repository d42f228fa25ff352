/* pool.c - the local node: a pool of worker processes on this machine.
 *
 * Starts fresh workers (proc.c: posix_spawn, in their own process group so
 * a terminal's Ctrl-C reaches only the client), or adopts workers the
 * caller started itself (ppc_pool_adopt: the binding forks the first
 * ones), and supervises both alike: talks to each over two non-blocking
 * pipes (fd 3 and 4 in the worker), pipelines jobs into them, batches
 * writes, reads results. A death is noticed at once by EOF: the worker
 * leaves service, the jobs it had not started go back to the front of the
 * queue, a replacement starts; the process is reaped when it exits (its
 * pidfd in the engine's epoll, or polled on the loop's timer where
 * pidfd_open is missing), and then the job it was running fails with its
 * exit status. Runs on the engine thread only, which it never blocks. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"
#include "frame.h"
#include "result.h"
#include "vm.h"

#define MAX_DEPTH 128            /* most jobs in flight on one worker */
#define QUEUE_AHEAD_NS 2000000.0 /* queue ~2 ms of work ahead per worker */
#define START_FAILURES_MAX 3
#define READ_CHUNK 65536
#define EXIT_GRACE_MS 1000 /* a worker whose pipe closed gets this long to exit */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same number on every architecture */
#endif

struct ppc_pool {
    ppc_engine *e;
    ppc_worker *workers;
    int nlive; /* workers not retiring */
    int target;
    int start_failures; /* consecutive workers that died before ready */
    int failed;
    char fail_msg[256];
    ppc_worker *dying; /* pipes closed, not reaped yet */
};

static void update_pids(ppc_pool *p)
{
    ppc_engine *e = p->e;
    int n = 0;
    for (ppc_worker *w = p->workers; w; w = w->next)
        n++;
    int *pids = n ? malloc((size_t)n * sizeof(int)) : NULL;
    int i = 0;
    if (pids)
        for (ppc_worker *w = p->workers; w; w = w->next)
            pids[i++] = (int)w->pid;
    pthread_mutex_lock(&e->mu);
    free(e->pids);
    e->pids = pids;
    e->npids = i;
    pthread_mutex_unlock(&e->mu);
}

ppc_pool *ppc_pool_new(ppc_engine *e)
{
    ppc_pool *p = calloc(1, sizeof *p);
    if (p)
        p->e = e;
    return p;
}

static void describe_status(int st, char *out, size_t n)
{
    if (WIFEXITED(st))
        snprintf(out, n, "exit code %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(out, n, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(out, n, "status %d", st);
}

/* Take a running worker (our direct child, fd_w/fd_r our ends of its
 * pipes) into service: non-blocking pipes, watched by epoll, INIT queued.
 * On failure the worker is closed, killed and reaped. */
static ppc_worker *register_worker(ppc_pool *p, pid_t pid, int fd_w, int fd_r)
{
    ppc_engine *e = p->e;
    ppc_worker *w = calloc(1, sizeof *w);
    if (!w)
        goto fail;
    w->pid = pid;
    w->fd_w = fd_w;
    w->fd_r = fd_r;
    w->pidfd = -1;
    fcntl(w->fd_w, F_SETFL, O_NONBLOCK);
    fcntl(w->fd_r, F_SETFL, O_NONBLOCK);
    w->src_r.kind = PPC_SRC_WREAD;
    w->src_r.obj = w;
    w->src_w.kind = PPC_SRC_WWRITE;
    w->src_w.obj = w;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->src_r};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, w->fd_r, &ev) < 0)
        goto fail;
    if (ppc_frame_put(&w->out, PPC_F_INIT, 0, 0, 0, 0, e->opts.init, e->opts.init_len, NULL, 0) <
        0) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, w->fd_r, NULL);
        goto fail;
    }
    w->next = p->workers;
    p->workers = w;
    p->nlive++;
    return w;
fail:
    ppc_fd_close(fd_w);
    ppc_fd_close(fd_r);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    if (w)
        ppc_buf_free(&w->out);
    free(w);
    return NULL;
}

int ppc_pool_adopt(ppc_pool *p, int pid, int fd_w, int fd_r)
{
    if (!register_worker(p, (pid_t)pid, fd_w, fd_r))
        return -1;
    update_pids(p);
    return 0;
}

static ppc_worker *spawn_worker(ppc_pool *p)
{
    ppc_engine *e = p->e;
    ppc_proc pr;
    if (ppc_proc_pipes(&pr) < 0) {
        ppc_engine_log(e, PPC_LOG_ERROR, "cannot make a worker's pipes: %s", strerror(errno));
        return NULL;
    }
    int rc = ppc_proc_spawn(&pr, e->opts.worker_argv, e->opts.worker_env);
    if (rc != 0) {
        ppc_engine_log(e, PPC_LOG_ERROR, "cannot start worker %s: %s", e->opts.worker_argv[0],
                       strerror(rc));
        return NULL;
    }
    return register_worker(p, pr.pid, pr.fd_w, pr.fd_r);
}

static void close_write(ppc_pool *p, ppc_worker *w)
{
    if (w->fd_w >= 0) {
        if (w->out_armed)
            epoll_ctl(p->e->epfd, EPOLL_CTL_DEL, w->fd_w, NULL);
        w->out_armed = 0;
        ppc_fd_close(w->fd_w);
        w->fd_w = -1;
    }
    ppc_buf_free(&w->out);
}

/* Take the worker out of service gracefully: it finishes what it has. */
static void retire(ppc_pool *p, ppc_worker *w)
{
    if (!w->retiring) {
        w->retiring = 1;
        p->nlive--;
    }
    if (w->inflight == 0 && w->lent == 0)
        close_write(p, w); /* the worker sees EOF and exits */
}

static void unlink_worker(ppc_pool *p, ppc_worker *w)
{
    for (ppc_worker **pp = &p->workers; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
}

static void free_worker(ppc_pool *p, ppc_worker *w)
{
    if (w->pidfd >= 0) {
        epoll_ctl(p->e->epfd, EPOLL_CTL_DEL, w->pidfd, NULL);
        ppc_fd_close(w->pidfd);
    }
    ppc_engine_forget(p->e, w, sizeof *w);
    ppc_buf_free(&w->in);
    ppc_buf_free(&w->out);
    ppc_u64set_free(&w->fns);
    free(w);
}

static void close_pipes(ppc_pool *p, ppc_worker *w)
{
    close_write(p, w);
    if (w->fd_r >= 0) {
        epoll_ctl(p->e->epfd, EPOLL_CTL_DEL, w->fd_r, NULL);
        ppc_fd_close(w->fd_r);
        w->fd_r = -1;
    }
}

static void unlink_dying(ppc_pool *p, ppc_worker *w)
{
    for (ppc_worker **pp = &p->dying; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
}

/* A gone worker has been reaped (status st): settle the job it was
 * running, count a failed start, free it and replace it. */
static void settle(ppc_pool *p, ppc_worker *w, int st)
{
    ppc_engine *e = p->e;
    char how[96];
    if (w->why[0] || w->killed)
        /* the engine's own reason (a broken protocol, or no exit after the
         * pipe closed) says more than the signal the worker then got from us */
        snprintf(how, sizeof how, "%s", w->why[0] ? w->why : "closed its pipe");
    else
        describe_status(st, how, sizeof how);
    unlink_dying(p, w);
    int expected = w->expected;
    ppc_job *j = w->fl_head;
    w->fl_head = w->fl_tail = NULL;
    if (!expected) {
        if (!w->ready) {
            p->start_failures++;
            ppc_engine_log(e, PPC_LOG_ERROR, "worker process %d failed to start (%s)", (int)w->pid,
                           how);
            if (p->start_failures >= START_FAILURES_MAX) {
                p->failed = 1;
                snprintf(p->fail_msg, sizeof p->fail_msg,
                         "local worker processes fail to start (last: %s); see the "
                         "worker's messages on stderr",
                         how);
            }
            if (j)
                ppc_engine_requeue_front(e, j);
        } else if (j && j->cancelled) {
            ppc_engine_log(e, PPC_LOG_DEBUG, "stopped worker %d: its job's client is gone",
                           (int)w->pid);
            ppc_engine_complete(e, j);
        } else if (j && atomic_load(&j->killreq)) {
            /* kill() or its timeout: the worker was killed for it */
            int why = atomic_load(&j->killreq);
            ppc_job_fail(j, why,
                         why == PPC_JOB_ETIMEOUT ? "the job ran past its timeout; its worker "
                                                   "was killed and replaced"
                                                 : "the job was killed; its worker was replaced");
            ppc_pool_args_done(p, j, 1);
            ppc_engine_complete(e, j);
        } else if (j && w->kill_sent) {
            /* killed for a job that finished before the signal landed:
             * this one did nothing wrong and runs again */
            ppc_engine_log(e, PPC_LOG_DEBUG, "worker %d was killed for a job that had finished; "
                           "its next job runs again", (int)w->pid);
            ppc_engine_requeue_front(e, j);
        } else if (j) {
            char msg[200];
            snprintf(msg, sizeof msg, "worker process %d died while running the job (%s)",
                     (int)w->pid, how);
            ppc_engine_log(e, PPC_LOG_WARNING, "%s; starting a replacement", msg);
            if (!ppc_engine_retry(e, j)) {
                ppc_job_fail(j, PPC_JOB_EWORKER, msg);
                ppc_pool_args_done(p, j, 1);
                ppc_engine_complete(e, j);
            }
        } else {
            ppc_engine_log(e, PPC_LOG_WARNING, "idle worker process %d exited (%s)", (int)w->pid,
                           how);
        }
    } else if (j) {
        ppc_engine_requeue_front(e, j);
    }
    free_worker(p, w);
    ppc_pool_set_target(p, p->target);
}

/* Reap w if it has exited: 1 (and settled), else 0. */
static int try_reap(ppc_pool *p, ppc_worker *w)
{
    int st = 0;
    pid_t r = waitpid(w->pid, &st, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR))
        return 0;
    if (r < 0) /* ECHILD: someone else reaped it (status unknown) */
        st = 0;
    settle(p, w, st);
    return 1;
}

/* The worker's pipe closed or broke (why: the engine's reason, NULL for
 * EOF): out of service at once, the jobs it had not started back to the
 * front of the queue in order; the job it was running is settled when the
 * process is reaped. That happens when its pidfd becomes readable in the
 * engine's epoll (without a pidfd, on the loop's timer): the engine thread
 * never waits for a process here. */
static void worker_gone(ppc_pool *p, ppc_worker *w, const char *why)
{
    ppc_engine *e = p->e;
    close_pipes(p, w);
    if (why) {
        kill(w->pid, SIGKILL); /* it broke the protocol: no grace */
        snprintf(w->why, sizeof w->why, "%s", why);
    }
    w->expected = w->retiring && w->inflight == 0;
    if (!w->retiring)
        p->nlive--;
    w->retiring = 1;
    unlink_worker(p, w);
    /* Jobs behind the running one never started: back to the front, in
     * order. The running one (the head) waits for the exit status. */
    ppc_job *head = w->fl_head;
    if (head && head->next) {
        ppc_job *rev = ppc_job_list_reverse(head->next);
        while (rev) {
            ppc_job *nx = rev->next;
            ppc_engine_requeue_front(e, rev);
            rev = nx;
        }
        head->next = NULL;
        w->fl_tail = head;
    }
    /* retiring with its job unfinished: not an expected exit */
    w->inflight = head ? 1 : 0;
    w->gone_since = ppc_now_ms();
    w->next = p->dying;
    p->dying = w;
    update_pids(p);
    if (try_reap(p, w))
        return;
    w->pidfd = e->opts.test_no_pidfd ? -1 : (int)syscall(SYS_pidfd_open, (int)w->pid, 0);
    if (w->pidfd >= 0) {
        w->src_pid.kind = PPC_SRC_WPID;
        w->src_pid.obj = w;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->src_pid};
        if (ppc_fd_own(w->pidfd) < 0 || epoll_ctl(e->epfd, EPOLL_CTL_ADD, w->pidfd, &ev) < 0) {
            ppc_fd_close(w->pidfd);
            w->pidfd = -1; /* polled on the timer instead */
        }
    }
    /* a replacement need not wait for the reaping */
    ppc_pool_set_target(p, p->target);
}

void ppc_pool_set_target(ppc_pool *p, int n)
{
    p->target = n;
    if (p->failed)
        return;
    int spawned = 0;
    while (p->nlive < p->target) {
        if (!spawn_worker(p)) {
            p->failed = 1;
            snprintf(p->fail_msg, sizeof p->fail_msg, "cannot start local worker processes");
            break;
        }
        spawned = 1;
    }
    if (p->nlive > p->target) {
        /* retire idle workers first, then the least loaded */
        for (int pass = 0; pass < 2 && p->nlive > p->target; pass++) {
            for (ppc_worker *w = p->workers; w && p->nlive > p->target; w = w->next) {
                if (!w->retiring && (pass == 1 || w->inflight == 0))
                    retire(p, w);
            }
        }
        spawned = 1;
    }
    if (spawned)
        update_pids(p);
}

void ppc_pool_retarget(ppc_pool *p, int n)
{
    /* an explicit set_ncpus is a new try after failed worker starts */
    if (p->failed) {
        p->failed = 0;
        p->start_failures = 0;
    }
    ppc_pool_set_target(p, n);
}

int ppc_pool_dead(ppc_pool *p, const char **msg)
{
    if (p->failed) {
        *msg = p->fail_msg;
        return 1;
    }
    if (p->target == 0 && p->workers == NULL) {
        *msg = "no node can run jobs: the server has no local workers (ncpus=0) and no "
               "remote nodes";
        return 1;
    }
    return 0;
}

static int depth_limit(ppc_pool *p, ppc_worker *w, size_t qlen)
{
    if (p->e->opts.restart)
        return 1;
    if (w->done == 0 || w->avg_ns <= 0)
        return 1;
    double ahead = QUEUE_AHEAD_NS / w->avg_ns;
    size_t share = qlen / (size_t)(p->nlive > 0 ? p->nlive : 1);
    double extra = ahead < (double)share ? ahead : (double)share;
    if (extra > MAX_DEPTH - 1)
        extra = MAX_DEPTH - 1;
    return 1 + (int)extra;
}

ppc_worker *ppc_pool_pick(ppc_pool *p, size_t qlen)
{
    ppc_worker *best = NULL;
    for (ppc_worker *w = p->workers; w; w = w->next) {
        /* not before its INIT reply: jobs it took before our VMOK reached
         * it would not leave holes in their results */
        if (w->retiring || w->fd_w < 0 || !w->ready)
            continue;
        if (w->inflight >= depth_limit(p, w, qlen))
            continue;
        if (!best || w->inflight < best->inflight)
            best = w;
        if (w->inflight == 0)
            break;
    }
    return best;
}

int ppc_pool_dispatch(ppc_pool *p, ppc_worker *w, ppc_job *j)
{
    (void)p;
    uint64_t fid = j->fn ? j->fn->id : 0;
    if (fid && !ppc_u64set_has(&w->fns, fid)) {
        if (ppc_frame_put(&w->out, PPC_F_FUNC, 0, 0, 0, fid, j->fn->data, j->fn->len, NULL, 0) <
                0 ||
            ppc_u64set_add(&w->fns, fid) < 0)
            return -1;
    }
    uint8_t pre[8 + PPC_SHM_REF_LEN];
    ppc_put_u64(pre, fid);
    int rc;
    if (j->args_seg && j->args_seg->ngaps && !ppc_engine_vm_on(p->e))
        ppc_vm_fill_own(j->args_seg); /* the worker cannot read our memory */
    if (j->args_seg && atomic_load(&p->e->shm_on)) {
        /* the worker maps the segment; only a reference crosses the pipe */
        ppc_shm_ref r = {(uint32_t)getpid(), (uint32_t)j->args_seg->fd, j->args_seg->id,
                         j->args_seg->used};
        ppc_shm_ref_put(pre + 8, &r);
        uint16_t aux = PPC_AUX_SHM | (j->args_seg->ngaps ? PPC_AUX_VM : j->origin ? 0 : PPC_AUX_INARG);
        /* extra: the number of holes, so the table's extent is known before mapping */
        rc = ppc_frame_put(&w->out, PPC_F_JOB, 0, aux, j->args_seg->ngaps, j->id, pre, sizeof pre,
                           NULL, 0);
    } else if (j->args_seg) {
        rc = ppc_frame_put(&w->out, PPC_F_JOB, 0, PPC_AUX_OOB, 0, j->id, pre, 8, j->args_seg->map,
                           j->args_seg->used);
    } else {
        rc = ppc_frame_put(&w->out, PPC_F_JOB, 0, j->args_aux & PPC_AUX_OOB, 0, j->id, pre, 8,
                           j->args, j->args_len);
    }
    if (rc < 0)
        return -1;
    j->next = NULL;
    if (w->fl_tail)
        w->fl_tail->next = j;
    else
        w->fl_head = j;
    if (w->fl_head == j && j->timeout_ms)
        j->started_ms = ppc_now_ms(); /* it runs now: its timeout counts */
    w->fl_tail = j;
    if (w->inflight++ == 0)
        w->busy_since = p->e->loop_ms;
    j->node = 0;
    atomic_store_explicit(&j->state, PPC_JOB_RUNNING, memory_order_relaxed);
    return 0;
}

static int flush_worker(ppc_pool *p, ppc_worker *w)
{
    while (ppc_buf_unread(&w->out) > 0) {
        ssize_t n = write(w->fd_w, ppc_buf_head(&w->out), ppc_buf_unread(&w->out));
        if (n > 0) {
            ppc_buf_consume(&w->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if (!w->out_armed) {
                struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = &w->src_w};
                if (epoll_ctl(p->e->epfd, EPOLL_CTL_ADD, w->fd_w, &ev) == 0)
                    w->out_armed = 1;
            }
            return 0;
        }
        return -1; /* EPIPE: the worker is gone; its read side tells us how */
    }
    if (w->out_armed) {
        epoll_ctl(p->e->epfd, EPOLL_CTL_DEL, w->fd_w, NULL);
        w->out_armed = 0;
    }
    ppc_buf_shrink(&w->out, 1 << 20);
    return 0;
}

void ppc_pool_flush(ppc_pool *p)
{
    for (ppc_worker *w = p->workers, *nx; w; w = nx) {
        nx = w->next;
        if (w->fd_w >= 0 && ppc_buf_unread(&w->out) > 0 && flush_worker(p, w) < 0)
            close_write(p, w);
    }
}

static void broadcast_drop(ppc_pool *p, const uint64_t *ids, size_t n)
{
    for (ppc_worker *w = p->workers; w; w = w->next) {
        if (w->fd_w < 0)
            continue;
        for (size_t i = 0; i < n; i++)
            ppc_frame_put(&w->out, PPC_F_SHMDROP, 0, 0, 0, ids[i], NULL, 0, NULL, 0);
    }
}

void ppc_pool_args_done(ppc_pool *p, ppc_job *j, int pinned)
{
    ppc_shm_seg *s = j->args_seg;
    if (!s)
        return;
    j->args_seg = NULL;
    uint64_t dropped[16];
    size_t nd;
    if (pinned) {
        dropped[0] = s->id;
        nd = 1;
        ppc_shm_free(s);
    } else {
        nd = ppc_shm_pool_put(&p->e->shm, s, dropped, 16);
        if (nd > 16)
            nd = 16;
    }
    broadcast_drop(p, dropped, nd);
}

void ppc_pool_note(ppc_pool *p, int pid, uint8_t type, uint8_t aux, uint64_t id)
{
    for (ppc_worker *w = p->workers; w; w = w->next) {
        if ((int)w->pid == pid && w->fd_w >= 0) {
            ppc_frame_put(&w->out, type, 0, aux, 0, id, NULL, 0, NULL, 0);
            if (type != PPC_F_SHMRET)
                return;
            if (w->lent > 0)
                w->lent--;
            /* a retired worker stays until the client has read its results */
            if (w->retiring && w->inflight == 0 && w->lent == 0)
                close_write(p, w);
            return;
        }
    }
}

/* A worker's result in its segment, for a job of a remote client: copy the
 * blob into the job (an inline OOB blob), holes filled from the worker's
 * memory, and give the segment back. r: the parsed body, its data the
 * segment reference (checked by on_frame). */
static int result_inline(ppc_pool *p, ppc_worker *w, ppc_job *j, const ppc_result *r, int holes)
{
    ppc_shm_ref ref;
    if (ppc_result_ref(r, &ref) < 0)
        return -1;
    /* given back whatever happens below; the frame is only queued, so the
     * worker cannot release the segment (or its holes' objects) before
     * this function has read them */
    ppc_frame_put(&w->out, PPC_F_SHMRET, 0, 0, 0, ref.id, NULL, 0, NULL, 0);
    if (ref.len > p->e->opts.max_frame)
        return -1;
    size_t maplen;
    uint8_t *m = ppc_shm_map_peer((int)w->pid, (int)ref.fd, (size_t)ref.len,
                                  holes ? PPC_MAP_LAZY : 0, &maplen);
    if (!m)
        return -1;
    uint8_t *res = NULL;
    size_t total = 0;
    uint8_t *data = ppc_result_body_new(r->kind, r->out, r->outlen, (size_t)ref.len, &res, &total);
    ppc_vm_src src = {0};
    if (data) {
        if (!holes) {
            memcpy(data, m, (size_t)ref.len);
        } else if (ppc_vm_table_parse(m, maplen, (size_t)ref.len, &src) < 0 ||
                   src.pid != (int)w->pid ||
                   ppc_vm_copy_blob(data, m, (size_t)ref.len, &src) < 0) {
            free(res);
            res = NULL;
        }
    }
    ppc_vm_src_free(&src);
    ppc_shm_unmap(m, maplen);
    if (!data || !res)
        return -1;
    free(j->result);
    j->result = res;
    j->result_len = total;
    j->result_aux = PPC_AUX_OOB;
    j->status = PPC_JOB_OK;
    return 0;
}

/* One RESULT frame (or the READY reply) from a worker. 0, or -1 when the
 * worker broke the protocol. */
static int on_frame(ppc_pool *p, ppc_worker *w, const ppc_frame *f)
{
    ppc_engine *e = p->e;
    if (f->type == PPC_F_INIT) {
        w->ready = 1;
        p->start_failures = 0;
        /* NOVM: the worker cannot read our memory (Yama ptrace_scope 1 or
         * 2): from now on jobs go with their holes filled here. The usual
         * case on some distributions, so no warning. */
        if ((f->aux & PPC_AUX_NOVM) && atomic_exchange(&e->vm_on, 0))
            ppc_engine_log(e, PPC_LOG_INFO,
                           "worker %d cannot read this process's memory; large bytes "
                           "arguments are copied into shared memory",
                           (int)w->pid);
        /* the reply's id: where the worker keeps PPC_VM_PROBE. If we can
         * read it, the worker may leave holes in its results (vm.h) */
        if (f->id && ppc_engine_shm_on(e) && !e->opts.no_vm && !e->opts.vm_no_results &&
            ppc_vm_probe((int)w->pid, f->id))
            ppc_frame_put(&w->out, PPC_F_VMOK, 0, 0, 0, 0, NULL, 0, NULL, 0);
        return 0;
    }
    uint64_t exec_ns;
    const uint8_t *body;
    size_t n;
    ppc_result res;
    ppc_shm_ref ref = {0, 0, 0, 0};
    if (f->type != PPC_F_RESULT ||
        ppc_result_split(f->payload, (size_t)f->len, &exec_ns, &body, &n) < 0)
        return -1;
    /* the body is opaque to the engine, except a result in a segment: a
     * malformed reference breaks the protocol; one naming another process
     * is refused below (the job fails, the worker goes on) */
    if ((f->aux & PPC_AUX_SHM) &&
        (ppc_result_parse(body, n, &res) < 0 || ppc_result_ref(&res, &ref) < 0))
        return -1;
    ppc_job *j = w->fl_head;
    if (!j || j->id != f->id)
        return -1;
    w->fl_head = j->next;
    if (!w->fl_head)
        w->fl_tail = NULL;
    if (--w->inflight > 0)
        w->busy_since = e->loop_ms; /* the next one starts now */
    j->next = NULL;
    if (w->fl_head) {
        /* the next job runs now: its timeout counts; a kill waits for this */
        if (w->fl_head->timeout_ms)
            w->fl_head->started_ms = ppc_now_ms();
        if (atomic_load(&w->fl_head->killreq)) {
            w->kill_sent = 1;
            kill(w->pid, SIGKILL);
        }
    }
    if (f->aux & (PPC_AUX_NOSHM | PPC_AUX_NOVM)) {
        /* the worker cannot map our segments (NOSHM: from now on arguments
         * go inline) or read our memory (NOVM: from now on holes are
         * filled here); this job did not run and goes back to the front */
        int noshm = (f->aux & PPC_AUX_NOSHM) != 0;
        if (atomic_exchange(noshm ? &e->shm_on : &e->vm_on, 0))
            ppc_engine_log(e, PPC_LOG_WARNING, "worker %d %s", (int)w->pid,
                           noshm ? "cannot map shared memory (/proc/<pid>/fd refused); large "
                                   "arguments go through the pipe"
                                 : "cannot read this process's memory (process_vm_readv "
                                   "refused); large bytes are copied into shared memory");
        ppc_engine_requeue_front(e, j);
        return 0;
    }
    j->exec_ns = exec_ns;
    if (f->aux & PPC_AUX_INARG) {
        /* the result lies in the argument segment, which we offered (a
         * local job without holes): the job keeps it for the result; no
         * worker keeps a mapping (pyjob.c checks the offsets) */
        if (!j->args_seg || j->args_seg->ngaps || j->origin || (f->aux & PPC_AUX_SHM))
            return -1;
        j->result_seg = j->args_seg;
        j->result_seg_pinned = (f->aux & PPC_AUX_PINNED) != 0;
        j->args_seg = NULL;
        broadcast_drop(p, &j->result_seg->id, 1);
    }
    if (j->args_seg)
        ppc_pool_args_done(p, j, (f->aux & PPC_AUX_PINNED) != 0);
    if ((f->aux & PPC_AUX_SHM) && (int64_t)ref.pid != (int64_t)w->pid) {
        /* a result segment must be the sending worker's own: the client
         * maps only what that worker made and gives back */
        char why[160];
        snprintf(why, sizeof why,
                 "worker process %d sent a result naming a segment of another process (%u): "
                 "refused",
                 (int)w->pid, ref.pid);
        ppc_engine_log(e, PPC_LOG_WARNING, "%s", why);
        ppc_job_fail(j, PPC_JOB_EWORKER, why);
    } else if ((f->aux & PPC_AUX_SHM) && j->origin) {
        /* ppserver: the client is remote, so the result travels inline */
        if (result_inline(p, w, j, &res, (f->aux & PPC_AUX_VM) != 0) < 0)
            ppc_job_fail(j, PPC_JOB_EWORKER, "cannot read the worker's result segment");
    } else if (!(j->result = malloc(n ? n : 1))) {
        ppc_job_fail(j, PPC_JOB_EWORKER, "out of memory for the job's result");
    } else {
        memcpy(j->result, body, n);
        j->result_len = n;
        j->result_aux = f->aux & (PPC_AUX_OOB | PPC_AUX_SHM | PPC_AUX_VM | PPC_AUX_INARG);
        j->status = PPC_JOB_OK;
        if (f->aux & PPC_AUX_SHM)
            w->lent++; /* the result lives in the worker until the client reads it */
    }
    w->done++;
    double x = (double)j->exec_ns;
    w->avg_ns = w->done == 1 ? x : 0.8 * w->avg_ns + 0.2 * x;
    ppc_engine_complete(e, j);
    if (e->opts.restart && !w->retiring) {
        retire(p, w);
        ppc_pool_set_target(p, p->target);
    } else if (w->retiring && w->inflight == 0 && w->lent == 0) {
        close_write(p, w);
    }
    return 0;
}

static void on_readable(ppc_pool *p, ppc_worker *w)
{
    for (;;) {
        ppc_frame f;
        size_t want = READ_CHUNK;
        int rc = ppc_frame_parse(ppc_buf_head(&w->in), ppc_buf_unread(&w->in), p->e->opts.max_frame,
                                 &f);
        if (rc == PPC_FRAME_NEED_MORE && f.len > 0) {
            size_t need = PPC_FRAME_HDR + (size_t)f.len - ppc_buf_unread(&w->in);
            if (need > want)
                want = need;
        }
        if (rc < 0) {
            kill(w->pid, SIGKILL);
            worker_gone(p, w, "sent a malformed frame");
            return;
        }
        if (rc == PPC_FRAME_OK) {
            size_t used = PPC_FRAME_HDR + (size_t)f.len;
            if (on_frame(p, w, &f) < 0) {
                kill(w->pid, SIGKILL);
                worker_gone(p, w, "broke the protocol");
                return;
            }
            ppc_buf_consume(&w->in, used);
            continue;
        }
        if (ppc_buf_reserve(&w->in, want) < 0) {
            kill(w->pid, SIGKILL);
            worker_gone(p, w, "result too large for memory");
            return;
        }
        ssize_t n = read(w->fd_r, w->in.data + w->in.len, w->in.cap - w->in.len);
        if (n > 0) {
            w->in.len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            ppc_buf_shrink(&w->in, 1 << 20);
            return;
        }
        worker_gone(p, w, NULL);
        return;
    }
}

void ppc_pool_event(ppc_pool *p, ppc_evsrc *src, uint32_t events)
{
    ppc_worker *w = src->obj;
    if (src->kind == PPC_SRC_WPID) {
        try_reap(p, w); /* it exited */
        return;
    }
    if (src->kind == PPC_SRC_WWRITE) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            close_write(p, w);
            return;
        }
        if (flush_worker(p, w) < 0)
            close_write(p, w);
        return;
    }
    on_readable(p, w);
}

int ppc_pool_tick(ppc_pool *p)
{
    int64_t now = ppc_now_ms();
    int t = -1;
    for (ppc_worker *w = p->dying, *nx; w; w = nx) {
        nx = w->next;
        if (w->pidfd < 0 && try_reap(p, w))
            continue;
        if (!w->killed && now - w->gone_since >= EXIT_GRACE_MS) {
            kill(w->pid, SIGKILL); /* its pipe closed long ago and it has not exited */
            w->killed = 1;
        }
        int want = w->pidfd < 0 ? 5 : w->killed ? -1 : (int)(w->gone_since + EXIT_GRACE_MS - now);
        if (want >= 0 && (t < 0 || want < t))
            t = want;
    }
    return t;
}

void ppc_pool_shutdown(ppc_pool *p)
{
    ppc_engine *e = p->e;
    p->target = 0;
    while (p->workers) {
        ppc_worker *w = p->workers;
        ppc_job *j;
        while ((j = w->fl_head)) {
            w->fl_head = j->next;
            ppc_job_fail(j, PPC_JOB_EDESTROYED, "the server was destroyed");
            ppc_engine_complete(e, j);
        }
        w->fl_tail = NULL;
        if (w->inflight > 0)
            kill(w->pid, SIGTERM); /* busy in a job: do not wait for it */
        w->inflight = 0;
        w->retiring = 1; /* an expected exit: settled quietly */
        worker_gone(p, w, NULL);
    }
    p->nlive = 0;
    update_pids(p);
    /* Idle workers exit on EOF at once, busy ones on SIGTERM: wait for
     * them on their pidfds (in this epoll), at most 1 s, then kill. */
    int64_t start = ppc_now_ms();
    while (p->dying) {
        int left = (int)(start + 1000 - ppc_now_ms());
        if (left <= 0) {
            for (ppc_worker *w = p->dying; w; w = w->next)
                kill(w->pid, SIGKILL);
            while (p->dying) {
                ppc_worker *w = p->dying;
                waitpid(w->pid, NULL, 0);
                w->killed = 1;
                settle(p, w, 0);
            }
            break;
        }
        int polled = 0;
        for (ppc_worker *w = p->dying, *nx; w; w = nx) {
            nx = w->next;
            if (w->pidfd < 0 && !try_reap(p, w))
                polled = 1;
        }
        if (!p->dying)
            break;
        struct epoll_event evs[32];
        int n = epoll_wait(e->epfd, evs, 32, polled && left > 2 ? 2 : left);
        e->batch = evs;
        e->batch_n = n > 0 ? n : 0;
        for (int i = 0; i < n; i++) {
            ppc_evsrc *src = evs[i].data.ptr;
            if (src && src->kind == PPC_SRC_WPID) {
                try_reap(p, src->obj);
            } else if (src && src->kind == PPC_SRC_WAKE) {
                uint64_t v;
                ssize_t r = read(e->wakefd, &v, sizeof v);
                (void)r;
            }
        }
        e->batch_n = 0;
    }
}

ppc_worker *ppc_pool_workers(ppc_pool *p)
{
    return p ? p->workers : NULL;
}

void ppc_pool_cancel_origin(ppc_pool *p, void *origin)
{
    for (ppc_worker *w = p->workers; w; w = w->next) {
        int hit = 0;
        for (ppc_job *j = w->fl_head; j; j = j->next) {
            if (j->origin == origin) {
                j->origin = NULL;
                j->cancelled = 1;
                hit = 1;
            }
        }
        /* the job it is running belongs to the gone client: free the worker */
        if (hit && w->fl_head && w->fl_head->cancelled)
            kill(w->pid, SIGKILL);
    }
}

void ppc_pool_free(ppc_pool *p)
{
    while (p->workers) {
        ppc_worker *w = p->workers;
        p->workers = w->next;
        free_worker(p, w);
    }
    while (p->dying) {
        ppc_worker *w = p->dying;
        p->dying = w->next;
        free_worker(p, w);
    }
    free(p);
}

int ppc_pool_kill_job(ppc_pool *p, ppc_job *j)
{
    for (ppc_worker *w = p->workers; w; w = w->next) {
        for (ppc_job *x = w->fl_head; x; x = x->next) {
            if (x != j)
                continue;
            /* the worker runs its head; a job behind it gets killed when
             * it becomes the head (on_frame), so no other job is lost */
            if (w->fl_head == j) {
                w->kill_sent = 1;
                kill(w->pid, SIGKILL);
            }
            return 1;
        }
    }
    return 0;
}

int ppc_pool_kill_client_job(ppc_pool *p, void *origin, uint64_t client_id)
{
    for (ppc_worker *w = p->workers; w; w = w->next) {
        for (ppc_job *x = w->fl_head; x; x = x->next) {
            if (x->origin != origin || x->client_id != client_id)
                continue;
            atomic_store(&x->killreq, PPC_JOB_EKILLED);
            if (w->fl_head == x) {
                w->kill_sent = 1;
                kill(w->pid, SIGKILL);
            }
            return 1;
        }
    }
    return 0;
}

int ppc_pool_timeouts(ppc_pool *p, int64_t now)
{
    int t = -1;
    for (ppc_worker *w = p->workers; w; w = w->next) {
        ppc_job *j = w->fl_head;
        if (!j || !j->timeout_ms || atomic_load(&j->killreq))
            continue;
        int64_t left = j->started_ms + (int64_t)j->timeout_ms - now;
        if (left <= 0) {
            int expect = 0;
            if (atomic_compare_exchange_strong(&j->killreq, &expect, PPC_JOB_ETIMEOUT)) {
                w->kill_sent = 1;
                kill(w->pid, SIGKILL);
            }
        } else if (t < 0 || left < t) {
            t = (int)left;
        }
    }
    return t;
}

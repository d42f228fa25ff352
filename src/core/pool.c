/* pool.c - the local node: a pool of worker processes on this machine.
 *
 * Starts workers with posix_spawn (fresh interpreters, in their own process
 * group so a terminal's Ctrl-C reaches only the client), or adopts workers
 * the caller started itself (ppc_pool_adopt: the binding forks the first
 * ones), supervises both alike, talks to each over
 * two non-blocking pipes (fd 3 and 4 in the worker), pipelines jobs into
 * them, batches writes, reads results, notices deaths at once by EOF, fails
 * the job a dead worker was running, requeues the ones it had not started,
 * and replaces it. Runs on the engine thread only. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"
#include "frame.h"
#include "vm.h"

extern char **environ;

#define MAX_DEPTH 128            /* most jobs in flight on one worker */
#define QUEUE_AHEAD_NS 2000000.0 /* queue ~2 ms of work ahead per worker */
#define START_FAILURES_MAX 3
#define READ_CHUNK 65536

typedef struct ppc_zombie {
    struct ppc_zombie *next;
    pid_t pid;
    int64_t since;
    int killed;
} ppc_zombie;

struct ppc_pool {
    ppc_engine *e;
    ppc_worker *workers;
    int nlive; /* workers not retiring */
    int target;
    int start_failures; /* consecutive workers that died before ready */
    int failed;
    char fail_msg[256];
    ppc_zombie *zombies;
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

static int move_high(int fd)
{
    int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    close(fd);
    return nfd;
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
    close(fd_w);
    close(fd_r);
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
    int to_w[2] = {-1, -1}, from_w[2] = {-1, -1};
    if (pipe2(to_w, O_CLOEXEC) < 0 || pipe2(from_w, O_CLOEXEC) < 0)
        goto fail;
    for (int i = 0; i < 2; i++) {
        if ((to_w[i] = move_high(to_w[i])) < 0 || (from_w[i] = move_high(from_w[i])) < 0)
            goto fail;
    }
    /* Larger pipes: fewer wake-ups for batches and big payloads. */
    fcntl(to_w[1], F_SETPIPE_SZ, 1 << 20);
    fcntl(from_w[1], F_SETPIPE_SZ, 1 << 20);

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, to_w[0], 3);
    posix_spawn_file_actions_adddup2(&fa, from_w[1], 4);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    sigset_t none, def;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGTERM);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);
    pid_t pid;
    int rc = posix_spawnp(&pid, e->opts.worker_argv[0], &fa, &at, e->opts.worker_argv,
                          e->opts.worker_env ? e->opts.worker_env : environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        ppc_engine_log(e, PPC_LOG_ERROR, "cannot start worker %s: %s", e->opts.worker_argv[0],
                       strerror(rc));
        goto fail;
    }
    close(to_w[0]);
    close(from_w[1]);
    return register_worker(p, pid, to_w[1], from_w[0]);
fail:
    for (int i = 0; i < 2; i++) {
        if (to_w[i] >= 0)
            close(to_w[i]);
        if (from_w[i] >= 0)
            close(from_w[i]);
    }
    return NULL;
}

static void close_write(ppc_pool *p, ppc_worker *w)
{
    if (w->fd_w >= 0) {
        if (w->out_armed)
            epoll_ctl(p->e->epfd, EPOLL_CTL_DEL, w->fd_w, NULL);
        w->out_armed = 0;
        close(w->fd_w);
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

static void add_zombie(ppc_pool *p, pid_t pid)
{
    ppc_zombie *z = malloc(sizeof *z);
    if (!z) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return;
    }
    z->pid = pid;
    z->since = ppc_now_ms();
    z->killed = 0;
    z->next = p->zombies;
    p->zombies = z;
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
    ppc_engine_forget(p->e, w, sizeof *w);
    ppc_buf_free(&w->in);
    ppc_buf_free(&w->out);
    ppc_u64set_free(&w->fns);
    free(w);
}

/* The worker's pipe closed or broke: reap it, settle its jobs, replace it. */
static void worker_gone(ppc_pool *p, ppc_worker *w, const char *why)
{
    ppc_engine *e = p->e;
    close_write(p, w);
    if (w->fd_r >= 0) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, w->fd_r, NULL);
        close(w->fd_r);
        w->fd_r = -1;
    }
    char how[96] = "";
    int st = 0;
    pid_t r = 0;
    if (why)
        kill(w->pid, SIGKILL); /* it broke the protocol: no grace */
    for (int i = 0; i < 50 && (r = waitpid(w->pid, &st, WNOHANG)) == 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (r == w->pid && !why)
        describe_status(st, how, sizeof how);
    else {
        /* the engine's own reason (a broken protocol) says more than the
         * signal the worker then got from us */
        snprintf(how, sizeof how, "%s", why ? why : "closed its pipe");
        if (r != w->pid) {
            kill(w->pid, SIGKILL);
            add_zombie(p, w->pid);
        }
    }
    int expected = w->retiring && w->inflight == 0;
    if (!w->retiring)
        p->nlive--;
    unlink_worker(p, w);

    ppc_job *head = w->fl_head;
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
        } else if (head && head->cancelled) {
            ppc_engine_log(e, PPC_LOG_DEBUG, "stopped worker %d: its job's client is gone",
                           (int)w->pid);
            ppc_job *j = head;
            head = j->next;
            ppc_engine_complete(e, j);
        } else if (head) {
            char msg[200];
            snprintf(msg, sizeof msg, "worker process %d died while running the job (%s)",
                     (int)w->pid, how);
            ppc_engine_log(e, PPC_LOG_WARNING, "%s; starting a replacement", msg);
            ppc_job *j = head;
            head = j->next;
            ppc_job_fail(j, PPC_JOB_EWORKER, msg);
            ppc_pool_args_done(p, j, 1);
            ppc_engine_complete(e, j);
        } else {
            ppc_engine_log(e, PPC_LOG_WARNING, "idle worker process %d exited (%s)", (int)w->pid,
                           how);
        }
    }
    /* Jobs the worker never started go back to the front, in order. */
    ppc_job *rev = NULL;
    while (head) {
        ppc_job *nx = head->next;
        head->next = rev;
        rev = head;
        head = nx;
    }
    while (rev) {
        ppc_job *nx = rev->next;
        ppc_engine_requeue_front(e, rev);
        rev = nx;
    }
    free_worker(p, w);
    ppc_pool_set_target(p, p->target);
    update_pids(p);
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
        uint16_t aux = PPC_AUX_SHM | (j->args_seg->ngaps ? PPC_AUX_VM : 0);
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
    w->fl_tail = j;
    w->inflight++;
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
 * memory, and give the segment back. area = u8 kind, u32 outlen, output,
 * shm ref. */
static int result_inline(ppc_pool *p, ppc_worker *w, ppc_job *j, const uint8_t *area, size_t n,
                         int holes)
{
    if (n < 5)
        return -1;
    size_t outlen = ppc_get_u32(area + 1);
    if (outlen > n - 5 || n - 5 - outlen != PPC_SHM_REF_LEN)
        return -1;
    ppc_shm_ref r;
    ppc_shm_ref_get(area + 5 + outlen, &r);
    /* given back whatever happens below; the frame is only queued, so the
     * worker cannot release the segment (or its holes' objects) before
     * this function has read them */
    ppc_frame_put(&w->out, PPC_F_SHMRET, 0, 0, 0, r.id, NULL, 0, NULL, 0);
    if ((int)r.pid != (int)w->pid || r.len > p->e->opts.max_frame || r.len > SIZE_MAX - n)
        return -1;
    size_t maplen;
    uint8_t *m = ppc_shm_map_peer((int)w->pid, (int)r.fd, (size_t)r.len,
                                  holes ? PPC_MAP_LAZY : 0, &maplen);
    if (!m)
        return -1;
    size_t total = 5 + outlen + (size_t)r.len;
    uint8_t *res = malloc(total);
    ppc_vm_src src;
    if (res) {
        memcpy(res, area, 5 + outlen);
        if (!holes) {
            memcpy(res + 5 + outlen, m, (size_t)r.len);
        } else if (ppc_vm_table_parse(m, maplen, (size_t)r.len, &src) < 0 ||
                   src.pid != (int)w->pid ||
                   ppc_vm_copy_blob(res + 5 + outlen, m, (size_t)r.len, &src) < 0) {
            free(res);
            res = NULL;
        }
    }
    ppc_shm_unmap(m, maplen);
    if (!res)
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
        /* the reply's id: where the worker keeps PPC_VM_PROBE. If we can
         * read it, the worker may leave holes in its results (vm.h) */
        if (f->id && ppc_engine_vm_on(e) && !e->opts.vm_no_results &&
            ppc_vm_probe((int)w->pid, f->id))
            ppc_frame_put(&w->out, PPC_F_VMOK, 0, 0, 0, 0, NULL, 0, NULL, 0);
        return 0;
    }
    if (f->type != PPC_F_RESULT || f->len < 8)
        return -1;
    ppc_job *j = w->fl_head;
    if (!j || j->id != f->id)
        return -1;
    w->fl_head = j->next;
    if (!w->fl_head)
        w->fl_tail = NULL;
    w->inflight--;
    j->next = NULL;
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
    j->exec_ns = ppc_get_u64(f->payload);
    size_t n = (size_t)f->len - 8;
    if (j->args_seg)
        ppc_pool_args_done(p, j, (f->aux & PPC_AUX_PINNED) != 0);
    if ((f->aux & PPC_AUX_SHM) && j->origin) {
        /* ppserver: the client is remote, so the result travels inline */
        if (result_inline(p, w, j, f->payload + 8, n, (f->aux & PPC_AUX_VM) != 0) < 0)
            ppc_job_fail(j, PPC_JOB_EWORKER, "cannot read the worker's result segment");
    } else if (!(j->result = malloc(n ? n : 1))) {
        ppc_job_fail(j, PPC_JOB_EWORKER, "out of memory for the job's result");
    } else {
        memcpy(j->result, f->payload + 8, n);
        j->result_len = n;
        j->result_aux = f->aux & (PPC_AUX_OOB | PPC_AUX_SHM | PPC_AUX_VM);
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
    for (ppc_zombie **zp = &p->zombies; *zp;) {
        ppc_zombie *z = *zp;
        pid_t r = waitpid(z->pid, NULL, WNOHANG);
        if (r == z->pid || (r < 0 && errno == ECHILD)) {
            *zp = z->next;
            free(z);
            continue;
        }
        if (!z->killed && now - z->since > 2000) {
            kill(z->pid, SIGKILL);
            z->killed = 1;
        }
        zp = &z->next;
    }
    return p->zombies ? 20 : -1;
}

void ppc_pool_shutdown(ppc_pool *p)
{
    ppc_engine *e = p->e;
    p->target = 0;
    while (p->workers) {
        ppc_worker *w = p->workers;
        p->workers = w->next;
        ppc_job *j;
        while ((j = w->fl_head)) {
            w->fl_head = j->next;
            ppc_job_fail(j, PPC_JOB_EDESTROYED, "the server was destroyed");
            ppc_engine_complete(e, j);
        }
        close_write(p, w);
        if (w->inflight > 0)
            kill(w->pid, SIGTERM); /* busy in a job: do not wait for it */
        if (w->fd_r >= 0) {
            epoll_ctl(e->epfd, EPOLL_CTL_DEL, w->fd_r, NULL);
            close(w->fd_r);
        }
        add_zombie(p, w->pid);
        free_worker(p, w);
    }
    p->nlive = 0;
    update_pids(p);
    /* Idle workers exit on EOF at once; give busy ones a moment, then kill. */
    int64_t start = ppc_now_ms();
    while (p->zombies) {
        ppc_pool_tick(p);
        if (!p->zombies)
            break;
        if (ppc_now_ms() - start > 1000) {
            for (ppc_zombie *z = p->zombies; z; z = z->next)
                kill(z->pid, SIGKILL);
            for (ppc_zombie *z = p->zombies; z; z = z->next)
                waitpid(z->pid, NULL, 0);
            while (p->zombies) {
                ppc_zombie *z = p->zombies;
                p->zombies = z->next;
                free(z);
            }
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
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
    while (p->zombies) {
        ppc_zombie *z = p->zombies;
        p->zombies = z->next;
        free(z);
    }
    free(p);
}

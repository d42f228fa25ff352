/* test_engine.c - the engine through real worker processes.
 *
 * Every test starts engines whose workers are build/ctest/echo_worker (its
 * path comes in PPC_ECHO_WORKER), a tiny worker whose job arguments are
 * commands (see echo_worker.c). Every wait is bounded; every engine is
 * stopped and freed and every job reference dropped, so ASan's leak check
 * sees a clean exit. */
#define _GNU_SOURCE
#include "ctest.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "engine.h"
#include "job.h"

#define WAIT_MS 20000 /* generous: the tests also run under ASan on small machines */

static const char *worker_path(void)
{
    const char *p = getenv("PPC_ECHO_WORKER");
    return p && *p ? p : "build/ctest/echo_worker";
}

static const char init_payload[] = "init-payload\0with-a-nul";

typedef struct eng_cfg {
    int nworkers;
    int restart;
    uint64_t max_frame;
    const char *arg; /* extra worker argument, or NULL */
    int no_argv;     /* worker_argv = NULL */
    int no_pidfd;    /* reap by polling */
} eng_cfg;

static ppc_engine *start(eng_cfg c)
{
    char *argv[3] = {(char *)worker_path(), (char *)c.arg, NULL};
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = c.nworkers;
    o.worker_argv = c.no_argv ? NULL : argv;
    o.init = (const uint8_t *)init_payload;
    o.init_len = sizeof init_payload - 1;
    o.restart = c.restart;
    o.max_frame = c.max_frame;
    o.test_no_pidfd = c.no_pidfd;
    o.listen_port = -1; /* a plain client: no listening socket */
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    if (!e)
        fprintf(stderr, "ppc_engine_new: %s\n", err);
    return e;
}

static ppc_engine *start_n(int n)
{
    eng_cfg c = {.nworkers = n};
    return start(c);
}

static ppc_job *mkjob_n(ppc_blob *fn, const void *args, size_t n)
{
    ppc_job *j = ppc_job_new(fn, args, n);
    if (!j)
        abort();
    return j;
}

static ppc_job *mkjob(ppc_blob *fn, const char *args)
{
    return mkjob_n(fn, args, strlen(args));
}

/* Submit; the job is expected to be accepted. */
static ppc_job *sub(ppc_engine *e, ppc_blob *fn, const char *args, uint32_t group)
{
    ppc_job *j = mkjob(fn, args);
    CHECK_EQ_INT(ppc_engine_submit(e, j, group, 0), 0);
    return j;
}

static int result_is(const ppc_job *j, const char *s)
{
    size_t n = strlen(s);
    return j->status == PPC_JOB_OK && j->result_len == n && (n == 0 || memcmp(j->result, s, n) == 0);
}

/* The result read as a decimal number (results are not NUL-terminated). */
static int result_int(const ppc_job *j)
{
    char buf[32];
    size_t n = j->result_len < sizeof buf - 1 ? j->result_len : sizeof buf - 1;
    if (j->status != PPC_JOB_OK || !j->result)
        return -1;
    memcpy(buf, j->result, n);
    buf[n] = 0;
    return atoi(buf);
}

static void decref_all(ppc_job **js, int n)
{
    for (int i = 0; i < n; i++)
        ppc_job_decref(js[i]);
}

/* Poll the live worker pids until there are n of them (or timeout). */
static int wait_npids(ppc_engine *e, int n, int timeout_ms, int *pids, int max)
{
    int tmp[64];
    if (!pids) {
        pids = tmp;
        max = 64;
    }
    int64_t dl = ctest_now_ms() + timeout_ms;
    int got;
    for (;;) {
        got = ppc_engine_worker_pids(e, pids, max);
        if (got == n || ctest_now_ms() > dl)
            return got;
        ctest_sleep_ms(5);
    }
}

static int has_pid(const int *pids, int n, int pid)
{
    for (int i = 0; i < n; i++)
        if (pids[i] == pid)
            return 1;
    return 0;
}

/* The pid in a "worker process N died ..." message, or -1. */
static int msg_pid(const ppc_job *j)
{
    char buf[256];
    size_t n = j->result_len < sizeof buf - 1 ? j->result_len : sizeof buf - 1;
    if (!j->result)
        return -1;
    memcpy(buf, j->result, n);
    buf[n] = 0;
    const char *p = strstr(buf, "worker process ");
    return p ? atoi(p + 15) : -1;
}

static void show_job(const char *what, const ppc_job *j)
{
    fprintf(stderr, "  %s: job %" PRIu64 " state %d status %d result \"%.*s\"\n", what, j->id,
            atomic_load(&j->state), j->status, (int)(j->result_len > 200 ? 200 : j->result_len),
            j->result ? (const char *)j->result : "");
}

/* ------------------------------------------------------------------ */

TEST(engine_echo_1000_jobs_3_functions)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn[3];
    for (int i = 0; i < 3; i++) {
        char code[32];
        int k = snprintf(code, sizeof code, "blob-%d-code", i);
        fn[i] = ppc_blob_new(100 + (uint64_t)i, code, (size_t)k);
        REQUIRE(fn[i] != NULL);
    }
    enum { N = 1000 };
    static ppc_job *js[N];
    static uint8_t args[N][64];
    static size_t alen[N];
    for (int i = 0; i < N; i++) {
        ppc_blob *f = fn[i % 3];
        if (i % 10 == 9) {
            memcpy(args[i], "fn", 2);
            alen[i] = 2;
        } else {
            /* opaque bytes, NULs and high bytes included */
            int k = snprintf((char *)args[i], sizeof args[i], "echo:job-%d/", i);
            for (int b = 0; b < 8; b++)
                args[i][k + b] = (uint8_t)(i * 7 + b * 50);
            alen[i] = (size_t)k + 8;
        }
        js[i] = mkjob_n(f, args[i], alen[i]);
        CHECK_EQ_INT(ppc_engine_submit(e, js[i], (uint32_t)(i % 3), 0), 0);
    }
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    CHECK_EQ_INT(ppc_engine_pending(e), 0);
    int bad = 0;
    uint64_t sum_ns = 0;
    for (int i = 0; i < N; i++) {
        ppc_job *j = js[i];
        int ok = ppc_engine_wait_job(e, j, 0) == 1 && atomic_load(&j->state) == PPC_JOB_DONE &&
                 j->status == PPC_JOB_OK && j->exec_ns > 0 && j->node == 0;
        if (ok && i % 10 == 9) {
            char code[32];
            int k = snprintf(code, sizeof code, "blob-%d-code", i % 3);
            ok = j->result_len == (size_t)k && memcmp(j->result, code, (size_t)k) == 0;
        } else if (ok) {
            ok = j->result_len == alen[i] - 5 && memcmp(j->result, args[i] + 5, alen[i] - 5) == 0;
        }
        if (!ok && bad++ < 5)
            show_job("wrong", j);
        sum_ns += j->exec_ns;
    }
    CHECK_EQ_INT(bad, 0);
    /* ids are distinct and increasing in submission order */
    int order = 0;
    for (int i = 1; i < N; i++)
        order += js[i]->id <= js[i - 1]->id;
    CHECK_EQ_INT(order, 0);

    ppc_node_stats st[2];
    CHECK_EQ_INT(ppc_engine_stats(e, st, 2), 1);
    CHECK_EQ_U64(st[0].njobs, N);
    CHECK_EQ_U64(st[0].time_ns, sum_ns);

    /* the INIT payload reached the workers intact */
    ppc_job *ij = sub(e, fn[0], "init", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, ij, WAIT_MS), 1);
    CHECK_MEM(ij->result, ij->result_len, init_payload, sizeof init_payload - 1);
    ppc_job_decref(ij);

    ppc_engine_stop(e);
    ppc_engine_free(e);
    decref_all(js, N);
    for (int i = 0; i < 3; i++)
        ppc_blob_decref(fn[i]);
}

TEST(engine_groups)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(1, "f", 1);
    CHECK_EQ_INT(ppc_engine_wait_group(e, 7, 0), 1); /* an unused group is never pending */
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, 0), 1);
    ppc_job *fast[20], *slow[2];
    for (int i = 0; i < 20; i++) {
        char a[32];
        snprintf(a, sizeof a, "echo:g2-%d", i);
        fast[i] = sub(e, fn, a, 2);
    }
    for (int i = 0; i < 2; i++)
        slow[i] = sub(e, fn, "sleep:700", 1);
    CHECK_EQ_INT(ppc_engine_wait_group(e, 2, WAIT_MS), 1);
    int bad = 0;
    for (int i = 0; i < 20; i++) {
        char a[32];
        snprintf(a, sizeof a, "g2-%d", i);
        bad += !(atomic_load(&fast[i]->state) == PPC_JOB_DONE && result_is(fast[i], a));
    }
    CHECK_EQ_INT(bad, 0);
    /* group 1 still sleeping: a short wait times out, roughly on time */
    int64_t t0 = ctest_now_ms();
    CHECK_EQ_INT(ppc_engine_wait_group(e, 1, 100), 0);
    int64_t dt = ctest_now_ms() - t0;
    CHECK_MSG(dt >= 90 && dt < 2000, "wait_group(100 ms) took %lld ms", (long long)dt);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, 0), 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, 2, 0), 1);
    CHECK(ppc_engine_pending(e) >= 1);
    CHECK_EQ_INT(ppc_engine_wait_job(e, slow[0], 0), 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, 1, WAIT_MS), 1);
    CHECK(result_is(slow[0], "slept"));
    CHECK(result_is(slow[1], "slept"));
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, 0), 1);
    CHECK_EQ_INT(ppc_engine_pending(e), 0);

    /* a large group index works too */
    ppc_job *far = sub(e, fn, "echo:far", 1000);
    CHECK_EQ_INT(ppc_engine_wait_group(e, 1000, WAIT_MS), 1);
    CHECK(result_is(far, "far"));
    ppc_job_decref(far);

    ppc_engine_stop(e);
    ppc_engine_free(e);
    decref_all(fast, 20);
    decref_all(slow, 2);
    ppc_blob_decref(fn);
}

/* A worker dying in a job: that job fails with a message, the others are
 * fine, the worker is replaced, and the replacement gets the function blob
 * again (the echo worker exits 70 on a job whose function it lacks). */
static void worker_death_case(const char *cmd, const char *want_msg)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(5, "f5", 2);
    int before[8], after[8];
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, before, 8), 2);
    enum { N = 41 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++) {
        char a[32];
        snprintf(a, sizeof a, "echo:%d", i);
        js[i] = sub(e, fn, i == 20 ? cmd : a, 0);
    }
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        char a[32];
        snprintf(a, sizeof a, "%d", i);
        if (i != 20 && !result_is(js[i], a) && bad++ < 3)
            show_job("wrong", js[i]);
    }
    CHECK_EQ_INT(bad, 0);
    ppc_job *d = js[20];
    CHECK_EQ_INT(atomic_load(&d->state), PPC_JOB_DONE);
    CHECK_EQ_INT(d->status, PPC_JOB_EWORKER);
    CHECK_CONTAINS(d->result, d->result_len, want_msg);
    int dead = msg_pid(d);
    CHECK_MSG(has_pid(before, 2, dead), "dead pid %d is not one of the workers", dead);

    /* replaced: two workers again, the dead one gone */
    int64_t dl = ctest_now_ms() + WAIT_MS;
    int n;
    do {
        n = ppc_engine_worker_pids(e, after, 8);
        if (n == 2 && !has_pid(after, n, dead))
            break;
        ctest_sleep_ms(5);
    } while (ctest_now_ms() < dl);
    CHECK_EQ_INT(n, 2);
    CHECK(!has_pid(after, n, dead));
    CHECK(!(has_pid(after, n, before[0]) && has_pid(after, n, before[1])));

    /* the engine keeps serving, the new worker included */
    ppc_job *more[30];
    for (int i = 0; i < 30; i++)
        more[i] = sub(e, fn, "pid", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    bad = 0;
    for (int i = 0; i < 30; i++)
        bad += more[i]->status != PPC_JOB_OK;
    CHECK_EQ_INT(bad, 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    decref_all(js, N);
    decref_all(more, 30);
    ppc_blob_decref(fn);
}

TEST(engine_worker_exit_midjob)
{
    worker_death_case("exit:3", "exit code 3");
}

TEST(engine_worker_killed_by_signal)
{
    worker_death_case("kill", "signal 9");
}

/* A worker that closes its pipes and exits only later: the engine reaps
 * it when it exits (pidfd in the loop, or polled on the timer), so the
 * job's error names the real exit code; the other worker serves on. */
static void late_exit_case(int no_pidfd)
{
    eng_cfg c = {.nworkers = 2, .no_pidfd = no_pidfd};
    ppc_engine *e = start(c);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(5, "f5", 2);
    int pids[4];
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, pids, 4), 2);
    ppc_job *late = sub(e, fn, "late:300", 0);
    ppc_job *js[20];
    for (int i = 0; i < 20; i++)
        js[i] = sub(e, fn, "echo:x", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    int bad = 0;
    for (int i = 0; i < 20; i++)
        bad += !result_is(js[i], "x");
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(late->status, PPC_JOB_EWORKER);
    CHECK_CONTAINS(late->result, late->result_len, "exit code 9");
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_job_decref(late);
    decref_all(js, 20);
    ppc_blob_decref(fn);
}

TEST(engine_worker_exits_late_reaped_by_pidfd)
{
    late_exit_case(0);
}

TEST(engine_worker_exits_late_reaped_by_polling)
{
    late_exit_case(1);
}

/* A fork of the process while an engine runs: in the child the engine is
 * foreign (free does nothing) and holds none of its descriptors, so the
 * parent's workers still see EOF when told to go while the child lives. */
TEST(engine_fork_child_holds_no_worker_pipes)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    int pids[4];
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, pids, 4), 2);
    CHECK_EQ_INT(ppc_engine_foreign(e), 0);
    int hold[2], rep[2];
    REQUIRE(pipe(hold) == 0 && pipe(rep) == 0);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        close(hold[1]);
        close(rep[0]);
        char ok = ppc_engine_foreign(e) ? 'y' : 'n';
        ppc_engine_free(e); /* must neither hang nor touch the parent's workers */
        if (write(rep[1], &ok, 1) != 1)
            _exit(2);
        char c;
        while (read(hold[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(hold[0]);
    close(rep[1]);
    char ok = 0;
    CHECK_EQ_INT((int)read(rep[0], &ok, 1), 1);
    CHECK_EQ_INT(ok, 'y');
    CHECK_EQ_INT(ppc_engine_set_workers(e, 0), 0);
    int64_t dl = ctest_now_ms() + WAIT_MS;
    int alive = 2;
    while (alive && ctest_now_ms() < dl) {
        alive = 0;
        for (int i = 0; i < 2; i++)
            alive += kill(pids[i], 0) == 0;
        ctest_sleep_ms(5);
    }
    CHECK_EQ_INT(alive, 0); /* exited on EOF and reaped, child still alive */
    CHECK_EQ_INT(kill(child, 0), 0);
    close(hold[1]);
    close(rep[0]);
    int st = -1;
    CHECK_EQ_INT((int)waitpid(child, &st, 0), (int)child);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
}

TEST(engine_worker_garbage_frame)
{
    worker_death_case("garbage", "sent a malformed frame");
}

/* Jobs pipelined behind the one that kills the worker are not lost: they go
 * back to the queue and run on the replacement. */
TEST(engine_requeue_behind_dead_job)
{
    ppc_engine *e = start_n(1);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(9, "f9", 2);
    ppc_job *warm[20];
    for (int i = 0; i < 20; i++)
        warm[i] = sub(e, fn, "echo:w", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, 0, WAIT_MS), 1);
    enum { N = 60 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++) {
        char a[32];
        snprintf(a, sizeof a, "echo:r%d", i);
        js[i] = sub(e, fn, i == 0 ? "exit:4" : a, 0);
    }
    CHECK_EQ_INT(ppc_engine_wait_group(e, 0, WAIT_MS), 1);
    CHECK_EQ_INT(js[0]->status, PPC_JOB_EWORKER);
    CHECK_CONTAINS(js[0]->result, js[0]->result_len, "exit code 4");
    int bad = 0;
    for (int i = 1; i < N; i++) {
        char a[32];
        snprintf(a, sizeof a, "r%d", i);
        if (!result_is(js[i], a) && bad++ < 3)
            show_job("wrong", js[i]);
    }
    CHECK_EQ_INT(bad, 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    decref_all(warm, 20);
    decref_all(js, N);
    ppc_blob_decref(fn);
}

TEST(engine_set_workers_grow_shrink)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(3, "f3", 2);
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, NULL, 0), 2);
    CHECK_EQ_INT(ppc_engine_get_workers(e), 2);
    CHECK_EQ_INT(ppc_engine_set_workers(e, -1), -1);
    enum { N = 80 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++)
        js[i] = sub(e, fn, "sleep:15", 0);
    CHECK_EQ_INT(ppc_engine_set_workers(e, 4), 0);
    CHECK_EQ_INT(ppc_engine_get_workers(e), 4);
    CHECK_EQ_INT(wait_npids(e, 4, WAIT_MS, NULL, 0), 4);
    CHECK(ppc_engine_pending(e) > 0); /* grown while jobs were queued */
    ctest_sleep_ms(60);
    CHECK_EQ_INT(ppc_engine_set_workers(e, 1), 0);
    CHECK_EQ_INT(ppc_engine_get_workers(e), 1);
    CHECK(ppc_engine_pending(e) > 0); /* shrunk while jobs were queued */
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    int bad = 0;
    for (int i = 0; i < N; i++)
        if (!result_is(js[i], "slept") && bad++ < 3)
            show_job("wrong", js[i]);
    CHECK_EQ_INT(bad, 0);
    int pids[8];
    CHECK_EQ_INT(wait_npids(e, 1, WAIT_MS, pids, 8), 1);
    /* the one left serves everything now */
    ppc_job *p[5];
    for (int i = 0; i < 5; i++)
        p[i] = sub(e, fn, "pid", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    for (int i = 0; i < 5; i++) {
        CHECK_EQ_INT(p[i]->status, PPC_JOB_OK);
        CHECK_EQ_INT(result_int(p[i]), pids[0]);
    }
    /* and back up */
    CHECK_EQ_INT(ppc_engine_set_workers(e, 3), 0);
    CHECK_EQ_INT(wait_npids(e, 3, WAIT_MS, NULL, 0), 3);
    ppc_node_stats st;
    CHECK_EQ_INT(ppc_engine_stats(e, &st, 1), 1);
    CHECK_EQ_INT(st.ncpus, 3);
    ppc_engine_stop(e);
    CHECK_EQ_INT(ppc_engine_worker_pids(e, pids, 8), 0);
    ppc_engine_free(e);
    decref_all(js, N);
    decref_all(p, 5);
    ppc_blob_decref(fn);
}

TEST(engine_restart_mode)
{
    eng_cfg c = {.nworkers = 2, .restart = 1};
    ppc_engine *e = start(c);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(4, "f4", 2);
    enum { N = 12 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++)
        js[i] = sub(e, fn, "pid", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    int pids[N], bad = 0, dup = 0;
    for (int i = 0; i < N; i++) {
        bad += js[i]->status != PPC_JOB_OK;
        pids[i] = js[i]->status == PPC_JOB_OK ? result_int(js[i]) : -i;
        for (int k = 0; k < i; k++)
            dup += pids[k] == pids[i];
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(dup, 0); /* a fresh process for every job */
    /* settles back to two live workers */
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, NULL, 0), 2);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    decref_all(js, N);
    ppc_blob_decref(fn);
}

TEST(engine_stop_with_jobs_pending)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(6, "f6", 2);
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, NULL, 0), 2);
    ppc_job *sl[2], *q[10], *cb[2];
    for (int i = 0; i < 2; i++)
        sl[i] = sub(e, fn, "sleep:20000", 0);
    for (int i = 0; i < 10; i++)
        q[i] = sub(e, fn, "echo:queued", 1);
    for (int i = 0; i < 2; i++) {
        cb[i] = mkjob(fn, "sleep:20000");
        CHECK_EQ_INT(ppc_engine_submit(e, cb[i], 2, 1), 0);
    }
    /* let the sleepers get going */
    int64_t dl = ctest_now_ms() + WAIT_MS;
    while ((atomic_load(&sl[0]->state) != PPC_JOB_RUNNING ||
            atomic_load(&sl[1]->state) != PPC_JOB_RUNNING) &&
           ctest_now_ms() < dl)
        ctest_sleep_ms(5);
    ctest_sleep_ms(150);
    CHECK(ppc_engine_pending(e) >= 4);

    int64_t t0 = ctest_now_ms();
    ppc_engine_stop(e);
    int64_t dt = ctest_now_ms() - t0;
    CHECK_MSG(dt < 2500, "stop took %lld ms", (long long)dt);

    int bad = 0;
    ppc_job *all[12];
    memcpy(all, sl, sizeof sl);
    memcpy(all + 2, q, sizeof q);
    for (int i = 0; i < 12; i++) {
        ppc_job *j = all[i];
        int ok = ppc_engine_wait_job(e, j, 0) == 1 && j->status == PPC_JOB_EDESTROYED &&
                 ctest_contains(j->result, j->result_len, "destroyed");
        if (!ok && bad++ < 3)
            show_job("not destroyed", j);
    }
    CHECK_EQ_INT(bad, 0);
    /* jobs with callbacks complete too, and come out as events */
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(atomic_load(&cb[i]->state), PPC_JOB_COMPLETE);
        CHECK_EQ_INT(cb[i]->status, PPC_JOB_EDESTROYED);
    }
    ppc_event ev;
    int64_t edl = ctest_now_ms() + WAIT_MS;
    int got = 0;
    do {
        int k = ppc_engine_next_event(e, 100, &ev);
        if (k == PPC_EV_JOB) {
            CHECK(ev.job == cb[0] || ev.job == cb[1]);
            ppc_engine_callback_done(e, ev.job);
            got++;
        }
    } while (got < 1 && ctest_now_ms() < edl);
    CHECK_EQ_INT(got, 1); /* the second one is left for ppc_engine_free */

    CHECK_EQ_INT(ppc_engine_worker_pids(e, (int[4]){0}, 4), 0);
    ppc_engine_stop(e); /* idempotent */
    ppc_engine_free(e);
    decref_all(all, 12);
    decref_all(cb, 2);
    ppc_blob_decref(fn);
}

TEST(engine_submit_after_stop)
{
    ppc_engine *e = start_n(1);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(7, "f7", 2);
    ppc_job *ok = sub(e, fn, "echo:x", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, ok, WAIT_MS), 1);
    CHECK(result_is(ok, "x"));
    ppc_engine_stop(e);
    ppc_job *j = mkjob(fn, "echo:late");
    CHECK_EQ_INT(ppc_engine_submit(e, j, 0, 0), -1);
    CHECK_EQ_INT(ppc_engine_submit(e, j, 0, 1), -1);
    /* untouched */
    CHECK_EQ_INT(atomic_load(&j->refs), 1);
    CHECK_EQ_INT(atomic_load(&j->state), PPC_JOB_QUEUED);
    CHECK_EQ_U64(j->id, 0);
    CHECK_EQ_INT(ppc_engine_set_workers(e, 3), -1);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, 0), 1);
    ppc_event ev;
    CHECK_EQ_INT(ppc_engine_next_event(e, 1000, &ev), PPC_EV_STOP);
    ppc_engine_free(e);
    ppc_job_decref(j);
    ppc_job_decref(ok);
    ppc_blob_decref(fn);
}

typedef struct waiter_arg {
    ppc_engine *e;
    uint32_t group;
    int rc;
    int64_t done_at;
} waiter_arg;

static void *group_waiter(void *p)
{
    waiter_arg *a = p;
    a->rc = ppc_engine_wait_group(a->e, a->group, WAIT_MS);
    a->done_at = ctest_now_ms();
    return NULL;
}

TEST(engine_callbacks)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(8, "f8", 2);
    enum { NCB = 20, NPLAIN = 5 };
    ppc_job *cb[NCB], *plain[NPLAIN];
    for (int i = 0; i < NCB; i++) {
        char a[32];
        snprintf(a, sizeof a, "echo:cb%d", i);
        cb[i] = mkjob(fn, a);
        CHECK_EQ_INT(ppc_engine_submit(e, cb[i], 3, 1), 0);
    }
    for (int i = 0; i < NPLAIN; i++)
        plain[i] = sub(e, fn, "echo:plain", 3);
    ppc_job *got[NCB];
    int ngot = 0, nlog = 0;
    int64_t dl = ctest_now_ms() + WAIT_MS;
    while (ngot < NCB && ctest_now_ms() < dl) {
        ppc_event ev;
        int k = ppc_engine_next_event(e, 200, &ev);
        if (k == PPC_EV_JOB) {
            int known = 0;
            for (int i = 0; i < NCB; i++)
                known += ev.job == cb[i];
            CHECK(known == 1);
            CHECK_EQ_INT(atomic_load(&ev.job->state), PPC_JOB_COMPLETE);
            got[ngot++] = ev.job;
        } else if (k == PPC_EV_LOG) {
            nlog++;
        } else {
            CHECK_EQ_INT(k, PPC_EV_NONE);
        }
    }
    REQUIRE(ngot == NCB);
    CHECK_EQ_INT(nlog, 0);
    for (int i = 0; i < NCB; i++) {
        char a[32];
        snprintf(a, sizeof a, "cb%d", i);
        CHECK(result_is(cb[i], a));
    }
    /* callbacks not done: neither the group nor the jobs are finished */
    CHECK_EQ_INT(ppc_engine_wait_group(e, 3, 100), 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, got[0], 50), 0);
    CHECK(ppc_engine_pending(e) >= NCB);
    ppc_event ev;
    CHECK_EQ_INT(ppc_engine_next_event(e, 50, &ev), PPC_EV_NONE); /* nothing more */

    /* a thread waits on the group while callbacks finish one by one */
    waiter_arg wa = {.e = e, .group = 3, .rc = -1};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, group_waiter, &wa) == 0);
    ctest_sleep_ms(100);
    int64_t last = 0;
    for (int i = 0; i < NCB; i++) {
        if (i == NCB - 1)
            last = ctest_now_ms(); /* before: the waiter may wake at once */
        ppc_engine_callback_done(e, got[i]);
        CHECK_EQ_INT(atomic_load(&got[i]->state), PPC_JOB_DONE);
        CHECK_EQ_INT(ppc_engine_wait_job(e, got[i], 0), 1);
        if (i == NCB - 2)
            ctest_sleep_ms(100);
    }
    pthread_join(th, NULL);
    CHECK_EQ_INT(wa.rc, 1);
    CHECK_MSG(wa.done_at >= last, "the group wait ended before the last callback_done");
    CHECK_EQ_INT(ppc_engine_pending(e), 0);
    for (int i = 0; i < NPLAIN; i++)
        CHECK(result_is(plain[i], "plain"));

    ppc_engine_stop(e);
    CHECK_EQ_INT(ppc_engine_next_event(e, 1000, &ev), PPC_EV_STOP);
    ppc_engine_free(e);
    decref_all(cb, NCB);
    decref_all(plain, NPLAIN);
    ppc_blob_decref(fn);
}

TEST(engine_zero_workers)
{
    eng_cfg c = {.nworkers = 0, .no_argv = 1};
    ppc_engine *e = start(c);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(10, "f", 1);
    ppc_job *j = sub(e, fn, "echo:nowhere", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, j, WAIT_MS), 1);
    CHECK_EQ_INT(j->status, PPC_JOB_ENONODE);
    CHECK_CONTAINS(j->result, j->result_len, "no local workers");
    CHECK_EQ_INT(ppc_engine_worker_pids(e, (int[4]){0}, 4), 0);
    CHECK_EQ_INT(ppc_engine_pending(e), 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_job_decref(j);

    /* zero to start with, then one: it runs jobs */
    eng_cfg c2 = {.nworkers = 0};
    e = start(c2);
    REQUIRE(e != NULL);
    j = sub(e, fn, "echo:a", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, j, WAIT_MS), 1);
    CHECK_EQ_INT(j->status, PPC_JOB_ENONODE);
    CHECK_EQ_INT(ppc_engine_set_workers(e, 1), 0);
    ppc_job *k = sub(e, fn, "echo:b", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, k, WAIT_MS), 1);
    CHECK(result_is(k, "b"));
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_job_decref(j);
    ppc_job_decref(k);

    /* bad options are refused with a message */
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.listen_port = -1;
    o.nworkers = 2; /* but no command */
    char err[128] = "";
    CHECK(ppc_engine_new(&o, err, sizeof err) == NULL);
    CHECK(err[0] != 0);
    o.nworkers = -1;
    err[0] = 0;
    CHECK(ppc_engine_new(&o, err, sizeof err) == NULL);
    CHECK(err[0] != 0);
    /* listening (port 0: any) without a secret is refused */
    o.nworkers = 0;
    o.listen_host = "127.0.0.1";
    o.listen_port = 0;
    err[0] = 0;
    CHECK(ppc_engine_new(&o, err, sizeof err) == NULL);
    CHECK(strstr(err, "secret") != NULL);
    ppc_blob_decref(fn);
}

TEST(engine_start_failures)
{
    eng_cfg c = {.nworkers = 2, .arg = "--fail-start"};
    ppc_engine *e = start(c);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(11, "f", 1);
    enum { N = 5 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++)
        js[i] = sub(e, fn, "echo:never", 0);
    int64_t t0 = ctest_now_ms();
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(ppc_engine_wait_job(e, js[i], WAIT_MS), 1);
        CHECK_EQ_INT(js[i]->status, PPC_JOB_ENONODE);
        CHECK_CONTAINS(js[i]->result, js[i]->result_len, "fail to start");
        CHECK_CONTAINS(js[i]->result, js[i]->result_len, "exit code 2");
    }
    CHECK_MSG(ctest_now_ms() - t0 < 5000, "start failures took %lld ms",
              (long long)(ctest_now_ms() - t0));
    /* later submissions fail at once too */
    ppc_job *late = sub(e, fn, "echo:late", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, late, WAIT_MS), 1);
    CHECK_EQ_INT(late->status, PPC_JOB_ENONODE);
    /* the failures were logged */
    int nerr = 0;
    ppc_event ev;
    while (ppc_engine_next_event(e, 0, &ev) == PPC_EV_LOG)
        if (ev.level == PPC_LOG_ERROR && strstr(ev.msg, "failed to start"))
            nerr++;
    CHECK(nerr >= 3);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    decref_all(js, N);
    ppc_job_decref(late);

    /* a command that does not exist at all */
    char *argv[] = {"/nonexistent/ppc-echo-worker", NULL};
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = 1;
    o.listen_port = -1;
    o.worker_argv = argv;
    char err[128];
    e = ppc_engine_new(&o, err, sizeof err);
    REQUIRE(e != NULL);
    ppc_job *j = sub(e, fn, "echo:x", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, j, WAIT_MS), 1);
    CHECK_EQ_INT(j->status, PPC_JOB_ENONODE);
    CHECK(j->result_len > 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_job_decref(j);
    ppc_blob_decref(fn);
}

static int check_pattern(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)(i * 131 + 7))
            return 0;
    return 1;
}

TEST(engine_big_payloads)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(12, "f", 1);
    const size_t BIG = 8u << 20;
    ppc_job *r = sub(e, fn, "big:8388608", 0);
    /* 8 MB of arguments the other way */
    uint8_t *args = malloc(BIG + 5);
    REQUIRE(args != NULL);
    memcpy(args, "echo:", 5);
    for (size_t i = 0; i < BIG; i++)
        args[5 + i] = (uint8_t)(i * 131 + 7);
    ppc_job *a = mkjob_n(fn, args, BIG + 5);
    CHECK_EQ_INT(ppc_engine_submit(e, a, 0, 0), 0);
    free(args);
    ppc_job *par[4];
    for (int i = 0; i < 4; i++)
        par[i] = sub(e, fn, "big:3000001", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, 0, WAIT_MS), 1);
    CHECK_EQ_INT(r->status, PPC_JOB_OK);
    CHECK_EQ_INT(r->result_len, BIG);
    CHECK(r->result_len == BIG && check_pattern(r->result, BIG));
    CHECK_EQ_INT(a->status, PPC_JOB_OK);
    CHECK_EQ_INT(a->result_len, BIG);
    CHECK(a->result_len == BIG && check_pattern(a->result, BIG));
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(par[i]->status, PPC_JOB_OK);
        CHECK(par[i]->result_len == 3000001 && check_pattern(par[i]->result, 3000001));
    }
    /* an empty result is a result */
    ppc_job *z = sub(e, fn, "big:0", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, z, WAIT_MS), 1);
    CHECK_EQ_INT(z->status, PPC_JOB_OK);
    CHECK_EQ_INT(z->result_len, 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_job_decref(r);
    ppc_job_decref(a);
    ppc_job_decref(z);
    decref_all(par, 4);
    ppc_blob_decref(fn);
}

TEST(engine_max_frame)
{
    eng_cfg c = {.nworkers = 1, .max_frame = 1 << 20};
    ppc_engine *e = start(c);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(13, "f", 1);
    ppc_job *ok = sub(e, fn, "big:1000000", 0);
    ppc_job *big = sub(e, fn, "big:2000000", 0);
    ppc_job *after = sub(e, fn, "echo:after", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, 0, WAIT_MS), 1);
    CHECK_EQ_INT(ok->status, PPC_JOB_OK);
    CHECK_EQ_INT(ok->result_len, 1000000);
    CHECK_EQ_INT(big->status, PPC_JOB_EWORKER);
    CHECK(big->result_len > 0);
    CHECK(result_is(after, "after"));
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_job_decref(ok);
    ppc_job_decref(big);
    ppc_job_decref(after);
    ppc_blob_decref(fn);
}

TEST(engine_stats)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(14, "f", 1);
    ppc_node_stats st[3];
    memset(st, 0, sizeof st);
    CHECK_EQ_INT(ppc_engine_stats(e, st, 0), 0);
    CHECK_EQ_INT(ppc_engine_stats(e, st, 3), 1);
    CHECK_EQ_INT(strcmp(st[0].name, "local"), 0);
    CHECK_EQ_INT(st[0].ncpus, 2);
    CHECK_EQ_U64(st[0].njobs, 0);
    CHECK_EQ_U64(st[0].time_ns, 0);
    enum { N = 32 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++)
        js[i] = sub(e, fn, i == 10 ? "exit:3" : i == 20 ? "kill" : "sleep:1", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    uint64_t sum = 0;
    int nok = 0;
    for (int i = 0; i < N; i++)
        if (js[i]->status == PPC_JOB_OK) {
            nok++;
            sum += js[i]->exec_ns;
        }
    CHECK_EQ_INT(nok, N - 2);
    CHECK_EQ_INT(ppc_engine_stats(e, st, 3), 1);
    CHECK_EQ_U64(st[0].njobs, N - 2); /* failed jobs are not counted */
    CHECK_EQ_U64(st[0].time_ns, sum);
    CHECK(st[0].time_ns >= (uint64_t)(N - 2) * 1000000); /* each slept 1 ms */
    ppc_engine_stop(e);
    ppc_engine_free(e);
    decref_all(js, N);
    ppc_blob_decref(fn);
}

typedef struct submitter_arg {
    ppc_engine *e;
    ppc_blob *fn;
    uint32_t group;
    int bad;
} submitter_arg;

static void *submitter(void *p)
{
    submitter_arg *a = p;
    enum { N = 250 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++) {
        char s[48];
        snprintf(s, sizeof s, "echo:t%u-%d", a->group, i);
        js[i] = mkjob(a->fn, s);
        if (ppc_engine_submit(a->e, js[i], a->group, 0) != 0)
            a->bad++;
    }
    if (ppc_engine_wait_group(a->e, a->group, WAIT_MS) != 1)
        a->bad++;
    for (int i = 0; i < N; i++) {
        char s[48];
        snprintf(s, sizeof s, "t%u-%d", a->group, i);
        if (ppc_engine_wait_job(a->e, js[i], 0) != 1 || !result_is(js[i], s))
            a->bad++;
        ppc_job_decref(js[i]);
    }
    return NULL;
}

TEST(engine_concurrent_submitters)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(15, "f", 1);
    submitter_arg a[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (submitter_arg){.e = e, .fn = fn, .group = (uint32_t)i + 1};
        REQUIRE(pthread_create(&th[i], NULL, submitter, &a[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(a[i].bad, 0);
    }
    CHECK_EQ_INT(ppc_engine_pending(e), 0);
    ppc_node_stats st;
    CHECK_EQ_INT(ppc_engine_stats(e, &st, 1), 1);
    CHECK_EQ_U64(st.njobs, 1000);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_blob_decref(fn);
}

/* Shrinking to no workers at all: what runs finishes, what waits fails with
 * ENONODE once the last worker is gone, and nothing hangs. */
TEST(engine_set_workers_to_zero)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(17, "f", 1);
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, NULL, 0), 2);
    enum { N = 10 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++)
        js[i] = sub(e, fn, "sleep:200", 0);
    int64_t dl = ctest_now_ms() + WAIT_MS;
    while ((atomic_load(&js[0]->state) != PPC_JOB_RUNNING ||
            atomic_load(&js[1]->state) != PPC_JOB_RUNNING) &&
           ctest_now_ms() < dl)
        ctest_sleep_ms(5);
    CHECK_EQ_INT(ppc_engine_set_workers(e, 0), 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    int ok = 0, nonode = 0, other = 0;
    for (int i = 0; i < N; i++) {
        if (js[i]->status == PPC_JOB_OK)
            ok++;
        else if (js[i]->status == PPC_JOB_ENONODE)
            nonode++;
        else if (other++ < 3)
            show_job("unexpected", js[i]);
    }
    CHECK_EQ_INT(other, 0);
    CHECK_EQ_INT(ok, 2);        /* the two that were running */
    CHECK_EQ_INT(nonode, N - 2); /* the queued ones */
    CHECK_EQ_INT(wait_npids(e, 0, WAIT_MS, NULL, 0), 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    decref_all(js, N);
    ppc_blob_decref(fn);
}

/* A worker killed from outside while idle is noticed and replaced. */
TEST(engine_idle_worker_killed_externally)
{
    ppc_engine *e = start_n(2);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(18, "f", 1);
    int before[4], after[4];
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, before, 4), 2);
    ppc_job *w = sub(e, fn, "echo:warm", 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, w, WAIT_MS), 1);
    CHECK_EQ_INT(kill(before[0], SIGKILL), 0);
    int64_t dl = ctest_now_ms() + WAIT_MS;
    int n;
    do {
        n = ppc_engine_worker_pids(e, after, 4);
        if (n == 2 && !has_pid(after, n, before[0]))
            break;
        ctest_sleep_ms(5);
    } while (ctest_now_ms() < dl);
    CHECK_EQ_INT(n, 2);
    CHECK(!has_pid(after, n, before[0]));
    CHECK(has_pid(after, n, before[1]));
    ppc_job *js[20];
    for (int i = 0; i < 20; i++)
        js[i] = sub(e, fn, "echo:again", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    int bad = 0;
    for (int i = 0; i < 20; i++)
        bad += !result_is(js[i], "again");
    CHECK_EQ_INT(bad, 0);
    /* it was logged as a warning, not as a start failure */
    int warned = 0, startfail = 0;
    ppc_event ev;
    while (ppc_engine_next_event(e, 0, &ev) == PPC_EV_LOG) {
        warned += ev.level == PPC_LOG_WARNING && strstr(ev.msg, "exited") != NULL;
        startfail += strstr(ev.msg, "failed to start") != NULL;
    }
    CHECK_EQ_INT(warned, 1);
    CHECK_EQ_INT(startfail, 0);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_job_decref(w);
    decref_all(js, 20);
    ppc_blob_decref(fn);
}

/* Start the echo worker ourselves (fork + exec, its pipes on fd 3 and 4),
 * as the binding forks the first workers of a Server. 0 or -1. */
static int prestart_echo(ppc_prestarted *ps)
{
    int to_w[2], from_w[2];
    if (pipe2(to_w, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(from_w, O_CLOEXEC) < 0) {
        close(to_w[0]);
        close(to_w[1]);
        return -1;
    }
    /* above 4, so the dup2 calls in the child cannot clobber one another */
    int fds[4] = {to_w[0], to_w[1], from_w[0], from_w[1]};
    for (int i = 0; i < 4; i++) {
        int nfd = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
        close(fds[i]);
        fds[i] = nfd;
    }
    pid_t pid = fork();
    if (pid == 0) {
        if (dup2(fds[0], 3) < 0 || dup2(fds[3], 4) < 0)
            _exit(120);
        char *argv[] = {(char *)worker_path(), NULL};
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[0]);
    close(fds[3]);
    if (pid < 0) {
        close(fds[1]);
        close(fds[2]);
        return -1;
    }
    ps->pid = (int)pid;
    ps->fd_to_worker = fds[1];
    ps->fd_from_worker = fds[2];
    return 0;
}

/* Workers the caller started are adopted (not started again), run jobs,
 * are reaped, and replaced by started ones when they die. */
TEST(engine_adopts_prestarted_workers)
{
    ppc_prestarted ps[2];
    REQUIRE(prestart_echo(&ps[0]) == 0);
    REQUIRE(prestart_echo(&ps[1]) == 0);
    char *argv[2] = {(char *)worker_path(), NULL};
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = 2; /* both adopted: the pool starts none */
    o.prestarted = ps;
    o.nprestarted = 2;
    o.worker_argv = argv;
    o.init = (const uint8_t *)init_payload;
    o.init_len = sizeof init_payload - 1;
    o.listen_port = -1;
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    REQUIRE(e != NULL);
    int pids[8];
    CHECK_EQ_INT(wait_npids(e, 2, WAIT_MS, pids, 8), 2);
    CHECK(has_pid(pids, 2, ps[0].pid));
    CHECK(has_pid(pids, 2, ps[1].pid));
    ppc_blob *fn = ppc_blob_new(21, "f", 1);
    /* only the adopted workers are there: they got INIT and run jobs */
    enum { N = 60 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++)
        js[i] = sub(e, fn, i % 2 ? "sleep:2" : "init", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += i % 2 ? !result_is(js[i], "slept") : !(js[i]->status == PPC_JOB_OK &&
                                                      js[i]->result_len == sizeof init_payload - 1);
    CHECK_EQ_INT(bad, 0);
    decref_all(js, N);
    /* an adopted worker that dies is reaped (no zombie) and replaced by a
     * started one */
    CHECK_EQ_INT(kill(ps[0].pid, SIGKILL), 0);
    int64_t dl = ctest_now_ms() + WAIT_MS;
    int n;
    do {
        n = ppc_engine_worker_pids(e, pids, 8);
        if (n == 2 && !has_pid(pids, n, ps[0].pid))
            break;
        ctest_sleep_ms(5);
    } while (ctest_now_ms() < dl);
    CHECK_EQ_INT(n, 2);
    CHECK(!has_pid(pids, n, ps[0].pid));
    CHECK(has_pid(pids, n, ps[1].pid));
    /* reaped by the engine: no longer our child */
    errno = 0;
    CHECK(waitpid(ps[0].pid, NULL, WNOHANG) < 0 && errno == ECHILD);
    ppc_job *again[20];
    for (int i = 0; i < 20; i++)
        again[i] = sub(e, fn, "echo:again", 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    bad = 0;
    for (int i = 0; i < 20; i++)
        bad += !result_is(again[i], "again");
    CHECK_EQ_INT(bad, 0);
    decref_all(again, 20);
    /* statistics count the adopted workers' jobs as local */
    ppc_node_stats st[4];
    CHECK(ppc_engine_stats(e, st, 4) >= 1);
    CHECK(st[0].njobs >= N + 20);
    ppc_engine_stop(e);
    /* stop reaps every worker, the adopted survivor included */
    errno = 0;
    CHECK(waitpid(ps[1].pid, NULL, WNOHANG) < 0 && errno == ECHILD);
    ppc_engine_free(e);
    ppc_blob_decref(fn);
}

/* Options the engine refuses still leave no prestarted worker behind. */
TEST(engine_releases_prestarted_on_error)
{
    ppc_prestarted ps;
    REQUIRE(prestart_echo(&ps) == 0);
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = 0; /* fewer than the prestarted ones: invalid */
    o.prestarted = &ps;
    o.nprestarted = 1;
    o.listen_port = -1;
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    CHECK(e == NULL);
    errno = 0;
    CHECK(waitpid(ps.pid, NULL, WNOHANG) < 0 && errno == ECHILD);
    CHECK(fcntl(ps.fd_to_worker, F_GETFD) < 0 || fcntl(ps.fd_from_worker, F_GETFD) < 0);
}

/* Futures: cancel while queued (never runs), kill while running (worker
 * replaced, the jobs behind it still run), a timeout, retries exhausted,
 * a watched job's PPC_EV_DONE event. */
TEST(engine_cancel_kill_timeout_retries)
{
    ppc_engine *e = start_n(1);
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(11, "f11", 3);
    ppc_job *run = sub(e, fn, "sleep:5000", 0);
    int64_t dl = ctest_now_ms() + WAIT_MS;
    while (atomic_load(&run->state) != PPC_JOB_RUNNING && ctest_now_ms() < dl)
        ctest_sleep_ms(2);
    CHECK_EQ_INT(atomic_load(&run->state), PPC_JOB_RUNNING);
    enum { NQ = 10 };
    ppc_job *q[NQ];
    for (int i = 0; i < NQ; i++) {
        char a[32];
        snprintf(a, sizeof a, "echo:q%d", i);
        q[i] = sub(e, fn, a, 0);
    }
    for (int i = 1; i < NQ; i += 2)
        CHECK_EQ_INT(ppc_engine_cancel(e, q[i]), 1);
    CHECK_EQ_INT(ppc_engine_cancel(e, run), 0); /* too late: it runs */
    int pids[8];
    REQUIRE(wait_npids(e, 1, WAIT_MS, pids, 8) == 1);
    int first = pids[0];
    CHECK_EQ_INT(ppc_engine_kill(e, run, PPC_JOB_EKILLED), 2);
    CHECK_EQ_INT(ppc_engine_wait_job(e, run, WAIT_MS), 1);
    CHECK_EQ_INT(run->status, PPC_JOB_EKILLED);
    CHECK_EQ_INT(ppc_engine_kill(e, run, PPC_JOB_EKILLED), 0); /* done already */
    for (int i = 0; i < NQ; i++) {
        char a[32];
        snprintf(a, sizeof a, "q%d", i);
        CHECK_EQ_INT(ppc_engine_wait_job(e, q[i], WAIT_MS), 1);
        if (i % 2)
            CHECK_EQ_INT(q[i]->status, PPC_JOB_ECANCELLED);
        else
            CHECK(result_is(q[i], a));
    }
    REQUIRE(wait_npids(e, 1, WAIT_MS, pids, 8) == 1);
    CHECK(pids[0] != first); /* replaced */
    ppc_job *t = mkjob(fn, "sleep:10000");
    t->timeout_ms = 200;
    CHECK_EQ_INT(ppc_engine_submit(e, t, 0, 0), 0);
    int64_t t0 = ctest_now_ms();
    CHECK_EQ_INT(ppc_engine_wait_job(e, t, WAIT_MS), 1);
    CHECK_EQ_INT(t->status, PPC_JOB_ETIMEOUT);
    CHECK(ctest_now_ms() - t0 < 5000);
    ppc_job *r = mkjob(fn, "exit:3");
    r->retries = 2;
    CHECK_EQ_INT(ppc_engine_submit(e, r, 0, 0), 0);
    CHECK_EQ_INT(ppc_engine_wait_job(e, r, WAIT_MS), 1);
    CHECK_EQ_INT(r->status, PPC_JOB_EWORKER);
    CHECK_EQ_INT(r->retried, 2);
    ppc_job *w = sub(e, fn, "sleep:100", 0);
    CHECK_EQ_INT(ppc_engine_watch(e, w), 1);
    ppc_event ev;
    int kind;
    while ((kind = ppc_engine_next_event(e, WAIT_MS, &ev)) == PPC_EV_LOG)
        ; /* the deaths above were logged */
    CHECK_EQ_INT(kind, PPC_EV_DONE);
    CHECK(ev.job == w);
    if (kind == PPC_EV_DONE)
        ppc_job_decref(ev.job);
    CHECK_EQ_INT(ppc_engine_watch(e, w), 0); /* done: no event */
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_job_decref(run);
    decref_all(q, NQ);
    ppc_job_decref(t);
    ppc_job_decref(r);
    ppc_job_decref(w);
    ppc_blob_decref(fn);
}

int main(int argc, char **argv)
{
    /* a worker's death must not take the test with it */
    signal(SIGPIPE, SIG_IGN);
    return ctest_main(argc, argv);
}

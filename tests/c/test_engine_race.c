/* test_engine_race.c - engine event-loop races through real worker
 * processes (the echo worker, see echo_worker.c).
 *
 * Kept apart from test_engine.c because its failure mode is a sanitizer
 * abort: under ASan a use of freed memory ends the whole program. */
#define _GNU_SOURCE
#include "ctest.h"

#include <signal.h>
#include <stdatomic.h>

#include "engine.h"
#include "job.h"

#define WAIT_MS 20000

static ppc_engine *start1(void)
{
    const char *p = getenv("PPC_ECHO_WORKER");
    char *argv[2] = {(char *)(p && *p ? p : "build/ctest/echo_worker"), NULL};
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = 1;
    o.worker_argv = argv;
    o.listen_port = -1;
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    if (!e)
        fprintf(stderr, "ppc_engine_new: %s\n", err);
    return e;
}

static ppc_job *mkjob(ppc_blob *fn, const void *args, size_t n)
{
    ppc_job *j = ppc_job_new(fn, args, n);
    if (!j)
        abort();
    return j;
}

/* A worker dies (it closes its result pipe, or sends a malformed frame)
 * and at once drains its job pipe, while the engine has more output queued
 * for it than the pipe holds (EPOLLOUT armed). The engine's read event and
 * write event for that worker then come in one epoll batch, the read event
 * first: handling the read event frees the worker (pool.c worker_gone ->
 * free_worker), and the write event that follows must not touch it.
 *
 * The bug this catches: engine_main reads src->kind through the stale
 * epoll data pointer (engine.c, "if (src->kind == PPC_SRC_WAKE)") before
 * ppc_pool_event's "is it still listed" check, a heap-use-after-free under
 * ASan; and that check compares addresses, so a replacement worker
 * allocated at the same address in the same batch would take the dead
 * worker's event (ABA). In the plain build it usually passes. */
TEST(engine_worker_gone_with_output_pending)
{
    ppc_engine *e = start1();
    REQUIRE(e != NULL);
    ppc_blob *fn = ppc_blob_new(16, "f", 1);
    const size_t ARG = 256 * 1024;
    uint8_t *args = malloc(ARG);
    REQUIRE(args != NULL);
    memcpy(args, "echo:", 5);
    memset(args + 5, 'z', ARG - 5);
    enum { N = 24, POS = 14 };
    int bad = 0, rounds = 0;
    int64_t dl = ctest_now_ms() + 10000;
    for (int round = 0; round < 80 && ctest_now_ms() < dl; round++, rounds++) {
        /* a few quick jobs first: the engine then pipelines deeply */
        ppc_job *warm[10];
        for (int i = 0; i < 10; i++) {
            warm[i] = mkjob(fn, "echo:w", 6);
            CHECK_EQ_INT(ppc_engine_submit(e, warm[i], 0, 0), 0);
        }
        CHECK_EQ_INT(ppc_engine_wait_group(e, 0, WAIT_MS), 1);
        for (int i = 0; i < 10; i++)
            ppc_job_decref(warm[i]);
        /* 6 MB of arguments, the dying job in the middle */
        ppc_job *js[N];
        const char *die = round % 2 ? "gd:5" : "hup:5";
        for (int i = 0; i < N; i++) {
            js[i] = i == POS ? mkjob(fn, die, strlen(die)) : mkjob(fn, args, ARG);
            CHECK_EQ_INT(ppc_engine_submit(e, js[i], 0, 0), 0);
        }
        CHECK_EQ_INT(ppc_engine_wait_group(e, 0, WAIT_MS), 1);
        CHECK_EQ_INT(js[POS]->status, PPC_JOB_EWORKER);
        for (int i = 0; i < N; i++)
            bad += i != POS && !(js[i]->status == PPC_JOB_OK && js[i]->result_len == ARG - 5);
        for (int i = 0; i < N; i++)
            ppc_job_decref(js[i]);
    }
    CHECK(rounds >= 4);
    CHECK_EQ_INT(bad, 0);
    /* a dead worker's stale event must not hit its replacement: no
     * replacement may be seen failing to start */
    int nstart = 0;
    ppc_event ev;
    while (ppc_engine_next_event(e, 0, &ev) == PPC_EV_LOG)
        if (strstr(ev.msg, "failed to start"))
            nstart++;
    CHECK_EQ_INT(nstart, 0);
    free(args);
    ppc_engine_stop(e);
    ppc_engine_free(e);
    ppc_blob_decref(fn);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return ctest_main(argc, argv);
}

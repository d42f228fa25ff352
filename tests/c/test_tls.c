/* test_tls.c - a client engine and a ppserver engine in one process,
 * talking over TLS on loopback (src/core/tls.c, conn.c, remote.c,
 * serve.c), under ASan/UBSan in the -asan build: jobs and a multi-record
 * result go through, and a client with another secret gets no node and a
 * clear failure. Workers are build/ctest/echo_worker (echo_worker.c). */
#define _GNU_SOURCE
#include "ctest.h"

#include <stdatomic.h>

#include "engine.h"
#include "job.h"

#define WAIT_MS 30000
#define SECRET "c-test-secret-0123456789"

static const char *worker_path(void)
{
    const char *p = getenv("PPC_ECHO_WORKER");
    return p && *p ? p : "build/ctest/echo_worker";
}

static ppc_engine *node_start(int *port)
{
    char *argv[2] = {(char *)worker_path(), NULL};
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = 2;
    o.worker_argv = argv;
    o.listen_host = "127.0.0.1";
    o.listen_port = 0;
    o.secret = (const uint8_t *)SECRET;
    o.secret_len = strlen(SECRET);
    o.liveness_ms = 20000;
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    if (!e) {
        fprintf(stderr, "node: %s\n", err);
        return NULL;
    }
    int n;
    int64_t idle;
    ppc_engine_server_info(e, port, &n, &idle);
    return e;
}

static ppc_engine *client_start(int port, const char *secret)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    const char *nodes[2] = {addr, NULL};
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = 0;
    o.listen_port = -1;
    o.ppservers = nodes;
    o.secret = (const uint8_t *)secret;
    o.secret_len = strlen(secret);
    o.liveness_ms = 20000;
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    if (!e)
        fprintf(stderr, "client: %s\n", err);
    return e;
}

TEST(tls_jobs_and_a_big_result)
{
    int port = 0;
    ppc_engine *node = node_start(&port);
    REQUIRE(node != NULL && port > 0);
    ppc_engine *c = client_start(port, SECRET);
    REQUIRE(c != NULL);
    ppc_blob *fn = ppc_blob_new(7, "fn-7", 4);
    REQUIRE(fn != NULL);
    enum { N = 300 };
    static ppc_job *js[N];
    for (int i = 0; i < N; i++) {
        char a[64];
        int k = snprintf(a, sizeof a, "echo:tls-job-%d", i);
        js[i] = ppc_job_new(fn, a, (size_t)k);
        REQUIRE(js[i] != NULL);
        CHECK_EQ_INT(ppc_engine_submit(c, js[i], 0, 0), 0);
    }
    /* 3 MB back: many TLS records, partial writes and reads */
    ppc_job *big = ppc_job_new(fn, "big:3000000", 11);
    REQUIRE(big != NULL);
    CHECK_EQ_INT(ppc_engine_submit(c, big, 0, 0), 0);
    CHECK_EQ_INT(ppc_engine_wait_group(c, PPC_GROUP_ALL, WAIT_MS), 1);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        char want[64];
        int k = snprintf(want, sizeof want, "tls-job-%d", i);
        ppc_job *j = js[i];
        if (!(j->status == PPC_JOB_OK && j->node != 0 && j->result_len == (size_t)k &&
              memcmp(j->result, want, (size_t)k) == 0))
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(big->status, PPC_JOB_OK);
    CHECK_EQ_U64(big->result_len, 3000000);
    int wrong = 0;
    for (size_t i = 0; i < big->result_len && big->result; i++)
        wrong += ((const uint8_t *)big->result)[i] != (uint8_t)((i * 131 + 7) & 0xff);
    CHECK_EQ_INT(wrong, 0);
    ppc_engine_stop(c);
    ppc_engine_free(c);
    ppc_engine_stop(node);
    ppc_engine_free(node);
    for (int i = 0; i < N; i++)
        ppc_job_decref(js[i]);
    ppc_job_decref(big);
    ppc_blob_decref(fn);
}

TEST(tls_wrong_secret_gets_no_node)
{
    int port = 0;
    ppc_engine *node = node_start(&port);
    REQUIRE(node != NULL && port > 0);
    ppc_engine *c = client_start(port, "not-the-secret-at-all");
    REQUIRE(c != NULL);
    ppc_blob *fn = ppc_blob_new(8, "fn-8", 4);
    REQUIRE(fn != NULL);
    ppc_job *j = ppc_job_new(fn, "echo:never", 10);
    REQUIRE(j != NULL);
    CHECK_EQ_INT(ppc_engine_submit(c, j, 0, 0), 0);
    CHECK_EQ_INT(ppc_engine_wait_job(c, j, WAIT_MS), 1);
    CHECK(j->status != PPC_JOB_OK);
    int n;
    int port2;
    int64_t idle;
    ppc_engine_server_info(node, &port2, &n, &idle);
    CHECK_EQ_INT(n, 0); /* refused connections never counted as clients */
    ppc_engine_stop(c);
    ppc_engine_free(c);
    ppc_engine_stop(node);
    ppc_engine_free(node);
    ppc_job_decref(j);
    ppc_blob_decref(fn);
}

int main(int argc, char **argv) { return ctest_main(argc, argv); }

/* test_connect_back.c - connect-back between two engines in one process:
 * a client engine watching a rendezvous socket and a node engine that
 * dials it (no listening socket on the node), through real sockets and
 * echo workers. Checked: jobs run on the node that dialed in; a node that
 * goes is a lost node whose jobs run again on the next one to dial in;
 * a node with the wrong secret and a stranger sending garbage are refused
 * while the client keeps serving; the node's reachability for its idle
 * timeout. */
#define _GNU_SOURCE
#include "ctest.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "engine.h"
#include "job.h"

#define WAIT_MS 20000

static const char *worker_path(void)
{
    const char *p = getenv("PPC_ECHO_WORKER");
    return p && *p ? p : "build/ctest/echo_worker";
}

static int listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 16) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) < 0)
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

static ppc_engine *client(int rdv, const char *secret)
{
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.listen_port = -1;
    o.secret = (const uint8_t *)secret;
    o.secret_len = strlen(secret);
    o.liveness_ms = 5000;
    o.rendezvous_fd = rdv;
    o.has_rendezvous = 1;
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    if (!e)
        fprintf(stderr, "client: %s\n", err);
    return e;
}

static ppc_engine *node(int port, const char *secret, int nworkers)
{
    static char init[] = "init";
    char *argv[2] = {(char *)worker_path(), NULL};
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = nworkers;
    o.worker_argv = argv;
    o.init = (const uint8_t *)init;
    o.init_len = 4;
    o.listen_port = -1;
    o.secret = (const uint8_t *)secret;
    o.secret_len = strlen(secret);
    o.liveness_ms = 5000;
    o.connect_host = "127.0.0.1";
    o.connect_port = port;
    char err[256] = "";
    ppc_engine *e = ppc_engine_new(&o, err, sizeof err);
    if (!e)
        fprintf(stderr, "node: %s\n", err);
    return e;
}

static int active_nodes(ppc_engine *e)
{
    ppc_node_stats st[16];
    int n = ppc_engine_stats(e, st, 16), a = 0;
    for (int i = 0; i < n && i < 16; i++)
        a += st[i].active && strcmp(st[i].name, "local") != 0;
    return a;
}

static int wait_active(ppc_engine *e, int want)
{
    int64_t t = ctest_now_ms();
    while (active_nodes(e) != want) {
        if (ctest_now_ms() - t > WAIT_MS)
            return 0;
        usleep(2000);
    }
    return 1;
}

static int log_has(ppc_engine *e, const char *what)
{
    ppc_event ev;
    int found = 0;
    while (ppc_engine_next_event(e, 0, &ev) == PPC_EV_LOG)
        found |= strstr(ev.msg, what) != NULL;
    return found;
}

static int result_is(const ppc_job *j, const char *s)
{
    size_t n = strlen(s);
    return j->status == PPC_JOB_OK && j->result_len == n && memcmp(j->result, s, n) == 0;
}

TEST(connect_back_jobs_run_on_the_node_that_dialed)
{
    int port, ls = listener(&port);
    REQUIRE(ls >= 0);
    ppc_engine *c = client(ls, "s3cret");
    REQUIRE(c != NULL);
    ppc_engine *n = node(port, "s3cret", 2);
    REQUIRE(n != NULL);
    CHECK(wait_active(c, 1));
    int p, nc;
    int64_t idle;
    ppc_engine_server_info(n, &p, &nc, &idle);
    CHECK_EQ_INT(nc, 1); /* the node sees its client reachable */
    CHECK_EQ_INT((int)idle, 0);
    ppc_blob *fn = ppc_blob_new(7, "f", 1);
    enum { N = 200 };
    ppc_job *js[N];
    for (int i = 0; i < N; i++) {
        char a[32];
        int k = snprintf(a, sizeof a, "echo:%d", i);
        js[i] = ppc_job_new(fn, a, (size_t)k);
        REQUIRE(js[i] != NULL);
        CHECK_EQ_INT(ppc_engine_submit(c, js[i], 0, 0), 0);
    }
    CHECK_EQ_INT(ppc_engine_wait_group(c, PPC_GROUP_ALL, WAIT_MS), 1);
    for (int i = 0; i < N; i++) {
        char a[32];
        snprintf(a, sizeof a, "%d", i);
        CHECK(result_is(js[i], a));
        CHECK(js[i]->node >= 1); /* ran on the remote node */
        ppc_job_decref(js[i]);
    }

    /* the node goes mid-job: lost, its job runs on the next node to dial in */
    ppc_job *slow = ppc_job_new(fn, "sleep:300", 9);
    REQUIRE(slow != NULL);
    CHECK_EQ_INT(ppc_engine_submit(c, slow, 0, 0), 0);
    usleep(100000);
    ppc_engine_stop(n);
    ppc_engine_free(n);
    CHECK(wait_active(c, 0));
    n = node(port, "s3cret", 1);
    REQUIRE(n != NULL);
    CHECK_EQ_INT(ppc_engine_wait_job(c, slow, WAIT_MS), 1);
    CHECK(result_is(slow, "slept"));
    CHECK(log_has(c, "rescheduled"));
    ppc_job_decref(slow);

    ppc_engine_stop(c);
    ppc_engine_free(c);
    /* the client is gone but its port still accepts (the listening socket
     * is the caller's): reachable; once closed, not */
    close(ls);
    int64_t t = ctest_now_ms();
    do {
        usleep(20000);
        ppc_engine_server_info(n, &p, &nc, &idle);
    } while ((nc != 0 || idle < 200) && ctest_now_ms() - t < WAIT_MS);
    CHECK_EQ_INT(nc, 0);
    CHECK(idle >= 200);
    ppc_engine_stop(n);
    ppc_engine_free(n);
    ppc_blob_decref(fn);
}

TEST(connect_back_refuses_wrong_secret_and_strangers)
{
    int port, ls = listener(&port);
    REQUIRE(ls >= 0);
    ppc_engine *c = client(ls, "right-secret");
    REQUIRE(c != NULL);
    /* a stranger: garbage, then a peer that says nothing */
    int s1 = socket(AF_INET, SOCK_STREAM, 0), s2 = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    REQUIRE(connect(s1, (struct sockaddr *)&a, sizeof a) == 0);
    REQUIRE(connect(s2, (struct sockaddr *)&a, sizeof a) == 0);
    static const char junk[64] = "GET / HTTP/1.0\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff";
    CHECK(write(s1, junk, sizeof junk) == (ssize_t)sizeof junk);
    ppc_engine *bad = node(port, "wrong-secret", 1);
    REQUIRE(bad != NULL);
    /* both sides stretch the secret (scrypt) before TLS can fail */
    int64_t t0 = ctest_now_ms();
    int refused = 0;
    while (!(refused = log_has(c, "TLS handshake refused")) && ctest_now_ms() - t0 < WAIT_MS)
        usleep(20000);
    CHECK_EQ_INT(active_nodes(c), 0);
    CHECK(refused);
    ppc_engine *good = node(port, "right-secret", 1);
    REQUIRE(good != NULL);
    CHECK(wait_active(c, 1));
    ppc_blob *fn = ppc_blob_new(8, "f", 1);
    ppc_job *j = ppc_job_new(fn, "echo:ok", 7);
    REQUIRE(j != NULL);
    CHECK_EQ_INT(ppc_engine_submit(c, j, 0, 0), 0);
    CHECK_EQ_INT(ppc_engine_wait_job(c, j, WAIT_MS), 1);
    CHECK(result_is(j, "ok"));
    ppc_job_decref(j);
    ppc_blob_decref(fn);
    close(s1);
    close(s2);
    ppc_engine_stop(bad);
    ppc_engine_free(bad);
    ppc_engine_stop(good);
    ppc_engine_free(good);
    ppc_engine_stop(c);
    ppc_engine_free(c);
    close(ls);
}

TEST(connect_back_bad_options)
{
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.listen_port = -1;
    o.connect_host = "127.0.0.1";
    o.connect_port = 1;
    char err[128] = "";
    CHECK(ppc_engine_new(&o, err, sizeof err) == NULL); /* no secret */
    CHECK(strstr(err, "secret") != NULL);
    o.secret = (const uint8_t *)"x";
    o.secret_len = 1;
    o.connect_port = 70000;
    err[0] = 0;
    CHECK(ppc_engine_new(&o, err, sizeof err) == NULL);
    CHECK(err[0] != 0);
    o.connect_host = NULL;
    o.has_rendezvous = 1;
    o.rendezvous_fd = 1000000; /* not a descriptor */
    err[0] = 0;
    CHECK(ppc_engine_new(&o, err, sizeof err) == NULL);
    CHECK(strstr(err, "rendezvous") != NULL);
}

int main(int argc, char **argv)
{
    return ctest_main(argc, argv);
}

/* test_status.c - the engine's status endpoint (status.c) over real HTTP:
 * /status and /metrics after jobs ran on echo workers, a job's exception
 * read from its result pickle, random result bodies that claim to be
 * exceptions (the reader must stay inside them: this also runs under ASan),
 * and the bearer-token rule off 127.0.0.1. Loopback only. */
#define _GNU_SOURCE
#include "ctest.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "engine.h"
#include "job.h"

#define WAIT_MS 20000

static const char *worker_path(void)
{
    const char *p = getenv("PPC_ECHO_WORKER");
    return p && *p ? p : "build/ctest/echo_worker";
}

static ppc_engine *start_status(const char *host, const char *secret, char *err, size_t errlen)
{
    static const char page[] = "<html>page</html>";
    ppc_status_asset a = {"/index.html", "text/html", (const uint8_t *)page, sizeof page - 1};
    char *argv[2] = {(char *)worker_path(), NULL};
    ppc_engine_opts o;
    memset(&o, 0, sizeof o);
    o.nworkers = 1;
    o.worker_argv = argv;
    o.listen_port = -1;
    o.status_on = 1;
    o.status_host = host;
    o.status_assets = &a;
    o.nstatus_assets = 1;
    if (secret) {
        o.secret = (const uint8_t *)secret;
        o.secret_len = strlen(secret);
    }
    return ppc_engine_new(&o, err, errlen);
}

/* Send a request, read the reply until the server closes: malloc'd, NUL
 * terminated (*n bytes), or NULL. */
static char *http(const char *host, int port, const char *req, size_t *n)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return NULL;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    *n = len;
    return buf;
}

static char *get(const char *host, int port, const char *path, const char *auth, size_t *n)
{
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n%s%s%sConnection: close\r\n\r\n",
             path, auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "");
    return http(host, port, req, n);
}

static int code(const char *reply)
{
    return reply && strncmp(reply, "HTTP/1.1 ", 9) == 0 ? atoi(reply + 9) : -1;
}

/* An echo job whose result body is kind, outlen 0, then data[n]. */
static ppc_job *body_job(ppc_blob *fn, uint8_t kind, const void *data, size_t n)
{
    uint8_t *a = malloc(5 + 5 + n);
    memcpy(a, "echo:", 5);
    a[5] = kind;
    memset(a + 6, 0, 4);
    memcpy(a + 10, data, n);
    ppc_job *j = ppc_job_new(fn, a, 10 + n);
    free(a);
    if (!j)
        abort();
    return j;
}

/* (None, tb, type, msg) at protocol 5, FRAME dropped, as workers send it */
static size_t exc_pickle(uint8_t *p, const char *tb, const char *ty, const char *msg)
{
    size_t n = 0;
    p[n++] = 0x80;
    p[n++] = 5;
    p[n++] = '(';
    p[n++] = 'N';
    const char *s[3] = {tb, ty, msg};
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(s[i]);
        if (i == 0) { /* BINUNICODE, u32 length */
            p[n++] = 'X';
            for (int k = 0; k < 4; k++)
                p[n++] = (uint8_t)(l >> (8 * k));
        } else {
            p[n++] = 0x8c;
            p[n++] = (uint8_t)l;
        }
        memcpy(p + n, s[i], l);
        n += l;
        p[n++] = 0x94;
    }
    p[n++] = 't';
    p[n++] = 0x94;
    p[n++] = '.';
    return n;
}

TEST(status_json_metrics_and_errors)
{
    char err[256] = "";
    ppc_engine *e = start_status(NULL, NULL, err, sizeof err);
    REQUIRE(e != NULL);
    int port = ppc_engine_status_port(e);
    CHECK(port > 0);
    ppc_blob *fn = ppc_blob_new(1, "f", 1);
    ppc_job *js[51];
    for (int i = 0; i < 50; i++) {
        js[i] = body_job(fn, 0, "ok", 2);
        CHECK_EQ_INT(ppc_engine_submit(e, js[i], 0, 0), 0);
    }
    uint8_t pk[512];
    size_t pn = exc_pickle(pk, "Traceback (most recent call last):\n  File \"x.py\", line 3\n"
                               "ValueError: \"quoted\"\tand\x01" "control",
                           "ValueError", "bad things");
    js[50] = body_job(fn, 1, pk, pn);
    CHECK_EQ_INT(ppc_engine_submit(e, js[50], 0, 0), 0);
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);

    size_t n;
    char *r = get("127.0.0.1", port, "/status", NULL, &n);
    REQUIRE(r != NULL);
    CHECK_EQ_INT(code(r), 200);
    CHECK(strstr(r, "\"jobs_done\":51,") != NULL);
    CHECK(strstr(r, "\"errors_total\":1,") != NULL);
    CHECK(strstr(r, "\"type\":\"ValueError\",\"message\":\"bad things\"") != NULL);
    /* the traceback text, escaped for JSON */
    CHECK(strstr(r, "\"traceback\":\"Traceback (most recent call last):\\n  File \\\"x.py\\\", "
                    "line 3\\nValueError: \\\"quoted\\\"\\u0009and\\u0001control\"") != NULL);
    CHECK(strstr(r, "\"counts\":[") != NULL && strstr(r, "\"count\":51,") != NULL);
    free(r);
    r = get("127.0.0.1", port, "/metrics", NULL, &n);
    REQUIRE(r != NULL);
    CHECK_EQ_INT(code(r), 200);
    CHECK(strstr(r, "\nppc_jobs_total{node=\"local\"} 51\n") != NULL);
    CHECK(strstr(r, "\nppc_job_errors_total 1\n") != NULL);
    CHECK(strstr(r, "\nppc_job_duration_seconds_bucket{le=\"+Inf\"} 51\n") != NULL);
    free(r);
    r = get("127.0.0.1", port, "/", NULL, &n);
    CHECK_EQ_INT(code(r), 200);
    CHECK(r && strstr(r, "\r\n\r\n<html>page</html>") != NULL);
    free(r);
    r = get("127.0.0.1", port, "/nothing", NULL, &n);
    CHECK_EQ_INT(code(r), 404);
    free(r);
    r = http("127.0.0.1", port, "POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                "Connection: close\r\n\r\nab", &n);
    CHECK_EQ_INT(code(r), 405);
    free(r);
    ppc_engine_stop(e);
    /* stopped: nothing listens any more */
    r = get("127.0.0.1", port, "/health", NULL, &n);
    CHECK(r == NULL || n == 0);
    free(r);
    for (int i = 0; i < 51; i++)
        ppc_job_decref(js[i]);
    ppc_blob_decref(fn);
    ppc_engine_free(e);
}

TEST(status_random_exception_bodies_stay_in_bounds)
{
    char err[256] = "";
    ppc_engine *e = start_status(NULL, NULL, err, sizeof err);
    REQUIRE(e != NULL);
    int port = ppc_engine_status_port(e);
    ppc_blob *fn = ppc_blob_new(1, "f", 1);
    enum { N = 1500 };
    ppc_job **js = calloc(N, sizeof *js);
    uint32_t seed = 12345;
    uint8_t pk[600];
    for (int i = 0; i < N; i++) {
        /* a true layout, then bytes flipped or the end cut, or noise */
        size_t n = exc_pickle(pk, "tb text", "T", "m");
        seed = seed * 1103515245u + 12345u;
        if (i % 3 == 0) {
            n = seed % sizeof pk;
            for (size_t k = 0; k < n; k++) {
                seed = seed * 1103515245u + 12345u;
                pk[k] = (uint8_t)(seed >> 16);
            }
        } else if (i % 3 == 1) {
            n = seed % (n + 1);
        } else {
            pk[seed % n] = (uint8_t)(seed >> 24);
        }
        js[i] = body_job(fn, 1, pk, n);
        CHECK_EQ_INT(ppc_engine_submit(e, js[i], 0, 0), 0);
    }
    CHECK_EQ_INT(ppc_engine_wait_group(e, PPC_GROUP_ALL, WAIT_MS), 1);
    size_t n;
    char *r = get("127.0.0.1", port, "/status", NULL, &n);
    REQUIRE(r != NULL);
    CHECK_EQ_INT(code(r), 200);
    CHECK(strstr(r, "\"errors_total\":1500,") != NULL);
    /* the body is JSON text: no raw control character but the final newline */
    char *body = strstr(r, "\r\n\r\n");
    REQUIRE(body != NULL);
    body += 4;
    int bad = 0;
    for (char *p = body; *p && p < r + n - 1; p++)
        if ((unsigned char)*p < 0x20)
            bad++;
    CHECK_EQ_INT(bad, 0);
    free(r);
    for (int i = 0; i < N; i++)
        ppc_job_decref(js[i]);
    free(js);
    ppc_blob_decref(fn);
    ppc_engine_free(e);
}

TEST(status_off_loopback_requires_the_bearer_secret)
{
    char err[256] = "";
    ppc_engine *e = start_status("127.0.0.2", NULL, err, sizeof err);
    CHECK(e == NULL);
    CHECK(strstr(err, "needs the cluster secret") != NULL);
    e = start_status("127.0.0.2", "sekret", err, sizeof err);
    REQUIRE(e != NULL);
    int port = ppc_engine_status_port(e);
    size_t n;
    const char *wrong[] = {NULL, "Bearer sekre", "Bearer sekrets", "Bearer SEKRET", "Basic sekret",
                           "Bearer "};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        char *r = get("127.0.0.2", port, "/status", wrong[i], &n);
        CHECK_EQ_INT(code(r), 401);
        CHECK(r && strstr(r, "jobs_done") == NULL);
        free(r);
    }
    char *r = get("127.0.0.2", port, "/status", "Bearer sekret", &n);
    CHECK_EQ_INT(code(r), 200);
    free(r);
    r = get("127.0.0.2", port, "/", NULL, &n); /* the page itself holds no data */
    CHECK_EQ_INT(code(r), 200);
    free(r);
    ppc_engine_free(e);
}

int main(int argc, char **argv)
{
    return ctest_main(argc, argv);
}

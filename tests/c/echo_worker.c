/* echo_worker.c - a tiny worker speaking the engine's worker protocol, for
 * the C tests of the engine (test_engine.c).
 *
 * Reads frames on fd 3, writes frames on fd 4 (see pool.c):
 *   INIT           -> answered with an empty INIT frame
 *   FUNC id, blob  -> remembered
 *   JOB id, u64 function id + args
 *                  -> exit(70) when the function id was never sent, else the
 *                     args are a command and the answer is a RESULT frame
 *                     (id = job id, payload = u64 exec ns + result):
 *     echo:<bytes>  result = the bytes after "echo:"
 *     exit:<n>      _exit(n) without answering
 *     kill          SIGKILL itself
 *     sleep:<ms>    sleep, then answer "slept"
 *     pid           answer getpid() as decimal text
 *     garbage       write a malformed frame (unknown type 99)
 *     big:<n>       answer n bytes, byte i = (i * 131 + 7) & 0xff
 *     fn            answer the blob of the job's function
 *     init          answer the INIT payload received
 *     hup:<ms>      close fd 4, read up to 4 MB from fd 3, sleep, _exit(0)
 *     gd:<ms>       like hup, but write a malformed frame instead of closing
 *     late:<ms>     close fds 3 and 4, sleep, _exit(9)
 *     (anything else: exit(71))
 *   EOF on fd 3    -> exit 0
 *
 * "--fail-start" as argv[1] (or PPC_ECHO_FAIL_START=1 in the environment)
 * makes it exit 2 before answering INIT. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "frame.h"

#define RFD 3
#define WFD 4

typedef struct fn_entry {
    uint64_t id;
    uint8_t *data;
    size_t len;
} fn_entry;

static fn_entry *fns;
static size_t nfns, capfns;
static uint8_t *init_payload;
static size_t init_len;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void write_all(const void *p, size_t n)
{
    const uint8_t *c = p;
    while (n > 0) {
        ssize_t w = write(WFD, c, n);
        if (w > 0) {
            c += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else {
            _exit(73);
        }
    }
}

static void send_frame(uint8_t type, uint64_t id, const void *p1, size_t n1, const void *p2,
                       size_t n2)
{
    ppc_buf b = {0};
    if (ppc_frame_put(&b, type, 0, 0, 0, id, p1, n1, p2, n2) < 0)
        _exit(74);
    write_all(ppc_buf_head(&b), ppc_buf_unread(&b));
    ppc_buf_free(&b);
}

static void send_result(uint64_t job_id, uint64_t t0, const void *p, size_t n)
{
    uint64_t dt = now_ns() - t0;
    if (dt == 0)
        dt = 1;
    uint8_t pre[8];
    ppc_put_u64(pre, dt);
    send_frame(PPC_F_RESULT, job_id, pre, 8, p, n);
}

static fn_entry *find_fn(uint64_t id)
{
    for (size_t i = 0; i < nfns; i++)
        if (fns[i].id == id)
            return &fns[i];
    return NULL;
}

/* A decimal number from a byte range (not NUL-terminated). */
static long parse_num(const uint8_t *p, size_t n)
{
    char tmp[32];
    if (n >= sizeof tmp)
        n = sizeof tmp - 1;
    memcpy(tmp, p, n);
    tmp[n] = 0;
    return strtol(tmp, NULL, 10);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int starts(const uint8_t *a, size_t n, const char *pfx)
{
    size_t m = strlen(pfx);
    return n >= m && memcmp(a, pfx, m) == 0;
}

static void run_job(uint64_t job_id, const uint8_t *payload, size_t len)
{
    uint64_t t0 = now_ns();
    if (len < 8)
        _exit(75);
    uint64_t fid = ppc_get_u64(payload);
    fn_entry *fn = find_fn(fid);
    if (!fn)
        exit(70);
    const uint8_t *a = payload + 8;
    size_t n = len - 8;
    if (starts(a, n, "echo:")) {
        send_result(job_id, t0, a + 5, n - 5);
    } else if (starts(a, n, "exit:")) {
        _exit((int)parse_num(a + 5, n - 5));
    } else if (n == 4 && starts(a, n, "kill")) {
        raise(SIGKILL);
        _exit(76);
    } else if (starts(a, n, "sleep:")) {
        sleep_ms(parse_num(a + 6, n - 6));
        send_result(job_id, t0, "slept", 5);
    } else if (n == 3 && starts(a, n, "pid")) {
        char tmp[32];
        int k = snprintf(tmp, sizeof tmp, "%d", (int)getpid());
        send_result(job_id, t0, tmp, (size_t)k);
    } else if (n == 7 && starts(a, n, "garbage")) {
        uint8_t h[PPC_FRAME_HDR];
        memset(h, 0, sizeof h);
        ppc_put_u64(h, 0);
        ppc_put_u64(h + 8, job_id);
        h[16] = 99; /* no such frame type */
        write_all(h, sizeof h);
    } else if (starts(a, n, "big:")) {
        size_t sz = (size_t)parse_num(a + 4, n - 4);
        uint8_t *p = malloc(sz ? sz : 1);
        if (!p)
            _exit(77);
        for (size_t i = 0; i < sz; i++)
            p[i] = (uint8_t)(i * 131 + 7);
        send_result(job_id, t0, p, sz);
        free(p);
    } else if (n == 2 && starts(a, n, "fn")) {
        send_result(job_id, t0, fn->data, fn->len);
    } else if (n == 4 && starts(a, n, "init")) {
        send_result(job_id, t0, init_payload, init_len);
    } else if (starts(a, n, "late:")) {
        close(3);
        close(WFD);
        sleep_ms(parse_num(a + 5, n - 5));
        _exit(9);
    } else if (starts(a, n, "hup:") || starts(a, n, "gd:")) {
        long ms = parse_num(a + 3 + (a[0] == 'h'), n - 3 - (a[0] == 'h'));
        if (a[0] == 'h') {
            close(WFD);
        } else {
            uint8_t h[PPC_FRAME_HDR];
            memset(h, 0, sizeof h);
            h[16] = 99; /* no such frame type */
            write_all(h, sizeof h);
        }
        static uint8_t sink[1 << 16];
        size_t total = 0;
        while (total < (4u << 20)) {
            /* one page first: frees a pipe slot as soon as possible */
            ssize_t r = read(RFD, sink, total ? sizeof sink : 4096);
            if (r <= 0)
                break;
            total += (size_t)r;
        }
        sleep_ms(ms);
        _exit(0);
    } else {
        exit(71);
    }
}

static void on_frame(const ppc_frame *f)
{
    switch (f->type) {
    case PPC_F_INIT:
        free(init_payload);
        init_len = (size_t)f->len;
        init_payload = malloc(init_len ? init_len : 1);
        if (!init_payload)
            _exit(78);
        memcpy(init_payload, f->payload, init_len);
        send_frame(PPC_F_INIT, 0, NULL, 0, NULL, 0);
        break;
    case PPC_F_FUNC: {
        if (find_fn(f->id))
            break;
        if (nfns == capfns) {
            capfns = capfns ? capfns * 2 : 8;
            fns = realloc(fns, capfns * sizeof *fns);
            if (!fns)
                _exit(78);
        }
        fn_entry *e = &fns[nfns++];
        e->id = f->id;
        e->len = (size_t)f->len;
        e->data = malloc(e->len ? e->len : 1);
        if (!e->data)
            _exit(78);
        memcpy(e->data, f->payload, e->len);
        break;
    }
    case PPC_F_JOB:
        run_job(f->id, f->payload, (size_t)f->len);
        break;
    default:
        _exit(79);
    }
}

int main(int argc, char **argv)
{
    const char *fs = getenv("PPC_ECHO_FAIL_START");
    if ((argc > 1 && strcmp(argv[1], "--fail-start") == 0) || (fs && strcmp(fs, "1") == 0))
        return 2;
    ppc_buf in = {0};
    for (;;) {
        ppc_frame f;
        int rc = ppc_frame_parse(ppc_buf_head(&in), ppc_buf_unread(&in), (uint64_t)1 << 36, &f);
        if (rc == PPC_FRAME_OK) {
            on_frame(&f);
            ppc_buf_consume(&in, PPC_FRAME_HDR + (size_t)f.len);
            continue;
        }
        if (rc < 0)
            _exit(72);
        size_t want = 1 << 16;
        if (f.len > 0 && PPC_FRAME_HDR + (size_t)f.len - ppc_buf_unread(&in) > want)
            want = PPC_FRAME_HDR + (size_t)f.len - ppc_buf_unread(&in);
        if (ppc_buf_reserve(&in, want) < 0)
            _exit(78);
        ssize_t r = read(RFD, in.data + in.len, in.cap - in.len);
        if (r > 0) {
            in.len += (size_t)r;
        } else if (r == 0) {
            break;
        } else if (errno != EINTR) {
            _exit(72);
        }
    }
    ppc_buf_free(&in);
    for (size_t i = 0; i < nfns; i++)
        free(fns[i].data);
    free(fns);
    free(init_payload);
    return 0;
}

/* fuzz_tls.c - libFuzzer target for the TLS record path of src/core/conn.c
 * (ppc_conn_tls_step / ppc_conn_read / ppc_conn_flush over src/core/tls.c
 * sessions), with real sessions on a socketpair.
 *
 * The first input byte picks what the peer bytes are:
 *  - even: the rest is what a stranger sends to a ppserver before any
 *    handshake (after our cleartext preamble): the server side must fail
 *    or wait, never complete a handshake, and never deliver a byte;
 *  - odd: a real client completes the PSK handshake; then the input's next
 *    byte splits the rest into data the client sends through TLS (the
 *    server must receive exactly those bytes, and every frame parsed from
 *    them is bounded) and raw bytes written on the socket around TLS (an
 *    on-path injection): after them the server never receives one byte that
 *    was not sent through TLS, and the read path fails with a reason.
 * Leaks and memory errors are caught by the sanitizers. */
#define _GNU_SOURCE
#include <errno.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine_int.h"
#include "frame.h"
#include "fuzz_common.h"
#include "tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* engine services conn.c uses, without the engine */
int64_t ppc_now_ms(void) { return 0; }
int ppc_fd_own(int fd)
{
    (void)fd;
    return 0;
}
void ppc_fd_close(int fd) { close(fd); }

static SSL_CTX *sctx, *cctx;
static uint8_t key[PPC_TLS_KEY_LEN];
static ppc_engine *eng;

static void init(void)
{
    if (sctx)
        return;
    char err[256];
    uint8_t salt[PPC_TLS_SALT_LEN] = {1, 2, 3};
    FUZZ_ASSERT(ppc_tls_derive((const uint8_t *)FUZZ_SECRET, FUZZ_SECRET_LEN, salt, key) == 0);
    sctx = ppc_tls_ctx_new(1, NULL, NULL, NULL, err, sizeof err);
    cctx = ppc_tls_ctx_new(0, NULL, NULL, NULL, err, sizeof err);
    FUZZ_ASSERT(sctx && cctx);
    eng = calloc(1, sizeof *eng);
    FUZZ_ASSERT(eng);
    eng->epfd = epoll_create1(EPOLL_CLOEXEC);
    FUZZ_ASSERT(eng->epfd >= 0);
}

static void conn_open(ppc_conn *c, int fd, int server)
{
    memset(c, 0, sizeof *c);
    c->fd = fd;
    FUZZ_ASSERT(ppc_conn_register(eng, c) == 0);
    SSL *ssl = ppc_tls_new(server ? sctx : cctx, fd, key);
    FUZZ_ASSERT(ssl);
    ppc_conn_tls_start(c, ssl, server);
}

/* Read everything the server side can get now into s->in. -1: failed. */
static int drain(ppc_conn *s)
{
    for (int i = 0; i < 1000; i++) {
        int rc = ppc_conn_read(s, 0);
        if (rc <= 0)
            return rc;
    }
    return 0;
}

static void frames_of(ppc_conn *s)
{
    size_t off = 0;
    for (;;) {
        ppc_frame f;
        int rc = ppc_frame_parse(s->in.data + off, s->in.len - off, FUZZ_FRAME_LIMIT, &f);
        if (rc != PPC_FRAME_OK)
            break;
        FUZZ_ASSERT(f.len <= FUZZ_FRAME_LIMIT && PPC_FRAME_HDR + f.len <= s->in.len - off);
        off += PPC_FRAME_HDR + (size_t)f.len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    if (size < 2)
        return 0;
    int sv[2];
    FUZZ_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    ppc_conn s, c;
    conn_open(&s, sv[0], 1);
    const uint8_t *p = data + 2;
    size_t n = size - 2;
    if (!(data[0] & 1)) {
        /* a stranger's bytes, then its end of the stream */
        FUZZ_ASSERT(write(sv[1], p, n) == (ssize_t)n);
        shutdown(sv[1], SHUT_WR);
        int rc = 0;
        for (int i = 0; i < 50 && rc == 0; i++)
            rc = ppc_conn_tls_step(eng, &s);
        FUZZ_ASSERT(rc != 1); /* nobody completes a handshake without the key */
        FUZZ_ASSERT(s.in.len == 0);
        if (rc < 0)
            FUZZ_ASSERT(s.why[0] != 0);
        ppc_conn_close(eng, &s);
        close(sv[1]);
        return 0;
    }
    conn_open(&c, sv[1], 0);
    int rs = 0, rcl = 0;
    for (int i = 0; i < 50 && (rs != 1 || rcl != 1); i++) {
        if (rcl != 1)
            rcl = ppc_conn_tls_step(eng, &c);
        if (rs != 1)
            rs = ppc_conn_tls_step(eng, &s);
        FUZZ_ASSERT(rs >= 0 && rcl >= 0);
    }
    FUZZ_ASSERT(rs == 1 && rcl == 1);
    size_t split = n ? (size_t)data[1] * n / 255 : 0;
    /* through TLS: exactly these bytes arrive */
    if (split) {
        FUZZ_ASSERT(ppc_buf_append(&c.out, p, split) == 0);
        FUZZ_ASSERT(ppc_conn_flush(eng, &c) == 0);
        FUZZ_ASSERT(ppc_buf_unread(&c.out) == 0);
        FUZZ_ASSERT(drain(&s) == 0);
        FUZZ_ASSERT(s.in.len == split && memcmp(s.in.data, p, split) == 0);
        frames_of(&s);
    }
    /* around TLS: never delivered */
    size_t raw = n - split;
    if (raw) {
        FUZZ_ASSERT(write(sv[1], p + split, raw) == (ssize_t)raw);
        shutdown(sv[1], SHUT_WR);
        int rc = drain(&s);
        FUZZ_ASSERT(s.in.len == split);
        FUZZ_ASSERT(rc == -1 || rc == 0);
    }
    ppc_conn_close(eng, &c);
    ppc_conn_close(eng, &s);
    return 0;
}

/* conn.c - framed non-blocking stream sockets shared by both network
 * sides: buffered writes with EPOLLOUT only while the socket is full,
 * reads sized to the frame being received, liveness timestamps. Once TLS
 * is up (tls.h) the same buffers hold cleartext frames and every byte on
 * the socket goes through the session; a record that fails its integrity
 * check fails the read, and the caller closes the connection. */
#define _GNU_SOURCE
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine_int.h"
#include "frame.h"
#include "tls.h"

#define READ_CHUNK 65536

static int set_events(ppc_engine *e, ppc_conn *c, uint32_t ev)
{
    if (c->armed == ev)
        return 0;
    struct epoll_event x = {.events = ev, .data.ptr = &c->src};
    if (epoll_ctl(e->epfd, EPOLL_CTL_MOD, c->fd, &x) < 0)
        return -1;
    c->armed = ev;
    return 0;
}

int ppc_conn_register(ppc_engine *e, ppc_conn *c)
{
    struct epoll_event x = {.events = EPOLLIN | EPOLLOUT, .data.ptr = &c->src};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, c->fd, &x) < 0)
        return -1;
    if (ppc_fd_own(c->fd) < 0) { /* closed in forked children (proc.h) */
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        return -1;
    }
    c->armed = EPOLLIN | EPOLLOUT;
    c->last_rx = c->last_tx = ppc_now_ms();
    return 0;
}

/* Say why an SSL call failed (rc its return) into c->why: -1, or the
 * events to wait for (EPOLLIN or EPOLLOUT) when it should be retried. */
static int tls_fail(ppc_conn *c, int rc)
{
    int err = SSL_get_error(c->ssl, rc);
    if (err == SSL_ERROR_WANT_READ)
        return EPOLLIN;
    if (err == SSL_ERROR_WANT_WRITE)
        return EPOLLOUT;
    if (err == SSL_ERROR_ZERO_RETURN) {
        c->why[0] = 0; /* an orderly close */
        return -1;
    }
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        if (errno && errno != EAGAIN)
            snprintf(c->why, sizeof c->why, "%s", strerror(errno));
        else
            c->why[0] = 0; /* EOF */
        return -1;
    }
    ppc_tls_why(c->why, sizeof c->why);
    if (c->tls == 2) /* a record failed its check, or the peer says ours did */
        snprintf(c->why + strlen(c->why), sizeof c->why - strlen(c->why),
                 " (data altered or injected on the wire?)");
    return -1;
}

static int tls_flush(ppc_engine *e, ppc_conn *c)
{
    while (ppc_buf_unread(&c->out) > 0) {
        size_t n = 0;
        ERR_clear_error();
        int rc = SSL_write_ex(c->ssl, ppc_buf_head(&c->out), ppc_buf_unread(&c->out), &n);
        if (rc == 1) {
            ppc_buf_consume(&c->out, n);
            c->last_tx = ppc_now_ms();
            continue;
        }
        int w = tls_fail(c, rc);
        if (w < 0)
            return -1;
        return set_events(e, c, EPOLLIN | (w == EPOLLOUT ? EPOLLOUT : 0));
    }
    ppc_buf_shrink(&c->out, 1 << 20);
    return set_events(e, c, EPOLLIN);
}

void ppc_conn_tls_start(ppc_conn *c, SSL *ssl, int server)
{
    c->ssl = ssl;
    c->tls = 1;
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
}

int ppc_conn_tls_step(ppc_engine *e, ppc_conn *c)
{
    if (c->tls != 1)
        return c->tls == 2 ? 1 : -1;
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        c->tls = 2;
        c->last_rx = ppc_now_ms();
        return set_events(e, c, EPOLLIN | EPOLLOUT) < 0 ? -1 : 1;
    }
    int w = tls_fail(c, rc);
    if (w < 0) {
        if (!c->why[0])
            snprintf(c->why, sizeof c->why, "connection closed during the TLS handshake");
        return -1;
    }
    return set_events(e, c, w == EPOLLOUT ? EPOLLIN | EPOLLOUT : EPOLLIN) < 0 ? -1 : 0;
}

const char *ppc_conn_why(ppc_conn *c, const char *eof)
{
    return c->why[0] ? c->why : eof;
}

int ppc_conn_flush(ppc_engine *e, ppc_conn *c)
{
    if (c->fd < 0)
        return -1;
    if (c->tls == 1)
        return 0; /* frames wait for the end of the handshake */
    if (c->tls == 2)
        return tls_flush(e, c);
    while (ppc_buf_unread(&c->out) > 0) {
        ssize_t n = send(c->fd, ppc_buf_head(&c->out), ppc_buf_unread(&c->out), MSG_NOSIGNAL);
        if (n > 0) {
            ppc_buf_consume(&c->out, (size_t)n);
            c->last_tx = ppc_now_ms();
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return set_events(e, c, EPOLLIN | EPOLLOUT);
        snprintf(c->why, sizeof c->why, "%s", strerror(errno));
        return -1;
    }
    ppc_buf_shrink(&c->out, 1 << 20);
    return set_events(e, c, EPOLLIN);
}

int ppc_conn_read(ppc_conn *c, size_t want)
{
    if (want < READ_CHUNK)
        want = READ_CHUNK;
    if (ppc_buf_reserve(&c->in, want) < 0) {
        errno = ENOMEM;
        return -1;
    }
    if (c->tls == 1)
        return 0;
    if (c->tls == 2) {
        size_t n = 0;
        ERR_clear_error();
        int rc = SSL_read_ex(c->ssl, c->in.data + c->in.len, c->in.cap - c->in.len, &n);
        if (rc == 1) {
            c->in.len += n;
            c->last_rx = ppc_now_ms();
            return 1;
        }
        int w = tls_fail(c, rc);
        if (w >= 0)
            return 0; /* (a write it wants is retried by the next flush) */
        errno = c->why[0] ? EPROTO : 0;
        return -1;
    }
    for (;;) {
        ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n > 0) {
            c->in.len += (size_t)n;
            c->last_rx = ppc_now_ms();
            return 1;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n == 0)
            errno = 0;
        if (errno)
            snprintf(c->why, sizeof c->why, "%s", strerror(errno));
        else
            c->why[0] = 0;
        return -1;
    }
}

void ppc_conn_close(ppc_engine *e, ppc_conn *c)
{
    if (c->ssl) {
        ppc_tls_free(c->ssl);
        c->ssl = NULL;
    }
    c->tls = 0;
    c->why[0] = 0;
    if (c->fd >= 0) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        ppc_fd_close(c->fd);
        c->fd = -1;
    }
    c->armed = 0;
    ppc_buf_free(&c->in);
    ppc_buf_free(&c->out);
}

int ppc_conn_put(ppc_conn *c, uint8_t type, uint8_t flags, uint64_t id, const void *p1, size_t n1,
                 const void *p2, size_t n2)
{
    return ppc_frame_put(&c->out, type, flags, 0, 0, id, p1, n1, p2, n2);
}

int ppc_conn_put_aux(ppc_conn *c, uint8_t type, uint8_t flags, uint16_t aux, uint64_t id,
                     const void *p1, size_t n1, const void *p2, size_t n2)
{
    return ppc_frame_put(&c->out, type, flags, aux, 0, id, p1, n1, p2, n2);
}

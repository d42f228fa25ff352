/* conn.c - framed non-blocking stream sockets shared by both network
 * sides: buffered writes with EPOLLOUT only while the socket is full,
 * reads sized to the frame being received, liveness timestamps. */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine_int.h"
#include "frame.h"

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

int ppc_conn_flush(ppc_engine *e, ppc_conn *c)
{
    if (c->fd < 0)
        return -1;
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
        return -1;
    }
}

void ppc_conn_close(ppc_engine *e, ppc_conn *c)
{
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

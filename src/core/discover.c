/* discover.c - autodiscovery of ppservers over UDP broadcast, as pp's
 * "ppserver -a" and ppservers=("*",) did, but authenticated: an
 * announcement carries an HMAC of the shared secret (auth.h), so a stranger
 * cannot make clients connect to it; the TCP handshake then authenticates
 * both sides again.
 *
 * A ppserver (announce) sends its announcement to the broadcast address
 * every few seconds and answers queries at once. A client (discover) sends
 * one query when it starts and connects to every node whose announcement
 * verifies. Engine thread only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "engine_int.h"

#define ANNOUNCE_EVERY_MS 3000
#define DISCOVER_WINDOW_MS 5000 /* as the engine's grace for announcements */
#define MAX_AGE_S 120
static const char QUERY[8] = {'P', 'P', 'C', 'Q', 1, 0, 0, 0};

static uint64_t unix_now(void) { return (uint64_t)time(NULL); }

static void send_to(ppc_engine *e, const void *p, size_t n, const struct sockaddr_in *to)
{
    if (sendto(e->udp_fd, p, n, MSG_NOSIGNAL, (const struct sockaddr *)to, sizeof *to) < 0)
        ppc_engine_log(e, PPC_LOG_DEBUG, "discovery: sendto %s: %s", inet_ntoa(to->sin_addr),
                       strerror(errno));
}

static void broadcast_addr(ppc_engine *e, struct sockaddr_in *a)
{
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)e->opts.discover_port);
    const char *b = e->opts.broadcast && *e->opts.broadcast ? e->opts.broadcast : "255.255.255.255";
    if (inet_pton(AF_INET, b, &a->sin_addr) != 1)
        a->sin_addr.s_addr = htonl(INADDR_BROADCAST);
}

static void announce(ppc_engine *e, const struct sockaddr_in *to)
{
    uint8_t msg[PPC_ANNOUNCE_LEN];
    if (ppc_announce_encode(e->opts.secret, e->opts.secret_len, (uint16_t)e->listen_port_actual,
                            unix_now(), msg) == 0)
        send_to(e, msg, sizeof msg, to);
}

int ppc_discover_start(ppc_engine *e, char *err, size_t errlen)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "discovery socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)e->opts.discover_port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        snprintf(err, errlen, "discovery: cannot bind UDP port %d: %s", e->opts.discover_port,
                 strerror(errno));
        close(fd);
        return -1;
    }
    e->udp_fd = fd;
    ppc_fd_own(fd); /* closed in forked children; best effort */
    e->udp_src.kind = PPC_SRC_UDP;
    e->udp_src.obj = e;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &e->udp_src};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
        return -1;
    }
    struct sockaddr_in b;
    broadcast_addr(e, &b);
    if (e->opts.discover)
        send_to(e, QUERY, sizeof QUERY, &b);
    e->next_announce = 0;
    return 0;
}

void ppc_discover_event(ppc_engine *e)
{
    for (;;) {
        uint8_t buf[512];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(e->udp_fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n < 0)
            return;
        if (n == sizeof QUERY && !memcmp(buf, QUERY, sizeof QUERY)) {
            if (e->opts.announce)
                announce(e, &from);
            continue;
        }
        if (!e->opts.discover)
            continue;
        uint16_t port;
        if (ppc_announce_verify(e->opts.secret, e->opts.secret_len, buf, (size_t)n, unix_now(),
                                MAX_AGE_S, &port) < 0) {
            char h[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &from.sin_addr, h, sizeof h);
            ppc_engine_log(e, PPC_LOG_DEBUG, "discovery: ignored an unauthenticated datagram "
                                             "from %s", h);
            continue;
        }
        char host[INET_ADDRSTRLEN], ports[8];
        inet_ntop(AF_INET, &from.sin_addr, host, sizeof host);
        snprintf(ports, sizeof ports, "%u", port);
        int known = 0;
        for (int i = 0; i < e->nrn; i++)
            known |= !strcmp(e->rn[i]->host, host) && !strcmp(e->rn[i]->port, ports);
        if (!known) {
            ppc_engine_log(e, PPC_LOG_INFO, "discovered node %s:%s", host, ports);
            ppc_remote_add(e, host, ports, 0);
        }
    }
}

int ppc_discover_tick(ppc_engine *e)
{
    if (e->udp_fd < 0)
        return -1;
    int64_t now = ppc_now_ms();
    /* A discovering client must wake when the window for announcements
     * closes: jobs queued with no node found then fail instead of waiting
     * for a wake-up that never comes (nothing else is armed when no node
     * was ever found). */
    int wake = -1;
    int64_t window_end = e->created_ms + DISCOVER_WINDOW_MS + 1;
    if (e->opts.discover && now < window_end)
        wake = (int)(window_end - now);
    if (!e->opts.announce)
        return wake;
    if (now >= e->next_announce) {
        struct sockaddr_in b;
        broadcast_addr(e, &b);
        announce(e, &b);
        e->next_announce = now + ANNOUNCE_EVERY_MS;
    }
    int t = (int)(e->next_announce - now);
    return wake >= 0 && wake < t ? wake : t;
}

void ppc_discover_stop(ppc_engine *e)
{
    if (e->udp_fd >= 0) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->udp_fd, NULL);
        ppc_fd_close(e->udp_fd);
        e->udp_fd = -1;
    }
}

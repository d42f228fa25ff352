/* discover.c - autodiscovery of ppservers over UDP (announce.h has the
 * wire format), as pp's "ppserver -a" and ppservers=("*",) did, but bound,
 * fresh and bounded:
 *
 * A node (announce) sends an announcement naming its own address and TCP
 * port to the broadcast address every few seconds, and answers queries:
 * only from sources on one of its subnets (the -i address's subnet when it
 * listens on one), rate-limited globally and per source, with an answer
 * exactly as long as the query. With -i its sockets are bound to that
 * address and to its subnet's broadcast address, never to INADDR_ANY.
 *
 * A client (discover) listens only during a window: at start and after
 * ppc_engine_rescan. It queries from a socket of its own (the answers come
 * back there), hears broadcasts on the discovery port, and accepts an
 * announcement when its MAC verifies, the address it names is the sender's,
 * it answers this window's query or is fresh (unasked), its nonce was not
 * seen while valid, and a filter (discfilter.h) admits sender and port. Out
 * of the window its sockets are closed. A discovered node that stays
 * unreachable and unheard for the expiry time is dropped (state FAILED,
 * "expired") until an announcement brings it back.
 *
 * Datagrams that fail are counted, never logged one by one: a summary goes
 * to the log at most once per SUMMARY_MS. Engine thread only, except
 * ppc_engine_rescan (any thread) and ppc_discover_start (before the
 * engine thread runs). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "announce.h"
#include "discfilter.h"
#include "engine_int.h"

#define ANNOUNCE_EVERY_MS 3000
#define WINDOW_MS 5000      /* default discovery window */
#define MAX_AGE_S 60        /* default validity of an unasked announcement */
#define EXPIRE_MS 30000     /* default: unreachable and unheard this long */
#define SUMMARY_MS 5000     /* at most one summary of ignored datagrams per */
#define SEEN_MAX 512        /* nonces remembered */
#define NODES_MAX 256       /* discovered nodes tracked */
#define SRC_MAX 64          /* query sources rate-limited one by one */
#define SRC_GAP_MS 500      /* at most one answer per source per */
#define RATE_PER_S 50       /* answers per second in all ... */
#define RATE_BURST 50       /* ... and at once */
#define IFS_MAX 32

enum { C_FORMAT, C_MAC, C_SENDER, C_STALE, C_NOTOURS, C_REPLAY, C_FILTER, C_QSUBNET, C_QRATE,
       C_N };
static const char *const CNAME[C_N] = {"malformed",       "bad MAC",
                                       "sender not the announced address",
                                       "stale",           "answering another query",
                                       "replayed",        "outside the ppservers patterns",
                                       "queries from outside our subnets",
                                       "queries over the rate limit"};

struct ppc_disc {
    uint8_t key[PPC_ANNOUNCE_KEY_LEN];
    ppc_disc_filter *filters;
    int nfilters;
    int window_ms, max_age_s, expire_ms;
    int fd2; /* node: bound to the -i subnet's broadcast; client: the query socket */
    ppc_evsrc src2;
    atomic_int rescan;
    /* client */
    int64_t window_end; /* 0: closed */
    uint8_t qnonce[PPC_ANNOUNCE_NONCE];
    struct seen { uint8_t nonce[PPC_ANNOUNCE_NONCE]; int64_t until; } seen[SEEN_MAX];
    int nseen;
    struct dnode { uint32_t addr; uint16_t port; int64_t heard; int expired; } nodes[NODES_MAX];
    int nnodes;
    int64_t next_expiry_check;
    int expiry_due;
    /* node */
    uint32_t bound; /* the -i address (network order), 0: any */
    struct { uint32_t addr, mask; } ifs[IFS_MAX]; /* network order */
    int nifs;
    double tokens;
    int64_t tokens_at;
    struct { uint32_t addr; int64_t last; } srcs[SRC_MAX];
    /* ignored since the last summary */
    uint64_t count[C_N];
    int64_t last_summary;
};

static uint64_t unix_now(void) { return (uint64_t)time(NULL); }

static void count(ppc_engine *e, int c) { e->disc->count[c]++; }

/* At most one log line per SUMMARY_MS for everything ignored. */
static void summary(ppc_engine *e, int64_t now, int force)
{
    struct ppc_disc *d = e->disc;
    uint64_t total = 0;
    for (int i = 0; i < C_N; i++)
        total += d->count[i];
    if (!total || (!force && now - d->last_summary < SUMMARY_MS))
        return;
    char msg[320]; /* every reason fits; the log line is cut at 255 */
    size_t off = 0;
    for (int i = 0; i < C_N && off < sizeof msg; i++) {
        if (!d->count[i])
            continue;
        int w = snprintf(msg + off, sizeof msg - off, "%s%llu %s", off ? ", " : "",
                         (unsigned long long)d->count[i], CNAME[i]);
        off += w > 0 ? (size_t)w : 0;
    }
    ppc_engine_log(e, PPC_LOG_INFO, "discovery: ignored %llu datagram(s): %s",
                   (unsigned long long)total, msg);
    memset(d->count, 0, sizeof d->count);
    d->last_summary = now;
}

static void log_errno(ppc_engine *e, const char *what)
{
    ppc_engine_log(e, PPC_LOG_DEBUG, "discovery: %s: %s", what, strerror(errno));
}

/* A UDP socket bound to addr:port (network order address; port 0: any). */
static int udp_socket(ppc_engine *e, uint32_t addr, int port, char *err, size_t errlen)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "discovery socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = addr};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        char h[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &a.sin_addr, h, sizeof h);
        snprintf(err, errlen, "discovery: cannot bind UDP %s:%d: %s", h, port, strerror(errno));
        close(fd);
        return -1;
    }
    if (ppc_fd_own(fd) < 0) {
        snprintf(err, errlen, "discovery: cannot register a socket");
        close(fd);
        return -1;
    }
    (void)e;
    return fd;
}

static int watch(ppc_engine *e, int fd, ppc_evsrc *src)
{
    src->kind = PPC_SRC_UDP;
    src->obj = e;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = src};
    return epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void unwatch(ppc_engine *e, int *fd)
{
    if (*fd >= 0) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, *fd, NULL);
        ppc_fd_close(*fd);
        *fd = -1;
    }
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

/* Send p from fd to `to`, with source address src (network order; 0: the
 * kernel's choice). */
static void send_from(ppc_engine *e, int fd, const void *p, size_t n, uint32_t src,
                      const struct sockaddr_in *to)
{
    struct iovec iov = {.iov_base = (void *)p, .iov_len = n};
    union {
        char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_name = (void *)to, .msg_namelen = sizeof *to, .msg_iov = &iov,
                        .msg_iovlen = 1};
    if (src) {
        memset(&u, 0, sizeof u);
        mh.msg_control = u.buf;
        mh.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
        struct in_pktinfo pi = {0};
        pi.ipi_spec_dst.s_addr = src;
        memcpy(CMSG_DATA(c), &pi, sizeof pi);
    }
    if (sendmsg(fd, &mh, MSG_NOSIGNAL) < 0)
        log_errno(e, "sendmsg");
}

/* The source address the kernel picks to reach `to` (network order), 0 if
 * none. */
static uint32_t source_for(const struct sockaddr_in *to)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    struct sockaddr_in me;
    socklen_t ml = sizeof me;
    uint32_t r = 0;
    if (connect(fd, (const struct sockaddr *)to, sizeof *to) == 0 &&
        getsockname(fd, (struct sockaddr *)&me, &ml) == 0)
        r = me.sin_addr.s_addr;
    close(fd);
    return r;
}

/* Announce ourselves as addr (network order) to `to`, echoing a query's
 * nonce (NULL: unasked). */
static void announce_to(ppc_engine *e, int fd, uint32_t addr, const uint8_t *echo,
                        const struct sockaddr_in *to)
{
    if (!addr)
        return;
    ppc_announce a;
    memset(&a, 0, sizeof a);
    memcpy(a.addr, &addr, 4);
    a.port = (uint16_t)e->listen_port_actual;
    a.time = unix_now();
    if (echo)
        memcpy(a.echo, echo, PPC_ANNOUNCE_NONCE);
    uint8_t msg[PPC_ANNOUNCE_LEN];
    if (ppc_announce_random(a.nonce, sizeof a.nonce) < 0 ||
        ppc_announce_encode(e->disc->key, &a, msg) < 0)
        return;
    send_from(e, fd, msg, sizeof msg, addr, to);
}

/* Local IPv4 addresses and masks; the broadcast address of `addr`'s subnet
 * in *bcast when asked. */
static void load_ifs(struct ppc_disc *d, uint32_t addr, uint32_t *bcast)
{
    struct ifaddrs *ifa = NULL;
    d->nifs = 0;
    if (getifaddrs(&ifa) < 0)
        return;
    for (struct ifaddrs *i = ifa; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !i->ifa_netmask)
            continue;
        uint32_t a = ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr;
        uint32_t m = ((struct sockaddr_in *)i->ifa_netmask)->sin_addr.s_addr;
        if (addr && a == addr && bcast)
            *bcast = a | ~m;
        if (addr && a != addr)
            continue; /* with -i, only that address's subnet may query */
        if (d->nifs < IFS_MAX) {
            d->ifs[d->nifs].addr = a;
            d->ifs[d->nifs].mask = m;
            d->nifs++;
        }
    }
    freeifaddrs(ifa);
}

static int in_our_subnets(struct ppc_disc *d, uint32_t src)
{
    for (int i = 0; i < d->nifs; i++)
        if ((src & d->ifs[i].mask) == (d->ifs[i].addr & d->ifs[i].mask))
            return 1;
    return 0;
}

/* Token bucket in all, and one answer per SRC_GAP_MS per source. */
static int rate_ok(struct ppc_disc *d, uint32_t src, int64_t now)
{
    d->tokens += (double)(now - d->tokens_at) * RATE_PER_S / 1000.0;
    if (d->tokens > RATE_BURST)
        d->tokens = RATE_BURST;
    d->tokens_at = now;
    int slot = -1, oldest = 0;
    for (int i = 0; i < SRC_MAX; i++) {
        if (d->srcs[i].addr == src && d->srcs[i].last) {
            slot = i;
            break;
        }
        if (d->srcs[i].last < d->srcs[oldest].last)
            oldest = i;
    }
    if (slot >= 0 && now - d->srcs[slot].last < SRC_GAP_MS)
        return 0;
    if (d->tokens < 1)
        return 0;
    d->tokens -= 1;
    if (slot < 0)
        slot = oldest;
    d->srcs[slot].addr = src;
    d->srcs[slot].last = now;
    return 1;
}

static void on_query(ppc_engine *e, int fd, const uint8_t *buf, size_t n,
                     const struct sockaddr_in *from, uint32_t local)
{
    struct ppc_disc *d = e->disc;
    uint8_t nonce[PPC_ANNOUNCE_NONCE];
    if (ppc_query_decode(buf, n, nonce) < 0) {
        count(e, C_FORMAT);
        return;
    }
    if (!in_our_subnets(d, from->sin_addr.s_addr)) {
        count(e, C_QSUBNET);
        return;
    }
    if (!rate_ok(d, from->sin_addr.s_addr, ppc_now_ms())) {
        count(e, C_QRATE);
        return;
    }
    /* the answer leaves from the -i socket, or with the address the query
     * reached as its source: the address it names is the sender's */
    uint32_t addr = d->bound ? d->bound : local;
    announce_to(e, d->bound ? e->udp_fd : fd, addr, nonce, from);
}

static int seen_before(struct ppc_disc *d, const uint8_t *nonce, int64_t now, int64_t until)
{
    int free_slot = -1, soonest = 0;
    for (int i = 0; i < d->nseen; i++) {
        if (d->seen[i].until <= now) {
            if (free_slot < 0)
                free_slot = i;
            continue;
        }
        if (!memcmp(d->seen[i].nonce, nonce, PPC_ANNOUNCE_NONCE))
            return 1;
        if (d->seen[i].until < d->seen[soonest].until)
            soonest = i;
    }
    int slot = free_slot >= 0 ? free_slot : d->nseen < SEEN_MAX ? d->nseen++ : soonest;
    memcpy(d->seen[slot].nonce, nonce, PPC_ANNOUNCE_NONCE);
    d->seen[slot].until = until;
    return 0;
}

static ppc_rnode *find_rnode(ppc_engine *e, const char *host, const char *port)
{
    for (int i = 0; i < e->nrn; i++)
        if (!strcmp(e->rn[i]->host, host) && !strcmp(e->rn[i]->port, port))
            return e->rn[i];
    return NULL;
}

static void on_announcement(ppc_engine *e, const uint8_t *buf, size_t n,
                            const struct sockaddr_in *from)
{
    struct ppc_disc *d = e->disc;
    ppc_announce a;
    if (n != PPC_ANNOUNCE_LEN || memcmp(buf, "PPCA", 4) != 0) {
        count(e, C_FORMAT);
        return;
    }
    if (ppc_announce_decode(d->key, buf, n, &a) < 0) {
        count(e, C_MAC);
        return;
    }
    if (memcmp(a.addr, &from->sin_addr.s_addr, 4) != 0) {
        count(e, C_SENDER);
        return;
    }
    int64_t now = ppc_now_ms();
    if (ppc_announce_unasked(&a)) {
        if (!ppc_announce_fresh(a.time, unix_now(), (uint64_t)d->max_age_s)) {
            count(e, C_STALE);
            return;
        }
    } else if (memcmp(a.echo, d->qnonce, PPC_ANNOUNCE_NONCE) != 0) {
        count(e, C_NOTOURS);
        return;
    }
    if (seen_before(d, a.nonce, now, now + 2000LL * d->max_age_s + d->window_ms)) {
        count(e, C_REPLAY);
        return;
    }
    uint32_t sender = ntohl(from->sin_addr.s_addr);
    int ok = 0;
    for (int i = 0; i < d->nfilters && !ok; i++)
        ok = (sender & d->filters[i].mask) == d->filters[i].net &&
             (!d->filters[i].port || d->filters[i].port == a.port);
    if (!ok) {
        count(e, C_FILTER);
        return;
    }
    char host[INET_ADDRSTRLEN], ports[8];
    inet_ntop(AF_INET, &from->sin_addr, host, sizeof host);
    snprintf(ports, sizeof ports, "%u", a.port);
    struct dnode *dn = NULL;
    for (int i = 0; i < d->nnodes && !dn; i++)
        if (d->nodes[i].addr == from->sin_addr.s_addr && d->nodes[i].port == a.port)
            dn = &d->nodes[i];
    ppc_rnode *r = find_rnode(e, host, ports);
    if (!dn) {
        if (d->nnodes == NODES_MAX)
            return; /* enough nodes: a flood of valid ones needs the secret */
        dn = &d->nodes[d->nnodes++];
        dn->addr = from->sin_addr.s_addr;
        dn->port = a.port;
    }
    dn->heard = now;
    if (r && dn->expired && r->state == R_FAILED) {
        /* it announces itself again: reconnect from scratch */
        pthread_mutex_lock(&e->mu);
        r->state = R_DOWN;
        pthread_mutex_unlock(&e->mu);
        r->state_since = r->down_since = now;
        r->next_attempt = 0;
        r->backoff_ms = 500;
        r->why[0] = 0;
        dn->expired = 0;
        ppc_engine_log(e, PPC_LOG_INFO, "discovered node %s:%s again", host, ports);
    } else if (!r) {
        ppc_engine_log(e, PPC_LOG_INFO, "discovered node %s:%s", host, ports);
        if (ppc_remote_add(e, host, ports, 0) < 0)
            ppc_engine_log(e, PPC_LOG_WARNING, "discovery: out of memory");
    }
}

static void drain(ppc_engine *e, int fd)
{
    struct ppc_disc *d = e->disc;
    for (int k = 0; k < 4096; k++) { /* then let the loop run other work */
        uint8_t buf[PPC_ANNOUNCE_LEN + 1];
        struct sockaddr_in from;
        union {
            char b[CMSG_SPACE(sizeof(struct in_pktinfo))];
            struct cmsghdr align;
        } u;
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr mh = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                            .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b};
        ssize_t n = recvmsg(fd, &mh, MSG_TRUNC);
        if (n < 0)
            return;
        if (mh.msg_namelen != sizeof from || from.sin_family != AF_INET || (size_t)n > sizeof buf) {
            count(e, C_FORMAT);
            continue;
        }
        uint32_t local = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
                struct in_pktinfo pi;
                memcpy(&pi, CMSG_DATA(c), sizeof pi);
                local = pi.ipi_spec_dst.s_addr;
            }
        if ((size_t)n >= 4 && !memcmp(buf, "PPCQ", 4)) {
            if (e->opts.announce)
                on_query(e, fd, buf, (size_t)n, &from, local);
            continue; /* a client ignores queries (its own among them) */
        }
        if (d->window_end)
            on_announcement(e, buf, (size_t)n, &from);
        /* else: a node hears other nodes' announcements and its own */
    }
}

void ppc_discover_event(ppc_engine *e)
{
    if (!e->disc)
        return;
    if (e->udp_fd >= 0)
        drain(e, e->udp_fd);
    if (e->disc->fd2 >= 0)
        drain(e, e->disc->fd2);
}

/* Client: open a window (sockets, a query, a deadline). */
static int open_window(ppc_engine *e, char *err, size_t errlen)
{
    struct ppc_disc *d = e->disc;
    if (e->udp_fd < 0) {
        e->udp_fd = udp_socket(e, htonl(INADDR_ANY), e->opts.discover_port, err, errlen);
        if (e->udp_fd < 0)
            return -1;
        if (watch(e, e->udp_fd, &e->udp_src) < 0) {
            snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
            return -1;
        }
    }
    if (d->fd2 < 0) {
        d->fd2 = udp_socket(e, htonl(INADDR_ANY), 0, err, errlen);
        if (d->fd2 < 0)
            return -1;
        if (watch(e, d->fd2, &d->src2) < 0) {
            snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
            return -1;
        }
    }
    if (ppc_announce_random(d->qnonce, sizeof d->qnonce) < 0) {
        snprintf(err, errlen, "discovery: no random bytes");
        return -1;
    }
    uint8_t q[PPC_QUERY_LEN];
    ppc_query_encode(d->qnonce, q);
    struct sockaddr_in b;
    broadcast_addr(e, &b);
    send_from(e, d->fd2, q, sizeof q, 0, &b);
    d->window_end = ppc_now_ms() + d->window_ms;
    return 0;
}

static void close_window(ppc_engine *e)
{
    struct ppc_disc *d = e->disc;
    d->window_end = 0;
    memset(d->qnonce, 0, sizeof d->qnonce);
    unwatch(e, &d->fd2);
    if (!e->opts.announce)
        unwatch(e, &e->udp_fd); /* nothing read until the next window */
}

int ppc_discover_start(ppc_engine *e, char *err, size_t errlen)
{
    struct ppc_disc *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    e->disc = d;
    d->fd2 = -1;
    atomic_init(&d->rescan, 0);
    d->window_ms = e->opts.discover_window_ms > 0 ? e->opts.discover_window_ms : WINDOW_MS;
    d->max_age_s = e->opts.announce_max_age_s > 0 ? e->opts.announce_max_age_s : MAX_AGE_S;
    d->expire_ms = e->opts.discover_expire_ms > 0 ? e->opts.discover_expire_ms : EXPIRE_MS;
    d->last_summary = ppc_now_ms() - SUMMARY_MS;
    d->tokens = RATE_BURST;
    d->tokens_at = ppc_now_ms();
    if (e->opts.discover) {
        size_t np = 0;
        while (e->opts.discover_patterns && e->opts.discover_patterns[np])
            np++;
        d->filters = calloc(np ? np : 1, sizeof *d->filters);
        if (!d->filters) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        for (size_t i = 0; i < np; i++)
            if (ppc_disc_filter_parse(e->opts.discover_patterns[i], &d->filters[i]) != 1) {
                snprintf(err, errlen, "invalid discovery entry %.100s",
                         e->opts.discover_patterns[i]);
                return -1;
            }
        d->nfilters = np ? (int)np : 1; /* none given: "*" */
    }
    e->opts.discover_patterns = NULL;
    if (!e->opts.secret || e->opts.secret_len == 0) {
        /* certificate mode alone: nothing to MAC announcements with, and an
         * empty key would let anyone forge them */
        snprintf(err, errlen, "discovery needs the cluster secret (certificates alone "
                              "cannot authenticate announcements)");
        return -1;
    }
    if (ppc_announce_key(e->opts.secret, e->opts.secret_len, d->key) < 0) {
        snprintf(err, errlen, "discovery: cannot derive the announcement key");
        return -1;
    }
    if (e->opts.announce) {
        uint32_t addr = 0, bcast = 0;
        const char *h = e->opts.listen_host;
        if (h && *h && strcmp(h, "0.0.0.0") != 0) {
            struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *res;
            if (getaddrinfo(h, NULL, &hints, &res) != 0) {
                snprintf(err, errlen, "discovery: cannot resolve %.100s", h);
                return -1;
            }
            addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr;
            freeaddrinfo(res);
        }
        d->bound = addr;
        load_ifs(d, addr, &bcast);
        e->udp_fd = udp_socket(e, addr, e->opts.discover_port, err, errlen);
        if (e->udp_fd < 0 || watch(e, e->udp_fd, &e->udp_src) < 0) {
            if (e->udp_fd >= 0)
                snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
            return -1;
        }
        if (addr && bcast && bcast != addr) {
            /* broadcast queries reach a socket bound to the subnet's
             * broadcast address, not one bound to our own */
            d->fd2 = udp_socket(e, bcast, e->opts.discover_port, err, errlen);
            if (d->fd2 < 0 || watch(e, d->fd2, &d->src2) < 0) {
                if (d->fd2 >= 0)
                    snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
                return -1;
            }
        }
        e->next_announce = 0;
    }
    if (e->opts.discover && !e->opts.announce && open_window(e, err, errlen) < 0)
        return -1;
    if (e->opts.discover && e->opts.announce) {
        /* both: the node's sockets stay; answers to our query reach them */
        d->window_end = ppc_now_ms() + d->window_ms;
    }
    return 0;
}

int ppc_discover_window_open(ppc_engine *e)
{
    struct ppc_disc *d = e->disc;
    return d && e->opts.discover && (d->window_end || atomic_load(&d->rescan));
}

int ppc_engine_rescan(ppc_engine *e)
{
    struct ppc_disc *d = e->disc;
    if (!d || !e->opts.discover)
        return -1;
    atomic_store(&d->rescan, 1);
    uint64_t one = 1;
    ssize_t r = write(e->wakefd, &one, sizeof one);
    (void)r; /* EAGAIN: a wake-up is already pending */
    return 0;
}

/* Discovered nodes unreachable and unheard for expire_ms are dropped.
 * Returns 1 when some node may expire later (it is down now). */
static int expire(ppc_engine *e, int64_t now)
{
    struct ppc_disc *d = e->disc;
    int later = 0;
    for (int i = 0; i < d->nnodes; i++) {
        struct dnode *dn = &d->nodes[i];
        if (dn->expired || now - dn->heard < d->expire_ms)
            continue;
        char host[INET_ADDRSTRLEN], ports[8];
        inet_ntop(AF_INET, &dn->addr, host, sizeof host);
        snprintf(ports, sizeof ports, "%u", dn->port);
        ppc_rnode *r = find_rnode(e, host, ports);
        if (!r || r->persistent || r->state == R_FAILED)
            continue;
        if (r->state != R_DOWN || r->c.fd >= 0 || now - r->down_since < d->expire_ms) {
            later |= r->state != R_READY;
            continue;
        }
        pthread_mutex_lock(&e->mu);
        r->state = R_FAILED;
        pthread_mutex_unlock(&e->mu);
        r->state_since = now;
        snprintf(r->why, sizeof r->why, "expired: unreachable and not announcing");
        dn->expired = 1;
        ppc_engine_log(e, PPC_LOG_INFO,
                       "discovered node %s expired (unreachable for %d s and not announcing)",
                       r->name, (int)((now - r->down_since) / 1000));
    }
    return later;
}

static int min_t(int a, int64_t b)
{
    if (b < 0)
        b = 0;
    if (b > 1000000)
        b = 1000000;
    return a < 0 || b < a ? (int)b : a;
}

int ppc_discover_tick(ppc_engine *e)
{
    struct ppc_disc *d = e->disc;
    if (!d)
        return -1;
    int64_t now = ppc_now_ms();
    int t = -1;
    if (e->opts.discover) {
        if (atomic_exchange(&d->rescan, 0)) {
            char err[200];
            if (!e->opts.announce) {
                if (open_window(e, err, sizeof err) < 0) {
                    ppc_engine_log(e, PPC_LOG_WARNING, "discovery rescan failed: %s", err);
                    close_window(e);
                }
            } else {
                d->window_end = now + d->window_ms;
            }
        }
        if (d->window_end && now >= d->window_end)
            close_window(e);
        /* A discovering client must wake when its window closes: jobs
         * queued with no node found then fail instead of waiting for a
         * wake-up that never comes. */
        if (d->window_end)
            t = min_t(t, d->window_end - now + 1);
        /* checked every 500 ms while a discovered node is down, else at
         * the next loop turn (a node going down turns the loop) */
        if (now >= d->next_expiry_check) {
            d->expiry_due = expire(e, now);
            d->next_expiry_check = now + 500;
        }
        if (d->expiry_due)
            t = min_t(t, d->next_expiry_check - now);
    }
    summary(e, now, 0);
    for (int i = 0; i < C_N; i++)
        if (d->count[i]) {
            t = min_t(t, d->last_summary + SUMMARY_MS - now);
            break;
        }
    if (e->opts.announce && e->udp_fd >= 0) {
        if (now >= e->next_announce) {
            struct sockaddr_in b;
            broadcast_addr(e, &b);
            announce_to(e, e->udp_fd, d->bound ? d->bound : source_for(&b), NULL, &b);
            e->next_announce = now + ANNOUNCE_EVERY_MS;
        }
        t = min_t(t, e->next_announce - now);
    }
    return t;
}

void ppc_discover_stop(ppc_engine *e)
{
    if (e->disc) {
        summary(e, ppc_now_ms(), 1);
        unwatch(e, &e->disc->fd2);
    }
    unwatch(e, &e->udp_fd);
}

void ppc_discover_free(ppc_engine *e)
{
    if (!e->disc)
        return;
    ppc_fd_close(e->disc->fd2);
    free(e->disc->filters);
    free(e->disc);
    e->disc = NULL;
}

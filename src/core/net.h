/* net.h - TCP and UDP socket helpers for the engine: listening, starting a
 * non-blocking connect, socket options. No protocol logic lives here. */
#ifndef PPC_NET_H
#define PPC_NET_H
#include <stddef.h>

/* A non-blocking listening TCP socket on host (NULL or "" = all
 * interfaces) and port (0 = any). Returns the fd or -1 with err filled. */
int ppc_net_listen(const char *host, int port, char *err, size_t errlen);
/* The port a socket is bound to, or -1. */
int ppc_net_local_port(int fd);
/* Start a non-blocking connect; returns the fd (connection in progress or
 * done) or -1 with err filled (resolution or socket failure). */
int ppc_net_connect(const char *host, const char *port, char *err, size_t errlen);
/* Pending error of a connecting socket: 0 when connected. */
int ppc_net_sock_error(int fd);
void ppc_net_tune(int fd); /* TCP_NODELAY, keepalive, buffer sizes */
/* The peer of a socket as "addr:port" text. */
void ppc_net_peer(int fd, char *out, size_t n);

#endif

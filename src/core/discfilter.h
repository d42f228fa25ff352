/* discfilter.h - which announced nodes a client accepts: the "*" entries
 * of ppservers, parsed into filters. Plain C (discfilter.c), used by the
 * engine (discover.c) and by the binding, which checks entries when a
 * Server is made. */
#ifndef PPC_DISCFILTER_H
#define PPC_DISCFILTER_H
#include <stdint.h>

/* An announcement is accepted when (sender & mask) == net and the
 * announced port is port (0: any). Host byte order. */
typedef struct ppc_disc_filter {
    uint32_t net, mask;
    uint16_t port;
} ppc_disc_filter;

/* Parse a discovery entry: "*", "*:port", or one to three dotted decimal
 * octets followed by ".*" ("10.*", "192.168.*", "192.168.1.*"), with an
 * optional ":port" (1..65535). 1: a discovery entry, filled in f; 0: not
 * one (no '*' in it: a plain host); -1: malformed (a '*' elsewhere, an
 * octet over 255, a bad port). */
int ppc_disc_filter_parse(const char *s, ppc_disc_filter *f);

#endif

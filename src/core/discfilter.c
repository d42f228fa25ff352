/* discfilter.c - parsing of the discovery entries of ppservers ("*",
 * "*:port", "192.168.1.*[:port]") into filters (discfilter.h). */
#include "discfilter.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int ppc_disc_filter_parse(const char *s, ppc_disc_filter *f)
{
    if (!strchr(s, '*'))
        return 0;
    memset(f, 0, sizeof *f);
    const char *colon = strchr(s, ':');
    size_t hl = colon ? (size_t)(colon - s) : strlen(s);
    if (colon) {
        char *end;
        errno = 0;
        long port = strtol(colon + 1, &end, 10);
        if (*end || end == colon + 1 || errno || port < 1 || port > 65535 || colon[1] == '+' ||
            colon[1] == '-' || colon[1] == ' ')
            return -1;
        f->port = (uint16_t)port;
    }
    /* host part: "*" or octets "." ... ".*" */
    if (hl == 0 || s[hl - 1] != '*')
        return -1;
    int noct = 0;
    uint32_t net = 0;
    const char *p = s;
    while (p < s + hl - 1) {
        if (noct == 3)
            return -1;
        unsigned v = 0;
        int digits = 0;
        while (p < s + hl - 1 && *p >= '0' && *p <= '9') {
            v = v * 10 + (unsigned)(*p++ - '0');
            if (++digits > 3 || v > 255)
                return -1;
        }
        if (!digits || *p != '.')
            return -1;
        p++;
        net = net << 8 | v;
        noct++;
    }
    if (p != s + hl - 1)
        return -1; /* "*" appears elsewhere than at the end */
    f->mask = noct ? ~(uint32_t)0 << (32 - 8 * noct) : 0;
    f->net = noct ? net << (32 - 8 * noct) : 0;
    return 1;
}

/* status.h - the status page, /status JSON, /metrics and /health, served
 * over HTTP by libmicrohttpd driven from the engine's own epoll loop (no
 * thread of its own, so a busy interpreter holding the GIL never stops it),
 * and the counters it shows (jobs per second, a job-time histogram, recent
 * errors), kept on the engine thread at completion.
 *
 * Everything here runs on the engine thread except ppc_status_port. */
#ifndef PPC_STATUS_H
#define PPC_STATUS_H
#include <stddef.h>
#include <stdint.h>

#include "job.h"

typedef struct ppc_engine ppc_engine;
typedef struct ppc_status ppc_status;

/* Start serving on host (NULL: 127.0.0.1) and port (0: any free port).
 * Another address than loopback's 127.0.0.1/localhost/::1 requires the
 * engine's secret as a bearer token (none set: refused). Its epoll fd is
 * registered with the engine's epoll. NULL with err filled on failure. */
ppc_status *ppc_status_start(ppc_engine *e, char *err, size_t errlen);
/* The port it listens on. */
int ppc_status_port(const ppc_status *s);
/* Its epoll fd became readable: run the HTTP side. */
void ppc_status_event(ppc_status *s);
/* Once a loop turn: timeouts (idle and slow connections); returns the ms
 * until it wants to run again, or -1. */
int ppc_status_tick(ppc_status *s);
/* A job finished (called from the engine's completion path with the loop
 * turn's time): per-second count, histogram, error ring. No allocation. */
void ppc_status_note_job(ppc_status *s, const ppc_job *j, int64_t now_ms);
/* Stop serving and free. */
void ppc_status_free(ppc_status *s);

/* The histogram's upper bounds, seconds (the last bucket is +Inf). */
#define PPC_STATUS_NBUCKETS 10

#endif

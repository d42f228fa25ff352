/* proc.h - starting worker processes and the descriptors the engine owns.
 *
 * One place for what process start needs: the two pipes of a worker (moved
 * above the low numbers, close-on-exec), posix_spawn of a fresh worker, and
 * the set-up a forked child does before it runs the worker loop (fds 3 and
 * 4, stdin on /dev/null, its own process group, a fresh signal state, death
 * with its parent). Used by pool.c and by the binding's fork of the first
 * workers (server.c), which wraps the fork itself in the interpreter's own
 * before/after-fork calls.
 *
 * Every descriptor the engine owns is registered here (ppc_fd_own or made
 * by ppc_proc_pipes) and closed through ppc_fd_close. When the process
 * forks (the user's os.fork, multiprocessing), a fork handler closes them
 * all in the child and counts the fork: a child never keeps the parent's
 * workers from seeing EOF, and engines made before the fork know they are
 * foreign there (ppc_fork_generation). The handler does nothing else. */
#ifndef PPC_PROC_H
#define PPC_PROC_H
#include <signal.h>
#include <sys/types.h>

/* A worker's pipes: our ends and the ends the worker gets as fds 3 and 4. */
typedef struct ppc_proc {
    pid_t pid;
    int fd_w;      /* our write end: the worker reads it on fd 3 */
    int fd_r;      /* our read end: the worker writes it on fd 4 */
    int child_in;  /* the worker's fd 3 */
    int child_out; /* the worker's fd 4 */
} ppc_proc;

/* Register fd as the engine's (closed in forked children). 0 or -1. */
int ppc_fd_own(int fd);
/* Close a registered (or any) descriptor. */
void ppc_fd_close(int fd);
/* Stop tracking fd without closing it. */
void ppc_fd_forget(int fd);
/* Counts the forks this process came out of (0 in the original process):
 * an engine made under another value belongs to an ancestor. */
unsigned ppc_fork_generation(void);
/* Counts the forks this process has made since the first call (which
 * installs the fork handler): a mapping made before one is shared with the
 * child (shmmap.c). */
unsigned ppc_forks_made(void);

/* Both pipes of a worker, every end close-on-exec, >= 10 and registered,
 * the worker-to-us pipe and the us-to-worker pipe enlarged. 0, or -1 with
 * errno set and nothing left open. */
int ppc_proc_pipes(ppc_proc *p);
/* Start argv with posix_spawnp on p's child ends, then close those here.
 * 0 with p->pid set, or an errno value (all of p closed). */
int ppc_proc_spawn(ppc_proc *p, char *const *argv, char *const *envp);
/* Around fork() of a worker (the caller wraps fork() in its interpreter's
 * own calls): begin blocks every signal (no handler may run in the child
 * before it has set its own dispositions) and stops tracking the child's
 * ends, which the fork handler would otherwise close in the child; call it
 * only where no other thread can fork. end, in the parent: restores the
 * mask and closes the child's ends (pid > 0), or everything (pid < 0). */
void ppc_proc_fork_begin(ppc_proc *p, sigset_t *old);
void ppc_proc_fork_end(ppc_proc *p, pid_t pid, const sigset_t *old);
/* In a forked child: become a worker as a spawned one would be set up (p's
 * child ends on fds 3 and 4, every other fd >= 5 closed, stdin /dev/null,
 * own process group, the client's signal handlers gone, SIGINT ignored,
 * SIGKILL when `parent` dies). 0, or -1: the caller must _exit. */
int ppc_proc_child_setup(const ppc_proc *p, pid_t parent);

#endif

/* proc.c - worker process start and the registry of the engine's
 * descriptors (proc.h).
 *
 * The registry is a locked list of fds. Its fork handler (pthread_atfork,
 * installed on first use) takes the lock before fork so the list is whole
 * in the child, then in the child closes every fd on it and counts the
 * fork, and in the parent counts the forks it made. It allocates nothing,
 * touches no engine and calls nothing else: the only state it changes is
 * the list and the two counters. */
#define _GNU_SOURCE
#include "proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;
static int *reg_fds;
static size_t reg_n, reg_cap;
static atomic_uint fork_gen;   /* forks this process came out of */
static atomic_uint forks_made; /* forks this process made */

static void at_prepare(void)
{
    pthread_mutex_lock(&reg_mu);
}

static void at_parent(void)
{
    atomic_fetch_add(&forks_made, 1);
    pthread_mutex_unlock(&reg_mu);
}

static void at_child(void)
{
    for (size_t i = 0; i < reg_n; i++)
        close(reg_fds[i]);
    reg_n = 0;
    atomic_fetch_add(&fork_gen, 1);
    pthread_mutex_unlock(&reg_mu);
}

static void reg_init(void)
{
    pthread_atfork(at_prepare, at_parent, at_child);
}

/* caller holds reg_mu */
static int reg_add_locked(int fd)
{
    if (reg_n == reg_cap) {
        size_t cap = reg_cap ? reg_cap * 2 : 64;
        int *n = realloc(reg_fds, cap * sizeof *n);
        if (!n)
            return -1;
        reg_fds = n;
        reg_cap = cap;
    }
    reg_fds[reg_n++] = fd;
    return 0;
}

static void reg_del_locked(int fd)
{
    for (size_t i = reg_n; i-- > 0;) {
        if (reg_fds[i] == fd) {
            reg_fds[i] = reg_fds[--reg_n];
            return;
        }
    }
}

int ppc_fd_own(int fd)
{
    pthread_once(&reg_once, reg_init);
    pthread_mutex_lock(&reg_mu);
    int rc = reg_add_locked(fd);
    pthread_mutex_unlock(&reg_mu);
    return rc;
}

void ppc_fd_close(int fd)
{
    if (fd < 0)
        return;
    /* under the lock: a fork never sees the number closed but still listed
     * (the child would close whatever else got that number) */
    pthread_mutex_lock(&reg_mu);
    reg_del_locked(fd);
    close(fd);
    pthread_mutex_unlock(&reg_mu);
}

void ppc_fd_forget(int fd)
{
    pthread_mutex_lock(&reg_mu);
    reg_del_locked(fd);
    pthread_mutex_unlock(&reg_mu);
}

unsigned ppc_fork_generation(void)
{
    return atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

unsigned ppc_forks_made(void)
{
    pthread_once(&reg_once, reg_init);
    return atomic_load_explicit(&forks_made, memory_order_relaxed);
}

/* A pipe with both ends close-on-exec, >= 10 (clear of the numbers a
 * worker child moves its ends to) and registered; under the lock, so no
 * fork sees them unregistered. */
static int pipe_high_locked(int fds[2])
{
    int raw[2];
    if (pipe2(raw, O_CLOEXEC) < 0)
        return -1;
    fds[0] = fcntl(raw[0], F_DUPFD_CLOEXEC, 10);
    fds[1] = fds[0] >= 0 ? fcntl(raw[1], F_DUPFD_CLOEXEC, 10) : -1;
    int saved = errno;
    close(raw[0]);
    close(raw[1]);
    if (fds[1] < 0 || reg_add_locked(fds[0]) < 0) {
        if (fds[0] >= 0)
            close(fds[0]);
        if (fds[1] >= 0)
            close(fds[1]);
        errno = fds[1] < 0 ? saved : ENOMEM;
        return -1;
    }
    if (reg_add_locked(fds[1]) < 0) {
        reg_del_locked(fds[0]);
        close(fds[0]);
        close(fds[1]);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

int ppc_proc_pipes(ppc_proc *p)
{
    int to_w[2], from_w[2];
    pthread_once(&reg_once, reg_init);
    pthread_mutex_lock(&reg_mu);
    int rc = pipe_high_locked(to_w);
    if (rc == 0 && (rc = pipe_high_locked(from_w)) < 0) {
        int saved = errno;
        reg_del_locked(to_w[0]);
        reg_del_locked(to_w[1]);
        close(to_w[0]);
        close(to_w[1]);
        errno = saved;
    }
    pthread_mutex_unlock(&reg_mu);
    if (rc < 0)
        return -1;
    /* larger pipes: fewer wake-ups for batches and big payloads */
    fcntl(to_w[1], F_SETPIPE_SZ, 1 << 20);
    fcntl(from_w[1], F_SETPIPE_SZ, 1 << 20);
    p->pid = 0;
    p->fd_w = to_w[1];
    p->child_in = to_w[0];
    p->fd_r = from_w[0];
    p->child_out = from_w[1];
    return 0;
}

static void close_child_ends(ppc_proc *p)
{
    ppc_fd_close(p->child_in);
    ppc_fd_close(p->child_out);
    p->child_in = p->child_out = -1;
}

static void close_all(ppc_proc *p)
{
    close_child_ends(p);
    ppc_fd_close(p->fd_w);
    ppc_fd_close(p->fd_r);
    p->fd_w = p->fd_r = -1;
}

int ppc_proc_spawn(ppc_proc *p, char *const *argv, char *const *envp)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    if (posix_spawn_file_actions_init(&fa) != 0) {
        close_all(p);
        return ENOMEM;
    }
    if (posix_spawnattr_init(&at) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        close_all(p);
        return ENOMEM;
    }
    /* glibc's posix_spawn runs no fork handler: the registered child ends
     * stay open for the dup2 (and close-on-exec closes every other fd) */
    int rc = posix_spawn_file_actions_adddup2(&fa, p->child_in, 3);
    if (!rc)
        rc = posix_spawn_file_actions_adddup2(&fa, p->child_out, 4);
    if (!rc)
        rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    sigset_t none, def;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGTERM);
    if (!rc)
        rc = posix_spawnattr_setsigmask(&at, &none);
    if (!rc)
        rc = posix_spawnattr_setsigdefault(&at, &def);
    if (!rc) /* own process group: a terminal's Ctrl-C reaches only the client */
        rc = posix_spawnattr_setpgroup(&at, 0);
    if (!rc)
        rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                               POSIX_SPAWN_SETPGROUP);
    pid_t pid = 0;
    if (!rc)
        rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, envp ? envp : environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        close_all(p);
        return rc;
    }
    p->pid = pid;
    close_child_ends(p);
    return 0;
}

void ppc_proc_fork_begin(ppc_proc *p, sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, old);
    ppc_fd_forget(p->child_in);
    ppc_fd_forget(p->child_out);
}

void ppc_proc_fork_end(ppc_proc *p, pid_t pid, const sigset_t *old)
{
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, old, NULL);
    if (pid < 0) {
        close_all(p);
    } else {
        p->pid = pid;
        /* also here: no window where the child is in our process group */
        setpgid(pid, pid);
        close_child_ends(p);
    }
    errno = saved;
}

static void close_from(int lo)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lo, ~0U, 0) == 0)
        return;
#endif
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        for (int fd = lo; fd < 65536; fd++)
            close(fd);
        return;
    }
    int dfd = dirfd(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        int fd = atoi(de->d_name);
        if (de->d_name[0] != '.' && fd >= lo && fd != dfd)
            close(fd);
    }
    closedir(d);
}

int ppc_proc_child_setup(const ppc_proc *p, pid_t parent)
{
    /* every signal is blocked here (ppc_proc_fork_begin): a Ctrl-C now
     * stays pending and is discarded below when SIGINT becomes ignored */
    setpgid(0, 0);
    /* the signal state of a fresh interpreter: the parent's handlers gone
     * (ignored signals stay ignored, as across exec), SIGPIPE ignored as
     * Python does, SIGTERM fatal, SIGINT ignored, nothing blocked */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) < 0)
            continue;
        if ((sa.sa_flags & SA_SIGINFO) || (sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL))
            signal(sig, SIG_DFL);
    }
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(p->child_in, 3) < 0 || dup2(p->child_out, 4) < 0) /* both are >= 10 */
        return -1;
    close_from(5);
    int nul = open("/dev/null", O_RDONLY);
    if (nul > 0) {
        dup2(nul, 0);
        close(nul);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        return -1; /* the parent died before we could ask to die with it */
    return 0;
}

/* server.c - the Server extension type: construction (parse, engine
 * options, start; the first workers forked around proc.c's helpers),
 * submit (serialize in the caller's thread, hand bytes to the engine),
 * waiting, worker-count changes, statistics, destroy, and the library's
 * events thread (callbacks in completion order, engine log messages
 * forwarded to the "pp" logger).
 *
 * Lifetime: the events thread holds only a capsule that owns the engine,
 * so a Server nobody references is freed and stopped as destroy() would
 * stop it; Job objects hold their Server. In a child forked after it was
 * made, a Server raises RuntimeError (ppc_server_check_owner) and never
 * touches the parent's engine.
 *
 * The public class pp.Server derives from this type and adds only the
 * pure-Python conveniences (print_stats formatting, context manager). */
#include "ppc_py.h"
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/discfilter.h"

/* What the events thread shares with its Server (see events_main). */
typedef struct ppc_events {
    ppc_engine *engine; /* owned: freed when the capsule goes */
    PyObject *logger; /* the "pp" logger, looked up at the first message (ev_logger) */
    int raise_exceptions;
    unsigned long tid; /* the thread's ident once it runs; 0 before */
    pthread_mutex_t mu; /* done: the thread has left events_main (join) */
    pthread_cond_t cv;
    int done;
} ppc_events;

static int detect_ncpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* "autodetect" or a non-negative int; -1 with TypeError/ValueError set. */
static int parse_ncpus(PyObject *o)
{
    if (PyUnicode_Check(o) && PyUnicode_CompareWithASCIIString(o, "autodetect") == 0)
        return detect_ncpus();
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "ncpus must have 'int' type");
        return -1;
    }
    long n = PyLong_AsLong(o);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0 || n > 4096) {
        PyErr_SetString(PyExc_ValueError, "ncpus must be an integer >= 0 (and at most 4096)");
        return -1;
    }
    return (int)n;
}

/* pp's ppservers entries: "host", "host:port", and the discovery entries
 * "*", "*:port", "192.168.1.*", "192.168.1.*:port" (discfilter.h). Checked
 * here so a typo fails at once. */
static int check_ppservers(PyObject *t)
{
    if (!PyTuple_Check(t)) {
        PyErr_SetString(PyExc_TypeError, "ppservers argument must be a tuple");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        PyObject *s = PyTuple_GET_ITEM(t, i);
        if (!PyUnicode_Check(s)) {
            PyErr_SetString(PyExc_TypeError, "ppservers must be a tuple of strings");
            return -1;
        }
        const char *c = PyUnicode_AsUTF8(s);
        if (!c)
            return -1;
        ppc_disc_filter f;
        int w = ppc_disc_filter_parse(c, &f);
        if (w < 0) {
            PyErr_Format(PyExc_ValueError,
                         "ppservers entry %R: a discovery entry is \"*\", \"*:port\" or a "
                         "subnet such as \"192.168.1.*\" (optionally with :port)", s);
            return -1;
        }
        if (w == 1)
            continue;
        const char *colon = strrchr(c, ':');
        size_t hostlen = colon ? (size_t)(colon - c) : strlen(c);
        if (hostlen == 0) {
            PyErr_Format(PyExc_ValueError, "ppservers entry %R has no host", s);
            return -1;
        }
        for (size_t k = 0; k < hostlen; k++) {
            char ch = c[k];
            if (!(ch == '.' || ch == '-' || ch == '_' || (ch >= '0' && ch <= '9') ||
                  (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))) {
                PyErr_Format(PyExc_ValueError, "ppservers entry %R: invalid host name", s);
                return -1;
            }
        }
        if (colon) {
            char *end;
            long port = strtol(colon + 1, &end, 10);
            if (*end || end == colon + 1 || port < 1 || port > 65535) {
                PyErr_Format(PyExc_ValueError,
                             "ppservers entry %R: port must be an integer in 1..65535", s);
                return -1;
            }
        }
    }
    return 0;
}

/* A switch of pp.Server(_test={...}) set to a true value. Known switches:
 * shm_refuse (workers act as if /proc/<pid>/fd were refused to them),
 * vm_refuse (workers act as if reading this process were refused),
 * vm_noprobe (this process acts as if reading its workers were refused). */
static int test_switch(ppc_Server *self, const char *name)
{
    PyObject *v = self->test ? PyDict_GetItemString(self->test, name) : NULL;
    return v && PyObject_IsTrue(v) == 1;
}

/* An integer of pp.Server(_test={...}), or 0 when absent or not an int.
 * Known: discovery_window_ms, announce_max_age_s, discover_expire_ms. */
static int test_int(ppc_Server *self, const char *name)
{
    PyObject *v = self->test ? PyDict_GetItemString(self->test, name) : NULL;
    long n = v && PyLong_Check(v) ? PyLong_AsLong(v) : 0;
    if (n == -1 && PyErr_Occurred())
        PyErr_Clear();
    return n > 0 && n < 1000000000 ? (int)n : 0;
}

/* The effective level of the "pp" logger where the logging module is
 * loaded; else WARNING, the level of a logger nobody configured. The engine
 * queues nothing below it. Never imports logging. */
static int pp_log_level(void)
{
    PyObject *mods = PyImport_GetModuleDict(); /* borrowed */
    PyObject *logging = mods ? PyDict_GetItemString(mods, "logging") : NULL;
    if (!logging)
        return PPC_LOG_WARNING;
    PyObject *lg = PyObject_CallMethod(logging, "getLogger", "s", "pp");
    PyObject *r = lg ? PyObject_CallMethod(lg, "getEffectiveLevel", NULL) : NULL;
    long l = r && PyLong_Check(r) ? PyLong_AsLong(r) : -1;
    Py_XDECREF(r);
    Py_XDECREF(lg);
    if (l < 0 || PyErr_Occurred()) {
        PyErr_Clear();
        return PPC_LOG_WARNING;
    }
    return l > 1000 ? 1000 : (int)l;
}

/* Read by workers at start to learn whether they may read our memory. */
static const uint64_t client_probe = PPC_VM_PROBE;

static PyObject *build_init(ppc_Server *self)
{
    /* What every worker needs before its first job: the client's import
     * path, working directory and pickle protocol. */
    PyObject *path = PySys_GetObject("path"); /* borrowed */
    PyObject *os_getcwd = ppc_import_attr("os", "getcwd");
    if (!os_getcwd)
        return NULL;
    PyObject *cwd = PyObject_CallNoArgs(os_getcwd);
    Py_DECREF(os_getcwd);
    if (!cwd)
        return NULL;
    /* lend: results may stay in the worker's segments until taken; not with
     * restart=True, where each worker retires after one job (a retired
     * worker with results lent would have to linger until they are taken).
     * probe: where PPC_VM_PROBE is in our memory (the worker tries to read
     * it); test: the switches for workers. */
    PyObject *d = Py_BuildValue(
        "{sOsOsisisisKs{sisi}}", "path", path ? path : Py_None, "cwd", cwd, "proto", self->proto,
        "shm", self->shm, "lend", !self->restart, "probe",
        (unsigned long long)(uintptr_t)&client_probe, "test", "shm_refuse",
        test_switch(self, "shm_refuse"), "vm_refuse", test_switch(self, "vm_refuse"));
    Py_DECREF(cwd);
    if (!d)
        return NULL;
    PyObject *b = PyObject_CallFunction(G.pickle_dumps, "Oi", d, self->proto);
    Py_DECREF(d);
    return b;
}

static PyObject *worker_command(void)
{
    /* A lean interpreter: no site (sys.path comes from the client), the
     * extension found next to this module's file. */
    PyObject *exe = PySys_GetObject("executable");
    if (!exe || !PyUnicode_Check(exe) || PyUnicode_GET_LENGTH(exe) == 0) {
        PyErr_SetString(PyExc_RuntimeError, "sys.executable is not set: cannot start workers");
        return NULL;
    }
    PyObject *mod = PyImport_ImportModule("pp._ppc");
    if (!mod)
        return NULL;
    PyObject *file = PyObject_GetAttrString(mod, "__file__");
    Py_DECREF(mod);
    if (!file)
        return NULL;
    PyObject *dirname = ppc_import_attr("os.path", "dirname");
    PyObject *dir = dirname ? PyObject_CallOneArg(dirname, file) : NULL;
    Py_XDECREF(dirname);
    Py_DECREF(file);
    if (!dir)
        return NULL;
    PyObject *code = PyUnicode_FromFormat(
        "import sys;sys.path.insert(0,%R);import _ppcw;_ppcw.worker_main(3,4)", dir);
    Py_DECREF(dir);
    if (!code)
        return NULL;
    PyObject *argv = Py_BuildValue("(OsssN)", exe, "-S", "-s", "-c", code);
    return argv;
}

/* The workers' environment: this process's, with glibc's malloc told to
 * use transparent huge pages, so large arguments and results do not pay
 * for faulting in every 4 KiB page (GLIBC_TUNABLES is ours to extend). */
static PyObject *worker_env(void)
{
    PyObject *environ_ = ppc_import_attr("os", "environ");
    if (!environ_)
        return NULL;
    PyObject *items = PyMapping_Items(environ_);
    Py_DECREF(environ_);
    if (!items)
        return NULL;
    PyObject *out = PyList_New(0);
    int have_tunables = 0;
    for (Py_ssize_t i = 0; out && i < PyList_GET_SIZE(items); i++) {
        PyObject *k = PyTuple_GET_ITEM(PyList_GET_ITEM(items, i), 0);
        PyObject *v = PyTuple_GET_ITEM(PyList_GET_ITEM(items, i), 1);
        PyObject *kv;
        if (PyUnicode_CompareWithASCIIString(k, "GLIBC_TUNABLES") == 0) {
            have_tunables = 1;
            kv = PyUnicode_FromFormat("%U=%U:glibc.malloc.hugetlb=1", k, v);
        } else {
            kv = PyUnicode_FromFormat("%U=%U", k, v);
        }
        if (!kv || PyList_Append(out, kv) < 0)
            Py_CLEAR(out);
        Py_XDECREF(kv);
    }
    Py_DECREF(items);
    if (out && !have_tunables) {
        PyObject *kv = PyUnicode_FromString("GLIBC_TUNABLES=glibc.malloc.hugetlb=1");
        if (!kv || PyList_Append(out, kv) < 0)
            Py_CLEAR(out);
        Py_XDECREF(kv);
    }
    return out;
}

/* ------------------------------------------------------------------------
 * Forked first workers. A fresh interpreter costs ~10 ms before it runs a
 * job; a fork of the client is ready at once. Forking is safe only while
 * this process has exactly one thread (no engine thread of another
 * Server, no user thread can hold a lock the child would inherit), so it
 * is checked here, in the thread holding the GIL, before this Server's
 * engine thread exists. Replacements and growth are always fresh
 * interpreters (pool.c). PPC_START=spawn forces fresh interpreters. The
 * pipes, the child's set-up and the signal mask around fork are proc.c's;
 * only the interpreter's own before/after-fork calls are here. */

/* 1: fork the first workers when safe; 0: fresh interpreters only; -1:
 * error set (an unknown PPC_START value). */
static int fork_wanted(void)
{
    const char *v = getenv("PPC_START");
    if (!v || !*v || !strcmp(v, "auto") || !strcmp(v, "fork"))
        return 1;
    if (!strcmp(v, "spawn"))
        return 0;
    PyErr_Format(PyExc_ValueError, "PPC_START must be 'auto' (fork the first workers when the "
                                   "process is single-threaded) or 'spawn', not '%s'", v);
    return -1;
}

/* Threads of this process: entries of /proc/self/task; -1 if unknown. */
static int count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The child side: become a worker exactly as a spawned one would be set
 * up (proc.h), run the worker loop in a fresh __main__, and _exit: never
 * return into the user's program, run no atexit handler and flush no
 * inherited stdio buffer. */
static void forked_worker(const ppc_proc *pr, pid_t client)
{
    PyOS_AfterFork_Child();
    if (ppc_proc_child_setup(pr, client) < 0)
        _exit(0); /* the client is gone, or fds 3 and 4 cannot be made */
    PyObject *ns = ppc_worker_fresh_ns();
    int rc = ns ? ppc_worker_run(3, 4, ns) : -1;
    if (rc < 0) {
        PyErr_Print();
        PyObject *err = PySys_GetObject("stderr");
        PyObject *r = err ? PyObject_CallMethod(err, "flush", NULL) : NULL;
        Py_XDECREF(r);
    }
    _exit(rc < 0 ? 1 : 0);
}

/* Fork up to n workers into out; returns how many (fewer on a failure:
 * the pool starts the rest as fresh interpreters). */
static int fork_workers(int n, ppc_prestarted *out)
{
    /* what the client printed must not sit in the children's copies */
    const char *streams[2] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(streams[i]);
        PyObject *r = f && f != Py_None ? PyObject_CallMethod(f, "flush", NULL) : NULL;
        Py_XDECREF(r);
        PyErr_Clear();
    }
    pid_t me = getpid();
    int k = 0;
    for (; k < n; k++) {
        ppc_proc pr;
        if (ppc_proc_pipes(&pr) < 0)
            break;
        sigset_t old;
        ppc_proc_fork_begin(&pr, &old);
        PyOS_BeforeFork();
        pid_t pid = fork();
        if (pid == 0)
            forked_worker(&pr, me); /* does not return */
        PyOS_AfterFork_Parent();
        ppc_proc_fork_end(&pr, pid, &old);
        if (pid < 0)
            break;
        out[k].pid = (int)pid;
        out[k].fd_to_worker = pr.fd_w;
        out[k].fd_from_worker = pr.fd_r;
    }
    return k;
}

/* ------------------------------------------------------------------------
 * The events thread: callbacks in completion order, log forwarding. */

/* The "pp" logger, looked up at the first message: a Server that never
 * logs never imports logging (its import is most of a new Server's cost).
 * Borrowed reference, or NULL with the error written as unraisable. */
static PyObject *ev_logger(ppc_events *self)
{
    if (!self->logger) {
        PyObject *get = ppc_import_attr("logging", "getLogger");
        self->logger = get ? PyObject_CallFunction(get, "s", "pp") : NULL;
        Py_XDECREF(get);
        if (!self->logger)
            PyErr_WriteUnraisable(NULL);
    }
    return self->logger;
}

/* The result r of a call of one of logger's methods: a failure of the
 * logging itself is written as unraisable, never lost or raised. */
static void log_done(PyObject *logger, PyObject *r)
{
    if (!r)
        PyErr_WriteUnraisable(logger);
    Py_XDECREF(r);
}

static void log_message(ppc_events *self, int level, const char *msg)
{
    PyObject *logger = ev_logger(self);
    if (logger)
        log_done(logger, PyObject_CallMethod(logger, "log", "is", level, msg));
}

/* Run one job's callback on the event thread: callback(*callbackargs,
 * result). Errors in the callback are logged, never lost. */
static void run_callback(ppc_events *self, ppc_job *j, ppc_Job *jo)
{
    if (!jo)
        return;
    Py_INCREF(jo);
    if (j->status == PPC_JOB_EDESTROYED || j->status == PPC_JOB_ECANCELLED ||
        j->status == PPC_JOB_EKILLED ||
        atomic_load(&j->claim) == PPC_CLAIM_CANCELLED) {
        Py_DECREF(jo);
        return;
    }
    if (ppc_job_unpack(jo) < 0) {
        PyErr_WriteUnraisable((PyObject *)jo);
        Py_DECREF(jo);
        return;
    }
    PyObject *value = NULL;
    if (jo->exc && self->raise_exceptions) {
        PyObject *s = PyObject_Repr(jo->exc);
        PyObject *logger = ev_logger(self);
        if (logger)
            log_done(logger, PyObject_CallMethod(logger, "error", "sKO",
                                                 "job %d raised %r; its callback was not called",
                                                 (unsigned long long)j->id, s ? s : Py_None));
        Py_XDECREF(s);
        Py_DECREF(jo);
        return;
    }
    value = jo->exc ? Py_None : jo->value;
    Py_ssize_t n = PyTuple_GET_SIZE(jo->callbackargs);
    PyObject *a = PyTuple_New(n + 1);
    if (a) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *x = PyTuple_GET_ITEM(jo->callbackargs, i);
            Py_INCREF(x);
            PyTuple_SET_ITEM(a, i, x);
        }
        Py_INCREF(value);
        PyTuple_SET_ITEM(a, n, value);
        PyObject *r = PyObject_Call(jo->callback, a, NULL);
        Py_DECREF(a);
        if (r) {
            Py_DECREF(r);
        } else {
            PyObject *t, *exc, *tb;
            PyErr_Fetch(&t, &exc, &tb);
            PyErr_NormalizeException(&t, &exc, &tb);
            if (tb && exc)
                PyException_SetTraceback(exc, tb);
            PyObject *logger = ev_logger(self);
            PyObject *meth = logger ? PyObject_GetAttrString(logger, "error") : NULL;
            PyObject *pa = Py_BuildValue("(sO)", "exception in the callback of a job: %r",
                                         exc ? exc : Py_None);
            PyObject *pk = Py_BuildValue("{sO}", "exc_info", exc ? exc : Py_None);
            if (logger)
                log_done(logger, meth && pa && pk ? PyObject_Call(meth, pa, pk) : NULL);
            Py_XDECREF(meth);
            Py_XDECREF(pa);
            Py_XDECREF(pk);
            Py_XDECREF(t);
            Py_XDECREF(exc);
            Py_XDECREF(tb);
        }
    }
    Py_DECREF(jo);
}

/* The body of the events thread. It holds the events capsule, never the
 * Server: a Server nobody references is freed (and its engine stopped)
 * while this thread waits; the thread then drains what is left, sees
 * PPC_EV_STOP and ends, and the last of the two frees the engine. A
 * pending callback keeps its Server alive through its Job object. */
static void events_main(ppc_events *ev)
{
    ppc_engine *e = ev->engine;
    ev->tid = PyThread_get_thread_ident();
    for (;;) {
        ppc_event x;
        int kind;
        Py_BEGIN_ALLOW_THREADS
        kind = ppc_engine_next_event(e, 1000, &x);
        Py_END_ALLOW_THREADS
        if (kind == PPC_EV_STOP)
            break;
        if (kind == PPC_EV_NONE) {
            /* the engine filters by level: follow the pp logger's changes */
            ppc_engine_set_log_level(e, pp_log_level());
        } else if (kind == PPC_EV_LOG) {
            log_message(ev, x.level, x.msg);
            ppc_engine_set_log_level(e, pp_log_level());
        } else if (kind == PPC_EV_JOB || kind == PPC_EV_DONE) {
            /* the engine's event holds the Job (its user pointer) */
            ppc_Job *jo = (ppc_Job *)x.job->user;
            x.job->user = NULL;
            if (kind == PPC_EV_JOB) {
                run_callback(ev, x.job, jo);
                ppc_engine_callback_done(e, x.job);
            } else {
                ppc_job_decref(x.job);
            }
            if (jo) {
                ppc_job_fire_done(jo); /* futures' done callbacks, once DONE */
                Py_DECREF(jo);
            }
        }
    }
}

/* The events thread: a plain thread of the interpreter (started in C, so a
 * new Server neither imports threading nor waits for the thread to be
 * scheduled), daemon-like at exit as threading's daemon threads are; the
 * atexit handler's destroy() ends it first. It owns a reference to the
 * capsule, dropped last: the capsule may be the final one. */
static void events_thread(void *arg)
{
    PyObject *cap = arg;
    PyGILState_STATE g = PyGILState_Ensure();
    ppc_events *ev = PyCapsule_GetPointer(cap, "ppc_events");
    if (ev) {
        events_main(ev);
        pthread_mutex_lock(&ev->mu);
        ev->done = 1;
        pthread_cond_broadcast(&ev->cv);
        pthread_mutex_unlock(&ev->mu);
    } else {
        PyErr_WriteUnraisable(cap);
    }
    Py_DECREF(cap);
    PyGILState_Release(g);
}

/* Wait up to secs for the events thread to finish (GIL released): 1 when it
 * has, 0 on time-out. */
static int events_join(ppc_events *ev, double secs)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)secs;
    int done;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&ev->mu);
    while (!ev->done && pthread_cond_timedwait(&ev->cv, &ev->mu, &until) == 0)
        ;
    done = ev->done;
    pthread_mutex_unlock(&ev->mu);
    Py_END_ALLOW_THREADS
    return done;
}

static void events_free(PyObject *cap)
{
    ppc_events *ev = PyCapsule_GetPointer(cap, "ppc_events");
    if (!ev)
        return;
    if (ev->engine) {
        ppc_engine *e = ev->engine;
        Py_BEGIN_ALLOW_THREADS
        ppc_engine_free(e); /* nothing in a forked child */
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(ev->logger);
    pthread_cond_destroy(&ev->cv);
    pthread_mutex_destroy(&ev->mu);
    PyMem_Free(ev);
}

int ppc_server_in_callback(ppc_Server *s)
{
    return s->ev && s->ev->tid == PyThread_get_thread_ident();
}

/* The engine goes into the events capsule, which owns it from here on
 * (also when this fails: then it is freed at once). */
static int adopt_engine(ppc_Server *self, ppc_engine *e)
{
    ppc_events *ev = PyMem_Calloc(1, sizeof *ev);
    if (ev) {
        pthread_mutex_init(&ev->mu, NULL);
        pthread_cond_init(&ev->cv, NULL);
    }
    PyObject *cap = ev ? PyCapsule_New(ev, "ppc_events", events_free) : NULL;
    if (!cap) {
        PyMem_Free(ev);
        Py_BEGIN_ALLOW_THREADS
        ppc_engine_free(e);
        Py_END_ALLOW_THREADS
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    ev->engine = e;
    ev->raise_exceptions = self->raise_exceptions;
    self->events = cap;
    self->ev = ev;
    self->engine = e;
    self->owner_pid = (int)getpid();
    return 0;
}

/* ------------------------------------------------------------------------
 * Construction in three steps: parse (the arguments, checked, into a C
 * struct and the Server's fields), engine options (what the engine needs,
 * in C strings that live in an opts_mem until the engine has copied
 * them), start (the first workers forked when safe, the engine, the
 * events thread). */

typedef struct server_args {
    int ncpus;
    int restart;
    int announce;
    int discover_port;
    int vm;
    double timeout;  /* socket_timeout, seconds */
    double liveness; /* seconds */
    PyObject *listen; /* borrowed: None, or (host, port) */
    const char *bcast;
    const char *certfile, *keyfile, *cafile; /* TLS certificate mode, or NULL */
    int rendezvous;   /* connect-back: listening socket fd whose connections are nodes, or -1 */
    PyObject *connect; /* borrowed: None, or (host, port) this node dials */
    PyObject *status; /* borrowed: None, or (host, port, ((path, type, bytes), ...)) */
} server_args;

/* What the engine options point into; freed once the engine has copied it. */
typedef struct opts_mem {
    PyObject *argv, *init, *env;
    const char *cargv[8];
    const char **cenv;
    const char **nodes;
    const char **patterns; /* discovery entries of ppservers */
    ppc_status_asset *assets;
} opts_mem;

static void opts_mem_free(opts_mem *m)
{
    Py_XDECREF(m->argv);
    Py_XDECREF(m->init);
    Py_XDECREF(m->env);
    PyMem_Free(m->cenv);
    PyMem_Free(m->nodes);
    PyMem_Free(m->patterns);
    PyMem_Free(m->assets);
}

static int parse_args(ppc_Server *self, PyObject *args, PyObject *kw, server_args *a)
{
    static char *kwlist[] = {"ncpus",    "ppservers",      "secret",    "restart",
                             "proto",    "socket_timeout", "raise_exceptions",
                             "_listen",  "_liveness",      "_announce", "_discover_port",
                             "_broadcast", "_shm", "_test", "_certfile", "_keyfile",
                             "_cafile", "_rendezvous", "_connect", "_status", NULL};
    PyObject *ncpus_o = NULL, *ppservers = NULL, *secret = Py_None, *restart_o = Py_False;
    PyObject *timeout_o = NULL, *liveness_o = Py_None, *test = Py_None;
    int proto = 5, raise_exc = 1, shm = 1;
    memset(a, 0, sizeof *a);
    a->listen = Py_None;
    a->status = Py_None;
    a->discover_port = 51000;
    a->rendezvous = -1;
    a->connect = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOOOiOpOOpizpOzzziOO:Server", kwlist, &ncpus_o,
                                     &ppservers, &secret, &restart_o, &proto, &timeout_o,
                                     &raise_exc, &a->listen, &liveness_o, &a->announce,
                                     &a->discover_port, &a->bcast, &shm, &test, &a->certfile,
                                     &a->keyfile, &a->cafile, &a->rendezvous, &a->connect,
                                     &a->status))
        return -1;
    if (a->status != Py_None && !PyTuple_Check(a->status)) {
        PyErr_SetString(PyExc_TypeError, "_status must be a (host, port, assets) tuple");
        return -1;
    }
    if (a->connect != Py_None && !PyTuple_Check(a->connect)) {
        PyErr_SetString(PyExc_TypeError, "_connect must be a (host, port) tuple");
        return -1;
    }
    if ((a->certfile || a->keyfile || a->cafile) && !(a->certfile && a->keyfile && a->cafile)) {
        PyErr_SetString(PyExc_ValueError,
                        "TLS certificates need all three of certfile, keyfile and cafile");
        return -1;
    }
    /* _test: switches that make tests take fallback paths (test_switch) */
    if (test != Py_None && !PyDict_Check(test)) {
        PyErr_SetString(PyExc_TypeError, "_test must be a dict");
        return -1;
    }
    if (ppc_globals_init() < 0) /* the C pickler: loaded by the first Server, not on import */
        return -1;
    if (test != Py_None)
        Py_INCREF(test);
    Py_XSETREF(self->test, test != Py_None ? test : NULL);
    a->ncpus = ncpus_o ? parse_ncpus(ncpus_o) : detect_ncpus();
    if (a->ncpus < 0)
        return -1;
    if (!ppservers)
        ppservers = PyTuple_New(0);
    else
        Py_INCREF(ppservers);
    if (!ppservers)
        return -1;
    Py_XSETREF(self->ppservers, ppservers);
    if (check_ppservers(ppservers) < 0)
        return -1;
    if (secret != Py_None && !PyUnicode_Check(secret) && !PyBytes_Check(secret)) {
        PyErr_SetString(PyExc_TypeError, "secret must be of a string type");
        return -1;
    }
    Py_INCREF(secret);
    Py_XSETREF(self->secret, secret);
    a->restart = PyObject_IsTrue(restart_o);
    if (a->restart < 0)
        return -1;
    if (proto < 0 || proto > 5) {
        PyErr_SetString(PyExc_ValueError, "proto must be a pickle protocol number 0..5");
        return -1;
    }
    a->timeout = 3600.0;
    if (timeout_o && timeout_o != Py_None) {
        a->timeout = PyFloat_AsDouble(timeout_o);
        if (a->timeout == -1.0 && PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "socket_timeout must be a number of seconds");
            return -1;
        }
        if (!(a->timeout > 0) || isinf(a->timeout)) {
            PyErr_SetString(PyExc_ValueError, "socket_timeout must be a positive number");
            return -1;
        }
    }
    a->liveness = a->timeout;
    if (liveness_o != Py_None) {
        a->liveness = PyFloat_AsDouble(liveness_o);
        if (a->liveness == -1.0 && PyErr_Occurred())
            return -1;
    }
    if (a->listen != Py_None && !PyTuple_Check(a->listen)) {
        PyErr_SetString(PyExc_TypeError, "_listen must be a (host, port) tuple");
        return -1;
    }
    if ((PyTuple_GET_SIZE(ppservers) > 0 || a->listen != Py_None || a->rendezvous >= 0 ||
         a->connect != Py_None) && !a->certfile &&
        (secret == Py_None || PyObject_Length(secret) == 0)) {
        PyErr_SetString(PyExc_ValueError,
                        "a secret is required to use remote nodes: pass secret=..., or set "
                        "the PP_SECRET environment variable");
        return -1;
    }
    self->proto = proto;
    Py_XSETREF(self->proto_obj, PyLong_FromLong(proto));
    if (!self->proto_obj)
        return -1;
    const char *env_shm = getenv("PPC_SHM");
    if (env_shm && *env_shm == '0')
        shm = 0;
    self->shm = shm;
    const char *env_vm = getenv("PPC_VM");
    a->vm = shm && !(env_vm && *env_vm == '0');
    self->restart = a->restart;
    self->raise_exceptions = raise_exc;
    self->socket_timeout = a->timeout;
    self->next_fid = 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    self->created = (double)ts.tv_sec + ts.tv_nsec / 1e9;

    Py_XSETREF(self->fn_cache, PyDict_New());
    Py_XSETREF(self->fn_volatile, PyDict_New());
    Py_XSETREF(self->groups, PyDict_New());
    Py_XSETREF(self->group_names, PyList_New(0));
    if (!self->fn_cache || !self->fn_volatile || !self->groups || !self->group_names)
        return -1;
    return 0;
}

/* The status page: (host or None, port, ((path, content type, bytes), ...)). */
static int status_opts(PyObject *st, ppc_engine_opts *o, opts_mem *m)
{
    PyObject *assets;
    if (!PyArg_ParseTuple(st, "ziO!:_status", &o->status_host, &o->status_port, &PyTuple_Type,
                          &assets))
        return -1;
    if (o->status_port < 0 || o->status_port > 65535) {
        PyErr_SetString(PyExc_ValueError, "status_port must be 0..65535 (0: a free port)");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(assets);
    if (!(m->assets = PyMem_Calloc((size_t)n + 1, sizeof *m->assets))) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *data;
        Py_ssize_t len;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(assets, i), "ssy#:_status asset",
                              &m->assets[i].path, &m->assets[i].type, &data, &len))
            return -1;
        m->assets[i].data = (const uint8_t *)data;
        m->assets[i].len = (size_t)len;
    }
    o->status_on = 1;
    o->status_assets = m->assets;
    o->nstatus_assets = (int)n;
    return 0;
}

static int engine_opts(ppc_Server *self, const server_args *a, ppc_engine_opts *o, opts_mem *m)
{
    memset(o, 0, sizeof *o);
    if (!(m->argv = worker_command()) || !(m->init = build_init(self)) ||
        !(m->env = worker_env()))
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(m->argv) && i < 7; i++) {
        if (!(m->cargv[i] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(m->argv, i))))
            return -1;
    }
    Py_ssize_t nenv = PyList_GET_SIZE(m->env);
    if (!(m->cenv = PyMem_Calloc((size_t)nenv + 1, sizeof(char *)))) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nenv; i++) {
        if (!(m->cenv[i] = PyUnicode_AsUTF8(PyList_GET_ITEM(m->env, i))))
            return -1;
    }
    o->nworkers = a->ncpus;
    o->worker_argv = (char *const *)m->cargv;
    o->worker_env = (char *const *)m->cenv;
    o->init = (const uint8_t *)PyBytes_AS_STRING(m->init);
    o->init_len = (size_t)PyBytes_GET_SIZE(m->init);
    o->restart = a->restart;
    o->no_shm = !self->shm;
    o->no_vm = !a->vm;
    o->vm_no_results = test_switch(self, "vm_noprobe"); /* as if workers could not be read */
    o->test_plaintext = test_switch(self, "tls_plaintext"); /* bench/: TLS off, both sides */
    o->py_major = PY_MAJOR_VERSION;
    o->py_minor = PY_MINOR_VERSION;
    o->listen_port = -1;
    o->certfile = a->certfile; /* read by the engine at start, not kept */
    o->keyfile = a->keyfile;
    o->cafile = a->cafile;
    o->discover_port = a->discover_port;
    o->broadcast = a->bcast;
    o->announce = a->announce;
    o->liveness_ms = a->liveness * 1000 > 2e9 ? 2000000000 : (int)(a->liveness * 1000);
    if (o->liveness_ms < 100)
        o->liveness_ms = 100;
    PyObject *secret = self->secret;
    if (secret != Py_None) {
        Py_ssize_t sl;
        const char *sc = PyBytes_Check(secret) ? PyBytes_AS_STRING(secret)
                                               : PyUnicode_AsUTF8AndSize(secret, &sl);
        if (!sc)
            return -1;
        if (PyBytes_Check(secret))
            sl = PyBytes_GET_SIZE(secret);
        o->secret = (const uint8_t *)sc;
        o->secret_len = (size_t)sl;
    }
    if (a->listen != Py_None &&
        !PyArg_ParseTuple(a->listen, "zi:_listen", &o->listen_host, &o->listen_port))
        return -1;
    o->rendezvous_fd = a->rendezvous;
    o->has_rendezvous = a->rendezvous >= 0;
    if (a->connect != Py_None &&
        !PyArg_ParseTuple(a->connect, "si:_connect", &o->connect_host, &o->connect_port))
        return -1;
    if (a->status != Py_None && status_opts(a->status, o, m) < 0)
        return -1;
    /* remote nodes: "host[:port]" entries; any "*" entry asks for discovery */
    Py_ssize_t nps = PyTuple_GET_SIZE(self->ppservers);
    if (!(m->nodes = PyMem_Calloc((size_t)nps + 1, sizeof(char *)))) {
        PyErr_NoMemory();
        return -1;
    }
    if (!(m->patterns = PyMem_Calloc((size_t)nps + 1, sizeof(char *)))) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t nn = 0, np = 0;
    for (Py_ssize_t i = 0; i < nps; i++) {
        const char *c = PyUnicode_AsUTF8(PyTuple_GET_ITEM(self->ppservers, i));
        if (!c)
            return -1;
        if (strchr(c, '*'))
            m->patterns[np++] = c; /* checked by check_ppservers */
        else
            m->nodes[nn++] = c;
    }
    o->ppservers = m->nodes;
    o->discover = np > 0;
    o->discover_patterns = m->patterns;
    o->discover_window_ms = test_int(self, "discovery_window_ms");
    o->announce_max_age_s = test_int(self, "announce_max_age_s");
    o->discover_expire_ms = test_int(self, "discover_expire_ms");
    o->log_level = pp_log_level();
    return 0;
}

/* The first workers (forks of this process when that is safe), the
 * engine, the events thread. */
static int start(ppc_Server *self, ppc_engine_opts *o)
{
    int want_fork = o->nworkers > 0 ? fork_wanted() : 0;
    if (want_fork < 0)
        return -1;
    ppc_prestarted *pre = NULL;
    if (want_fork && count_threads() == 1) {
        pre = PyMem_Calloc((size_t)o->nworkers, sizeof *pre);
        if (pre)
            o->nprestarted = fork_workers(o->nworkers, pre);
        o->prestarted = pre;
    }
    self->forked = o->nprestarted;
    char err[256] = "";
    ppc_engine *e;
    Py_BEGIN_ALLOW_THREADS
    e = ppc_engine_new(o, err, sizeof err);
    Py_END_ALLOW_THREADS
    PyMem_Free(pre); /* the engine owns the workers either way */
    if (!e) {
        PyErr_Format(PyExc_OSError, "cannot start the job server: %s", err);
        return -1;
    }
    if (adopt_engine(self, e) < 0)
        return -1;

    /* The library's one Python thread: callbacks and log forwarding. */
    Py_INCREF(self->events); /* the thread's own reference */
    unsigned long tid = PyThread_start_new_thread(events_thread, self->events);
    if (tid == PYTHREAD_INVALID_THREAD_ID) {
        Py_DECREF(self->events);
        PyErr_SetString(PyExc_RuntimeError, "cannot start the pp events thread");
        return -1;
    }
    self->events_started = 1;
    return 0;
}

static int Server_init(ppc_Server *self, PyObject *args, PyObject *kw)
{
    if (self->engine) {
        PyErr_SetString(PyExc_RuntimeError, "Server is already initialized");
        return -1;
    }
    server_args a;
    ppc_engine_opts o;
    opts_mem m = {0};
    int rc = parse_args(self, args, kw, &a);
    if (rc == 0)
        rc = engine_opts(self, &a, &o, &m);
    if (rc == 0)
        rc = start(self, &o);
    opts_mem_free(&m);
    return rc;
}

int ppc_server_check_owner(ppc_Server *s)
{
    if (s->engine && ppc_engine_foreign(s->engine)) {
        PyErr_Format(PyExc_RuntimeError,
                     "this pp.Server belongs to process %d; a forked child must make its own "
                     "Server",
                     s->owner_pid);
        return -1;
    }
    return 0;
}

static int check_alive(ppc_Server *self)
{
    if (ppc_server_check_owner(self) < 0)
        return -1;
    if (!self->engine) {
        PyErr_SetString(PyExc_RuntimeError, "Server.__init__ was not called");
        return -1;
    }
    if (self->destroyed) {
        PyErr_SetString(G.DestroyedServerError,
                        "Cannot submit jobs: server instance has been destroyed");
        return -1;
    }
    return 0;
}

static int group_id(ppc_Server *self, PyObject *group, uint32_t *out)
{
    if (group == self->last_group) {
        *out = self->last_gid;
        return 0;
    }
    PyObject *v = PyDict_GetItemWithError(self->groups, group);
    if (v) {
        *out = (uint32_t)PyLong_AsUnsignedLong(v);
        /* remember the stored key (alive in group_names, unlike an equal
         * temporary the caller may have passed) to recognise it next time */
        if (*out < (uint32_t)PyList_GET_SIZE(self->group_names)) {
            self->last_group = PyList_GET_ITEM(self->group_names, *out);
            self->last_gid = *out;
        }
        return 0;
    }
    if (PyErr_Occurred())
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(self->group_names);
    PyObject *idx = PyLong_FromSsize_t(n);
    if (!idx)
        return -1;
    int rc = PyDict_SetItem(self->groups, group, idx);
    Py_DECREF(idx);
    if (rc < 0 || PyList_Append(self->group_names, group) < 0)
        return -1;
    *out = (uint32_t)n;
    return 0;
}

static int check_tuple(PyObject *o, const char *name)
{
    if (!PyTuple_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s argument must be a tuple", name);
        return -1;
    }
    return 0;
}

/* Shared-memory segments for a large payload: only with local workers, and
 * checked only for large payloads (it takes the engine's lock). */
static int shm_usable(ppc_Server *self)
{
    return self->shm && ppc_engine_shm_on(self->engine) && ppc_engine_get_workers(self->engine) > 0;
}

/* Does the stream of a segment with holes mention __main__ outside them?
 * (the holes are bytes objects' data, not pickle opcodes) The holes are
 * the segment's private list, never its table, which a worker that mapped
 * the segment before could rewrite. */
static int holes_mention_main(ppc_shm_seg *seg, size_t stream_len)
{
    size_t at = 0;
    for (uint32_t i = 0; i <= seg->ngaps; i++) {
        ppc_vm_gap g = {stream_len, 0, 0};
        if (i < seg->ngaps) {
            if (!seg->gaps)
                return 1;
            g = seg->gaps[i];
        }
        size_t end = g.off < stream_len ? (size_t)g.off : stream_len;
        /* a name split by a hole is impossible: a hole is a whole opcode payload */
        if (end > at && memmem(seg->map + at, end - at, "__main__", 8))
            return 1;
        at = (size_t)(g.off + g.len);
        if (at >= stream_len)
            break;
    }
    return 0;
}

static void held_job_free(PyObject *cap)
{
    ppc_job *j = PyCapsule_GetPointer(cap, "ppc_job");
    if (j)
        ppc_job_decref(j);
}

int ppc_server_hold_pins(ppc_Server *s, ppc_job *j, PyObject *pins)
{
    if (!s->vm_held && !(s->vm_held = PyList_New(0)))
        return -1;
    PyObject *cap = PyCapsule_New(j, "ppc_job", held_job_free);
    if (!cap)
        return -1;
    ppc_job_incref(j);
    PyObject *t = PyTuple_Pack(2, cap, pins);
    Py_DECREF(cap);
    int rc = t ? PyList_Append(s->vm_held, t) : -1;
    Py_XDECREF(t);
    return rc;
}

void ppc_server_sweep_pins(ppc_Server *s, int all)
{
    if (!s->vm_held)
        return;
    Py_ssize_t n = PyList_GET_SIZE(s->vm_held), k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(s->vm_held, i);
        ppc_job *j = PyCapsule_GetPointer(PyTuple_GET_ITEM(t, 0), "ppc_job");
        int busy = !all && j && atomic_load(&j->state) < PPC_JOB_COMPLETE;
        if (busy) {
            Py_INCREF(t);
            PyList_SetItem(s->vm_held, k++, t); /* moves down: never past i */
        }
    }
    if (PyList_SetSlice(s->vm_held, k, n, NULL) < 0)
        PyErr_Clear();
}

/* submit's parameters, by position and keyword (fast call: no argument
 * tuple or keyword dict is built per job). */
static const char *const submit_kw[] = {"func",     "args",         "depfuncs", "modules",
                                        "callback", "callbackargs", "group",    "globals",
                                        "timeout",  "retries"};
#define SUBMIT_NARGS 8 /* by position; timeout and retries by keyword only */
#define SUBMIT_NKW 10

static PyObject *Server_submit(ppc_Server *self, PyObject *const *argv, Py_ssize_t nargsf,
                               PyObject *kwnames)
{
    PyObject *a[SUBMIT_NKW] = {NULL};
    Py_ssize_t npos = PyVectorcall_NARGS(nargsf);
    if (npos > SUBMIT_NARGS) {
        PyErr_Format(PyExc_TypeError, "submit() takes at most %d arguments (%zd given)",
                     SUBMIT_NARGS, npos);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < npos; i++)
        a[i] = argv[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int at = -1;
        for (int i = 0; i < SUBMIT_NKW && at < 0; i++)
            if (PyUnicode_CompareWithASCIIString(name, submit_kw[i]) == 0)
                at = i;
        if (at < 0) {
            PyErr_Format(PyExc_TypeError, "submit() got an unexpected keyword argument '%U'",
                         name);
            return NULL;
        }
        if (a[at]) {
            PyErr_Format(PyExc_TypeError, "submit() got multiple values for argument '%s'",
                         submit_kw[at]);
            return NULL;
        }
        a[at] = argv[npos + k];
    }
    if (!a[0]) {
        PyErr_SetString(PyExc_TypeError, "submit() missing required argument 'func' (pos 1)");
        return NULL;
    }
    PyObject *func = a[0], *fargs = a[1], *depfuncs = a[2], *modules = a[3];
    PyObject *callback = a[4] ? a[4] : Py_None, *cbargs = a[5], *group = a[6];
    PyObject *globals = a[7] ? a[7] : Py_None;
    if (check_alive(self) < 0)
        return NULL;
    /* timeout: seconds a job may run before its worker is killed (its
     * result() raises TimeoutError); retries: runs again when its worker
     * dies under it */
    uint32_t timeout_ms = 0;
    uint8_t retries = 0;
    if (a[8] && a[8] != Py_None) {
        double t = PyFloat_AsDouble(a[8]);
        if (t == -1 && PyErr_Occurred())
            return NULL;
        if (!(t > 0) || t > 4e6) {
            PyErr_SetString(PyExc_ValueError, "timeout must be a positive number of seconds");
            return NULL;
        }
        timeout_ms = (uint32_t)(t * 1000 + 0.5);
        if (!timeout_ms)
            timeout_ms = 1;
    }
    if (a[9]) {
        long r = PyLong_AsLong(a[9]);
        if (r == -1 && PyErr_Occurred())
            return NULL;
        if (r < 0 || r > 255) {
            PyErr_SetString(PyExc_ValueError, "retries must be between 0 and 255");
            return NULL;
        }
        retries = (uint8_t)r;
    }
    PyObject *empty = G.empty_tuple;
    if (!fargs)
        fargs = empty;
    if (!depfuncs)
        depfuncs = empty;
    if (!modules)
        modules = empty;
    if (!cbargs)
        cbargs = empty;
    PyObject *result = NULL, *call_args = NULL, *pick = NULL, *blob = NULL, *pins = NULL;
    ppc_shm_seg *seg = NULL;
    ppc_fastbuf fb;
    ppc_fastbuf_init(&fb);
    if (!group)
        group = G.str_default;
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "func argument must be callable");
        goto done;
    }
    if (check_tuple(fargs, "args") < 0 || check_tuple(depfuncs, "depfuncs") < 0 ||
        check_tuple(modules, "modules") < 0 || check_tuple(cbargs, "callbackargs") < 0)
        goto done;
    if (globals != Py_None && !PyDict_Check(globals)) {
        PyErr_SetString(PyExc_TypeError, "globals argument must be a dictionary");
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(modules); i++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(modules, i))) {
            PyErr_SetString(PyExc_TypeError, "modules argument must be a list of strings");
            goto done;
        }
    }
    if (callback != Py_None && !PyCallable_Check(callback)) {
        PyErr_SetString(PyExc_TypeError, "callback argument must be callable or None");
        goto done;
    }
    /* A bound method travels as its function with self as first argument. */
    if (PyMethod_Check(func)) {
        PyObject *selfobj = PyMethod_GET_SELF(func);
        func = PyMethod_GET_FUNCTION(func);
        Py_ssize_t n = PyTuple_GET_SIZE(fargs);
        call_args = PyTuple_New(n + 1);
        if (!call_args)
            goto done;
        Py_INCREF(selfobj);
        PyTuple_SET_ITEM(call_args, 0, selfobj);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *a = PyTuple_GET_ITEM(fargs, i);
            Py_INCREF(a);
            PyTuple_SET_ITEM(call_args, i + 1, a);
        }
    } else {
        call_args = fargs;
        Py_INCREF(call_args);
    }
    /* Large arguments go into a shared-memory segment (pickled straight
     * into it, numpy data out of band), not into the job and the pipe;
     * tiny ones are written by hand (fastpickle.c); the rest by _pickle. */
    const char *pb = NULL; /* the pickle stream, wherever it is */
    size_t pn = 0;
    size_t est = self->shm ? ppc_big_estimate(call_args, 4) : 0;
    if (self->vm_held && PyList_GET_SIZE(self->vm_held) > 0)
        ppc_server_sweep_pins(self, 0);
    if (est >= PPC_SHM_MIN_BYTES && shm_usable(self) &&
        (seg = ppc_engine_shm_get(self->engine, est + (1u << 20)))) {
        uint32_t nb;
        /* big bytes stay where they are: the worker reads them from here */
        if (ppc_engine_vm_on(self->engine) && !(pins = PyList_New(0)))
            goto done;
        if (ppc_pickle_into_seg(call_args, self->proto, seg, pins) < 0 ||
            ppc_oob_parse(seg->map, seg->used, &pn, &nb) < 0)
            goto done;
        pb = (const char *)seg->map;
        if (seg->ngaps && holes_mention_main(seg, pn))
            ppc_vm_fill_own(seg); /* the scan for __main__ needs the whole stream */
        else if (seg->ngaps)
            pb = "", pn = 0; /* scanned here, around the holes: no __main__ */
        if (!seg->ngaps)
            Py_CLEAR(pins);
        self->vm_arg_holes += seg->ngaps;
    } else if ((pn = ppc_fast_dumps(call_args, self->proto, &fb)) > 0) {
        pb = (const char *)fb.data;
    } else {
        PyObject *dargs[2] = {call_args, self->proto_obj};
        pick = PyObject_Vectorcall(G.pickle_dumps, dargs, 2, NULL);
        if (!pick)
            goto done;
        pb = PyBytes_AS_STRING(pick);
        pn = (size_t)PyBytes_GET_SIZE(pick);
        if (pn >= PPC_SHM_MIN_BYTES && shm_usable(self) &&
            (seg = ppc_engine_shm_get(self->engine, pn + 64)) && ppc_bytes_into_seg(pb, pn, seg) < 0)
            goto done;
    }
    blob = ppc_ship_blob(self, func, depfuncs, modules, globals, pb, pn);
    if (!blob)
        goto done;
    uint32_t gid;
    if (group_id(self, group, &gid) < 0)
        goto done;
    ppc_blob *b = PyCapsule_GetPointer(blob, "ppc_blob");
    if (!b)
        goto done;
    ppc_job *j;
    if (seg) {
        j = ppc_job_new(b, NULL, 0);
        if (j) {
            j->args_seg = seg;
            seg = NULL;
        }
    } else {
        size_t skip = ppc_pickle_frame_skip(pb, pn);
        j = ppc_job_new(b, NULL, pn - skip);
        if (j)
            ppc_pickle_copy_unframed(j->args, pb, pn, skip);
    }
    if (!j) {
        PyErr_NoMemory();
        goto done;
    }
    j->timeout_ms = timeout_ms;
    j->retries = retries;
    int has_cb = callback != Py_None;
    ppc_Job *jo = ppc_job_wrap(self, j, has_cb ? callback : NULL, cbargs);
    if (!jo) {
        ppc_job_decref(j);
        goto done;
    }
    jo->pins = pins; /* kept until the job has finished */
    pins = NULL;
    if (has_cb) {
        Py_INCREF(jo); /* released by the event thread after the callback */
        j->user = jo;
    }
    if (ppc_engine_submit(self->engine, j, gid, has_cb) < 0) {
        if (has_cb) {
            j->user = NULL;
            Py_DECREF(jo);
        }
        Py_DECREF(jo);
        PyErr_SetString(G.DestroyedServerError,
                        "Cannot submit jobs: server instance has been destroyed");
        goto done;
    }
    result = (PyObject *)jo;
done:
    if (seg)
        ppc_engine_shm_put(self->engine, seg);
    Py_XDECREF(pins);
    ppc_fastbuf_free(&fb);
    Py_XDECREF(call_args);
    Py_XDECREF(pick);
    Py_XDECREF(blob);
    return result;
}

static PyObject *Server_wait(ppc_Server *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"group", NULL};
    PyObject *group = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait", kwlist, &group))
        return NULL;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    if (!self->engine)
        Py_RETURN_NONE;
    uint32_t gid = PPC_GROUP_ALL;
    if (group != Py_None) {
        PyObject *v = PyDict_GetItemWithError(self->groups, group);
        if (!v) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE; /* no job was ever submitted in that group */
        }
        gid = (uint32_t)PyLong_AsUnsignedLong(v);
    }
    if (ppc_server_in_callback(self)) {
        /* In a callback: the callback being run is itself pending, and the
         * jobs left may need this thread for theirs. Waiting would never end. */
        int done;
        Py_BEGIN_ALLOW_THREADS
        done = ppc_engine_wait_group(self->engine, gid, 0);
        Py_END_ALLOW_THREADS
        if (done)
            Py_RETURN_NONE;
        PyErr_SetString(PyExc_RuntimeError,
                        "wait() called from a callback would wait for itself: callbacks run on "
                        "one thread, and the jobs being waited for need it; wait from another "
                        "thread");
        return NULL;
    }
    if (ppc_wait_interruptible(self->engine, NULL, gid, 1) < 0)
        return NULL;
    if (self->vm_held && PyList_GET_SIZE(self->vm_held) > 0)
        ppc_server_sweep_pins(self, 0); /* bytes of dropped Jobs now finished */
    Py_RETURN_NONE;
}

/* How many big bytes objects crossed without a copy by their owner (vm.h),
 * and how many Job objects' bytes wait for their jobs: for tests. */
static PyObject *Server_data_stats(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    return Py_BuildValue("{sKsKsn}", "arg_holes", (unsigned long long)self->vm_arg_holes,
                         "result_holes", (unsigned long long)self->vm_result_holes, "held",
                         self->vm_held ? PyList_GET_SIZE(self->vm_held) : (Py_ssize_t)0);
}

static PyObject *Server_get_ncpus(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    if (!self->engine)
        return PyLong_FromLong(0);
    return PyLong_FromLong(ppc_engine_get_workers(self->engine));
}

static PyObject *Server_set_ncpus(ppc_Server *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ncpus", NULL};
    PyObject *o = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:set_ncpus", kwlist, &o))
        return NULL;
    int n = o ? parse_ncpus(o) : detect_ncpus();
    if (n < 0)
        return NULL;
    if (check_alive(self) < 0)
        return NULL;
    if (ppc_engine_set_workers(self->engine, n) < 0) {
        PyErr_SetString(G.DestroyedServerError, "server instance has been destroyed");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Server_get_active_nodes(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    PyObject *d = PyDict_New();
    if (!d || !self->engine || self->destroyed)
        return d;
    ppc_node_stats st[64];
    int n = ppc_engine_stats(self->engine, st, 64);
    for (int i = 0; i < n; i++) {
        if (!st[i].active)
            continue;
        PyObject *v = PyLong_FromLong(st[i].ncpus);
        if (!v || PyDict_SetItemString(d, st[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *Server_stats(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    PyObject *d = PyDict_New();
    if (!d || !self->engine)
        return d;
    ppc_node_stats st[64];
    int n = ppc_engine_stats(self->engine, st, 64);
    for (int i = 0; i < n; i++) {
        PyObject *v = Py_BuildValue("(iKd)", st[i].ncpus, (unsigned long long)st[i].njobs,
                                    (double)st[i].time_ns / 1e9);
        if (!v || PyDict_SetItemString(d, st[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *Server_server_info(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    int port = -1, n = 0;
    int64_t idle = 0;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    if (self->engine)
        ppc_engine_server_info(self->engine, &port, &n, &idle);
    return Py_BuildValue("(iid)", port, n, (double)idle / 1000.0);
}

static PyObject *Server_status_port(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    return PyLong_FromLong(self->engine ? ppc_engine_status_port(self->engine) : 0);
}

static PyObject *Server_active_tasks(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    return PyLong_FromSize_t(self->engine ? ppc_engine_pending(self->engine) : 0);
}

static PyObject *Server_rescan(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    if (!self->engine || self->destroyed) {
        PyErr_SetString(G.DestroyedServerError, "server instance has been destroyed");
        return NULL;
    }
    if (ppc_engine_rescan(self->engine) < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "rescan() needs autodiscovery: a \"*\" entry in ppservers");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Server_worker_pids(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self) < 0)
        return NULL;
    int pids[1024];
    int n = self->engine ? ppc_engine_worker_pids(self->engine, pids, 1024) : 0;
    PyObject *l = PyList_New(n);
    for (int i = 0; l && i < n; i++) {
        PyObject *v = PyLong_FromLong(pids[i]);
        if (!v) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

static PyObject *Server_destroy(ppc_Server *self, PyObject *noargs)
{
    (void)noargs;
    if (!self->engine || self->destroyed)
        Py_RETURN_NONE;
    self->destroyed = 1;
    if (ppc_engine_foreign(self->engine))
        Py_RETURN_NONE; /* a forked child's copy: the parent's engine is not ours to stop */
    ppc_retchan_close(self->retchan); /* mapped results outlive the workers */
    self->retchan = NULL;
    Py_BEGIN_ALLOW_THREADS
    ppc_engine_stop(self->engine);
    Py_END_ALLOW_THREADS
    ppc_server_sweep_pins(self, 1); /* workers are gone */
    /* Let the event thread deliver what is left, then end, unless we are
     * that thread (destroy() called from a callback). */
    if (self->events_started && !ppc_server_in_callback(self) && !events_join(self->ev, 5.0) &&
        PyErr_WarnEx(PyExc_RuntimeWarning, "the pp events thread did not end within 5 s", 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Server_get_created(ppc_Server *self, void *c)
{
    (void)c;
    return PyFloat_FromDouble(self->created);
}

static PyObject *Server_get_destroyed(ppc_Server *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->destroyed);
}

static PyObject *Server_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    return type->tp_alloc(type, 0);
}

static int Server_traverse(ppc_Server *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fn_cache);
    Py_VISIT(self->fn_volatile);
    Py_VISIT(self->groups);
    Py_VISIT(self->group_names);
    for (int i = 0; i < 4; i++)
        Py_VISIT(self->last_key[i]);
    Py_VISIT(self->last_cap);
    return 0;
}

static int Server_clear(ppc_Server *self)
{
    for (int i = 0; i < 4; i++)
        Py_CLEAR(self->last_key[i]);
    Py_CLEAR(self->last_cap);
    Py_CLEAR(self->fn_cache);
    Py_CLEAR(self->fn_volatile);
    Py_CLEAR(self->proto_obj);
    Py_CLEAR(self->groups);
    Py_CLEAR(self->group_names);
    Py_CLEAR(self->ppservers);
    Py_CLEAR(self->secret);
    Py_CLEAR(self->vm_held);
    Py_CLEAR(self->test);
    return 0;
}

/* The last reference went: stop as destroy() does (no Job object of it is
 * left, they hold the Server; no callback is pending, its Job holds it
 * too), without waiting for the events thread, which may be this thread.
 * The engine is freed with the events capsule, by whichever of this and
 * the events thread lets it go last. */
static void Server_dealloc(ppc_Server *self)
{
    PyObject_GC_UnTrack(self);
    ppc_retchan_close(self->retchan);
    self->retchan = NULL;
    if (self->engine && !self->destroyed && !ppc_engine_foreign(self->engine)) {
        ppc_engine *e = self->engine;
        Py_BEGIN_ALLOW_THREADS
        ppc_engine_stop(e);
        Py_END_ALLOW_THREADS
    }
    self->engine = NULL;
    self->ev = NULL;
    Server_clear(self);
    Py_CLEAR(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Server_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))Server_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(func, args=(), depfuncs=(), modules=(), callback=None, callbackargs=(), "
     "group='default', globals=None)\n--\n\nSubmit func(*args) for execution; returns a job "
     "whose call returns the result."},
    {"wait", (PyCFunction)(void (*)(void))Server_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(group=None)\n--\n\nWait for all jobs of the group (all jobs when None) and their "
     "callbacks."},
    {"get_ncpus", (PyCFunction)Server_get_ncpus, METH_NOARGS,
     "Number of local worker processes."},
    {"set_ncpus", (PyCFunction)(void (*)(void))Server_set_ncpus, METH_VARARGS | METH_KEYWORDS,
     "set_ncpus(ncpus='autodetect')\n--\n\nGrow or shrink the local pool, also while jobs run."},
    {"get_active_nodes", (PyCFunction)Server_get_active_nodes, METH_NOARGS,
     "Dictionary node name -> number of workers, for the nodes in use."},
    {"_data_stats", (PyCFunction)Server_data_stats, METH_NOARGS,
     "Counts of large bytes read across processes (internal)."},
    {"_stats", (PyCFunction)Server_stats, METH_NOARGS,
     "Node name -> (ncpus, njobs, seconds of job time)."},
    {"_active_tasks", (PyCFunction)Server_active_tasks, METH_NOARGS,
     "Number of jobs submitted and not yet done."},
    {"_server_info", (PyCFunction)Server_server_info, METH_NOARGS,
     "ppserver: (port, clients connected, seconds without a client)."},
    {"rescan", (PyCFunction)Server_rescan, METH_NOARGS,
     "Autodiscovery: query for ppservers again and listen for announcements "
     "for the discovery window (5 s); returns at once."},
    {"_status_port", (PyCFunction)Server_status_port, METH_NOARGS,
     "The status page's port (0: not served)."},
    {"_worker_pids", (PyCFunction)Server_worker_pids, METH_NOARGS,
     "Process ids of the live local workers."},
    {"destroy", (PyCFunction)Server_destroy, METH_NOARGS,
     "Stop the workers; pending jobs raise DestroyedServerError."},
    {NULL, NULL, 0, NULL}};

static PyObject *Server_get_forked(ppc_Server *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->forked);
}

static PyGetSetDef Server_getset[] = {
    {"_created", (getter)Server_get_created, NULL, "Creation time (time.time()).", NULL},
    {"_destroyed", (getter)Server_get_destroyed, NULL, "True after destroy().", NULL},
    {"_forked_workers", (getter)Server_get_forked, NULL,
     "How many of the first local workers were forked from this process (the others, and "
     "every later one, are fresh interpreters).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject ppc_ServerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._ppc.Server",
    .tp_basicsize = sizeof(ppc_Server),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Parallel Python job server (engine in C).",
    .tp_new = Server_new,
    .tp_init = (initproc)Server_init,
    .tp_dealloc = (destructor)Server_dealloc,
    .tp_traverse = (traverseproc)Server_traverse,
    .tp_clear = (inquiry)Server_clear,
    .tp_methods = Server_methods,
    .tp_getset = Server_getset,
};

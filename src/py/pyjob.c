/* pyjob.c - the Job extension type returned by Server.submit.
 *
 * job() waits with the GIL released (in short slices so Ctrl-C is honoured
 * at once), then unpacks the worker's result a single time: prints what the
 * job wrote to stdout, unpickles the value, or rebuilds the exception with
 * the worker's traceback attached as __cause__.
 *
 * A Job is also a future (concurrent.futures' names and semantics):
 * result/exception with a timeout, done/running/cancelled, cancel (only
 * while queued), kill (its worker is killed and replaced), done callbacks
 * (run on the Server's events thread, or at once when already done) and
 * `await job` (pp/futures.py: one asyncio future per awaited job, settled
 * from a done callback, no thread per job). */
#include "ppc_py.h"
#include "../core/frame.h"
#include "structmember.h" /* T_OBJECT_EX: an Executor future's _job slot */
#include <string.h>
#include <sys/mman.h>


#define WAIT_SLICE_MS 50

ppc_Job *ppc_job_wrap(ppc_Server *s, ppc_job *j, PyObject *callback, PyObject *cbargs)
{
    ppc_Job *self = PyObject_New(ppc_Job, &ppc_JobType);
    if (!self)
        return NULL;
    Py_INCREF(s);
    self->server = s;
    self->job = j;
    Py_XINCREF(callback);
    self->callback = callback;
    Py_INCREF(cbargs);
    self->callbackargs = cbargs;
    self->value = NULL;
    self->exc = NULL;
    self->pins = NULL;
    self->unpacked = 0;
    self->done_cbs = NULL;
    self->watched = 0;
    return self;
}

/* job() or job.wait() for a job whose callback has not run yet, called from
 * a callback: its callback needs the thread that is waiting. */
static int would_deadlock(ppc_Job *self)
{
    if (!ppc_server_in_callback(self->server) || !self->job->has_cb ||
        atomic_load_explicit(&self->job->state, memory_order_acquire) == PPC_JOB_DONE)
        return 0;
    PyErr_SetString(PyExc_RuntimeError,
                    "a job with a callback was waited for from a callback: callbacks run on "
                    "one thread, so its callback could never run; wait from another thread "
                    "or submit it without a callback");
    return 1;
}

int ppc_wait_interruptible(ppc_engine *e, ppc_job *j, uint32_t group, int is_group)
{
    for (;;) {
        int done;
        Py_BEGIN_ALLOW_THREADS
        if (is_group)
            done = ppc_engine_wait_group(e, group, WAIT_SLICE_MS);
        else
            done = ppc_engine_wait_job(e, j, WAIT_SLICE_MS);
        Py_END_ALLOW_THREADS
        if (done)
            return 0;
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

static int print_output(const char *s, size_t n)
{
    PyObject *out = PySys_GetObject("stdout"); /* borrowed */
    if (!out || out == Py_None)
        return 0;
    PyObject *txt = PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "replace");
    if (!txt)
        return -1;
    PyObject *r = PyObject_CallMethod(out, "write", "O", txt);
    Py_DECREF(txt);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *rebuild_exception(PyObject *payload)
{
    /* payload: (pickled exception or None, traceback text, type name,
     * message). An exception that cannot be rebuilt here becomes a
     * RemoteError naming its type and message. */
    PyObject *exc, *tb, *tname, *msg;
    if (!PyTuple_Check(payload) || !PyArg_ParseTuple(payload, "OOOO", &exc, &tb, &tname, &msg)) {
        PyErr_Clear();
        return PyObject_CallFunction(G.RemoteError, "s", "malformed exception from worker");
    }
    PyObject *e = NULL;
    if (PyBytes_Check(exc)) {
        e = PyObject_CallOneArg(G.pickle_loads, exc);
        if (!e || !PyExceptionInstance_Check(e)) {
            PyErr_Clear();
            Py_CLEAR(e);
        }
    }
    if (!e) {
        PyObject *text = PyUnicode_FromFormat("%S: %S", tname, msg);
        if (!text)
            return NULL;
        e = PyObject_CallOneArg(G.RemoteError, text);
        Py_DECREF(text);
        if (!e)
            return NULL;
    }
    PyObject *cause = PyObject_CallOneArg(G.RemoteTraceback, tb);
    if (cause) {
        PyException_SetCause(e, cause); /* steals */
    } else {
        PyErr_Clear();
    }
    return e;
}

/* The result's pickle part: a reference to a worker's segment. The worker
 * gets the segment back (once) when it has been read or is not wanted. */
static void return_result_seg(ppc_Job *self)
{
    ppc_job *j = self->job;
    ppc_result res;
    ppc_shm_ref r;
    if (!j || j->status != PPC_JOB_OK || !(j->result_aux & PPC_AUX_SHM) ||
        ppc_result_parse(j->result, j->result_len, &res) < 0 || ppc_result_ref(&res, &r) < 0)
        return;
    j->result_aux &= (uint16_t)~PPC_AUX_SHM;
    if (self->server && self->server->engine && !self->server->destroyed &&
        !ppc_engine_foreign(self->server->engine))
        ppc_engine_shm_return(self->server->engine, (int)r.pid, r.id, 0);
}

static void give_back(void *engine, int pid, uint64_t seg_id, int drop)
{
    ppc_engine_shm_return((ppc_engine *)engine, pid, seg_id, drop);
}

static void give_seg(void *engine, ppc_shm_seg *seg)
{
    ppc_engine_shm_put((ppc_engine *)engine, seg);
}

/* A result lying in the job's own argument segment (PPC_AUX_INARG: the
 * function returned its argument or part of it): the engine kept that
 * segment for it. It is mapped copy-on-write from our own memfd and the
 * result's buffers are views of that mapping: writable, never written
 * back; the segment goes back to our pool when the mapping dies. The
 * worker's blob (private memory here) is checked whole: its stream, and
 * every buffer inside the argument blob the segment holds. */
static PyObject *load_inarg_views(ppc_Job *self, ppc_shm_seg *seg, const uint8_t *p,
                                  const ppc_oob *o);

static PyObject *load_inarg_result(ppc_Job *self, const ppc_result *res)
{
    ppc_job *j = self->job;
    ppc_shm_seg *seg = j->result_seg;
    const uint8_t *p = res->data;
    size_t n = res->datalen;
    ppc_oob o; /* the blob is stream, table, trailer: no buffer of its own */
    if (!seg || ppc_oob_load_in(p, n, seg->used, &o) < 0) {
        PyErr_SetString(PyExc_ValueError, "malformed result in the argument segment");
        return NULL;
    }
    if (o.nbufs == 0 || o.stream_len != n - ppc_oob_tail_len(o.nbufs)) {
        ppc_oob_release(&o);
        PyErr_SetString(PyExc_ValueError, "malformed result in the argument segment");
        return NULL;
    }
    PyObject *obj = load_inarg_views(self, seg, p, &o);
    ppc_oob_release(&o);
    return obj;
}

/* The rest of load_inarg_result, once the layout o is checked. */
static PyObject *load_inarg_views(ppc_Job *self, ppc_shm_seg *seg, const uint8_t *p,
                                  const ppc_oob *o)
{
    ppc_job *j = self->job;
    size_t sl = o->stream_len;
    ppc_Server *s = self->server;
    if (s && !s->destroyed && s->engine && !ppc_engine_foreign(s->engine) && !s->retchan &&
        !(s->retchan = ppc_retchan_new(give_back, s->engine)))
        return NULL;
    ppc_retchan *c = s && !s->destroyed ? s->retchan : NULL;
    if (c)
        c->give_seg = give_seg;
    void *m = mmap(NULL, seg->cap, PROT_READ | PROT_WRITE, MAP_PRIVATE, seg->fd, 0);
    if (m == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError);
    ppc_ShmMap *map = ppc_shmmap_new(m, seg->cap, 0, 1);
    if (!map)
        return NULL;
    ppc_shmmap_own(map, c, seg, j->result_seg_pinned);
    j->result_seg = NULL; /* the mapping has it now */
    PyObject *bufs = ppc_oob_views((PyObject *)map, o), *obj = NULL;
    Py_DECREF(map);
    if (bufs) {
        PyObject *stream = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)sl, PyBUF_READ);
        PyObject *kw = stream ? Py_BuildValue("{sO}", "buffers", bufs) : NULL;
        PyObject *a = kw ? PyTuple_Pack(1, stream) : NULL;
        obj = a ? PyObject_Call(G.pickle_loads, a, kw) : NULL;
        Py_XDECREF(a);
        Py_XDECREF(kw);
        Py_XDECREF(stream);
        Py_DECREF(bufs);
    }
    return obj;
}

static int is_worker_pid(ppc_Server *s, int pid)
{
    int pids[1024];
    int n = s->engine ? ppc_engine_worker_pids(s->engine, pids, 1024) : 0;
    for (int i = 0; i < n; i++)
        if (pids[i] == pid)
            return 1;
    return 0;
}

/* Map the worker's result segment and unpickle. Without holes it is mapped
 * copy-on-write and its out-of-band buffers (numpy arrays' data) become
 * views of the mapping, cut by a private copy of the blob's layout (the
 * worker can still write the file; sealed, it cannot shrink it): writable, never written back, and the segment goes
 * back to the worker when the mapping dies with the last of them (at once
 * when the result holds none). With holes (big bytes read from the worker's
 * memory) everything is copied and the segment goes back at once. */
static PyObject *load_shm_result(ppc_Job *self, const ppc_result *res, int holes)
{
    ppc_shm_ref r;
    if (ppc_result_ref(res, &r) < 0 || r.len > ((uint64_t)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "malformed shared-memory result reference");
        return NULL;
    }
    if (!is_worker_pid(self->server, (int)r.pid)) {
        /* a large result waits in its worker until taken; a worker that
         * died in a later job (or was killed) took it along */
        PyErr_Format(PyExc_RuntimeError,
                     "worker process %d, which holds this job's large result until it is taken, "
                     "has exited since",
                     (int)r.pid);
        return NULL;
    }
    ppc_Server *s = self->server;
    int lend = !holes && !s->destroyed && s->engine;
    if (lend && !s->retchan && !(s->retchan = ppc_retchan_new(give_back, s->engine)))
        return NULL;
    size_t maplen = 0;
    void *m;
    Py_BEGIN_ALLOW_THREADS
    m = ppc_shm_map_peer((int)r.pid, (int)r.fd, (size_t)r.len,
                         holes  ? PPC_MAP_LAZY
                         : lend ? PPC_MAP_PRIVATE
                                : 0,
                         &maplen);
    Py_END_ALLOW_THREADS
    if (!m) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    if (lend) {
        ppc_ShmMap *map = ppc_shmmap_new(m, maplen, 0, 1);
        if (!map)
            return NULL;
        ppc_shmmap_lent(map, s->retchan, (int)r.pid, r.id);
        self->job->result_aux &= (uint16_t)~PPC_AUX_SHM; /* the mapping gives it back */
        PyObject *obj = ppc_loads_blob(m, (size_t)r.len, (PyObject *)map, NULL);
        Py_DECREF(map);
        return obj;
    }
    ppc_vm_src src;
    PyObject *obj = NULL;
    if (holes && (ppc_vm_table_parse(m, maplen, (size_t)r.len, &src) < 0 ||
                  src.pid != (int)r.pid))
        PyErr_SetString(PyExc_ValueError, "malformed hole table in a worker's result");
    else
        obj = ppc_loads_blob(m, (size_t)r.len, NULL, holes ? &src : NULL);
    if (holes)
        ppc_vm_src_free(&src);
    ppc_shm_unmap(m, maplen);
    return obj;
}

/* The status a stopped job reports: a remote node answers a KILL with
 * EKILLED whatever the reason; our own request says which. */
static int job_status(ppc_job *j)
{
    int st = j->status;
    if (st == PPC_JOB_EKILLED || st == PPC_JOB_ETIMEOUT) {
        int kr = atomic_load(&j->killreq);
        if (kr)
            st = kr;
    }
    return st;
}

/* The class for a stopped job's error (new reference). */
static PyObject *stop_error_type(int st)
{
    if (st == PPC_JOB_ETIMEOUT)
        return ppc_import_attr("pp.futures", "TimeoutError");
    return ppc_import_attr("concurrent.futures", "CancelledError");
}

int ppc_job_unpack(ppc_Job *self)
{
    if (self->unpacked)
        return 0;
    Py_CLEAR(self->pins); /* the job is finished: no worker reads them any more */
    ppc_job *j = self->job;
    int st = job_status(j);
    if (st == PPC_JOB_ECANCELLED || st == PPC_JOB_EKILLED || st == PPC_JOB_ETIMEOUT) {
        PyObject *type = stop_error_type(st);
        const char *msg = j->result ? (const char *)j->result : "job stopped";
        self->exc = type ? PyObject_CallFunction(type, "s", msg) : NULL;
        Py_XDECREF(type);
        if (!self->exc)
            return -1;
        self->unpacked = 1;
        return 0;
    }
    if (j->status != PPC_JOB_OK) {
        PyObject *type = j->status == PPC_JOB_EDESTROYED ? G.DestroyedServerError : G.WorkerError;
        const char *msg = j->result ? (const char *)j->result : "job failed";
        self->exc = PyObject_CallFunction(type, "s", msg);
        if (!self->exc)
            return -1;
        self->unpacked = 1;
        return 0;
    }
    ppc_result res;
    if (ppc_result_parse(j->result, j->result_len, &res) < 0) {
        self->exc = PyObject_CallFunction(G.WorkerError, "s", "malformed result from worker");
        self->unpacked = self->exc != NULL;
        return self->exc ? 0 : -1;
    }
    int kind = res.kind;
    if (res.outlen && print_output((const char *)res.out, res.outlen) < 0)
        return -1;
    PyObject *obj = NULL;
    if (j->result_aux & PPC_AUX_INARG) {
        obj = load_inarg_result(self, &res);
    } else if (j->result_aux & PPC_AUX_SHM) {
        obj = load_shm_result(self, &res, (j->result_aux & PPC_AUX_VM) != 0);
        if (obj && (j->result_aux & PPC_AUX_VM))
            self->server->vm_result_holes++;
        return_result_seg(self);
    } else {
        obj = ppc_loads_inline(res.data, res.datalen, j->result_aux & PPC_AUX_OOB);
    }
    if (!obj) {
        /* the result cannot be rebuilt here: report it as the job's error */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        if (tb && v)
            PyException_SetTraceback(v, tb);
        Py_XDECREF(t);
        Py_XDECREF(tb);
        self->exc = v ? PyObject_CallFunction(G.RemoteError, "sO",
                                              kind == PPC_R_EXCEPTION
                                                  ? "the job's exception could not be unpickled here"
                                                  : "the job's result could not be unpickled here",
                                              v)
                      : NULL;
        if (self->exc)
            PyException_SetCause(self->exc, v); /* steals */
        else {
            Py_XDECREF(v);
            return -1;
        }
    } else if (kind == PPC_R_EXCEPTION) {
        self->exc = rebuild_exception(obj);
        Py_DECREF(obj);
        if (!self->exc)
            return -1;
    } else {
        self->value = obj;
    }
    self->unpacked = 1;
    /* the bytes are not needed any more */
    free(j->result);
    j->result = NULL;
    j->result_len = 0;
    return 0;
}

static int cancelled_early(ppc_Job *self)
{
    return atomic_load(&self->job->claim) == PPC_CLAIM_CANCELLED;
}

static PyObject *raise_cancelled(void)
{
    PyObject *t = ppc_import_attr("concurrent.futures", "CancelledError");
    if (t) {
        PyErr_SetString(t, "the job was cancelled");
        Py_DECREF(t);
    }
    return NULL;
}

static PyObject *Job_result(ppc_Job *self)
{
    if (!self->unpacked && ppc_server_check_owner(self->server) < 0)
        return NULL;
    if (cancelled_early(self) && atomic_load(&self->job->state) != PPC_JOB_DONE)
        return raise_cancelled();
    if (would_deadlock(self))
        return NULL;
    if (atomic_load_explicit(&self->job->state, memory_order_acquire) != PPC_JOB_DONE &&
        ppc_wait_interruptible(self->server->engine, self->job, 0, 0) < 0)
        return NULL;
    if (ppc_job_unpack(self) < 0)
        return NULL;
    if (self->exc) {
        if (!self->server->raise_exceptions && self->job->status == PPC_JOB_OK) {
            /* pp's behaviour: print the error, the result is None */
            PyObject *cause = PyException_GetCause(self->exc);
            PyObject *txt = cause ? PyObject_Str(cause) : PyObject_Str(self->exc);
            Py_XDECREF(cause);
            if (!txt)
                return NULL;
            const char *c = PyUnicode_AsUTF8(txt);
            char head[] = "An error has occured during the function execution\n";
            int rc = c ? print_output(head, strlen(head)) : -1;
            if (rc == 0)
                rc = print_output(c, strlen(c));
            Py_DECREF(txt);
            if (rc < 0)
                return NULL;
            Py_RETURN_NONE;
        }
        PyException_SetTraceback(self->exc, Py_None);
        PyErr_SetObject((PyObject *)Py_TYPE(self->exc), self->exc);
        return NULL;
    }
    Py_INCREF(self->value);
    return self->value;
}

static PyObject *Job_call(ppc_Job *self, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "a job is called without arguments");
        return NULL;
    }
    return Job_result(self);
}

/* Wait until done, at most secs (< 0: forever): 1 done, 0 timed out, -1
 * error. Cancelled counts as done. */
static int wait_secs(ppc_Job *self, double secs)
{
    if (ppc_server_check_owner(self->server) < 0 || would_deadlock(self))
        return -1;
    if (secs < 0) {
        if (cancelled_early(self))
            return 1;
        return ppc_wait_interruptible(self->server->engine, self->job, 0, 0) < 0 ? -1 : 1;
    }
    double left = secs;
    for (;;) {
        if (atomic_load_explicit(&self->job->state, memory_order_acquire) == PPC_JOB_DONE ||
            cancelled_early(self))
            return 1;
        if (left <= 0)
            return 0;
        int ms = left * 1000 < WAIT_SLICE_MS ? (int)(left * 1000) + 1 : WAIT_SLICE_MS, done;
        Py_BEGIN_ALLOW_THREADS
        done = ppc_engine_wait_job(self->server->engine, self->job, ms);
        Py_END_ALLOW_THREADS
        if (done)
            return 1;
        if (PyErr_CheckSignals() < 0)
            return -1;
        left -= ms / 1000.0;
    }
}

static int parse_timeout(PyObject *args, PyObject *kw, const char *fname, double *secs)
{
    if (PyTuple_GET_SIZE(args) == 0 && (!kw || PyDict_GET_SIZE(kw) == 0)) {
        *secs = -1; /* result(): no parsing on the common path */
        return 0;
    }
    static char *kwlist[] = {"timeout", NULL};
    PyObject *t = Py_None;
    char fmt[32];
    snprintf(fmt, sizeof fmt, "|O:%s", fname);
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwlist, &t))
        return -1;
    *secs = -1;
    if (t != Py_None) {
        *secs = PyFloat_AsDouble(t);
        if (*secs == -1 && PyErr_Occurred())
            return -1;
        if (*secs < 0)
            *secs = 0;
    }
    return 0;
}

static int wait_or_raise(ppc_Job *self, PyObject *args, PyObject *kw, const char *fname)
{
    double secs;
    if (parse_timeout(args, kw, fname, &secs) < 0)
        return -1;
    int rc = wait_secs(self, secs);
    if (rc == 0) {
        PyObject *t = ppc_import_attr("concurrent.futures", "TimeoutError");
        if (t) {
            PyErr_SetString(t, "the job is not done yet");
            Py_DECREF(t);
        }
        return -1;
    }
    return rc < 0 ? -1 : 0;
}

static PyObject *Job_fresult(ppc_Job *self, PyObject *args, PyObject *kw)
{
    if (wait_or_raise(self, args, kw, "result") < 0)
        return NULL;
    if (cancelled_early(self) && atomic_load(&self->job->state) != PPC_JOB_DONE)
        return raise_cancelled();
    if (ppc_job_unpack(self) < 0)
        return NULL;
    if (self->exc) {
        PyException_SetTraceback(self->exc, Py_None);
        PyErr_SetObject((PyObject *)Py_TYPE(self->exc), self->exc);
        return NULL;
    }
    Py_INCREF(self->value);
    return self->value;
}

static int is_stop(ppc_Job *self)
{
    int st = job_status(self->job);
    return st == PPC_JOB_ECANCELLED || st == PPC_JOB_EKILLED;
}

static PyObject *Job_exception(ppc_Job *self, PyObject *args, PyObject *kw)
{
    if (wait_or_raise(self, args, kw, "exception") < 0)
        return NULL;
    if (cancelled_early(self) && atomic_load(&self->job->state) != PPC_JOB_DONE)
        return raise_cancelled();
    if (ppc_job_unpack(self) < 0)
        return NULL;
    if (self->exc && is_stop(self)) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->exc), self->exc);
        return NULL;
    }
    PyObject *r = self->exc ? self->exc : Py_None;
    Py_INCREF(r);
    return r;
}

static PyObject *Job_done(ppc_Job *self, PyObject *noargs)
{
    (void)noargs;
    return PyBool_FromLong(atomic_load(&self->job->state) == PPC_JOB_DONE ||
                           cancelled_early(self));
}

static PyObject *Job_running(ppc_Job *self, PyObject *noargs)
{
    (void)noargs;
    return PyBool_FromLong(atomic_load(&self->job->state) == PPC_JOB_RUNNING &&
                           !cancelled_early(self));
}

static PyObject *Job_cancelled(ppc_Job *self, PyObject *noargs)
{
    (void)noargs;
    int c = cancelled_early(self) ||
            (atomic_load(&self->job->state) == PPC_JOB_DONE && is_stop(self));
    return PyBool_FromLong(c);
}

void ppc_job_fire_done(ppc_Job *self)
{
    while (self->done_cbs && PyList_GET_SIZE(self->done_cbs) > 0) {
        PyObject *fn = PyList_GET_ITEM(self->done_cbs, 0);
        Py_INCREF(fn);
        if (PyList_SetSlice(self->done_cbs, 0, 1, NULL) < 0) {
            Py_DECREF(fn);
            PyErr_WriteUnraisable((PyObject *)self);
            return;
        }
        PyObject *r = PyObject_CallOneArg(fn, (PyObject *)self);
        if (r)
            Py_DECREF(r);
        else
            PyErr_WriteUnraisable(fn);
        Py_DECREF(fn);
    }
}

static PyObject *Job_cancel(ppc_Job *self, PyObject *noargs)
{
    (void)noargs;
    if (cancelled_early(self))
        Py_RETURN_TRUE;
    if (ppc_server_check_owner(self->server) < 0)
        return NULL;
    if (self->server->destroyed || !ppc_engine_cancel(self->server->engine, self->job))
        Py_RETURN_FALSE;
    ppc_job_fire_done(self);
    Py_RETURN_TRUE;
}

static PyObject *Job_kill(ppc_Job *self, PyObject *noargs)
{
    (void)noargs;
    if (cancelled_early(self))
        Py_RETURN_TRUE;
    if (ppc_server_check_owner(self->server) < 0)
        return NULL;
    if (self->server->destroyed)
        Py_RETURN_FALSE;
    int rc = ppc_engine_kill(self->server->engine, self->job, PPC_JOB_EKILLED);
    if (rc == 1)
        ppc_job_fire_done(self);
    return PyBool_FromLong(rc != 0);
}

static PyObject *Job_add_done_callback(ppc_Job *self, PyObject *fn)
{
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "add_done_callback needs a callable");
        return NULL;
    }
    if (!self->done_cbs && !(self->done_cbs = PyList_New(0)))
        return NULL;
    if (PyList_Append(self->done_cbs, fn) < 0)
        return NULL;
    ppc_job *j = self->job;
    int done = atomic_load(&j->state) == PPC_JOB_DONE || cancelled_early(self);
    if (!done && !self->watched) {
        if (ppc_server_check_owner(self->server) < 0)
            return NULL;
        self->watched = 1;
        if (!j->has_cb) {
            /* the engine's event holds this Job until it is handled */
            Py_INCREF(self);
            j->user = self;
            if (!ppc_engine_watch(self->server->engine, j)) {
                j->user = NULL;
                Py_DECREF(self);
                done = 1;
            }
        }
        /* a job with a pp callback: the events thread runs these after it */
    }
    if (done)
        ppc_job_fire_done(self);
    Py_RETURN_NONE;
}

static PyObject *Job_await(ppc_Job *self)
{
    PyObject *f = ppc_import_attr("pp.futures", "_await");
    if (!f)
        return NULL;
    PyObject *r = PyObject_CallOneArg(f, (PyObject *)self);
    Py_DECREF(f);
    return r;
}

static PyObject *Job_wait(ppc_Job *self, PyObject *noargs)
{
    (void)noargs;
    if (ppc_server_check_owner(self->server) < 0 || would_deadlock(self) ||
        ppc_wait_interruptible(self->server->engine, self->job, 0, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Job_finished(ppc_Job *self, void *c)
{
    (void)c;
    return PyBool_FromLong(atomic_load(&self->job->state) == PPC_JOB_DONE);
}

static PyObject *Job_tid(ppc_Job *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(self->job->id);
}

static PyObject *Job_exec_time(ppc_Job *self, void *c)
{
    (void)c;
    if (atomic_load(&self->job->state) != PPC_JOB_DONE)
        Py_RETURN_NONE;
    return PyFloat_FromDouble((double)self->job->exec_ns / 1e9);
}

static PyObject *Job_group(ppc_Job *self, void *c)
{
    (void)c;
    PyObject *names = self->server->group_names;
    if (!names || self->job->group >= (uint32_t)PyList_GET_SIZE(names))
        Py_RETURN_NONE;
    PyObject *g = PyList_GET_ITEM(names, self->job->group);
    Py_INCREF(g);
    return g;
}

static PyObject *Job_repr(ppc_Job *self)
{
    int st = atomic_load(&self->job->state);
    return PyUnicode_FromFormat("<pp job %llu %s>", (unsigned long long)self->job->id,
                                st == PPC_JOB_DONE ? "finished" : "pending");
}

static void Job_dealloc(ppc_Job *self)
{
    if (self->job && atomic_load(&self->job->state) == PPC_JOB_DONE)
        return_result_seg(self); /* a result never taken */
    if (self->pins && self->job && atomic_load(&self->job->state) < PPC_JOB_COMPLETE &&
        self->server && !self->server->destroyed) {
        /* a worker may still read them: the server keeps them until then */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        if (ppc_server_hold_pins(self->server, self->job, self->pins) < 0)
            PyErr_WriteUnraisable((PyObject *)self);
        PyErr_Restore(t, v, tb);
    }
    Py_XDECREF(self->pins);
    if (self->job)
        ppc_job_decref(self->job);
    Py_XDECREF(self->server);
    Py_XDECREF(self->callback);
    Py_XDECREF(self->callbackargs);
    Py_XDECREF(self->value);
    Py_XDECREF(self->exc);
    Py_XDECREF(self->done_cbs);
    PyObject_Free(self);
}

static PyMethodDef Job_methods[] = {
    {"wait", (PyCFunction)Job_wait, METH_NOARGS, "Wait until the job is finished."},
    {"result", (PyCFunction)(void (*)(void))Job_fresult, METH_VARARGS | METH_KEYWORDS,
     "result(timeout=None): the job's value, or raise its exception; "
     "concurrent.futures.TimeoutError after timeout seconds, CancelledError when cancelled "
     "or killed, TimeoutError when it ran past submit's timeout."},
    {"exception", (PyCFunction)(void (*)(void))Job_exception, METH_VARARGS | METH_KEYWORDS,
     "exception(timeout=None): the job's exception, or None."},
    {"done", (PyCFunction)Job_done, METH_NOARGS, "True when finished or cancelled."},
    {"running", (PyCFunction)Job_running, METH_NOARGS, "True while sent to a node."},
    {"cancelled", (PyCFunction)Job_cancelled, METH_NOARGS, "True when cancelled or killed."},
    {"cancel", (PyCFunction)Job_cancel, METH_NOARGS,
     "Cancel the job if still queued (it never runs): True, else False."},
    {"kill", (PyCFunction)Job_kill, METH_NOARGS,
     "Stop the job: cancelled if queued, else its worker is killed and replaced; result() "
     "raises CancelledError. False when it is done already."},
    {"add_done_callback", (PyCFunction)Job_add_done_callback, METH_O,
     "fn(job) once the job is done (at once if it is)."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Job_getset[] = {
    {"finished", (getter)Job_finished, NULL, "True once the result (and callback) are in.",
     NULL},
    {"tid", (getter)Job_tid, NULL, "The job's id.", NULL},
    {"group", (getter)Job_group, NULL, "The job's group.", NULL},
    {"exec_time", (getter)Job_exec_time, NULL,
     "Seconds the job ran in its worker (as the worker reports), None until done.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyAsyncMethods Job_async = {.am_await = (unaryfunc)Job_await};

PyTypeObject ppc_JobType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._ppc.Job",
    .tp_basicsize = sizeof(ppc_Job),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A submitted job; call it to get its result (waits if needed).",
    .tp_dealloc = (destructor)Job_dealloc,
    .tp_call = (ternaryfunc)Job_call,
    .tp_repr = (reprfunc)Job_repr,
    .tp_methods = Job_methods,
    .tp_getset = Job_getset,
    .tp_as_async = &Job_async,
};

/* ------------------------------------------- pp.Executor's fast paths
 *
 * pp.Executor derives from _ExecutorCore, whose submit is wholly in C,
 * and its futures' result() is _future_result (bound as a method,
 * instancemethod) for the common case (no timeout, a value), so a future
 * costs little more than its job. result()'s other cases go to the Python
 * method _result_py, which handles every case. */

static PyObject *interned(PyObject **slot, const char *s)
{
    if (!*slot)
        *slot = PyUnicode_InternFromString(s);
    return *slot;
}

static PyObject *getattr_s(PyObject *o, PyObject **slot, const char *name)
{
    PyObject *n = interned(slot, name);
    return n ? PyObject_GetAttr(o, n) : NULL;
}

static PyObject *s_job, *s_result_py;

/* The class holding the futures' _job slot (pp.executor._JobFuture) and
 * the slot's offset, from the first Executor set up: result() reads the
 * slot directly in its instances. */
static PyTypeObject *jf_type;
static Py_ssize_t jf_off;
static PyObject *s_globals_kw, *s_name, *s_main;

static PyObject *slow(PyObject **slot, const char *name, PyObject *const *a, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    PyObject *n = interned(slot, name);
    return n ? PyObject_VectorcallMethod(n, a, (size_t)nargs, kwnames) : NULL;
}

/* result() without a timeout: the job is the truth (a future bound to a
 * job settles from it), so its value is returned as is, the future left
 * for the Python methods to settle under the condition when something
 * asks (done, exception, repr, a waiter, a callback). Marking it finished
 * here, without the condition, could slip between a waiter's look at
 * _state and its registering (a lost wake-up). Errors, cancellation and
 * timeouts: _result_py. */
static PyObject *future_result(PyObject *mod, PyObject *const *a, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    (void)mod;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw != 0)
        return slow(&s_result_py, "_result_py", a, nargs, kwnames);
    PyObject *job;
    if (jf_type && PyObject_TypeCheck(a[0], jf_type)) {
        job = *(PyObject **)((char *)a[0] + jf_off); /* the _job slot */
        Py_XINCREF(job);
    } else {
        job = getattr_s(a[0], &s_job, "_job");
    }
    if (!job || !Py_IS_TYPE(job, &ppc_JobType)) {
        Py_XDECREF(job);
        PyErr_Clear();
        return slow(&s_result_py, "_result_py", a, nargs, kwnames);
    }
    ppc_Job *jo = (ppc_Job *)job;
    PyObject *v = Job_fresult(jo, G.empty_tuple, NULL); /* waits without the GIL */
    if (!v) {
        int done = atomic_load(&jo->job->state) == PPC_JOB_DONE || cancelled_early(jo);
        Py_DECREF(job);
        if (!done)
            return NULL; /* interrupted while waiting */
        PyErr_Clear();   /* the job's own error: the stdlib's way below */
        return slow(&s_result_py, "_result_py", a, nargs, kwnames);
    }
    Py_DECREF(job);
    return v;
}

/* pp.Executor's C base: its Server's bound submit, its Future class, the futures not yet
 * known done (for shutdown), the shutdown flag, and the lock that makes
 * "not shut down, submit, remember the future" one step against shutdown.
 * The lock is held across Server.submit, as the stdlib's executors hold
 * theirs; waiting for it releases the GIL. */
typedef struct {
    PyObject_HEAD PyObject *submit; /* the Server's bound submit */
    PyObject *cls;                  /* the Executor's Future class */
    PyObject *futures;              /* list */
    Py_ssize_t prune_at;
    Py_ssize_t job_off; /* where a future's _job slot lies (its __slots__) */
    int shutdown;
    PyThread_type_lock lock;
} ExecCore;

/* A future's _job (borrowed; NULL while unset) */
static PyObject *fut_job(ExecCore *c, PyObject *f)
{
    return *(PyObject **)((char *)f + c->job_off);
}

static void core_lock(ExecCore *c)
{
    if (!PyThread_acquire_lock(c->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(c->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

static int job_known_done(PyObject *job)
{
    return !Py_IS_TYPE(job, &ppc_JobType) ||
           atomic_load(&((ppc_Job *)job)->job->state) == PPC_JOB_DONE ||
           cancelled_early((ppc_Job *)job);
}

/* Drop the futures whose jobs are done from the list (kept for shutdown);
 * the next pruning when it has doubled. 0 or -1. */
static int prune_futures(ExecCore *c)
{
    PyObject *futs = c->futures;
    Py_ssize_t n = PyList_GET_SIZE(futs), k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyList_GET_ITEM(futs, i);
        PyObject *job = fut_job(c, f);
        if (!job || !job_known_done(job)) {
            Py_INCREF(f);
            PyObject *old = PyList_GET_ITEM(futs, k);
            PyList_SET_ITEM(futs, k, f);
            Py_DECREF(old);
            k++;
        }
    }
    if (PyList_SetSlice(futs, k, n, NULL) < 0)
        return -1;
    c->prune_at = k * 2 > 1024 ? k * 2 : 1024;
    return 0;
}

/* Made empty, whatever the arguments (pp.Executor's own go to its
 * __init__, which then calls _setup). */
static PyObject *core_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    ExecCore *c = (ExecCore *)tp->tp_alloc(tp, 0);
    if (!c)
        return NULL;
    c->lock = PyThread_allocate_lock();
    c->futures = PyList_New(0);
    if (!c->lock || !c->futures) {
        Py_DECREF(c);
        return PyErr_NoMemory();
    }
    c->prune_at = 1024;
    return (PyObject *)c;
}

/* _setup(submit, future_class): the Server's bound submit and the class of
 * the futures, once. */
static PyObject *core_setup(ExecCore *c, PyObject *a)
{
    PyObject *submit, *cls;
    if (!PyArg_ParseTuple(a, "OO!", &submit, &PyType_Type, &cls))
        return NULL;
    if (c->submit) {
        PyErr_SetString(PyExc_RuntimeError, "the Executor is set up already");
        return NULL;
    }
    /* the futures are made here, so their _job slot is set and read
     * directly: the class must have it as a __slots__ member */
    PyObject *d = PyObject_GetAttrString(cls, "_job");
    if (!d && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        Py_INCREF(Py_None);
        d = Py_None;
    }
    if (!d)
        return NULL;
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
             PyType_IsSubtype((PyTypeObject *)cls, PyDescr_TYPE(d)) &&
             ((PyMemberDescrObject *)d)->d_member->offset >= (Py_ssize_t)sizeof(PyObject) &&
             ((PyMemberDescrObject *)d)->d_member->offset <=
                 ((PyTypeObject *)cls)->tp_basicsize - (Py_ssize_t)sizeof(PyObject *);
    Py_ssize_t off = ok ? ((PyMemberDescrObject *)d)->d_member->offset : 0;
    if (!ok) {
        Py_DECREF(d);
        PyErr_SetString(PyExc_TypeError, "future_class needs a _job slot (__slots__)");
        return NULL;
    }
    c->job_off = off;
    if (!jf_type) {
        jf_type = PyDescr_TYPE(d);
        Py_INCREF(jf_type);
        jf_off = off;
    }
    Py_DECREF(d);
    Py_INCREF(submit);
    c->submit = submit;
    Py_INCREF(cls);
    c->cls = cls;
    Py_RETURN_NONE;
}

static int core_traverse(ExecCore *c, visitproc visit, void *arg)
{
    Py_VISIT(c->submit);
    Py_VISIT(c->cls);
    Py_VISIT(c->futures);
    return 0;
}

static int core_clear(ExecCore *c)
{
    Py_CLEAR(c->submit);
    Py_CLEAR(c->cls);
    Py_CLEAR(c->futures);
    return 0;
}

static void core_dealloc(ExecCore *c)
{
    PyObject_GC_UnTrack(c);
    core_clear(c);
    if (c->lock)
        PyThread_free_lock(c->lock);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* A new future of the Executor's Future class bound to the job of
 * fn(*args, **kwargs); RuntimeError after shutdown. kwargs NULL or a
 * non-empty dict (then the job runs Chunk(fn, 2) over (args, kwargs)),
 * g NULL or the globals fn takes along. */
static PyObject *core_submit_impl(ExecCore *c, PyObject *fn, PyObject *args, PyObject *kwargs,
                                  PyObject *g)
{
    PyObject *fut = NULL, *job = NULL, *chunk = NULL, *pair = NULL;
    if (!c->submit || !c->futures) {
        PyErr_SetString(PyExc_RuntimeError, "the Executor is not set up");
        return NULL;
    }
    core_lock(c);
    if (c->shutdown) {
        PyErr_SetString(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
        goto out;
    }
    if (kwargs) {
        chunk = PyObject_CallFunction((PyObject *)&ppc_ChunkType, "Oi", fn, 2);
        pair = chunk ? PyTuple_Pack(2, args, kwargs) : NULL;
        if (!pair)
            goto out;
        fn = chunk;
        args = pair;
    }
    if (g) {
        if (!s_globals_kw && !(s_globals_kw = Py_BuildValue("(s)", "globals")))
            goto out;
        PyObject *call[4] = {NULL, fn, args, g};
        job = PyObject_Vectorcall(c->submit, call + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                  s_globals_kw);
    } else {
        PyObject *call[3] = {NULL, fn, args};
        job = PyObject_Vectorcall(c->submit, call + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (!job)
        goto out;
    PyTypeObject *cls = (PyTypeObject *)c->cls;
    fut = cls->tp_alloc(cls, 0); /* its slots zeroed */
    if (!fut)
        goto out;
    *(PyObject **)((char *)fut + c->job_off) = job; /* the reference moves over */
    job = NULL;
    if (PyList_Append(c->futures, fut) < 0) {
        Py_CLEAR(fut);
        goto out;
    }
    if (PyList_GET_SIZE(c->futures) >= c->prune_at && prune_futures(c) < 0)
        Py_CLEAR(fut);
out:
    PyThread_release_lock(c->lock);
    Py_XDECREF(job);
    Py_XDECREF(chunk);
    Py_XDECREF(pair);
    return fut;
}

/* _close() -> the futures kept (not known done); no submit succeeds after */
static PyObject *core_close(ExecCore *c, PyObject *unused)
{
    (void)unused;
    PyObject *empty = PyList_New(0);
    if (!empty)
        return NULL;
    core_lock(c);
    c->shutdown = 1;
    PyObject *old = c->futures;
    c->futures = empty;
    PyThread_release_lock(c->lock);
    return old ? old : PyList_New(0); /* NULL once cleared by the GC */
}

static PyObject *core_get_closed(ExecCore *c, void *unused)
{
    (void)unused;
    return PyBool_FromLong(c->shutdown);
}

static PyObject *core_get_pending(ExecCore *c, void *unused)
{
    (void)unused;
    if (!c->futures)
        return PyList_New(0);
    return PyList_GetSlice(c->futures, 0, PyList_GET_SIZE(c->futures));
}

/* Executor.submit(fn, /, *args, **kwargs) */
static PyObject *core_submit(ExecCore *self, PyObject *const *a, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "submit expected at least 1 positional argument (the function)");
        return NULL;
    }
    PyObject *fn = a[0];
    PyObject *g = NULL; /* a function of __main__ takes its globals (its imports) along */
    if (PyFunction_Check(fn)) {
        PyObject *gl = PyFunction_GET_GLOBALS(fn);
        if (!interned(&s_name, "__name__") || !interned(&s_main, "__main__"))
            return NULL;
        PyObject *nm = PyDict_GetItemWithError(gl, s_name); /* borrowed */
        if (!nm && PyErr_Occurred())
            return NULL;
        if (nm && (nm == s_main || (PyUnicode_Check(nm) && PyUnicode_Compare(nm, s_main) == 0)))
            g = gl;
    }
    PyObject *args = NULL, *kwargs = NULL, *fut = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    args = PyTuple_New(nargs - 1);
    if (!args)
        goto out;
    for (Py_ssize_t i = 1; i < nargs; i++) {
        Py_INCREF(a[i]);
        PyTuple_SET_ITEM(args, i - 1, a[i]);
    }
    if (nkw) {
        if (!(kwargs = PyDict_New()))
            goto out;
        for (Py_ssize_t i = 0; i < nkw; i++)
            if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), a[nargs + i]) < 0)
                goto out;
    }
    fut = core_submit_impl(self, fn, args, kwargs, g);
out:
    Py_XDECREF(kwargs);
    Py_XDECREF(args);
    return fut;
}

static PyMethodDef core_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))core_submit, METH_FASTCALL | METH_KEYWORDS,
     "submit(fn, /, *args, **kwargs) -> concurrent.futures.Future\n\nSchedule fn(*args, "
     "**kwargs) on the Server; RuntimeError after shutdown."},
    {"_setup", (PyCFunction)core_setup, METH_VARARGS,
     "_setup(submit, future_class): the Server's submit and the futures' class."},
    {"_close", (PyCFunction)core_close, METH_NOARGS,
     "Shut down: no submit succeeds after; returns the futures kept."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef core_getset[] = {
    {"_closed", (getter)core_get_closed, NULL, "True once shut down.", NULL},
    {"_kept", (getter)core_get_pending, NULL, "A copy of the futures kept for shutdown.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ExecCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._ppc._ExecutorCore",
    .tp_basicsize = sizeof(ExecCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "pp.Executor's base: submit and its state (pp/executor.py).",
    .tp_new = core_new,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_getset = core_getset,
};

static PyMethodDef exec_defs[] = {
    {"_future_result", (PyCFunction)(void (*)(void))future_result, METH_FASTCALL | METH_KEYWORDS,
     "result(timeout=None) of an Executor's future (pp/executor.py)."},
    {NULL, NULL, 0, NULL}};

int ppc_job_add_executor_methods(PyObject *m)
{
    if (PyType_Ready(&ExecCoreType) < 0)
        return -1;
    Py_INCREF(&ExecCoreType);
    if (PyModule_AddObject(m, "_ExecutorCore", (PyObject *)&ExecCoreType) < 0) {
        Py_DECREF(&ExecCoreType);
        return -1;
    }
    for (PyMethodDef *d = exec_defs; d->ml_name; d++) {
        PyObject *f = PyCFunction_New(d, NULL);
        PyObject *im = f ? PyInstanceMethod_New(f) : NULL;
        Py_XDECREF(f);
        if (!im || PyModule_AddObject(m, d->ml_name, im) < 0) {
            Py_XDECREF(im);
            return -1;
        }
    }
    return 0;
}

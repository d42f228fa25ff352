/* worker.c - the worker process's receive / execute / reply loop.
 *
 * A worker is a fresh interpreter started by the client's engine, or (for
 * the first workers of a Server) a fork of the client (server.c); both run
 * ppc_worker_run in a fresh __main__ namespace. It reads
 * frames on fd 3 and writes on fd 4: INIT (the client's sys.path, working
 * directory, pickle protocol; answered with INIT once ready), FUNC (a
 * function blob to install under its id, see ship.c for the forms), JOB
 * (function id + pickled args). Results are written back in order, several
 * to one write() while more jobs are already buffered. What a job prints
 * (stdout and stderr, as pp did) is captured and returned with its result.
 * The worker ignores SIGINT: Ctrl-C belongs to the client. */
#include "ppc_py.h"
#include <errno.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "../core/frame.h"
#include "../core/result.h"
#include "../core/shm.h"
#include "../core/vm.h"

#define FLUSH_BYTES (256u * 1024u)
#define FLUSH_RESULTS 64

typedef struct {
    int fd_in, fd_out;
    ppc_buf in, out;
    int pending_results;
    PyObject *ns;      /* the fresh __main__'s dict: where shipped code lives */
    PyObject *fns;     /* function id -> callable, or bytes (install error) */
    PyObject *capture; /* io.StringIO standing in for stdout/stderr */
    PyObject *str_tell;
    PyObject *proto_obj;
    int proto;
    uint64_t last_fid;  /* the function of the last job (borrowed from fns) */
    PyObject *last_f;
    uint64_t t_mark;    /* end of the previous job while jobs run back to
                           back (its clock reading starts the next), or 0 */
    /* large data (shm.h) */
    int shm;            /* INIT: segments allowed */
    int lend;           /* INIT: results may wait in our segments until taken */
    int refuse_map;     /* INIT test shm_refuse: act as if /proc/<pid>/fd were refused */
    PyObject *segcache; /* client segment id -> ShmMap, least recently used first */
    ppc_shm_pool rpool; /* our free result segments */
    ppc_shm_seg *busy;  /* result segments the client has not given back */
    int nbusy;
    /* big bytes read across processes (vm.h) */
    int vm_results;     /* VMOK: the client reads holes of our results */
    int vm_refuse;      /* INIT test vm_refuse: act as if reading the client were refused */
    int vm_args;        /* we may read the client's memory (probed at INIT) */
    PyObject *pins;     /* our result segment id -> list of bytes the client reads */
} wstate;

/* Read by the client (its address is in our INIT reply) to test that it can
 * read our memory. */
static const uint64_t vm_probe = PPC_VM_PROBE;

#define SEGCACHE_MAX 8
#define BUSY_MAX 64
#define RPOOL_BYTES ((size_t)512 << 20)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w;
        Py_BEGIN_ALLOW_THREADS
        w = write(fd, p, n);
        Py_END_ALLOW_THREADS
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int flush_out(wstate *w)
{
    if (ppc_buf_unread(&w->out) == 0)
        return 0;
    int rc = write_all(w->fd_out, ppc_buf_head(&w->out), ppc_buf_unread(&w->out));
    ppc_buf_consume(&w->out, ppc_buf_unread(&w->out));
    ppc_buf_shrink(&w->out, 4u << 20);
    w->pending_results = 0;
    return rc;
}

/* Pickled (pickled exception, traceback text, type name, message) of the
 * error being raised; None in place of an unpicklable exception. */
static PyObject *exception_payload(wstate *w)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb && v)
        PyException_SetTraceback(v, tb);
    PyObject *fmt = ppc_import_attr("traceback", "format_exception");
    PyObject *lines = fmt ? PyObject_CallFunctionObjArgs(fmt, t, v, tb ? tb : Py_None, NULL) : NULL;
    Py_XDECREF(fmt);
    PyObject *empty = PyUnicode_FromString("");
    PyObject *text = lines && empty ? PyUnicode_Join(empty, lines) : NULL;
    Py_XDECREF(lines);
    Py_XDECREF(empty);
    if (!text) {
        PyErr_Clear();
        text = PyUnicode_FromString("(traceback unavailable)\n");
    }
    PyObject *tname = t ? PyObject_GetAttrString(t, "__qualname__") : NULL;
    if (!tname) {
        PyErr_Clear();
        tname = PyUnicode_FromString("Exception");
    }
    PyObject *msg = v ? PyObject_Str(v) : NULL;
    if (!msg) {
        PyErr_Clear();
        msg = PyUnicode_FromString("");
    }
    /* the exception travels pickled on its own, so that a client that
     * cannot rebuild it still gets the type name, message and traceback */
    PyObject *eb = v ? PyObject_CallFunction(G.pickle_dumps, "Oi", v, w->proto) : NULL;
    if (!eb)
        PyErr_Clear();
    PyObject *res = NULL;
    PyObject *tup = Py_BuildValue("(OOOO)", eb ? eb : Py_None, text, tname, msg);
    Py_XDECREF(eb);
    if (tup)
        res = PyObject_CallFunction(G.pickle_dumps, "Oi", tup, w->proto);
    Py_XDECREF(tup);
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
    Py_XDECREF(text);
    Py_XDECREF(tname);
    Py_XDECREF(msg);
    return res;
}

static int on_init(wstate *w, const uint8_t *p, size_t n)
{
    PyObject *mv = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)n, PyBUF_READ);
    PyObject *d = mv ? PyObject_CallOneArg(G.pickle_loads, mv) : NULL;
    Py_XDECREF(mv);
    if (!d)
        return -1;
    int rc = -1;
    PyObject *path = PyDict_GetItemString(d, "path");
    PyObject *cwd = PyDict_GetItemString(d, "cwd");
    PyObject *proto = PyDict_GetItemString(d, "proto");
    if (!path || !cwd || !proto)
        goto out;
    w->proto = (int)PyLong_AsLong(proto);
    Py_INCREF(proto);
    Py_XSETREF(w->proto_obj, proto);
    PyObject *shm = PyDict_GetItemString(d, "shm");
    w->shm = shm && PyObject_IsTrue(shm) == 1;
    PyObject *lend = PyDict_GetItemString(d, "lend");
    w->lend = !lend || PyObject_IsTrue(lend) == 1;
    PyObject *test = PyDict_GetItemString(d, "test");
    if (test && PyDict_Check(test)) {
        PyObject *v = PyDict_GetItemString(test, "shm_refuse");
        w->refuse_map = v && PyObject_IsTrue(v) == 1;
        v = PyDict_GetItemString(test, "vm_refuse");
        w->vm_refuse = v && PyObject_IsTrue(v) == 1;
    }
    /* Can we read the client's memory (Yama's ptrace_scope 1 forbids a
     * child to read its parent, 2 forbids everyone)? Asked once, here, so
     * that no job has to find out; the reply tells the client (NOVM). */
    PyObject *probe = PyDict_GetItemString(d, "probe");
    uint64_t paddr = probe ? PyLong_AsUnsignedLongLong(probe) : 0;
    if (paddr == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        paddr = 0;
    }
    w->vm_args = paddr && !w->vm_refuse && ppc_vm_probe((int)getppid(), paddr);
    PyObject *syspath = PyList_New(0);
    if (!syspath)
        goto out;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(path); i++)
        PyList_Append(syspath, PyList_GET_ITEM(path, i));
    PySys_SetObject("path", syspath);
    Py_DECREF(syspath);
    PyObject *chdir = ppc_import_attr("os", "chdir");
    PyObject *r = chdir ? PyObject_CallOneArg(chdir, cwd) : NULL;
    Py_XDECREF(chdir);
    if (!r)
        PyErr_Clear(); /* the directory may be gone: run elsewhere */
    Py_XDECREF(r);
    PyObject *StringIO = ppc_import_attr("io", "StringIO");
    w->capture = StringIO ? PyObject_CallNoArgs(StringIO) : NULL;
    Py_XDECREF(StringIO);
    if (!w->capture)
        goto out;
    PySys_SetObject("stdout", w->capture);
    PySys_SetObject("stderr", w->capture);
    /* id: where the client may read PPC_VM_PROBE to test access to our memory */
    rc = ppc_frame_put(&w->out, PPC_F_INIT, 0, w->vm_args ? 0 : PPC_AUX_NOVM, 0,
                       (uint64_t)(uintptr_t)&vm_probe, NULL, 0, NULL, 0);
out:
    Py_DECREF(d);
    return rc;
}

/* Take what the job printed; new reference to a str, or NULL when none. */
static PyObject *take_output(wstate *w)
{
    PyObject *pos = PyObject_CallMethodNoArgs(w->capture, w->str_tell);
    if (!pos) {
        PyErr_Clear();
        return NULL;
    }
    long n = PyLong_AsLong(pos);
    Py_DECREF(pos);
    if (n <= 0)
        return NULL;
    PyObject *v = PyObject_CallMethod(w->capture, "getvalue", NULL);
    PyObject *r1 = PyObject_CallMethod(w->capture, "seek", "i", 0);
    PyObject *r2 = PyObject_CallMethod(w->capture, "truncate", "i", 0);
    Py_XDECREF(r1);
    Py_XDECREF(r2);
    PyErr_Clear();
    return v;
}

/* The client's argument segment named by the reference at refp, mapped
 * (cached by segment id). New reference, or NULL without an error when it
 * cannot be mapped, NULL with an error on failure. */
static ppc_ShmMap *map_args(wstate *w, const uint8_t *refp, ppc_shm_ref *r, uint32_t holes)
{
    ppc_shm_ref_get(refp, r);
    if (w->refuse_map || r->len == 0 || r->len > ((uint64_t)1 << 40))
        return NULL;
    /* with holes, the mapping must reach the end of the table after the blob */
    size_t need = holes ? ppc_vm_table_at((size_t)r->len) + ppc_vm_table_len(holes)
                        : (size_t)r->len;
    PyObject *key = PyLong_FromUnsignedLongLong(r->id);
    if (!key)
        return NULL;
    ppc_ShmMap *m = (ppc_ShmMap *)PyDict_GetItemWithError(w->segcache, key);
    if (m && m->len >= need) {
        Py_INCREF(m);
        /* most recently used last */
        if (PyDict_DelItem(w->segcache, key) < 0 ||
            PyDict_SetItem(w->segcache, key, (PyObject *)m) < 0) {
            Py_DECREF(m);
            m = NULL;
        }
        Py_DECREF(key);
        return m;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    if (m && PyDict_DelItem(w->segcache, key) < 0) {
        Py_DECREF(key);
        return NULL;
    }
    size_t maplen;
    void *addr;
    int flags = PPC_MAP_WRITE | (holes ? PPC_MAP_LAZY : 0);
    Py_BEGIN_ALLOW_THREADS
    addr = ppc_shm_map_peer((int)r->pid, (int)r->fd, need, flags, &maplen);
    Py_END_ALLOW_THREADS
    if (!addr) {
        Py_DECREF(key);
        return NULL;
    }
    m = ppc_shmmap_new(addr, maplen, 0, 1);
    if (!m || PyDict_SetItem(w->segcache, key, (PyObject *)m) < 0) {
        Py_XDECREF(m);
        Py_DECREF(key);
        return NULL;
    }
    m->id = r->id;
    Py_DECREF(key);
    while (PyDict_GET_SIZE(w->segcache) > SEGCACHE_MAX) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        if (!PyDict_Next(w->segcache, &pos, &k, &v))
            break;
        Py_INCREF(k);
        int rc = PyDict_DelItem(w->segcache, k);
        Py_DECREF(k);
        if (rc < 0)
            break;
    }
    return m;
}

static void forget_seg(wstate *w, uint64_t id)
{
    PyObject *key = PyLong_FromUnsignedLongLong(id);
    if (key && PyDict_DelItem(w->segcache, key) < 0)
        PyErr_Clear();
    Py_XDECREF(key);
}

/* Our result segments: free ones in rpool, the ones lent to the client
 * (until it sends SHMRET) on the busy list. Segments of our own were never
 * mapped by a worker, so what the pool frees needs no announcement. */
static void seg_to_pool(wstate *w, ppc_shm_seg *s)
{
    uint64_t dropped[4];
    ppc_shm_pool_put(&w->rpool, s, dropped, 4);
}

static void seg_lend(wstate *w, ppc_shm_seg *s)
{
    s->next = w->busy;
    w->busy = s;
    w->nbusy++;
}

static void seg_returned(wstate *w, uint64_t id, int drop)
{
    if (w->pins && PyDict_GET_SIZE(w->pins) > 0) {
        /* the client has read the holes: their objects may go */
        PyObject *key = PyLong_FromUnsignedLongLong(id);
        if (!key || PyDict_DelItem(w->pins, key) < 0)
            PyErr_Clear(); /* that segment had no holes */
        Py_XDECREF(key);
    }
    for (ppc_shm_seg **sp = &w->busy; *sp; sp = &(*sp)->next) {
        if ((*sp)->id == id) {
            ppc_shm_seg *s = *sp;
            *sp = s->next;
            w->nbusy--;
            if (drop)
                ppc_shm_free(s); /* a fork of the client still maps it */
            else
                seg_to_pool(w, s);
            return;
        }
    }
}

/* The travelling form of a job's result, the cheapest that takes it:
 * written by hand into fb (*fn bytes), into a segment of ours lent to the
 * client (*rseg: buffers reaching 1 MB, or a pickle that large), or a
 * pickle (*pick). 0, or -1 with an error set. */
static int encode_result(wstate *w, PyObject *res, ppc_fastbuf *fb, size_t *fn,
                         ppc_shm_seg **rseg, PyObject **pick)
{
    if ((*fn = ppc_fast_dumps(res, w->proto, fb)) > 0)
        return 0;
    int segs = w->shm && w->lend && w->nbusy < BUSY_MAX;
    size_t est = segs ? ppc_big_estimate(res, 4) : 0;
    ppc_shm_seg *s;
    if (est >= PPC_SHM_MIN_BYTES && (s = ppc_shm_pool_get(&w->rpool, est + (1u << 20)))) {
        /* big bytes stay where they are when the client can read them here */
        PyObject *pins = w->vm_results ? PyList_New(0) : NULL;
        Py_ssize_t rc = (w->vm_results && !pins) ? -1 : ppc_pickle_into_seg(res, w->proto, s, pins);
        if (rc < 0) {
            Py_XDECREF(pins);
            seg_to_pool(w, s);
            return -1;
        }
        if (s->ngaps) {
            PyObject *key = PyLong_FromUnsignedLongLong(s->id);
            int rc = key ? PyDict_SetItem(w->pins, key, pins) : -1;
            Py_XDECREF(key);
            if (rc < 0) {
                Py_DECREF(pins);
                seg_to_pool(w, s);
                return -1;
            }
        }
        Py_XDECREF(pins);
        seg_lend(w, s);
        *rseg = s;
        return 0;
    }
    PyObject *dargs[2] = {res, w->proto_obj};
    *pick = PyObject_Vectorcall(G.pickle_dumps, dargs, 2, NULL);
    if (!*pick)
        return -1;
    size_t n = (size_t)PyBytes_GET_SIZE(*pick);
    if (segs && n >= PPC_SHM_MIN_BYTES && (s = ppc_shm_pool_get(&w->rpool, n + 64))) {
        /* a large pickle without big buffers: still not through the pipe */
        if (ppc_bytes_into_seg(PyBytes_AS_STRING(*pick), n, s) == 0) {
            seg_lend(w, s);
            *rseg = s;
            Py_CLEAR(*pick);
        } else {
            PyErr_Clear();
            seg_to_pool(w, s);
        }
    }
    return 0;
}

static int in_map(const ppc_ShmMap *m, const void *p, size_t n)
{
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)m->addr;
    return a >= lo && a - lo <= m->len && n <= m->len - (a - lo);
}

/* The result lies in the job's argument segment m (the function returned its
 * argument, a slice of it, or changed it in place and returned it): then it
 * is not copied. *pick becomes an OOB blob without buffer data whose table
 * gives offsets in the segment (PPC_AUX_INARG); the client maps the segment
 * for the result. 1 when taken, 0 when the result is not of that kind, -1
 * with an error set. */
static int encode_inarg(wstate *w, PyObject *res, ppc_ShmMap *m, PyObject **pick)
{
    const uint8_t *lo = m->addr;
    Py_buffer v;
    /* a cheap first look: the result itself exports a buffer inside m */
    if (w->proto < 5 || !PyObject_CheckBuffer(res))
        return 0;
    if (PyObject_GetBuffer(res, &v, PyBUF_ANY_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return 0;
    }
    int inside = (size_t)v.len >= PPC_SHM_MIN_BYTES && in_map(m, v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    if (!inside)
        return 0;
    PyObject *bufs = PyList_New(0), *append = NULL, *kw = NULL, *a = NULL, *stream = NULL;
    uint64_t *offs = NULL, *lens = NULL;
    int rc = -1;
    if (!bufs || !(append = PyObject_GetAttrString(bufs, "append")) ||
        !(kw = Py_BuildValue("{sO}", "buffer_callback", append)) ||
        !(a = Py_BuildValue("(OO)", res, w->proto_obj)) ||
        !(stream = PyObject_Call(G.pickle_dumps, a, kw)))
        goto out;
    Py_ssize_t nb = PyList_GET_SIZE(bufs);
    rc = 0;
    if (nb < 1 || nb > 1024)
        goto out;
    offs = PyMem_Calloc((size_t)nb, sizeof *offs);
    lens = PyMem_Calloc((size_t)nb, sizeof *lens);
    if (!offs || !lens) {
        PyErr_NoMemory();
        rc = -1;
        goto out;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(bufs, i), &v, PyBUF_ANY_CONTIGUOUS) < 0) {
            PyErr_Clear();
            goto out;
        }
        const uint8_t *b = v.buf;
        size_t n = (size_t)v.len;
        PyBuffer_Release(&v);
        if (!in_map(m, b, n))
            goto out; /* a buffer of its own: the usual way */
        offs[i] = (uint64_t)(b - lo);
        lens[i] = n;
    }
    size_t sl = (size_t)PyBytes_GET_SIZE(stream);
    if (!(*pick = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(sl + ppc_oob_tail_len((uint32_t)nb))))) {
        rc = -1;
        goto out;
    }
    memcpy(PyBytes_AS_STRING(*pick), PyBytes_AS_STRING(stream), sl);
    ppc_oob_finish((uint8_t *)PyBytes_AS_STRING(*pick), sl, sl, (uint32_t)nb, offs, lens);
    rc = 1;
out:
    PyMem_Free(offs);
    PyMem_Free(lens);
    Py_XDECREF(stream);
    Py_XDECREF(a);
    Py_XDECREF(kw);
    Py_XDECREF(append);
    Py_XDECREF(bufs);
    return rc;
}

/* After a result in the argument segment: nothing here may write into the
 * segment again, since the client's result reads it. When something still
 * views our mapping (a global keeping the argument), the mapping becomes a
 * private copy-on-write one at the same address, so a later write stays
 * here. 0, or -1 (the mapping may be gone: the worker cannot go on). */
static int inarg_seal(ppc_ShmMap *m, const ppc_shm_ref *r)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)r->pid, (int)r->fd);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return -1;
    void *p = mmap(m->addr, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, f, 0);
    close(f);
    return p == m->addr ? 0 : -1;
}

static int put_result(wstate *w, uint64_t id, uint64_t ns, int kind, PyObject *out,
                      const char *data, size_t len, uint16_t aux, ppc_shm_seg *seg)
{
    Py_ssize_t outlen = 0;
    const char *outs = NULL;
    if (out) {
        outs = PyUnicode_AsUTF8AndSize(out, &outlen);
        if (!outs) {
            PyErr_Clear();
            outlen = 0;
        }
        if (outlen > 0x7fffffff)
            outlen = 0x7fffffff;
    }
    uint8_t refb[PPC_SHM_REF_LEN];
    const char *pdata = (const char *)refb;
    size_t plen = sizeof refb, skip = 0;
    if (seg) {
        ppc_shm_ref r = {(uint32_t)getpid(), (uint32_t)seg->fd, seg->id, seg->used};
        ppc_shm_ref_put(refb, &r);
        aux |= PPC_AUX_SHM | (seg->ngaps ? PPC_AUX_VM : 0);
    } else {
        pdata = data;
        plen = data ? len : 0;
        skip = ppc_pickle_frame_skip(pdata, plen);
    }
    uint8_t *d = ppc_result_put(&w->out, id, aux, ns, (uint8_t)kind, outs, (size_t)outlen,
                                plen - skip);
    if (!d) {
        PyErr_NoMemory();
        return -1;
    }
    if (plen)
        ppc_pickle_copy_unframed(d, pdata, plen, skip);
    w->pending_results++;
    return 0;
}

/* The holes of an argument blob in mapping m: their table, copied and
 * checked, and whether we can read the client at all. 1: src filled (the
 * caller frees it); 0: reading the client is refused (the job goes back
 * with its holes filled: only jobs sent before the client heard so from
 * our INIT reply); -1: error. */
static int arg_holes(wstate *w, ppc_ShmMap *m, size_t blob_len, uint32_t holes, ppc_vm_src *src)
{
    if (ppc_vm_table_parse(m->addr, m->len, blob_len, src) < 0 || src->ngaps != holes ||
        src->pid != (int)getppid()) {
        ppc_vm_src_free(src);
        PyErr_SetString(PyExc_ValueError, "malformed hole table in the job's arguments");
        return -1;
    }
    if (!w->vm_args) {
        ppc_vm_src_free(src);
        return 0;
    }
    return 1;
}

/* The client can read our memory: results may leave holes. */
static void vm_ok(wstate *w)
{
    w->vm_results = 1;
}

static int on_job(wstate *w, uint64_t id, uint16_t aux, uint32_t extra, const uint8_t *p,
                  size_t n)
{
    if (n < 8)
        return -1;
    ppc_ShmMap *argmap = NULL;
    ppc_shm_ref r = {0, 0, 0, 0};
    ppc_shm_seg *rseg = NULL;
    uint16_t raux = 0;
    ppc_fastbuf fb; /* a result written by hand */
    size_t fn = 0;
    ppc_fastbuf_init(&fb);
    uint64_t fid = ppc_get_u64(p);
    uint64_t t0 = w->t_mark ? w->t_mark : now_ns();
    PyObject *res = NULL, *pick = NULL;
    int kind = PPC_R_VALUE;
    PyObject *f = NULL;
    if (fid && fid == w->last_fid) {
        f = w->last_f;
    } else {
        PyObject *key = PyLong_FromUnsignedLongLong(fid);
        f = key ? PyDict_GetItemWithError(w->fns, key) : NULL;
        Py_XDECREF(key);
        if (f) {
            w->last_fid = fid;
            w->last_f = f;
        }
    }
    if (!f) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "function %llu was never sent to this worker",
                         (unsigned long long)fid);
    } else if (PyBytes_Check(f)) {
        /* installing the function failed: every job of it reports that */
        kind = PPC_R_EXCEPTION;
        pick = f;
        Py_INCREF(pick);
    } else {
        PyObject *args = NULL;
        if (aux & PPC_AUX_SHM) {
            uint32_t holes = (aux & PPC_AUX_VM) ? extra : 0;
            if (n != 8 + PPC_SHM_REF_LEN || ((aux & PPC_AUX_VM) && (!holes || holes > PPC_VM_MAX_GAPS)))
                return -1;
            argmap = map_args(w, p + 8, &r, holes);
            if (!argmap) {
                if (PyErr_Occurred())
                    return -1;
                /* cannot map: the client sends this job again inline */
                return ppc_result_put(&w->out, id, PPC_AUX_NOSHM, 0, PPC_R_VALUE, NULL, 0, 0)
                           ? 0
                           : -1;
            }
            ppc_vm_src src;
            int hr = holes ? arg_holes(w, argmap, (size_t)r.len, holes, &src) : 1;
            if (hr == 0) {
                /* cannot read the client: it fills the holes and sends the job again */
                Py_DECREF(argmap);
                return ppc_result_put(&w->out, id, PPC_AUX_NOVM, 0, PPC_R_VALUE, NULL, 0, 0)
                           ? 0
                           : -1;
            }
            if (hr > 0) {
                args = ppc_loads_blob(argmap->addr, (size_t)r.len, (PyObject *)argmap,
                                      holes ? &src : NULL);
                if (holes)
                    ppc_vm_src_free(&src);
            }
        } else {
            args = ppc_loads_inline(p + 8, n - 8, aux & PPC_AUX_OOB);
        }
        if (args && !PyTuple_Check(args)) {
            Py_DECREF(args);
            args = NULL;
            PyErr_SetString(PyExc_TypeError, "job arguments are not a tuple");
        }
        if (args) {
            res = PyObject_Call(f, args, NULL);
            Py_DECREF(args);
        }
        if (res) {
            int in = (aux & PPC_AUX_INARG) && argmap && w->lend && !(aux & PPC_AUX_VM)
                         ? encode_inarg(w, res, argmap, &pick)
                         : 0;
            if (in > 0)
                raux |= PPC_AUX_INARG;
            else if (in < 0 || encode_result(w, res, &fb, &fn, &rseg, &pick) < 0)
                Py_CLEAR(pick);
            Py_DECREF(res);
        }
    }
    if (!fn && !pick && !rseg) {
        kind = PPC_R_EXCEPTION;
        pick = exception_payload(w);
        if (!pick) {
            Py_XDECREF(argmap);
            ppc_fastbuf_free(&fb);
            return -1;
        }
    }
    if (argmap) {
        /* anything still using the segment (a global keeping a numpy
         * argument, say)? then the client must not reuse it */
        if (argmap->exports > 0) {
            raux |= PPC_AUX_PINNED;
            forget_seg(w, argmap->id);
            if ((raux & PPC_AUX_INARG) && inarg_seal(argmap, &r) < 0) {
                fprintf(stderr, "ppc worker: cannot remap an argument segment: %s\n",
                        strerror(errno));
                _exit(70);
            }
        } else if (raux & PPC_AUX_INARG) {
            forget_seg(w, argmap->id); /* the client holds it for the result */
        }
        Py_DECREF(argmap);
    }
    uint64_t t1 = now_ns();
    w->t_mark = t1;
    PyObject *out = take_output(w);
    int rc = fn ? put_result(w, id, t1 - t0, kind, out, (const char *)fb.data, fn, raux, NULL)
             : put_result(w, id, t1 - t0, kind, out, pick ? PyBytes_AS_STRING(pick) : NULL,
                          pick ? (size_t)PyBytes_GET_SIZE(pick) : 0, raux, rseg);
    Py_XDECREF(out);
    Py_XDECREF(pick);
    ppc_fastbuf_free(&fb);
    return rc;
}

static int on_func(wstate *w, uint64_t fid, const uint8_t *p, size_t n)
{
    w->last_fid = 0;
    w->last_f = NULL;
    w->t_mark = 0; /* installing is no job's time */
    PyObject *f = ppc_ship_install(w->ns, p, n);
    if (!f) {
        f = exception_payload(w);
        if (!f)
            return -1;
        /* what install printed belongs to nobody's job: drop it */
        PyObject *o = take_output(w);
        Py_XDECREF(o);
    }
    PyObject *key = PyLong_FromUnsignedLongLong(fid);
    int rc = key ? PyDict_SetItem(w->fns, key, f) : -1;
    Py_XDECREF(key);
    Py_DECREF(f);
    return rc;
}

/* A new, empty module __main__ (only __builtins__ in it) put in
 * sys.modules: shipped source is executed there and pickles find classes
 * defined in it, as in a fresh interpreter, whatever the process ran
 * before (a forked worker inherits the client's __main__). The module that
 * was __main__ stays referenced: none of the client's objects is finalized
 * in a forked worker (an open file there would close a descriptor number
 * the worker reuses). New reference to the module's dict. */
PyObject *ppc_worker_fresh_ns(void)
{
    PyObject *modules = PyImport_GetModuleDict(); /* borrowed */
    PyObject *old = PyDict_GetItemString(modules, "__main__");
    Py_XINCREF(old); /* deliberately kept for the life of the worker */
    PyObject *builtins = PyImport_ImportModule("builtins");
    PyObject *m = builtins ? PyModule_New("__main__") : NULL;
    PyObject *d = m ? PyModule_GetDict(m) : NULL;
    if (!d || PyDict_SetItemString(d, "__builtins__", builtins) < 0 ||
        PyDict_SetItemString(modules, "__main__", m) < 0) {
        Py_XDECREF(builtins);
        Py_XDECREF(m);
        return NULL;
    }
    Py_INCREF(d);
    Py_DECREF(builtins);
    Py_DECREF(m); /* sys.modules holds it */
    return d;
}

PyObject *ppc_worker_main(PyObject *mod, PyObject *args)
{
    (void)mod;
    int fd_in, fd_out;
    if (!PyArg_ParseTuple(args, "ii:worker_main", &fd_in, &fd_out))
        return NULL;
    PyObject *ns = ppc_worker_fresh_ns();
    if (!ns)
        return NULL;
    int rc = ppc_worker_run(fd_in, fd_out, ns);
    Py_DECREF(ns);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

int ppc_worker_run(int fd_in, int fd_out, PyObject *ns)
{
    wstate w;
    memset(&w, 0, sizeof w);
    w.proto = 5;
    w.fd_in = fd_in;
    w.fd_out = fd_out;
    w.ns = ns;
    signal(SIGINT, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    w.fns = PyDict_New();
    w.str_tell = PyUnicode_InternFromString("tell");
    w.proto_obj = PyLong_FromLong(w.proto);
    w.segcache = PyDict_New();
    w.pins = PyDict_New();
    if (!w.fns || !w.str_tell || !w.proto_obj || !w.segcache || !w.pins) {
        Py_XDECREF(w.pins);
        Py_XDECREF(w.fns);
        Py_XDECREF(w.str_tell);
        Py_XDECREF(w.proto_obj);
        Py_XDECREF(w.segcache);
        return -1;
    }
    ppc_shm_pool_init(&w.rpool, RPOOL_BYTES);
    int ret = -1;
    for (;;) {
        ppc_frame f;
        int rc = ppc_frame_parse(ppc_buf_head(&w.in), ppc_buf_unread(&w.in), (uint64_t)1 << 40, &f);
        if (rc < 0) {
            PyErr_SetString(PyExc_RuntimeError, "malformed frame from the client");
            goto out;
        }
        if (rc == PPC_FRAME_OK) {
            int hr = 0;
            if (f.type == PPC_F_JOB)
                hr = on_job(&w, f.id, f.aux, f.extra, f.payload, (size_t)f.len);
            else if (f.type == PPC_F_SHMDROP)
                forget_seg(&w, f.id);
            else if (f.type == PPC_F_SHMRET)
                seg_returned(&w, f.id, (f.aux & PPC_AUX_SHM_DROP) != 0);
            else if (f.type == PPC_F_VMOK)
                vm_ok(&w);
            else if (f.type == PPC_F_FUNC)
                hr = on_func(&w, f.id, f.payload, (size_t)f.len);
            else if (f.type == PPC_F_INIT)
                hr = on_init(&w, f.payload, (size_t)f.len);
            if (hr < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_RuntimeError, "worker protocol failure");
                goto out;
            }
            ppc_buf_consume(&w.in, PPC_FRAME_HDR + (size_t)f.len);
            /* Keep batching while more work is already here; the INIT
             * reply (ready) goes out at once. */
            ppc_frame peek;
            int more = ppc_frame_parse(ppc_buf_head(&w.in), ppc_buf_unread(&w.in),
                                       (uint64_t)1 << 40, &peek) == PPC_FRAME_OK;
            if (!more || f.type == PPC_F_INIT || ppc_buf_unread(&w.out) >= FLUSH_BYTES ||
                w.pending_results >= FLUSH_RESULTS) {
                if (flush_out(&w) < 0)
                    goto done; /* the client is gone */
                w.t_mark = 0;
            }
            continue;
        }
        if (flush_out(&w) < 0)
            goto done;
        w.t_mark = 0; /* about to wait for input: the next job starts its own clock */
        size_t want = 65536;
        if (f.len > 0 && PPC_FRAME_HDR + f.len - ppc_buf_unread(&w.in) > want)
            want = PPC_FRAME_HDR + (size_t)f.len - ppc_buf_unread(&w.in);
        if (ppc_buf_reserve(&w.in, want) < 0) {
            PyErr_NoMemory();
            goto out;
        }
        ssize_t r;
        Py_BEGIN_ALLOW_THREADS
        r = read(w.fd_in, w.in.data + w.in.len, w.in.cap - w.in.len);
        Py_END_ALLOW_THREADS
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            goto done; /* EOF: the client closed us */
        w.in.len += (size_t)r;
    }
done:
    ret = 0;
out:
    if (w.capture) {
        /* hand the real streams back so a failure here is reported */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PySys_SetObject("stdout", PySys_GetObject("__stdout__"));
        PySys_SetObject("stderr", PySys_GetObject("__stderr__"));
        PyErr_Restore(t, v, tb);
    }
    ppc_buf_free(&w.in);
    ppc_buf_free(&w.out);
    Py_XDECREF(w.fns);
    Py_XDECREF(w.capture);
    Py_XDECREF(w.str_tell);
    Py_XDECREF(w.proto_obj);
    Py_XDECREF(w.segcache);
    Py_XDECREF(w.pins);
    while (w.busy) {
        ppc_shm_seg *s = w.busy;
        w.busy = s->next;
        ppc_shm_free(s);
    }
    ppc_shm_pool_destroy(&w.rpool);
    return ret;
}

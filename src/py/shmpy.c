/* shmpy.c - pickling into and out of shared-memory segments (shm.h), used
 * by the client (arguments, result loading) and by workers (argument
 * loading, results).
 *
 * Large objects are pickled with protocol 5: the pickle stream is written
 * through a small file-like writer straight into the segment (a big bytes
 * object is copied once, by the pickler's direct write), and out-of-band
 * buffers (numpy arrays' data) are copied after the stream. Loading passes
 * buffers either as views of a mapping (zero copy: a ShmMap counts its
 * exports, so the owner can tell whether anything still uses the memory) or
 * as bytearray copies. */
#include "ppc_py.h"
#include <string.h>
#include <sys/mman.h>

#include "../core/shm.h"
#include "../core/vm.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------------ ShmMap */

static int ShmMap_getbuffer(ppc_ShmMap *self, Py_buffer *view, int flags)
{
    if (!self->addr) {
        PyErr_SetString(PyExc_BufferError, "mapping released");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, (Py_ssize_t)self->len,
                          self->readonly, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void ShmMap_releasebuffer(ppc_ShmMap *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
}

/* Forks of this process, counted once a result segment was mapped: a
 * mapping made before a fork is shared with the child, whose view must not
 * change when the parent gives the segment back (see ppc_shmmap_lent). The
 * handler only counts. */
static atomic_ulong forks;
static pthread_once_t forks_once = PTHREAD_ONCE_INIT;
static void count_fork(void)
{
    atomic_fetch_add(&forks, 1);
}
static void count_forks_from_now(void)
{
    pthread_atfork(NULL, count_fork, NULL);
}

ppc_retchan *ppc_retchan_new(void (*give_back)(void *, int, uint64_t, int), void *ctx)
{
    ppc_retchan *c = malloc(sizeof *c);
    if (!c) {
        PyErr_NoMemory();
        return NULL;
    }
    c->refs = 1;
    c->give_back = give_back;
    c->ctx = ctx;
    return c;
}

static void retchan_decref(ppc_retchan *c)
{
    if (c && --c->refs == 0)
        free(c);
}

void ppc_retchan_close(ppc_retchan *c)
{
    if (!c)
        return;
    c->give_back = NULL;
    retchan_decref(c);
}

void ppc_shmmap_lent(ppc_ShmMap *m, ppc_retchan *c, int pid, uint64_t seg_id)
{
    pthread_once(&forks_once, count_forks_from_now);
    c->refs++;
    m->ret = c;
    m->ret_pid = pid;
    m->ret_id = seg_id;
    m->maker = (long)getpid();
    m->forks = atomic_load(&forks);
}

static void ShmMap_dealloc(ppc_ShmMap *self)
{
    if (self->addr && self->owned)
        munmap(self->addr, self->len);
    ppc_retchan *c = self->ret;
    if (c && c->give_back && (long)getpid() == self->maker)
        c->give_back(c->ctx, self->ret_pid, self->ret_id, atomic_load(&forks) != self->forks);
    retchan_decref(c);
    PyObject_Free(self);
}

static PyBufferProcs ShmMap_as_buffer = {(getbufferproc)ShmMap_getbuffer,
                                         (releasebufferproc)ShmMap_releasebuffer};

PyTypeObject ppc_ShmMapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._ppc.ShmMap",
    .tp_basicsize = sizeof(ppc_ShmMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mapping of a shared-memory segment (internal).",
    .tp_dealloc = (destructor)ShmMap_dealloc,
    .tp_as_buffer = &ShmMap_as_buffer,
};

ppc_ShmMap *ppc_shmmap_new(void *addr, size_t len, int readonly, int owned)
{
    if (PyType_Ready(&ppc_ShmMapType) < 0)
        return NULL;
    ppc_ShmMap *m = PyObject_New(ppc_ShmMap, &ppc_ShmMapType);
    if (!m) {
        if (owned)
            munmap(addr, len);
        return NULL;
    }
    m->addr = addr;
    m->len = len;
    m->readonly = readonly;
    m->owned = owned;
    m->exports = 0;
    m->id = 0;
    m->ret = NULL;
    m->ret_pid = 0;
    m->ret_id = 0;
    m->maker = 0;
    m->forks = 0;
    return m;
}

/* ------------------------------------------------------------ SegWriter */

typedef struct {
    PyObject_HEAD
    ppc_shm_seg *seg;
    size_t pos;
    PyObject *pins;   /* list, or NULL: big bytes are left as holes (vm.h) */
    ppc_vm_gap *gaps; /* the holes, in stream order */
    uint32_t ngaps, capgaps;
    uint32_t vmflags; /* PPC_VM_F_SHARED once a hole's pages are shared */
} SegWriter;

/* A big bytes object the pickler hands over whole (the payload of a BINBYTES
 * opcode, or a flushed stream part: either is immutable and kept alive by
 * pins) becomes a hole: only its address is recorded. 1 when taken, 0 when
 * it is to be copied, -1 on error. */
static int SegWriter_hole(SegWriter *self, PyObject *arg)
{
    if (!self->pins || !PyBytes_CheckExact(arg) ||
        (size_t)PyBytes_GET_SIZE(arg) < PPC_VM_MIN_BYTES || self->ngaps >= PPC_VM_MAX_GAPS)
        return 0;
    size_t n = (size_t)PyBytes_GET_SIZE(arg);
    if (n > SIZE_MAX - self->pos || ppc_shm_reserve(self->seg, self->pos + n) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (self->ngaps == self->capgaps) {
        uint32_t cap = self->capgaps ? self->capgaps * 2 : 8;
        ppc_vm_gap *g = PyMem_Realloc(self->gaps, cap * sizeof *g);
        if (!g) {
            PyErr_NoMemory();
            return -1;
        }
        self->gaps = g;
        self->capgaps = cap;
    }
    if (PyList_Append(self->pins, arg) < 0)
        return -1;
    ppc_vm_gap *g = &self->gaps[self->ngaps++];
    g->off = self->pos;
    g->len = n;
    g->addr = (uint64_t)(uintptr_t)PyBytes_AS_STRING(arg);
    if (!self->vmflags && ppc_vm_maybe_shared(PyBytes_AS_STRING(arg), n))
        self->vmflags = PPC_VM_F_SHARED;
    self->pos += n;
    return 1;
}

static PyObject *SegWriter_write(SegWriter *self, PyObject *arg)
{
    int hole = SegWriter_hole(self, arg);
    if (hole < 0)
        return NULL;
    if (hole)
        return PyLong_FromSsize_t(PyBytes_GET_SIZE(arg));
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t n = (size_t)b.len;
    if (n > SIZE_MAX - self->pos || ppc_shm_reserve(self->seg, self->pos + n) < 0) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    /* a big copy without the GIL: other threads may run meanwhile */
    if (n >= (1u << 20)) {
        Py_BEGIN_ALLOW_THREADS memcpy(self->seg->map + self->pos, b.buf, n);
        Py_END_ALLOW_THREADS
    } else {
        memcpy(self->seg->map + self->pos, b.buf, n);
    }
    self->pos += n;
    PyBuffer_Release(&b);
    return PyLong_FromSize_t(n);
}

static void SegWriter_dealloc(SegWriter *self)
{
    PyMem_Free(self->gaps);
    PyObject_Free(self);
}

static PyMethodDef SegWriter_methods[] = {{"write", (PyCFunction)SegWriter_write, METH_O, NULL},
                                          {NULL, NULL, 0, NULL}};

static PyTypeObject SegWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._ppc.SegWriter",
    .tp_basicsize = sizeof(SegWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)SegWriter_dealloc,
    .tp_methods = SegWriter_methods,
};

/* ------------------------------------------------------------ pickling */

static PyObject *Pickler_cls;

Py_ssize_t ppc_pickle_into_seg(PyObject *obj, int proto, ppc_shm_seg *seg, PyObject *pins)
{
    if (!Pickler_cls && !(Pickler_cls = ppc_import_attr("pickle", "Pickler")))
        return -1;
    if (PyType_Ready(&SegWriterType) < 0)
        return -1;
    SegWriter *wr = PyObject_New(SegWriter, &SegWriterType);
    if (!wr)
        return -1;
    wr->seg = seg;
    wr->pos = 0;
    wr->pins = pins;
    wr->gaps = NULL;
    wr->ngaps = wr->capgaps = 0;
    wr->vmflags = 0;
    seg->ngaps = 0;
    PyObject *bufs = PyList_New(0), *pk = NULL, *r = NULL, *append = NULL;
    Py_ssize_t ret = -1;
    uint64_t *offs = NULL, *lens = NULL;
    Py_buffer *views = NULL;
    Py_ssize_t nviews = 0;
    if (!bufs)
        goto out;
    append = proto >= 5 ? PyObject_GetAttrString(bufs, "append") : NULL;
    if (proto >= 5 && !append)
        goto out;
    pk = PyObject_CallFunction(Pickler_cls, "OiOO", (PyObject *)wr, proto, Py_True,
                               append ? append : Py_None);
    if (!pk)
        goto out;
    r = PyObject_CallMethod(pk, "dump", "(O)", obj);
    if (!r)
        goto out;
    size_t stream_len = wr->pos, at = stream_len;
    Py_ssize_t nb = PyList_GET_SIZE(bufs);
    if (nb > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "too many out-of-band buffers");
        goto out;
    }
    offs = PyMem_Calloc((size_t)nb + 1, sizeof *offs);
    lens = PyMem_Calloc((size_t)nb + 1, sizeof *lens);
    views = PyMem_Calloc((size_t)nb + 1, sizeof *views);
    if (!offs || !lens || !views) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(bufs, i), &views[i], PyBUF_ANY_CONTIGUOUS) < 0)
            goto out;
        nviews++;
        at = ppc_oob_align(at);
        offs[i] = at;
        lens[i] = (uint64_t)views[i].len;
        at += (size_t)views[i].len;
    }
    size_t total = at + ppc_oob_tail_len((uint32_t)nb);
    size_t table = wr->ngaps ? ppc_vm_table_at(total) + ppc_vm_table_len(wr->ngaps) : total;
    if (ppc_shm_reserve(seg, table) < 0) {
        PyErr_NoMemory();
        goto out;
    }
    Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < nb; i++)
        memcpy(seg->map + offs[i], views[i].buf, (size_t)lens[i]);
    Py_END_ALLOW_THREADS
    ppc_oob_finish(seg->map, at, stream_len, (uint32_t)nb, offs, lens);
    seg->used = total;
    if (wr->ngaps) {
        ppc_vm_table_put(seg->map + ppc_vm_table_at(total), (int)getpid(), wr->vmflags, wr->gaps,
                         wr->ngaps);
        seg->ngaps = wr->ngaps;
    }
    ret = (Py_ssize_t)total;
out:
    for (Py_ssize_t i = 0; i < nviews; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(offs);
    PyMem_Free(lens);
    Py_XDECREF(r);
    Py_XDECREF(pk);
    Py_XDECREF(append);
    Py_XDECREF(bufs);
    Py_DECREF(wr);
    return ret;
}

int ppc_bytes_into_seg(const char *p, size_t n, ppc_shm_seg *seg)
{
    size_t total = n + ppc_oob_tail_len(0);
    if (ppc_shm_reserve(seg, total) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS memcpy(seg->map, p, n);
    Py_END_ALLOW_THREADS ppc_oob_finish(seg->map, n, n, 0, NULL, NULL);
    seg->used = total;
    return 0;
}

/* A large bytes object, or a 1-tuple of one, is the common big payload
 * (an argument, a result). Its new object is filled here rather than by
 * the unpickler: from the segment, or from its owner's memory when it is a
 * hole (vm.h), by ppc_fill_fresh: on a virtual machine, first touch of
 * fresh memory is the main cost of moving large data. (Transparent huge
 * pages were tried: 3x faster when the host has backed the memory before,
 * 5x slower when it has not, both seen here.) NULL without an exception
 * when the stream is not of that shape. */
static PyObject *big_bytes(const uint8_t *p, size_t n, const ppc_vm_src *vm)
{
    size_t i = 0;
    if (n < 8 || p[0] != 0x80 || p[1] < 4)
        return NULL;
    i = 2;
    if (p[i] == 0x95) /* FRAME */
        i += 9;
    if (i + 5 > n || p[i] != 'B')
        return NULL;
    size_t len = (size_t)p[i + 1] | (size_t)p[i + 2] << 8 | (size_t)p[i + 3] << 16 |
                 (size_t)p[i + 4] << 24;
    size_t at = i + 5;
    if (len < PPC_SHM_MIN_BYTES || len > n - at)
        return NULL;
    /* the bytes may be a hole: then they come from the owner's memory */
    ppc_vm_gap g = {0, 0, 0};
    if (vm) {
        if (vm->ngaps != 1)
            return NULL;
        ppc_vm_gap_get(vm, 0, &g);
        if (g.off != at || g.len != len)
            return NULL;
    }
    size_t k = at + len;
    if (k + 9 <= n && p[k] == 0x95) /* FRAME: the pickler starts one after a big write */
        k += 9;
    if (k < n && p[k] == 0x94) /* MEMOIZE */
        k++;
    int tuple = k < n && p[k] == 0x85; /* TUPLE1 */
    if (tuple) {
        k++;
        if (k < n && p[k] == 0x94)
            k++;
    }
    if (k + 1 != n || p[k] != '.')
        return NULL;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (!b)
        return NULL;
    char *d = PyBytes_AS_STRING(b);
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = vm ? ppc_fill_fresh(d, len, NULL, vm->pid, g.addr, vm->unpinned)
                                   : ppc_fill_fresh(d, len, p + at, 0, 0, 0);
    Py_END_ALLOW_THREADS if (rc < 0)
    {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(b);
        return NULL;
    }
    if (!tuple)
        return b;
    PyObject *t = PyTuple_New(1);
    if (!t) {
        Py_DECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, b);
    return t;
}

/* A blob with holes, in any other shape: a private copy with the holes
 * filled from the owner's memory, loaded from there. */
static PyObject *loads_holes(const uint8_t *p, size_t n, const ppc_vm_src *vm)
{
    uint8_t *cp = PyMem_RawMalloc(n ? n : 1);
    if (!cp)
        return PyErr_NoMemory();
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ppc_vm_copy_blob(cp, p, n, vm);
    Py_END_ALLOW_THREADS PyObject *o = NULL;
    if (rc < 0)
        PyErr_SetFromErrno(PyExc_OSError);
    else
        o = ppc_loads_blob(cp, n, NULL, NULL);
    PyMem_RawFree(cp);
    return o;
}

PyObject *ppc_loads_blob(const uint8_t *p, size_t n, PyObject *exporter, const ppc_vm_src *vm)
{
    size_t sl;
    uint32_t nb;
    if (ppc_oob_parse(p, n, &sl, &nb) < 0) {
        PyErr_SetString(PyExc_ValueError, "malformed out-of-band pickle blob");
        return NULL;
    }
    if (nb == 0) {
        PyObject *b = big_bytes(p, sl, vm);
        if (b || PyErr_Occurred())
            return b;
    }
    if (vm)
        return loads_holes(p, n, vm);
    PyObject *base = exporter ? PyMemoryView_FromObject(exporter) : NULL;
    if (exporter && !base)
        return NULL;
    PyObject *bufs = PyList_New(nb), *res = NULL;
    for (uint32_t i = 0; bufs && i < nb; i++) {
        size_t off, len;
        ppc_oob_buf(p, n, i, &off, &len);
        PyObject *b;
        if (base) {
            PyObject *start = PyLong_FromSize_t(off), *stop = PyLong_FromSize_t(off + len);
            PyObject *slice = start && stop ? PySlice_New(start, stop, NULL) : NULL;
            Py_XDECREF(start);
            Py_XDECREF(stop);
            b = slice ? PyObject_GetItem(base, slice) : NULL;
            Py_XDECREF(slice);
        } else {
            b = PyByteArray_FromStringAndSize((const char *)p + off, (Py_ssize_t)len);
        }
        if (!b) {
            Py_CLEAR(bufs);
            break;
        }
        PyList_SET_ITEM(bufs, i, b);
    }
    if (bufs) {
        PyObject *stream = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)sl, PyBUF_READ);
        PyObject *kw = stream ? Py_BuildValue("{sO}", "buffers", bufs) : NULL;
        PyObject *a = kw ? PyTuple_Pack(1, stream) : NULL;
        res = a ? PyObject_Call(G.pickle_loads, a, kw) : NULL;
        Py_XDECREF(a);
        Py_XDECREF(kw);
        if (stream) {
            PyObject *rr = PyObject_CallMethod(stream, "release", NULL);
            if (!rr)
                PyErr_Clear();
            Py_XDECREF(rr);
            Py_DECREF(stream);
        }
    }
    Py_XDECREF(bufs);
    if (base) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        Py_DECREF(base);
        PyErr_Restore(t, v, tb);
    }
    return res;
}

PyObject *ppc_loads_inline(const uint8_t *p, size_t n, int oob)
{
    if (oob)
        return ppc_loads_blob(p, n, NULL, NULL);
    PyObject *o = ppc_fast_loads(p, n);
    if (o)
        return o;
    PyObject *mv = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)n, PyBUF_READ);
    if (!mv)
        return NULL;
    o = PyObject_CallOneArg(G.pickle_loads, mv);
    Py_DECREF(mv);
    return o;
}

/* Bytes in large buffers reachable from o (bytes, bytearray, anything with
 * the buffer protocol), looking a few levels into tuples, lists and dicts:
 * a cheap guess at whether a pickle of o will be large. */
size_t ppc_big_estimate(PyObject *o, int depth)
{
    if (PyBytes_CheckExact(o))
        return (size_t)PyBytes_GET_SIZE(o) >= 65536 ? (size_t)PyBytes_GET_SIZE(o) : 0;
    if (PyUnicode_CheckExact(o))
        return (size_t)PyUnicode_GET_LENGTH(o) >= 65536 ? (size_t)PyUnicode_GET_LENGTH(o) : 0;
    if (PyLong_CheckExact(o) || PyFloat_CheckExact(o) || o == Py_None)
        return 0;
    if (depth <= 0)
        return 0;
    size_t sum = 0;
    if (PyTuple_Check(o) || PyList_Check(o)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        for (Py_ssize_t i = 0; i < n && i < 256; i++)
            sum += ppc_big_estimate(PySequence_Fast_GET_ITEM(o, i), depth - 1);
        return sum;
    }
    if (PyDict_Check(o)) {
        Py_ssize_t pos = 0, k = 0;
        PyObject *key, *val;
        while (k++ < 256 && PyDict_Next(o, &pos, &key, &val))
            sum += ppc_big_estimate(val, depth - 1);
        return sum;
    }
    if (PyObject_CheckBuffer(o)) {
        Py_buffer v;
        if (PyObject_GetBuffer(o, &v, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            if (PyObject_GetBuffer(o, &v, PyBUF_STRIDES) < 0) {
                PyErr_Clear();
                return 0;
            }
        }
        size_t n = (size_t)v.len;
        PyBuffer_Release(&v);
        return n >= 65536 ? n : 0;
    }
    return 0;
}

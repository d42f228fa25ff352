/* segwrite.c - the segment writer: large objects pickled with protocol 5
 * straight into a shared-memory segment (shm.h), used by the client for
 * arguments and by workers for results. The pickle stream goes through a
 * small file-like writer (a big bytes object is copied once, by the
 * pickler's direct write, or left as a hole read later from our memory
 * when the reader can do that, vm.h, and pinned until then); out-of-band
 * buffers (numpy arrays' data) are copied after the stream. Also the cheap
 * size guess that decides whether a payload goes this way. */
#include "ppc_py.h"
#include <string.h>
#include <unistd.h>

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
        Py_BEGIN_ALLOW_THREADS
        ppc_shm_prefault(self->seg, self->pos, n);
        memcpy(self->seg->map + self->pos, b.buf, n);
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
    ppc_vm_seg_set_holes(seg, 0, 0, NULL, 0); /* none yet (cannot fail) */
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
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nb; i++) {
        if (lens[i] >= (1u << 20))
            ppc_shm_prefault(seg, offs[i], (size_t)lens[i]);
        memcpy(seg->map + offs[i], views[i].buf, (size_t)lens[i]);
    }
    Py_END_ALLOW_THREADS
    ppc_oob_finish(seg->map, at, stream_len, (uint32_t)nb, offs, lens);
    seg->used = total;
    /* the table for the reader; our own list of the holes for us (vm.h) */
    if (wr->ngaps && ppc_vm_seg_set_holes(seg, (int)getpid(), wr->vmflags, wr->gaps, wr->ngaps) < 0) {
        PyErr_NoMemory();
        goto out;
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
    Py_BEGIN_ALLOW_THREADS
    ppc_shm_prefault(seg, 0, n);
    memcpy(seg->map, p, n);
    Py_END_ALLOW_THREADS
    ppc_oob_finish(seg->map, n, n, 0, NULL, NULL);
    seg->used = total;
    return 0;
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

/* payload.c - the payload codec: rebuilding objects from what a job's
 * arguments or result travelled as. An OOB blob (shm.h) in a mapping, its
 * buffers either views of the mapping (zero copy: the exporter is a
 * ppc_ShmMap) or bytearray copies; holes filled from their owner's memory
 * (vm.h), straight into the bytes object of the common shapes; an inline
 * payload (a pickle, read by hand when fastpickle.c takes it, or an inline
 * OOB blob). */
#include "ppc_py.h"
#include <string.h>

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

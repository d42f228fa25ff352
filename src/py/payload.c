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
    /* the opcodes before and after the bytes, copied once: p may be
     * memory a peer can write */
    uint8_t h[16], tl[16];
    if (n < 8)
        return NULL;
    size_t hn = n < sizeof h ? n : sizeof h;
    memcpy(h, p, hn);
    if (h[0] != 0x80 || h[1] < 4)
        return NULL;
    size_t i = 2;
    if (h[i] == 0x95) /* FRAME */
        i += 9;
    if (i + 5 > hn || h[i] != 'B')
        return NULL;
    size_t len = (size_t)h[i + 1] | (size_t)h[i + 2] << 8 | (size_t)h[i + 3] << 16 |
                 (size_t)h[i + 4] << 24;
    size_t at = i + 5;
    if (len < PPC_SHM_MIN_BYTES || len > n - at || n - at - len > sizeof tl)
        return NULL;
    size_t tn = n - at - len;
    memcpy(tl, p + at + len, tn);
    /* the bytes may be a hole: then they come from the owner's memory */
    ppc_vm_gap g = {0, 0, 0};
    if (vm) {
        if (vm->ngaps != 1)
            return NULL;
        ppc_vm_gap_get(vm, 0, &g);
        if (g.off != at || g.len != len)
            return NULL;
    }
    size_t k = 0;
    if (k + 9 <= tn && tl[k] == 0x95) /* FRAME: the pickler starts one after a big write */
        k += 9;
    if (k < tn && tl[k] == 0x94) /* MEMOIZE */
        k++;
    int tuple = k < tn && tl[k] == 0x85; /* TUPLE1 */
    if (tuple) {
        k++;
        if (k < tn && tl[k] == 0x94)
            k++;
    }
    if (k + 1 != tn || tl[k] != '.')
        return NULL;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (!b)
        return NULL;
    char *d = PyBytes_AS_STRING(b);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = vm ? ppc_fill_fresh(d, len, NULL, vm->pid, g.addr, vm->unpinned)
            : ppc_fill_fresh(d, len, p + at, 0, 0, 0);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
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

static PyObject *loads_blob(const uint8_t *p, size_t n, PyObject *exporter,
                            const ppc_vm_src *vm, int shared);

/* A blob with holes, in any other shape: a private copy with the holes
 * filled from the owner's memory, loaded from there. */
static PyObject *loads_holes(const uint8_t *p, size_t n, const ppc_vm_src *vm)
{
    uint8_t *cp = PyMem_RawMalloc(n ? n : 1);
    if (!cp)
        return PyErr_NoMemory();
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ppc_vm_copy_blob(cp, p, n, vm);
    Py_END_ALLOW_THREADS
    PyObject *o = NULL;
    if (rc < 0)
        PyErr_SetFromErrno(PyExc_OSError);
    else
        o = loads_blob(cp, n, NULL, NULL, 0);
    PyMem_RawFree(cp);
    return o;
}

PyObject *ppc_loads_blob(const uint8_t *p, size_t n, PyObject *exporter, const ppc_vm_src *vm)
{
    return loads_blob(p, n, exporter, vm, 1);
}

PyObject *ppc_oob_views(PyObject *exporter, const ppc_oob *o)
{
    PyObject *base = PyMemoryView_FromObject(exporter);
    PyObject *bufs = base ? PyList_New(o->nbufs) : NULL;
    for (uint32_t i = 0; bufs && i < o->nbufs; i++) {
        uint64_t off = o->bufs[2 * i], len = o->bufs[2 * i + 1];
        PyObject *start = PyLong_FromUnsignedLongLong(off);
        PyObject *stop = PyLong_FromUnsignedLongLong(off + len);
        PyObject *slice = start && stop ? PySlice_New(start, stop, NULL) : NULL;
        PyObject *b = slice ? PyObject_GetItem(base, slice) : NULL;
        Py_XDECREF(start);
        Py_XDECREF(stop);
        Py_XDECREF(slice);
        if (!b) {
            Py_CLEAR(bufs);
            break;
        }
        PyList_SET_ITEM(bufs, i, b);
    }
    Py_XDECREF(base);
    return bufs;
}

/* shared: p is memory a peer can write (a segment, or a copy-on-write
 * mapping of one whose pages we have not written yet), so the layout is
 * copied out once (ppc_oob_load) and the stream is unpickled from a
 * private copy; buffers are copied, or views when exporter is given (their
 * bytes may change, their bounds cannot). */
static PyObject *loads_blob(const uint8_t *p, size_t n, PyObject *exporter,
                            const ppc_vm_src *vm, int shared)
{
    ppc_oob o;
    if (ppc_oob_load(p, n, &o) < 0) {
        PyErr_SetString(PyExc_ValueError, "malformed out-of-band pickle blob");
        return NULL;
    }
    size_t sl = o.stream_len;
    uint32_t nb = o.nbufs;
    if (nb == 0) {
        PyObject *b = big_bytes(p, sl, vm);
        if (b || PyErr_Occurred()) {
            ppc_oob_release(&o);
            return b;
        }
    }
    if (vm) {
        ppc_oob_release(&o);
        return loads_holes(p, n, vm);
    }
    PyObject *bufs = exporter ? ppc_oob_views(exporter, &o) : PyList_New(nb), *res = NULL;
    for (uint32_t i = 0; !exporter && bufs && i < nb; i++) {
        size_t off = (size_t)o.bufs[2 * i], len = (size_t)o.bufs[2 * i + 1];
        PyObject *b = PyByteArray_FromStringAndSize((const char *)p + off, (Py_ssize_t)len);
        if (!b) {
            Py_CLEAR(bufs);
            break;
        }
        PyList_SET_ITEM(bufs, i, b);
    }
    ppc_oob_release(&o);
    if (bufs) {
        PyObject *stream = shared ? PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)sl)
                                  : PyMemoryView_FromMemory((char *)p, (Py_ssize_t)sl, PyBUF_READ);
        PyObject *kw = stream ? Py_BuildValue("{sO}", "buffers", bufs) : NULL;
        PyObject *a = kw ? PyTuple_Pack(1, stream) : NULL;
        res = a ? PyObject_Call(G.pickle_loads, a, kw) : NULL;
        Py_XDECREF(a);
        Py_XDECREF(kw);
        if (stream && !shared) {
            /* the unpickler's error, if any, survives the release */
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            PyObject *rr = PyObject_CallMethod(stream, "release", NULL);
            if (!rr)
                PyErr_Clear();
            Py_XDECREF(rr);
            PyErr_Restore(t, v, tb);
        }
        Py_XDECREF(stream);
    }
    Py_XDECREF(bufs);
    return res;
}

PyObject *ppc_loads_inline(const uint8_t *p, size_t n, int oob)
{
    if (oob)
        return loads_blob(p, n, NULL, NULL, 0);
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

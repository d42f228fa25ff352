/* shipcache.c - the client's blobs of shipped functions, looked up at
 * every submit: which blob (function id) a call's function travels as.
 * The blob's format, and its encoding and decoding, are ship.c's.
 *
 * Blobs without state are cached by the identity of (func, depfuncs,
 * modules, globals flag, __main__ names of the arguments); while the
 * arguments do not mention __main__, the last submit's key is compared by
 * pointer first, so a loop of submits costs no encoding and no dict
 * lookup. A blob that holds state (closure values,
 * defaults, a pickled callable) is encoded again at every submit, so jobs
 * see the values of their submit time, and then found by content, so
 * unchanged state still gets one id and is sent once per worker. */
#include "ppc_py.h"
#include <string.h>

static void blob_capsule_free(PyObject *cap)
{
    ppc_blob_decref(PyCapsule_GetPointer(cap, "ppc_blob"));
}

/* A new function id for the bytes, in a capsule. */
static PyObject *make_cap(ppc_Server *s, PyObject *blob, int code)
{
    ppc_blob *b =
        ppc_blob_new(s->next_fid++, PyBytes_AS_STRING(blob), (size_t)PyBytes_GET_SIZE(blob));
    if (!b)
        return PyErr_NoMemory();
    if (code)
        b->flags |= PPC_BLOB_SAME_PY;
    PyObject *cap = PyCapsule_New(b, "ppc_blob", blob_capsule_free);
    if (!cap)
        ppc_blob_decref(b);
    return cap;
}

/* Blobs holding state are kept by content, at most this many. */
#define VOLATILE_MAX 256

/* Encode and find the blob: by content for blobs holding state; *vol says
 * which. */
static PyObject *encode_cap(ppc_Server *s, PyObject *func, PyObject *depfuncs, PyObject *modules,
                            PyObject *globals, PyObject *refs, int *vol)
{
    int code = 0;
    *vol = 0;
    PyObject *blob = ppc_ship_encode(func, depfuncs, modules, globals, refs, s->proto, vol, &code);
    if (!blob)
        return NULL;
    if (!*vol) {
        PyObject *cap = make_cap(s, blob, code);
        Py_DECREF(blob);
        return cap;
    }
    PyObject *cap = PyDict_GetItemWithError(s->fn_volatile, blob);
    if (cap) {
        Py_INCREF(cap);
    } else if (!PyErr_Occurred()) {
        if (PyDict_GET_SIZE(s->fn_volatile) >= VOLATILE_MAX)
            PyDict_Clear(s->fn_volatile); /* queued jobs keep their blobs alive */
        cap = make_cap(s, blob, code);
        if (cap && PyDict_SetItem(s->fn_volatile, blob, cap) < 0)
            Py_CLEAR(cap);
    }
    Py_DECREF(blob);
    return cap;
}

PyObject *ppc_ship_blob(ppc_Server *s, PyObject *func, PyObject *depfuncs, PyObject *modules,
                        PyObject *globals, const char *data, size_t n)
{
    PyObject *refs = NULL;
    PyObject *gflag = globals == Py_None ? Py_False : Py_True;
    if (memmem(data, n, "__main__", 8)) {
        refs = ppc_ship_main_names(data, n);
        if (!refs)
            return NULL;
    } else if (s->last_cap && s->last_key[0] == func && s->last_key[1] == depfuncs &&
               s->last_key[2] == modules && s->last_key[3] == gflag) {
        /* the same call as last time: no key to build, no dict lookup */
        Py_INCREF(s->last_cap);
        return s->last_cap;
    }
    PyObject *key = Py_BuildValue("(OOOOO)", func, depfuncs, modules, gflag,
                                  refs ? refs : Py_None);
    if (!key) {
        Py_XDECREF(refs);
        return NULL;
    }
    int vol = 1;
    PyObject *cap = PyDict_GetItemWithError(s->fn_cache, key);
    if (cap == Py_None) {
        /* holds state: encoded again, found by content */
        cap = encode_cap(s, func, depfuncs, modules, globals, refs, &vol);
    } else if (cap) {
        vol = 0;
        Py_INCREF(cap);
    } else if (!PyErr_Occurred()) {
        cap = encode_cap(s, func, depfuncs, modules, globals, refs, &vol);
        if (cap && PyDict_SetItem(s->fn_cache, key, vol ? Py_None : cap) < 0)
            Py_CLEAR(cap);
    } else if (PyErr_ExceptionMatches(PyExc_TypeError)) {
        /* unhashable part (e.g. a callable instance): encode every time */
        PyErr_Clear();
        cap = encode_cap(s, func, depfuncs, modules, globals, refs, &vol);
        vol = 1;
    }
    Py_DECREF(key);
    if (cap && !refs && !vol) {
        PyObject *k[4] = {func, depfuncs, modules, gflag};
        for (int i = 0; i < 4; i++) {
            Py_INCREF(k[i]);
            Py_XSETREF(s->last_key[i], k[i]);
        }
        Py_INCREF(cap);
        Py_XSETREF(s->last_cap, cap);
    }
    Py_XDECREF(refs);
    return cap;
}

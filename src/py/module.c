/* module.c - the pp._ppc extension module (client and ppserver side): its
 * types and its exceptions. Workers load the leaner pp/_ppcw instead
 * (wmodule.c), which has no engine and no libcrypto. */
#include "ppc_py.h"

/* Test hooks for the hand-written pickle path (tests/test_fastpickle.py):
 * _fast_dumps(obj, proto) -> bytes or None; _fast_loads(bytes) -> (obj,)
 * or None when the reader does not handle it. */
static PyObject *fast_dumps_hook(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *obj;
    int proto;
    if (!PyArg_ParseTuple(args, "Oi:_fast_dumps", &obj, &proto))
        return NULL;
    ppc_fastbuf fb;
    ppc_fastbuf_init(&fb);
    size_t n = ppc_fast_dumps(obj, proto, &fb);
    PyObject *r = n ? PyBytes_FromStringAndSize((const char *)fb.data, (Py_ssize_t)n)
                    : (Py_INCREF(Py_None), Py_None);
    ppc_fastbuf_free(&fb);
    return r;
}

static PyObject *fast_loads_hook(PyObject *mod, PyObject *arg)
{
    (void)mod;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "_fast_loads takes bytes");
        return NULL;
    }
    PyObject *o = ppc_fast_loads((const uint8_t *)PyBytes_AS_STRING(arg),
                                 (size_t)PyBytes_GET_SIZE(arg));
    if (!o) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(N)", o);
}

static PyMethodDef module_methods[] = {
    {"_fast_dumps", fast_dumps_hook, METH_VARARGS, NULL},
    {"_fast_loads", fast_loads_hook, METH_O, NULL},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ppc",
    "The C engine of pp: job server, worker loop and function shipping.", -1, module_methods,
    NULL, NULL, NULL, NULL};

static int add_exc(PyObject *m, PyObject **slot, const char *name, PyObject *base, const char *doc)
{
    char full[128];
    snprintf(full, sizeof full, "pp.%s", name);
    *slot = PyErr_NewExceptionWithDoc(full, doc, base, NULL);
    if (!*slot)
        return -1;
    Py_INCREF(*slot);
    if (PyModule_AddObject(m, name, *slot) < 0) {
        Py_DECREF(*slot);
        return -1;
    }
    return 0;
}

static PyObject *init_module(const char *name)
{
    module_def.m_name = name;
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    if (ppc_declare_gil_used(m) < 0)
        goto fail;
    G.str_default = PyUnicode_InternFromString("default");
    G.empty_tuple = PyTuple_New(0);
    /* not ppc_globals_init(): the C pickler imports functools and
     * collections, which `import pp` need not pay for; Server_init loads it */
    if (!G.str_default || !G.empty_tuple)
        goto fail;
    if (add_exc(m, &G.DestroyedServerError, "DestroyedServerError", PyExc_RuntimeError,
                "The job server was destroyed: no job can be submitted, and jobs that were "
                "pending at destroy() raise this.") < 0 ||
        add_exc(m, &G.WorkerError, "WorkerError", PyExc_RuntimeError,
                "A job could not run to completion because its worker process died, or no "
                "node can ever run it.") < 0 ||
        add_exc(m, &G.RemoteError, "RemoteError", PyExc_RuntimeError,
                "A job raised an exception that could not travel back as itself (for "
                "example it could not be pickled); the message names its type.") < 0 ||
        add_exc(m, &G.RemoteTraceback, "RemoteTraceback", PyExc_Exception,
                "Carries the traceback text of an exception raised in a worker; attached "
                "as __cause__ of the exception job() raises.") < 0)
        goto fail;
    if (PyType_Ready(&ppc_ServerType) < 0 || PyType_Ready(&ppc_JobType) < 0)
        goto fail;
    Py_INCREF(&ppc_ServerType);
    if (PyModule_AddObject(m, "Server", (PyObject *)&ppc_ServerType) < 0)
        goto fail;
    Py_INCREF(&ppc_JobType);
    if (PyModule_AddObject(m, "Job", (PyObject *)&ppc_JobType) < 0)
        goto fail;
    if (PyType_Ready(&ppc_ChunkType) < 0)
        goto fail;
    Py_INCREF(&ppc_ChunkType);
    if (PyModule_AddObject(m, "Chunk", (PyObject *)&ppc_ChunkType) < 0)
        goto fail;
    if (ppc_job_add_executor_methods(m) < 0)
        goto fail;
    if (PyModule_AddIntConstant(m, "HIGHEST_PROTOCOL", 5) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

PyMODINIT_FUNC PyInit__ppc(void) { return init_module("_ppc"); }

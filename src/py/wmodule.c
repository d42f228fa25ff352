/* wmodule.c - pp._ppcw, the worker processes' extension module: only the
 * receive / execute / reply loop (worker.c) and the frame codec, so a
 * worker starts fast (no engine, no libcrypto). */
#include "ppc_py.h"

static PyMethodDef wmodule_methods[] = {
    {"worker_main", ppc_worker_main, METH_VARARGS,
     "worker_main(fd_in, fd_out)\n--\n\nRun the worker loop on the given pipe descriptors "
     "until the client closes them. Used by worker processes only."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef wmodule_def = {
    PyModuleDef_HEAD_INIT, "_ppcw", "pp's worker loop (used by worker processes only).", -1,
    wmodule_methods, NULL, NULL, NULL, NULL};

/* The module relies on the GIL (globals, the objects the engine thread
 * hands back): say so, and a free-threaded CPython 3.13+ keeps the GIL on
 * while it is imported. Single-phase init: PyUnstable_Module_SetGIL, which
 * exists on free-threaded builds only. */
static int declare_gil_used(PyObject *m)
{
#if PY_VERSION_HEX >= 0x030D0000 && defined(Py_GIL_DISABLED)
    return PyUnstable_Module_SetGIL(m, Py_MOD_GIL_USED);
#else
    (void)m;
    return 0;
#endif
}

PyMODINIT_FUNC PyInit__ppcw(void)
{
    PyObject *m = PyModule_Create(&wmodule_def);
    if (m && (declare_gil_used(m) < 0 || ppc_globals_init() < 0))
        Py_CLEAR(m);
    return m;
}

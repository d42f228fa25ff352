/* wmodule.c - pp._ppcw, the worker processes' extension module: only the
 * receive / execute / reply loop (worker.c) and what it needs (frames, the
 * result layout, segments, the payload codec, function shipping), so a
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

PyMODINIT_FUNC PyInit__ppcw(void)
{
    PyObject *m = PyModule_Create(&wmodule_def);
    if (m && (ppc_declare_gil_used(m) < 0 || ppc_globals_init() < 0))
        Py_CLEAR(m);
    return m;
}

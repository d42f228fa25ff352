/* pyutil.c - objects and helpers shared by both extension modules (the
 * client's pp._ppc and the worker's pp._ppcw). */
#include "ppc_py.h"

ppc_globals G;

PyObject *ppc_import_attr(const char *module, const char *attr)
{
    PyObject *m = PyImport_ImportModule(module);
    if (!m)
        return NULL;
    PyObject *a = PyObject_GetAttrString(m, attr);
    Py_DECREF(m);
    return a;
}

int ppc_globals_init(void)
{
    /* the C pickler directly: the pure-Python pickle module costs a worker
     * several milliseconds of start-up */
    if (!G.pickle_dumps)
        G.pickle_dumps = ppc_import_attr("_pickle", "dumps");
    if (!G.pickle_loads)
        G.pickle_loads = ppc_import_attr("_pickle", "loads");
    return G.pickle_dumps && G.pickle_loads ? 0 : -1;
}

/* Both modules rely on the GIL (globals, the objects the engine thread
 * hands back): say so, and a free-threaded CPython 3.13+ keeps the GIL on
 * while they are imported. Single-phase init: PyUnstable_Module_SetGIL,
 * which exists on free-threaded builds only. */
int ppc_declare_gil_used(PyObject *m)
{
#if PY_VERSION_HEX >= 0x030D0000 && defined(Py_GIL_DISABLED)
    return PyUnstable_Module_SetGIL(m, Py_MOD_GIL_USED);
#else
    (void)m;
    return 0;
#endif
}

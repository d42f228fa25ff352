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

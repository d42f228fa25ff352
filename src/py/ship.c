/* ship.c - the function-shipping format: a job's function, with its
 * depfuncs, modules and the names globals=globals() brings, encoded once
 * into a blob on the client (ppc_ship_encode) and made a callable again in
 * a worker (ppc_ship_install). Both extension modules compile this file;
 * which blob a submit uses (the per-submit cache) is shipcache.c's.
 *
 * A blob is pickle((modules, deps, main)):
 *   modules  tuple of str, run in the worker's __main__ in order: "name"
 *            (imported), or a statement "import x [as y]" / "from x import y";
 *   deps     tuple of specs, each bound in __main__ under its name;
 *   main     the spec of the job's function.
 * A spec is a tuple naming its form first; each function or class travels
 * in the cheapest form that works:
 *   ("ref", name, module, qualname)
 *       importable (builtins, functions of modules): the worker imports
 *       module and follows the dotted qualname;
 *   ("src", name, top, qualname, source, filename, firstline)
 *       a function or class of __main__ with source, methods through their
 *       class: source defines the top-level object `top`; the worker pads it
 *       with firstline - 1 newlines (tracebacks show the client's line
 *       numbers), runs it in __main__ and follows qualname from `top`;
 *   ("code", name, marshal, defaults, kwdefaults, closure, qualname, fns)
 *       lambdas, closures, decorated functions, functions without source
 *       (REPL, python -c): marshal.dumps of the code object; closure is None
 *       or the tuple of the cells' values. Cells holding functions (nested,
 *       decorated, recursive local functions) hold None there and travel in
 *       fns, ((cell index, spec), ...) or None; inside fns, ("back", k) is
 *       the k-th of the functions being built around it (recursion);
 *   ("obj", name, pickle)
 *       any other picklable callable (an instance, a partial);
 *   ("map", name, star, spec)
 *       a Chunk (Server.map's unit of work): the function of spec run over
 *       a list of items in one call, func(*item) when star, else func(item).
 * A blob with "code" specs loads only in the client's Python version
 * (marshal): its flag PPC_BLOB_SAME_PY keeps it off other nodes. A blob
 * with state (closure values, defaults, fns, an "obj" pickle) must be
 * encoded at each submit. Classes of __main__ that a job's arguments refer
 * to (ppc_ship_main_names) travel as deps, so instances of user classes
 * arrive with their definitions. */
#include "ppc_py.h"
#include <structmember.h>
#include <string.h>


/* getattr along the dotted qualname from root, skipping its first `skip`
 * parts; new reference, or NULL with an error set. */
static PyObject *walk(PyObject *root, PyObject *qualname, Py_ssize_t skip)
{
    PyObject *dot = PyUnicode_FromString(".");
    PyObject *parts = dot ? PyUnicode_Split(qualname, dot, -1) : NULL;
    Py_XDECREF(dot);
    if (!parts)
        return NULL;
    PyObject *cur = root;
    Py_INCREF(cur);
    for (Py_ssize_t i = skip; i < PyList_GET_SIZE(parts) && cur; i++) {
        PyObject *nx = PyObject_GetAttr(cur, PyList_GET_ITEM(parts, i));
        Py_DECREF(cur);
        cur = nx;
    }
    Py_DECREF(parts);
    return cur;
}

/* ------------------------------------------------------------ encoding */

/* The module __main__ (borrowed), or NULL. */
static PyObject *mod_main(void)
{
    PyObject *modules = PySys_GetObject("modules");
    return modules ? PyDict_GetItemString(modules, "__main__") : NULL;
}

/* walk from root, or NULL without an error. */
static PyObject *resolve(PyObject *root, PyObject *qualname)
{
    PyObject *o = walk(root, qualname, 0);
    if (!o)
        PyErr_Clear();
    return o;
}

static PyObject *attr_or_none(PyObject *o, const char *name)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (!v) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return v;
}

static int has_lt(PyObject *s)
{
    return PyUnicode_FindChar(s, '<', 0, PyUnicode_GET_LENGTH(s), 1) >= 0;
}

/* Leading blanks of a line (tabs count as one: only compared with the
 * same file's lines). */
static Py_ssize_t indent_of(PyObject *line, int *blank)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(line), i = 0;
    int kind = PyUnicode_KIND(line);
    const void *d = PyUnicode_DATA(line);
    while (i < n && (PyUnicode_READ(kind, d, i) == ' ' || PyUnicode_READ(kind, d, i) == '\t'))
        i++;
    Py_UCS4 c = i < n ? PyUnicode_READ(kind, d, i) : '\n';
    *blank = c == '\n' || c == '\r' || c == '#';
    return i;
}

/* The source of a plain function of __main__ straight from its file: the
 * lines from co_firstlineno while they are indented deeper than the first
 * (blank and comment lines included), accepted only if they compile and
 * define `top`. A cut inside a bracket or a string cannot compile, so what
 * passes is the whole definition; anything else (None, no exception) goes
 * to inspect, which costs several milliseconds to import. Returns
 * (source, filename, first line). */
static PyObject *fast_source(PyObject *f, PyObject *top)
{
    PyCodeObject *co = (PyCodeObject *)PyFunction_GET_CODE(f);
    PyObject *file = co->co_filename;
    int first = co->co_firstlineno;
    if (!PyUnicode_Check(file) || first < 1 || has_lt(file))
        Py_RETURN_NONE;
    PyObject *getlines = ppc_import_attr("linecache", "getlines");
    PyObject *lines = getlines ? PyObject_CallOneArg(getlines, file) : NULL;
    Py_XDECREF(getlines);
    PyObject *res = NULL, *src = NULL, *code = NULL, *names = NULL;
    if (!lines || !PyList_Check(lines) || PyList_GET_SIZE(lines) < first)
        goto none;
    Py_ssize_t start = first - 1, end = start + 1, last = start + 1;
    int blank;
    PyObject *l0 = PyList_GET_ITEM(lines, start);
    if (!PyUnicode_Check(l0))
        goto none;
    Py_ssize_t base = indent_of(l0, &blank);
    if (base != 0 || blank)
        goto none; /* a top-level def starts at column 0 */
    for (; end < PyList_GET_SIZE(lines); end++) {
        PyObject *l = PyList_GET_ITEM(lines, end);
        if (!PyUnicode_Check(l))
            goto none;
        Py_ssize_t ind = indent_of(l, &blank);
        if (blank)
            continue;
        if (ind <= base)
            break;
        last = end + 1;
    }
    PyObject *part = PyList_GetSlice(lines, start, last);
    PyObject *empty = PyUnicode_FromString("");
    src = part && empty ? PyUnicode_Join(empty, part) : NULL;
    Py_XDECREF(part);
    Py_XDECREF(empty);
    if (!src)
        goto none;
    const char *cs = PyUnicode_AsUTF8(src);
    code = cs ? Py_CompileStringObject(cs, file, Py_file_input, NULL, -1) : NULL;
    names = code ? PyObject_GetAttrString(code, "co_names") : NULL;
    if (!names || PySequence_Contains(names, top) != 1)
        goto none;
    res = Py_BuildValue("(OOi)", src, file, first);
    goto out;
none:
    PyErr_Clear();
    res = Py_None;
    Py_INCREF(res);
out:
    Py_XDECREF(lines);
    Py_XDECREF(src);
    Py_XDECREF(code);
    Py_XDECREF(names);
    return res;
}

/* (source, filename, first line) of a top-level object of __main__
 * through inspect, or None when it has no usable source. */
static PyObject *inspect_source(PyObject *topobj)
{
    PyObject *getsourcelines = ppc_import_attr("inspect", "getsourcelines");
    PyObject *getsourcefile = ppc_import_attr("inspect", "getsourcefile");
    PyObject *dedent = ppc_import_attr("textwrap", "dedent");
    PyObject *lines = NULL, *src = NULL, *file = NULL, *empty = NULL, *joined = NULL;
    PyObject *res = NULL;
    if (!getsourcelines || !getsourcefile || !dedent)
        goto out;
    lines = PyObject_CallOneArg(getsourcelines, topobj);
    if (!lines || !PyTuple_Check(lines) || PyTuple_GET_SIZE(lines) != 2) {
        PyErr_Clear();
        res = Py_None;
        Py_INCREF(res);
        goto out;
    }
    empty = PyUnicode_FromString("");
    joined = empty ? PyUnicode_Join(empty, PyTuple_GET_ITEM(lines, 0)) : NULL;
    src = joined ? PyObject_CallOneArg(dedent, joined) : NULL;
    if (!src)
        goto out;
    file = PyObject_CallOneArg(getsourcefile, topobj);
    if (!file || file == Py_None) {
        PyErr_Clear();
        Py_XDECREF(file);
        file = PyUnicode_FromString("<pp>");
    }
    if (file)
        res = PyTuple_Pack(3, src, file, PyTuple_GET_ITEM(lines, 1));
out:
    Py_XDECREF(getsourcelines);
    Py_XDECREF(getsourcefile);
    Py_XDECREF(dedent);
    Py_XDECREF(lines);
    Py_XDECREF(src);
    Py_XDECREF(file);
    Py_XDECREF(empty);
    Py_XDECREF(joined);
    return res;
}

/* ("src", ...) for an object of __main__, or Py_None when no usable
 * source exists. */
static PyObject *source_spec(PyObject *obj, PyObject *name, PyObject *qn)
{
    PyObject *main = mod_main();
    if (!main)
        Py_RETURN_NONE;
    Py_ssize_t dot = PyUnicode_FindChar(qn, '.', 0, PyUnicode_GET_LENGTH(qn), 1);
    PyObject *top = dot >= 0 ? PyUnicode_Substring(qn, 0, dot) : (Py_INCREF(qn), qn);
    if (!top)
        return NULL;
    PyObject *topobj = PyObject_GetAttr(main, top);
    if (!topobj) {
        PyErr_Clear();
        Py_DECREF(top);
        Py_RETURN_NONE;
    }
    PyObject *res = NULL;
    int same = 0;
    if (dot >= 0) {
        /* a method or nested class: the path from the top object must lead to it */
        PyObject *rest = PyUnicode_Substring(qn, dot + 1, PyUnicode_GET_LENGTH(qn));
        PyObject *r = rest ? resolve(topobj, rest) : NULL;
        Py_XDECREF(rest);
        PyErr_Clear();
        PyObject *rf = r && !PyFunction_Check(r) ? PyObject_GetAttrString(r, "__func__") : NULL;
        PyErr_Clear();
        same = r == obj || (rf && rf == obj);
        Py_XDECREF(rf);
        Py_XDECREF(r);
    } else {
        same = topobj == obj;
    }
    if (!same || (PyFunction_Check(obj) && dot < 0 && PyFunction_GET_CLOSURE(obj))) {
        res = Py_None;
        Py_INCREF(res);
        goto out;
    }
    /* plain functions straight from the file; classes (and what that
     * declines) through inspect */
    PyObject *fs = PyFunction_Check(topobj) ? fast_source(topobj, top)
                                            : (Py_INCREF(Py_None), Py_None);
    if (fs == Py_None) {
        Py_DECREF(fs);
        fs = inspect_source(topobj);
    }
    if (!fs || fs == Py_None) {
        res = fs;
        goto out;
    }
    /* A decorated function needs its decorator in the worker: ship it as
     * code instead. Decorated classes keep their source. */
    PyObject *src = PyTuple_GET_ITEM(fs, 0);
    if (PyFunction_Check(obj) && dot < 0 && PyUnicode_GET_LENGTH(src) > 0 &&
        PyUnicode_READ_CHAR(src, 0) == '@') {
        res = Py_None;
        Py_INCREF(res);
    } else {
        res = Py_BuildValue("(sOOOOOO)", "src", name, top, qn, src, PyTuple_GET_ITEM(fs, 1),
                            PyTuple_GET_ITEM(fs, 2));
    }
    Py_DECREF(fs);
out:
    Py_DECREF(topobj);
    Py_DECREF(top);
    return res;
}

static PyObject *fspec(PyObject *obj, int proto, PyObject *stack);

/* Position of f in the stack of functions being encoded, or -1. */
static Py_ssize_t stack_index(PyObject *stack, PyObject *f)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(stack); i++)
        if (PyList_GET_ITEM(stack, i) == f)
            return i;
    return -1;
}

/* ("code", ...) for a function; stack: the functions being encoded around
 * it, so that a closure referring back to one of them becomes ("back", k). */
static PyObject *code_spec(PyObject *f, PyObject *name, PyObject *qn, int proto, PyObject *stack)
{
    PyObject *marshal_dumps = ppc_import_attr("marshal", "dumps");
    if (!marshal_dumps)
        return NULL;
    PyObject *code = PyObject_CallOneArg(marshal_dumps, PyFunction_GET_CODE(f));
    Py_DECREF(marshal_dumps);
    if (!code)
        return NULL;
    PyObject *closure = PyFunction_GET_CLOSURE(f);
    PyObject *values = Py_None, *fns = PyList_New(0), *r = NULL;
    Py_INCREF(values);
    if (!fns || PyList_Append(stack, f) < 0)
        goto out;
    if (closure && PyTuple_Check(closure)) {
        Py_DECREF(values);
        values = PyTuple_New(PyTuple_GET_SIZE(closure));
        for (Py_ssize_t i = 0; values && i < PyTuple_GET_SIZE(closure); i++) {
            PyObject *v = PyCell_GET(PyTuple_GET_ITEM(closure, i));
            if (!v) {
                PyErr_Format(PyExc_TypeError,
                             "cannot ship %R: a variable of its closure is not set yet", f);
                goto pop;
            }
            if (PyFunction_Check(v)) {
                /* a local, nested or recursive function: as a spec */
                Py_ssize_t k = stack_index(stack, v);
                PyObject *sub = k >= 0 ? Py_BuildValue("(sn)", "back", k) : fspec(v, proto, stack);
                PyObject *slot = sub ? Py_BuildValue("(nN)", i, sub) : NULL;
                if (!slot || PyList_Append(fns, slot) < 0) {
                    Py_XDECREF(slot);
                    goto pop;
                }
                Py_DECREF(slot);
                v = Py_None;
            }
            Py_INCREF(v);
            PyTuple_SET_ITEM(values, i, v);
        }
        if (!values)
            goto pop;
    }
    PyObject *defaults = PyFunction_GET_DEFAULTS(f);
    PyObject *kwdefaults = PyFunction_GET_KW_DEFAULTS(f);
    r = Py_BuildValue("(sOOOOOON)", "code", name, code, defaults ? defaults : Py_None,
                      kwdefaults ? kwdefaults : Py_None, values, qn,
                      PyList_GET_SIZE(fns) ? PyList_AsTuple(fns) : (Py_INCREF(Py_None), Py_None));
pop:
    PyList_SetSlice(stack, PyList_GET_SIZE(stack) - 1, PyList_GET_SIZE(stack), NULL);
out:
    Py_DECREF(code);
    Py_XDECREF(values);
    Py_XDECREF(fns);
    return r;
}

/* ------------------------------------------------------------ chunks */

/* Chunk(func, star): calling it with a list of items returns the list of
 * func(*item) (star) or func(item) results, the loop in C. Server.map
 * submits chunks as jobs; a chunk travels as ("map", ...) around its
 * function's own spec. Equal chunks (same function object, same star)
 * hash alike, so repeated maps of one function reuse one blob. */
typedef struct {
    PyObject_HEAD
    PyObject *func;
    int star;
} ppc_Chunk;

/* A new Chunk of type t holding func (a new reference) and star. */
static PyObject *chunk_make(PyTypeObject *t, PyObject *func, int star)
{
    ppc_Chunk *c = (ppc_Chunk *)t->tp_alloc(t, 0);
    if (!c)
        return NULL;
    Py_INCREF(func);
    c->func = func;
    c->star = star;
    return (PyObject *)c;
}

static PyObject *Chunk_new(PyTypeObject *t, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"func", "star", NULL};
    PyObject *func;
    int star = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i:Chunk", kwlist, &func, &star))
        return NULL;
    if (star < 0 || star > 2) {
        PyErr_SetString(PyExc_ValueError, "Chunk's star is 0, 1 or 2");
        return NULL;
    }
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "Chunk needs a callable");
        return NULL;
    }
    return chunk_make(t, func, star);
}

static void Chunk_dealloc(ppc_Chunk *c)
{
    Py_XDECREF(c->func);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *Chunk_call(ppc_Chunk *c, PyObject *args, PyObject *kw)
{
    if (c->star == 2) {
        /* one call with keyword arguments: chunk(args, kwargs) */
        PyObject *a, *k;
        if (kw && PyDict_GET_SIZE(kw)) {
            PyErr_SetString(PyExc_TypeError, "a keyword chunk takes (args, kwargs)");
            return NULL;
        }
        if (!PyArg_ParseTuple(args, "O!O!:chunk", &PyTuple_Type, &a, &PyDict_Type, &k))
            return NULL;
        return PyObject_Call(c->func, a, k);
    }
    if (PyTuple_GET_SIZE(args) != 1 || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "a chunk is called with one list of items");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(PyTuple_GET_ITEM(args, 0), "a chunk's items must be a list");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *a = PySequence_Fast_GET_ITEM(seq, i), *r;
        if (!c->star)
            r = PyObject_CallOneArg(c->func, a);
        else if (PyTuple_Check(a))
            r = PyObject_Call(c->func, a, NULL);
        else {
            PyObject *t = PySequence_Tuple(a);
            r = t ? PyObject_Call(c->func, t, NULL) : NULL;
            Py_XDECREF(t);
        }
        if (!r)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, r);
    }
    Py_DECREF(seq);
    return out;
}

static Py_hash_t Chunk_hash(ppc_Chunk *c)
{
    Py_hash_t h = (Py_hash_t)((uintptr_t)c->func >> 4) * 2 + c->star;
    return h == -1 ? -2 : h;
}

static PyObject *Chunk_richcompare(PyObject *a, PyObject *b, int op)
{
    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(b) != Py_TYPE(a))
        Py_RETURN_NOTIMPLEMENTED;
    ppc_Chunk *x = (ppc_Chunk *)a, *y = (ppc_Chunk *)b;
    int eq = x->func == y->func && x->star == y->star;
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static PyMemberDef Chunk_members[] = {
    {"func", T_OBJECT, offsetof(ppc_Chunk, func), READONLY, "the function run per item"},
    {"star", T_INT, offsetof(ppc_Chunk, star), READONLY, "items are argument tuples"},
    {NULL, 0, 0, 0, NULL}};

PyTypeObject ppc_ChunkType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._ppc.Chunk",
    .tp_basicsize = sizeof(ppc_Chunk),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Chunk(func, star=0): called with a list of items, returns "
              "[func(*item) if star else func(item) for item in items]; star=2: "
              "called as chunk(args, kwargs), returns func(*args, **kwargs).",
    .tp_new = Chunk_new,
    .tp_dealloc = (destructor)Chunk_dealloc,
    .tp_call = (ternaryfunc)Chunk_call,
    .tp_hash = (hashfunc)Chunk_hash,
    .tp_richcompare = Chunk_richcompare,
    .tp_members = Chunk_members,
};

static PyObject *chunk_of(PyObject *func, int star)
{
    if (PyType_Ready(&ppc_ChunkType) < 0)
        return NULL;
    return chunk_make(&ppc_ChunkType, func, star);
}

/* Is this spec (or the one a "map" spec wraps) a code object? */
static int spec_is_code(PyObject *spec)
{
    const char *k = PyUnicode_AsUTF8(PyTuple_GET_ITEM(spec, 0));
    if (!k) {
        PyErr_Clear();
        return 0;
    }
    if (!strcmp(k, "map") && PyTuple_GET_SIZE(spec) == 4)
        return spec_is_code(PyTuple_GET_ITEM(spec, 3));
    return !strcmp(k, "code");
}

/* Does a spec carry values that may change between submits? */
static int spec_volatile(PyObject *spec)
{
    const char *k = PyUnicode_AsUTF8(PyTuple_GET_ITEM(spec, 0));
    if (!k) {
        PyErr_Clear();
        return 1;
    }
    if (!strcmp(k, "obj"))
        return 1;
    if (!strcmp(k, "map") && PyTuple_GET_SIZE(spec) == 4)
        return spec_volatile(PyTuple_GET_ITEM(spec, 3));
    if (strcmp(k, "code") || PyTuple_GET_SIZE(spec) != 8)
        return 0;
    for (int i = 3; i <= 5; i++)
        if (PyTuple_GET_ITEM(spec, i) != Py_None)
            return 1;
    return PyTuple_GET_ITEM(spec, 7) != Py_None;
}

/* The travelling form of one function or class. */
static PyObject *fspec(PyObject *obj, int proto, PyObject *stack)
{
    if (Py_TYPE(obj) == &ppc_ChunkType) {
        ppc_Chunk *c = (ppc_Chunk *)obj;
        PyObject *inner = fspec(c->func, proto, stack);
        return inner ? Py_BuildValue("(ssiN)", "map", "<chunk>", c->star, inner) : NULL;
    }
    PyObject *name = attr_or_none(obj, "__name__");
    PyObject *mod = attr_or_none(obj, "__module__");
    PyObject *qn = attr_or_none(obj, "__qualname__");
    PyObject *res = NULL;
    if (!PyUnicode_Check(name)) {
        Py_DECREF(name);
        name = PyUnicode_FromString("func");
        if (!name)
            goto out;
    }
    if (!PyUnicode_Check(qn)) {
        Py_DECREF(qn);
        qn = name;
        Py_INCREF(qn);
    }
    if (PyUnicode_Check(mod) && !has_lt(qn)) {
        if (PyUnicode_CompareWithASCIIString(mod, "__main__") != 0) {
            PyObject *m = PyImport_Import(mod);
            if (!m)
                PyErr_Clear();
            PyObject *r = m ? resolve(m, qn) : NULL;
            Py_XDECREF(m);
            int same = r == obj;
            Py_XDECREF(r);
            if (same) {
                res = Py_BuildValue("(sOOO)", "ref", name, mod, qn);
                goto out;
            }
        } else {
            res = source_spec(obj, name, qn);
            if (!res || res != Py_None)
                goto out;
            Py_CLEAR(res);
        }
    }
    if (PyFunction_Check(obj)) {
        res = code_spec(obj, name, qn, proto, stack);
        goto out;
    }
    PyObject *pick = PyObject_CallFunction(G.pickle_dumps, "Oi", obj, proto);
    if (!pick) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_Format(PyExc_TypeError, "cannot ship %R to the workers: %S", obj, v ? v : Py_None);
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        goto out;
    }
    res = Py_BuildValue("(sON)", "obj", name, pick);
out:
    Py_XDECREF(name);
    Py_XDECREF(mod);
    Py_XDECREF(qn);
    return res;
}

/* One opcode of the scan below: keep the stack of strings and the memo,
 * collect __main__ names. 0, or -1 with an error set. */
static int scan_op(const char *op, PyObject *arg, PyObject *stack, PyObject *memo, PyObject *names)
{
    if (strstr(op, "UNICODE") && PyUnicode_Check(arg))
        return PyList_Append(stack, arg);
    if (!strcmp(op, "MEMOIZE")) {
        Py_ssize_t n = PyList_GET_SIZE(stack);
        PyObject *k = PyLong_FromSsize_t(PyDict_GET_SIZE(memo));
        int rc = k ? PyDict_SetItem(memo, k, n ? PyList_GET_ITEM(stack, n - 1) : Py_None) : -1;
        Py_XDECREF(k);
        return rc;
    }
    if (strstr(op, "GET") && PyLong_Check(arg)) {
        PyObject *v = PyDict_GetItemWithError(memo, arg);
        if (!v && PyErr_Occurred())
            return -1;
        return PyList_Append(stack, v ? v : Py_None);
    }
    if (!strcmp(op, "STACK_GLOBAL")) {
        Py_ssize_t n = PyList_GET_SIZE(stack);
        if (n < 2)
            return 0;
        PyObject *m = PyList_GET_ITEM(stack, n - 2), *nm = PyList_GET_ITEM(stack, n - 1);
        if (PyUnicode_Check(m) && PyUnicode_Check(nm) &&
            PyUnicode_CompareWithASCIIString(m, "__main__") == 0)
            return PySet_Add(names, nm);
        return 0;
    }
    if ((!strcmp(op, "GLOBAL") || !strcmp(op, "INST")) && PyUnicode_Check(arg)) {
        /* protocols 0-3: "module name" in one argument */
        const char *a = PyUnicode_AsUTF8(arg);
        if (!a)
            return -1;
        if (strncmp(a, "__main__ ", 9))
            return 0;
        PyObject *nm = PyUnicode_FromString(a + 9);
        int rc = nm ? PySet_Add(names, nm) : -1;
        Py_XDECREF(nm); /* the set holds its own reference */
        return rc;
    }
    return 0;
}

/* Names of __main__ objects a pickle refers to (a memo-aware scan of its
 * opcodes), as a sorted tuple. The caller looks for "__main__" in the bytes
 * first. */
PyObject *ppc_ship_main_names(const char *pickle, size_t n)
{
    PyObject *genops = ppc_import_attr("pickletools", "genops");
    PyObject *pick = genops ? PyBytes_FromStringAndSize(pickle, (Py_ssize_t)n) : NULL;
    PyObject *it = pick ? PyObject_CallOneArg(genops, pick) : NULL;
    Py_XDECREF(genops);
    Py_XDECREF(pick);
    if (!it)
        return NULL;
    PyObject *names = PySet_New(NULL), *stack = PyList_New(0), *memo = PyDict_New();
    PyObject *item, *res = NULL;
    if (!names || !stack || !memo)
        goto out;
    while ((item = PyIter_Next(it))) {
        /* item: (opcode, arg, position) */
        PyObject *opname = PyObject_GetAttrString(PyTuple_GET_ITEM(item, 0), "name");
        const char *op = opname ? PyUnicode_AsUTF8(opname) : NULL;
        int rc = op ? scan_op(op, PyTuple_GET_ITEM(item, 1), stack, memo, names) : -1;
        Py_XDECREF(opname);
        Py_DECREF(item);
        if (rc < 0)
            goto out;
    }
    if (PyErr_Occurred())
        goto out;
    PyObject *lst = PySequence_List(names);
    if (lst && PyList_Sort(lst) == 0)
        res = PyList_AsTuple(lst);
    Py_XDECREF(lst);
out:
    Py_DECREF(it);
    Py_XDECREF(names);
    Py_XDECREF(stack);
    Py_XDECREF(memo);
    return res;
}

/* Names used by a code object and the code objects nested in it. */
static int code_names(PyObject *code, PyObject *out)
{
    PyObject *names = PyObject_GetAttrString(code, "co_names");
    PyObject *consts = PyObject_GetAttrString(code, "co_consts");
    int rc = -1;
    if (!names || !consts)
        goto out;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
        if (PySet_Add(out, PyTuple_GET_ITEM(names, i)) < 0)
            goto out;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(consts); i++) {
        PyObject *c = PyTuple_GET_ITEM(consts, i);
        if (PyCode_Check(c) && code_names(c, out) < 0)
            goto out;
    }
    rc = 0;
out:
    Py_XDECREF(names);
    Py_XDECREF(consts);
    return rc;
}

/* One name a function of autoimport uses: a module of globals becomes an
 * import statement, a function or class a dependency (whose own names are
 * looked at next). 0, or -1 with an error set. */
static int autoimport_name(PyObject *globals, PyObject *n, PyObject *seen, PyObject *deps,
                           PyObject *mods, PyObject *todo)
{
    PyObject *v = PyDict_GetItemWithError(globals, n);
    if (!v)
        return PyErr_Occurred() ? -1 : 0;
    int c = PySet_Contains(seen, n);
    if (c != 0)
        return c < 0 ? -1 : 0;
    if (PySet_Add(seen, n) < 0)
        return -1;
    if (PyFunction_Check(v) || PyType_Check(v))
        return PyList_Append(deps, v) < 0 || PyList_Append(todo, v) < 0 ? -1 : 0;
    if (!PyModule_Check(v))
        return 0;
    PyObject *mn = PyModule_GetNameObject(v);
    if (!mn) {
        /* a module without a name: nothing to import */
        if (!PyErr_ExceptionMatches(PyExc_SystemError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    PyObject *stmt = PyUnicode_Compare(mn, n) == 0 ? PyUnicode_FromFormat("import %U", mn)
                                                   : PyUnicode_FromFormat("import %U as %U", mn, n);
    int rc = stmt ? PyList_Append(mods, stmt) : -1;
    Py_XDECREF(stmt);
    Py_DECREF(mn);
    return rc;
}

/* pp's globals=globals(): modules, functions and classes of that dict
 * which the function (transitively) names are imported/shipped too. */
static int autoimport(PyObject *func, PyObject *globals, PyObject *deps, PyObject *mods)
{
    if (Py_TYPE(func) == &ppc_ChunkType)
        func = ((ppc_Chunk *)func)->func; /* a chunk needs what its function names */
    PyObject *todo = PyList_New(0), *seen = PySet_New(NULL);
    int rc = -1;
    if (!todo || !seen || PyList_Append(todo, func) < 0)
        goto out;
    while (PyList_GET_SIZE(todo)) {
        Py_ssize_t last = PyList_GET_SIZE(todo) - 1;
        PyObject *f = PyList_GET_ITEM(todo, last);
        Py_INCREF(f);
        PyList_SetSlice(todo, last, last + 1, NULL);
        PyObject *names = PySet_New(NULL);
        if (!names) {
            Py_DECREF(f);
            goto out;
        }
        int r = 0;
        if (PyFunction_Check(f))
            r = code_names(PyFunction_GET_CODE(f), names);
        else if (PyType_Check(f)) {
            PyObject *d = PyObject_GetAttrString(f, "__dict__");
            PyObject *vals = d ? PyMapping_Values(d) : NULL;
            for (Py_ssize_t i = 0; vals && i < PyList_GET_SIZE(vals) && r == 0; i++) {
                PyObject *v = PyList_GET_ITEM(vals, i);
                if (PyFunction_Check(v))
                    r = code_names(PyFunction_GET_CODE(v), names);
            }
            Py_XDECREF(vals);
            Py_XDECREF(d);
            if (!vals)
                r = -1;
        }
        Py_DECREF(f);
        PyObject *it = r == 0 ? PyObject_GetIter(names) : NULL;
        PyObject *n;
        while (it && (n = PyIter_Next(it))) {
            int step = autoimport_name(globals, n, seen, deps, mods, todo);
            Py_DECREF(n);
            if (step < 0)
                break;
        }
        Py_XDECREF(it);
        Py_DECREF(names);
        if (PyErr_Occurred())
            goto out;
    }
    rc = 0;
out:
    Py_XDECREF(todo);
    Py_XDECREF(seen);
    return rc;
}

/* 1 when o's __module__ is "__main__" (0 without an error otherwise). */
static int in_main(PyObject *o)
{
    PyObject *m = PyObject_GetAttrString(o, "__module__");
    int r = m && PyUnicode_Check(m) && PyUnicode_CompareWithASCIIString(m, "__main__") == 0;
    Py_XDECREF(m);
    PyErr_Clear();
    return r;
}

/* The identifiers of a source text (not those after a dot), as a set. */
static PyObject *source_idents(PyObject *src)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(src, &n);
    PyObject *out = s ? PySet_New(NULL) : NULL;
    for (Py_ssize_t i = 0; out && i < n;) {
        char c = s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_') {
            Py_ssize_t b = i;
            while (i < n && ((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
                             (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
                i++;
            if (b > 0 && s[b - 1] == '.')
                continue;
            PyObject *id = PyUnicode_FromStringAndSize(s + b, i - b);
            if (!id || PySet_Add(out, id) < 0)
                Py_CLEAR(out);
            Py_XDECREF(id);
        } else {
            i++;
        }
    }
    return out;
}

/* A class of __main__ and what its class statement needs in the worker,
 * appended to out in order: its bases of __main__ (any depth, each before
 * the classes deriving from it), then the modules and imported names its
 * source mentions (decorators such as @dataclass, field(), bases or types
 * from other modules), then the class. seen: ids already placed. */
static int add_main_class(PyObject *main, PyObject *cls, PyObject *out, PyObject *mods,
                          PyObject *seen)
{
    PyObject *key = PyLong_FromVoidPtr(cls);
    int c = key ? PySet_Contains(seen, key) : -1;
    if (c == 0)
        c = PySet_Add(seen, key) < 0 ? -1 : 0;
    else if (c == 1)
        c = 2;
    Py_XDECREF(key);
    if (c)
        return c == 2 ? 0 : -1;
    PyObject *mro = ((PyTypeObject *)cls)->tp_mro;
    for (Py_ssize_t i = mro ? PyTuple_GET_SIZE(mro) - 1 : 0; i >= 1; i--) {
        PyObject *b = PyTuple_GET_ITEM(mro, i);
        if (in_main(b) && add_main_class(main, b, out, mods, seen) < 0)
            return -1;
    }
    PyObject *fs = inspect_source(cls);
    if (!fs)
        return -1;
    PyObject *ids = fs != Py_None ? source_idents(PyTuple_GET_ITEM(fs, 0)) : NULL;
    Py_DECREF(fs);
    PyObject *d = PyModule_GetDict(main); /* borrowed */
    PyObject *it = ids ? PyObject_GetIter(ids) : NULL, *n;
    while (it && (n = PyIter_Next(it))) {
        PyObject *v = PyDict_GetItemWithError(d, n); /* borrowed */
        int rc = 0;
        if (v && PyModule_Check(v)) {
            PyObject *mn = PyModule_GetNameObject(v);
            PyObject *stmt = !mn ? NULL
                             : PyUnicode_Compare(mn, n) == 0
                                 ? PyUnicode_FromFormat("import %U", mn)
                                 : PyUnicode_FromFormat("import %U as %U", mn, n);
            rc = stmt ? PyList_Append(mods, stmt) : (PyErr_Clear(), 0);
            Py_XDECREF(stmt);
            Py_XDECREF(mn);
        } else if (v && PyType_Check(v) && v != cls && in_main(v)) {
            rc = add_main_class(main, v, out, mods, seen);
        } else if (v && (PyFunction_Check(v) || PyType_Check(v) || PyCFunction_Check(v)) &&
                   !in_main(v)) {
            /* imported under its own name only: deps are bound by __name__ */
            PyObject *nm = PyObject_GetAttrString(v, "__name__");
            if (nm && PyUnicode_Check(nm) && PyUnicode_Compare(nm, n) == 0)
                rc = PyList_Append(out, v);
            else
                PyErr_Clear();
            Py_XDECREF(nm);
        }
        Py_DECREF(n);
        if (rc < 0 || PyErr_Occurred())
            break;
    }
    Py_XDECREF(it);
    Py_XDECREF(ids);
    if (PyErr_Occurred())
        return -1;
    return PyList_Append(out, cls);
}

/* deps with every class of __main__ expanded by add_main_class. */
static int expand_main_classes(PyObject *main, PyObject *deps, PyObject *mods)
{
    PyObject *out = PyList_New(0), *seen = PySet_New(NULL);
    int rc = out && seen ? 0 : -1;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(deps); i++) {
        PyObject *d = PyList_GET_ITEM(deps, i);
        if (main && PyType_Check(d) && in_main(d))
            rc = add_main_class(main, d, out, mods, seen);
        else
            rc = PyList_Append(out, d);
    }
    if (rc == 0)
        rc = PyList_SetSlice(deps, 0, PyList_GET_SIZE(deps), out);
    Py_XDECREF(out);
    Py_XDECREF(seen);
    return rc;
}

/* The blob of a call's function (ppc_py.h). */
PyObject *ppc_ship_encode(PyObject *func, PyObject *depfuncs, PyObject *modules,
                          PyObject *globals, PyObject *main_names, int proto, int *vol,
                          int *same_py)
{
    PyObject *deps = PySequence_List(depfuncs);
    PyObject *mods = PySequence_List(modules);
    PyObject *specs = PyList_New(0), *stack = PyList_New(0), *blob = NULL, *mainspec = NULL;
    PyObject *seen = NULL;
    if (!deps || !mods || !specs || !stack)
        goto out;
    if (globals != Py_None && autoimport(func, globals, deps, mods) < 0)
        goto out;
    PyObject *main = mod_main();
    for (Py_ssize_t i = 0; main_names && main && i < PyTuple_GET_SIZE(main_names); i++) {
        PyObject *n = PyTuple_GET_ITEM(main_names, i);
        PyObject *dot = PyUnicode_FromString(".");
        PyObject *parts = dot ? PyUnicode_Split(n, dot, 1) : NULL;
        Py_XDECREF(dot);
        if (!parts)
            goto out;
        PyObject *o = PyObject_GetAttr(main, PyList_GET_ITEM(parts, 0));
        Py_DECREF(parts);
        if (!o) {
            PyErr_Clear();
            continue;
        }
        int rc = PyFunction_Check(o) || PyType_Check(o) ? PyList_Append(deps, o) : 0;
        Py_DECREF(o);
        if (rc < 0)
            goto out;
    }
    if (expand_main_classes(main, deps, mods) < 0)
        goto out;
    /* each dependency once, in order */
    seen = PySet_New(NULL);
    if (!seen)
        goto out;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(deps); i++) {
        PyObject *d = PyList_GET_ITEM(deps, i);
        if (PyMethod_Check(d))
            d = PyMethod_GET_FUNCTION(d);
        PyObject *key = PyLong_FromVoidPtr(d);
        int c = key ? PySet_Contains(seen, key) : -1;
        if (c == 0)
            c = PySet_Add(seen, key);
        else if (c == 1) {
            Py_DECREF(key);
            continue;
        }
        Py_XDECREF(key);
        if (c < 0)
            goto out;
        PyObject *sp = fspec(d, proto, stack);
        if (!sp || PyList_Append(specs, sp) < 0) {
            Py_XDECREF(sp);
            goto out;
        }
        Py_DECREF(sp);
    }
    mainspec = fspec(func, proto, stack);
    if (!mainspec)
        goto out;
    *vol = spec_volatile(mainspec);
    /* code objects only load in the same Python version */
    *same_py = spec_is_code(mainspec);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(specs); i++) {
        PyObject *sp = PyList_GET_ITEM(specs, i);
        *vol |= spec_volatile(sp);
        *same_py |= PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(sp, 0), "code") == 0;
    }
    PyObject *t = Py_BuildValue("(NNO)", PyList_AsTuple(mods), PyList_AsTuple(specs), mainspec);
    if (!t)
        goto out;
    blob = PyObject_CallFunction(G.pickle_dumps, "Oi", t, proto);
    Py_DECREF(t);
out:
    Py_XDECREF(seen);
    Py_XDECREF(mainspec);
    Py_XDECREF(deps);
    Py_XDECREF(mods);
    Py_XDECREF(specs);
    Py_XDECREF(stack);
    return blob;
}


/* ------------------------------------------------------------ decoding */

static PyObject *malformed(const char *what)
{
    PyErr_Format(PyExc_ValueError, "malformed function blob: %s", what);
    return NULL;
}

/* Run source in the namespace ns. 0, or -1 with an error set. */
static int exec_source(PyObject *ns, PyObject *src, PyObject *filename)
{
    const char *text = PyUnicode_AsUTF8(src);
    PyObject *code = text ? Py_CompileStringObject(text, filename, Py_file_input, NULL, -1) : NULL;
    if (!code)
        return -1;
    PyObject *r = PyEval_EvalCode(code, ns, ns);
    Py_DECREF(code);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *materialize(PyObject *ns, PyObject *spec, PyObject *stack);

/* ("src", name, top, qualname, source, filename, firstline) */
static PyObject *from_src(PyObject *ns, PyObject *spec)
{
    PyObject *top = PyTuple_GET_ITEM(spec, 2), *qn = PyTuple_GET_ITEM(spec, 3);
    PyObject *src = PyTuple_GET_ITEM(spec, 4), *file = PyTuple_GET_ITEM(spec, 5);
    if (!PyUnicode_Check(top) || !PyUnicode_Check(qn) || !PyUnicode_Check(src) ||
        !PyUnicode_Check(file) || !PyLong_Check(PyTuple_GET_ITEM(spec, 6)))
        return malformed("src spec");
    long line = PyLong_AsLong(PyTuple_GET_ITEM(spec, 6));
    if (line == -1 && PyErr_Occurred())
        return NULL;
    if (line < 1 || line > 10000000)
        line = 1;
    /* pad so that line numbers in tracebacks match the client's file */
    PyObject *pad = PyUnicode_New(line - 1, 127);
    if (!pad)
        return NULL;
    for (long i = 0; i < line - 1; i++)
        PyUnicode_WRITE(PyUnicode_KIND(pad), PyUnicode_DATA(pad), i, '\n');
    PyObject *full = PyUnicode_Concat(pad, src);
    Py_DECREF(pad);
    int rc = full ? exec_source(ns, full, file) : -1;
    Py_XDECREF(full);
    if (rc < 0)
        return NULL;
    PyObject *o = PyDict_GetItemWithError(ns, top);
    if (!o) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_NameError, "shipped source did not define %R", top);
        return NULL;
    }
    return walk(o, qn, 1);
}

/* Closure cells that hold functions: fns is ((index, spec), ...) or None;
 * f is pushed on stack while they are built, for ("back", k). */
static int fill_cells(PyObject *ns, PyObject *f, PyObject *cells, PyObject *fns, PyObject *stack)
{
    if (fns == Py_None)
        return 0;
    if (!PyTuple_Check(fns)) {
        malformed("closure functions");
        return -1;
    }
    if (PyList_Append(stack, f) < 0)
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyTuple_GET_SIZE(fns); i++) {
        PyObject *slot = PyTuple_GET_ITEM(fns, i);
        Py_ssize_t at;
        PyObject *sub;
        if (!PyTuple_Check(slot) || !PyArg_ParseTuple(slot, "nO!", &at, &PyTuple_Type, &sub) ||
            at < 0 || at >= PyTuple_GET_SIZE(cells)) {
            if (!PyErr_Occurred())
                malformed("closure function slot");
            rc = -1;
            break;
        }
        PyObject *o = materialize(ns, sub, stack);
        rc = o ? PyCell_Set(PyTuple_GET_ITEM(cells, at), o) : -1;
        Py_XDECREF(o);
    }
    PyList_SetSlice(stack, PyList_GET_SIZE(stack) - 1, PyList_GET_SIZE(stack), NULL);
    return rc;
}

/* The closure of a function made from code: a cell per value. */
static int set_closure(PyObject *ns, PyObject *f, PyObject *code, PyObject *vals, PyObject *fns,
                       PyObject *stack)
{
    /* a closure of the wrong size would make the interpreter read past it */
    PyObject *free = PyObject_GetAttrString(code, "co_freevars");
    if (!free)
        return -1;
    Py_ssize_t nfree = PyTuple_Check(free) ? PyTuple_GET_SIZE(free) : -1;
    Py_DECREF(free);
    if ((vals == Py_None && nfree != 0) ||
        (vals != Py_None && (!PyTuple_Check(vals) || PyTuple_GET_SIZE(vals) != nfree))) {
        malformed("closure does not fit the code");
        return -1;
    }
    if (vals == Py_None)
        return 0;
    PyObject *cells = PyTuple_New(nfree);
    for (Py_ssize_t i = 0; cells && i < nfree; i++) {
        PyObject *c = PyCell_New(PyTuple_GET_ITEM(vals, i));
        if (!c)
            Py_CLEAR(cells);
        else
            PyTuple_SET_ITEM(cells, i, c);
    }
    int rc = cells ? PyFunction_SetClosure(f, cells) : -1;
    if (rc == 0)
        rc = fill_cells(ns, f, cells, fns, stack);
    Py_XDECREF(cells);
    return rc;
}

/* ("code", name, marshal, defaults, kwdefaults, closure, qualname, fns) */
static PyObject *from_code(PyObject *ns, PyObject *spec, PyObject *stack)
{
    PyObject *defaults = PyTuple_GET_ITEM(spec, 3), *kwd = PyTuple_GET_ITEM(spec, 4);
    PyObject *qn = PyTuple_GET_ITEM(spec, 6);
    if (!PyUnicode_Check(qn))
        return malformed("code spec");
    PyObject *loads = ppc_import_attr("marshal", "loads");
    PyObject *code = loads ? PyObject_CallOneArg(loads, PyTuple_GET_ITEM(spec, 2)) : NULL;
    Py_XDECREF(loads);
    if (!code)
        return NULL;
    if (!PyCode_Check(code)) {
        Py_DECREF(code);
        return malformed("shipped code is not a code object");
    }
    PyObject *f = PyFunction_NewWithQualName(code, ns, qn);
    if (f && ((defaults != Py_None && PyFunction_SetDefaults(f, defaults) < 0) ||
              (kwd != Py_None && PyFunction_SetKwDefaults(f, kwd) < 0) ||
              set_closure(ns, f, code, PyTuple_GET_ITEM(spec, 5), PyTuple_GET_ITEM(spec, 7),
                          stack) < 0))
        Py_CLEAR(f);
    Py_DECREF(code);
    return f;
}

/* The object one spec stands for. stack: the functions being built, for
 * closures that refer back to them. New reference, or NULL with an error. */
static PyObject *materialize(PyObject *ns, PyObject *spec, PyObject *stack)
{
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(spec, 0)))
        return malformed("spec");
    const char *kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(spec, 0));
    Py_ssize_t n = PyTuple_GET_SIZE(spec);
    if (!kind)
        return NULL;
    if (!strcmp(kind, "ref") && n == 4) {
        PyObject *m = PyImport_Import(PyTuple_GET_ITEM(spec, 2));
        PyObject *o = m ? walk(m, PyTuple_GET_ITEM(spec, 3), 0) : NULL;
        Py_XDECREF(m);
        return o;
    }
    if (!strcmp(kind, "src") && n == 7)
        return from_src(ns, spec);
    if (!strcmp(kind, "code") && n == 8)
        return from_code(ns, spec, stack);
    if (!strcmp(kind, "obj") && n == 3)
        return PyObject_CallOneArg(G.pickle_loads, PyTuple_GET_ITEM(spec, 2));
    if (!strcmp(kind, "map") && n == 4) {
        int star = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 2));
        if (star < 0 || star > 2)
            return PyErr_Occurred() ? NULL : malformed("chunk");
        PyObject *f = materialize(ns, PyTuple_GET_ITEM(spec, 3), stack);
        PyObject *c = f ? chunk_of(f, star) : NULL;
        Py_XDECREF(f);
        return c;
    }
    if (!strcmp(kind, "back") && n == 2) {
        Py_ssize_t k = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 1));
        if (k < 0 || k >= PyList_GET_SIZE(stack))
            return PyErr_Occurred() ? NULL : malformed("function back-reference");
        PyObject *o = PyList_GET_ITEM(stack, k);
        Py_INCREF(o);
        return o;
    }
    PyErr_Format(PyExc_ValueError, "malformed function blob: unknown spec %R",
                 PyTuple_GET_ITEM(spec, 0));
    return NULL;
}

/* One entry of modules: "name" or an import statement, run in ns. */
static int import_module(PyObject *ns, PyObject *m)
{
    const char *ms = PyUnicode_AsUTF8(m);
    if (!ms)
        return -1;
    while (*ms == ' ')
        ms++;
    PyObject *stmt = !strncmp(ms, "import ", 7) || !strncmp(ms, "from ", 5)
                         ? (Py_INCREF(m), m)
                         : PyUnicode_FromFormat("import %U", m);
    PyObject *fname = PyUnicode_FromString("<pp modules>");
    int rc = stmt && fname ? exec_source(ns, stmt, fname) : -1;
    Py_XDECREF(stmt);
    Py_XDECREF(fname);
    return rc;
}

/* A blob made a callable again, in a worker (ppc_py.h). */
PyObject *ppc_ship_install(PyObject *ns, const uint8_t *blob, size_t n)
{
    PyObject *mv = PyMemoryView_FromMemory((char *)blob, (Py_ssize_t)n, PyBUF_READ);
    PyObject *t = mv ? PyObject_CallOneArg(G.pickle_loads, mv) : NULL;
    Py_XDECREF(mv);
    if (!t)
        return NULL;
    PyObject *mods, *deps, *main, *stack = NULL, *f = NULL;
    if (!PyArg_ParseTuple(t, "O!O!O:blob", &PyTuple_Type, &mods, &PyTuple_Type, &deps, &main))
        goto out;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mods); i++) {
        PyObject *m = PyTuple_GET_ITEM(mods, i);
        if (PyUnicode_Check(m) && import_module(ns, m) < 0)
            goto out;
    }
    stack = PyList_New(0);
    if (!stack)
        goto out;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(deps); i++) {
        PyObject *spec = PyTuple_GET_ITEM(deps, i);
        PyObject *o = materialize(ns, spec, stack);
        int rc = o ? PyDict_SetItem(ns, PyTuple_GET_ITEM(spec, 1), o) : -1;
        Py_XDECREF(o);
        if (rc < 0)
            goto out;
    }
    f = materialize(ns, main, stack);
out:
    Py_XDECREF(stack);
    Py_DECREF(t);
    return f;
}

/* ship.c - function shipping on the client: turn (func, depfuncs, modules,
 * globals) into one function blob, cached per server so each distinct
 * combination is encoded once and sent once per worker. A blob that holds
 * state (closure values, defaults, a pickled callable) is encoded at every
 * submit, so jobs see the values of their submit time, and deduplicated by
 * content, so unchanged state is still sent once per worker.
 *
 * Each function travels in the cheapest form that works, per DESIGN.md:
 *   ("ref",  name, module, qualname)      importable: module + name
 *   ("src",  name, top, qualname, source, filename, firstline)
 *                                         defined in __main__ with source
 *   ("code", name, marshal, defaults, kwdefaults, closure, qualname)
 *                                         lambdas, closures, no source
 *   ("obj",  name, pickle)                any other picklable callable
 * The blob is pickle((modules, deps, main)). Classes defined in __main__
 * that the pickled arguments refer to travel as extra deps, so instances
 * of user classes arrive with their definitions. */
#include "ppc_py.h"
#include <string.h>


static PyObject *mod_main(void)
{
    PyObject *modules = PySys_GetObject("modules");
    return modules ? PyDict_GetItemString(modules, "__main__") : NULL; /* borrowed */
}

/* getattr along a dotted path; new reference or NULL (no error set). */
static PyObject *resolve(PyObject *root, PyObject *qualname)
{
    PyObject *dot = PyUnicode_FromString(".");
    PyObject *parts = dot ? PyUnicode_Split(qualname, dot, -1) : NULL;
    Py_XDECREF(dot);
    if (!parts) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *cur = root;
    Py_INCREF(cur);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts) && cur; i++) {
        PyObject *nx = PyObject_GetAttr(cur, PyList_GET_ITEM(parts, i));
        Py_DECREF(cur);
        cur = nx;
    }
    Py_DECREF(parts);
    if (!cur)
        PyErr_Clear();
    return cur;
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
    PyObject *fs = PyFunction_Check(topobj) ? fast_source(topobj, top) : (Py_INCREF(Py_None), Py_None);
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

/* Names of __main__ globals a pickle refers to (memo-aware scan of the
 * opcodes), as a sorted tuple. Only called when the bytes contain
 * "__main__". */
static PyObject *main_refs(PyObject *pick)
{
    PyObject *genops = ppc_import_attr("pickletools", "genops");
    if (!genops)
        return NULL;
    PyObject *it = PyObject_CallOneArg(genops, pick);
    Py_DECREF(genops);
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

/* The blob bytes of one submit's function; *vol set when they hold state. */
static PyObject *encode(ppc_Server *s, PyObject *func, PyObject *depfuncs, PyObject *modules,
                        PyObject *globals, PyObject *refs, int *vol, int *code)
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
    for (Py_ssize_t i = 0; refs && main && i < PyTuple_GET_SIZE(refs); i++) {
        PyObject *n = PyTuple_GET_ITEM(refs, i);
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
        PyObject *sp = fspec(d, s->proto, stack);
        if (!sp || PyList_Append(specs, sp) < 0) {
            Py_XDECREF(sp);
            goto out;
        }
        Py_DECREF(sp);
    }
    mainspec = fspec(func, s->proto, stack);
    if (!mainspec)
        goto out;
    *vol = spec_volatile(mainspec);
    /* code objects only load in the same Python version */
    *code = PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(mainspec, 0), "code") == 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(specs); i++) {
        PyObject *sp = PyList_GET_ITEM(specs, i);
        *vol |= spec_volatile(sp);
        *code |= PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(sp, 0), "code") == 0;
    }
    PyObject *t = Py_BuildValue("(NNO)", PyList_AsTuple(mods), PyList_AsTuple(specs), mainspec);
    if (!t)
        goto out;
    blob = PyObject_CallFunction(G.pickle_dumps, "Oi", t, s->proto);
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

static void blob_capsule_free(PyObject *cap)
{
    ppc_blob_decref(PyCapsule_GetPointer(cap, "ppc_blob"));
}

/* A new function id for the bytes, in a capsule. */
static PyObject *make_cap(ppc_Server *s, PyObject *blob, int code)
{
    ppc_blob *b = ppc_blob_new(s->next_fid++, PyBytes_AS_STRING(blob), (size_t)PyBytes_GET_SIZE(blob));
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
    PyObject *blob = encode(s, func, depfuncs, modules, globals, refs, vol, &code);
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
        PyObject *pick = PyBytes_FromStringAndSize(data, (Py_ssize_t)n);
        refs = pick ? main_refs(pick) : NULL;
        Py_XDECREF(pick);
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

/* fastpickle.c - the hot path of small and medium jobs: arguments and
 * results made of scalars (None, bool, int, float, complex, ASCII str,
 * bytes), alone, in a tuple, or in lists of scalars inside that tuple, are
 * written and read as standard pickle opcodes by hand, without creating a
 * Pickler or Unpickler object per job (that costs more than the encoding
 * itself for a job like isprime(n)), and with complex numbers and list
 * items handled in C (the seed's Mandelbrot chunks are lists of complex).
 *
 * What ppc_fast_dumps writes is an ordinary protocol 4/5 pickle (without
 * the optional FRAME opcode) that pickle.loads reads; ppc_fast_loads reads
 * such pickles and the ones the C pickler makes of the same kinds of values
 * (with MEMOIZE and BINGET). Both answer "not handled" for anything else,
 * and the caller uses _pickle. */
#include "ppc_py.h"

#include <stdlib.h>
#include <string.h>

/* PyFloat_Pack8/Unpack8 are public since 3.11; 3.9 and 3.10 export the same
 * functions with a leading underscore and unsigned char pointers. */
#if PY_VERSION_HEX < 0x030B0000
#define PyFloat_Pack8(d, p, le) _PyFloat_Pack8((d), (unsigned char *)(p), (le))
#define PyFloat_Unpack8(p, le) _PyFloat_Unpack8((const unsigned char *)(p), (le))
#endif

#define OP_MARK '('
#define OP_STOP '.'
#define OP_BININT 'J'
#define OP_BININT1 'K'
#define OP_BININT2 'M'
#define OP_NONE 'N'
#define OP_REDUCE 'R'
#define OP_BINFLOAT 'G'
#define OP_BINUNICODE 'X'
#define OP_BINBYTES 'B'
#define OP_SHORT_BINBYTES 'C'
#define OP_TUPLE 't'
#define OP_EMPTY_TUPLE ')'
#define OP_EMPTY_LIST ']'
#define OP_APPEND 'a'
#define OP_APPENDS 'e'
#define OP_BINGET 'h'
#define OP_LONG_BINGET 'j'
#define OP_PROTO 0x80
#define OP_TUPLE1 0x85
#define OP_TUPLE2 0x86
#define OP_TUPLE3 0x87
#define OP_NEWTRUE 0x88
#define OP_NEWFALSE 0x89
#define OP_LONG1 0x8a
#define OP_SHORT_BINUNICODE 0x8c
#define OP_STACK_GLOBAL 0x93
#define OP_MEMOIZE 0x94
#define OP_FRAME 0x95

#define MAX_TUPLE 64 /* items of the top-level tuple the encoder takes */
/* Pickles the encoder writes stay below this: larger data is the business
 * of the large-data path (shared-memory segments, segwrite.c), which must not
 * be bypassed by a copy here. */
#define FAST_MAX (256u * 1024u)

/* ------------------------------------------------------------ writing */

static int fb_room(ppc_fastbuf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;
    if (n > FAST_MAX || b->len + n > FAST_MAX)
        return -1;
    size_t cap = b->cap * 2;
    while (cap - b->len < n)
        cap *= 2;
    uint8_t *p = b->owned ? realloc(b->data, cap) : malloc(cap);
    if (!p)
        return -1;
    if (!b->owned)
        memcpy(p, b->data, b->len);
    b->data = p;
    b->cap = cap;
    b->owned = 1;
    return 0;
}

void ppc_fastbuf_init(ppc_fastbuf *b)
{
    b->data = b->stack;
    b->len = 0;
    b->cap = sizeof b->stack;
    b->owned = 0;
    b->complex_memo = 0;
}

void ppc_fastbuf_free(ppc_fastbuf *b)
{
    if (b->owned)
        free(b->data);
    ppc_fastbuf_init(b);
}

#define PUT(b, byte) ((b)->data[(b)->len++] = (uint8_t)(byte))

static void put_le(ppc_fastbuf *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        PUT(b, v >> (8 * i));
}

static int put_float(ppc_fastbuf *b, double d)
{
    PUT(b, OP_BINFLOAT);
    if (PyFloat_Pack8(d, (char *)b->data + b->len, 0) < 0)
        return -1;
    b->len += 8;
    return 0;
}

/* One scalar; 1 written, 0 not handled (never raises). */
static int put_scalar(ppc_fastbuf *b, PyObject *o)
{
    if (fb_room(b, 64) < 0)
        return 0;
    if (o == Py_None) {
        PUT(b, OP_NONE);
        return 1;
    }
    if (o == Py_True || o == Py_False) {
        PUT(b, o == Py_True ? OP_NEWTRUE : OP_NEWFALSE);
        return 1;
    }
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        if (v >= 0 && v < 256) {
            PUT(b, OP_BININT1);
            PUT(b, v);
        } else if (v >= 0 && v < 65536) {
            PUT(b, OP_BININT2);
            put_le(b, (uint64_t)v, 2);
        } else if (v >= INT32_MIN && v <= INT32_MAX) {
            PUT(b, OP_BININT);
            put_le(b, (uint32_t)(int32_t)v, 4);
        } else {
            /* LONG1: little-endian two's complement, as few bytes as keep the sign */
            uint64_t u = (uint64_t)v;
            int n = 8;
            while (n > 1) {
                uint8_t top = (uint8_t)(u >> (8 * (n - 1)));
                uint8_t next = (uint8_t)(u >> (8 * (n - 2)));
                if ((top == 0x00 && !(next & 0x80)) || (top == 0xff && (next & 0x80)))
                    n--;
                else
                    break;
            }
            PUT(b, OP_LONG1);
            PUT(b, n);
            put_le(b, u, n);
        }
        return 1;
    }
    if (PyFloat_CheckExact(o)) {
        if (put_float(b, PyFloat_AS_DOUBLE(o)) < 0) {
            PyErr_Clear();
            return 0;
        }
        return 1;
    }
    if (PyComplex_CheckExact(o)) {
        /* as the C pickler does: builtins.complex (memo 0), (re, im), REDUCE */
        if (!b->complex_memo) {
            static const uint8_t glob[] = {OP_SHORT_BINUNICODE, 8, 'b', 'u', 'i', 'l', 't', 'i',
                                           'n', 's', OP_SHORT_BINUNICODE, 7, 'c', 'o', 'm', 'p',
                                           'l', 'e', 'x', OP_STACK_GLOBAL, OP_MEMOIZE};
            memcpy(b->data + b->len, glob, sizeof glob);
            b->len += sizeof glob;
            b->complex_memo = 1;
        } else {
            PUT(b, OP_BINGET);
            PUT(b, 0);
        }
        Py_complex c = PyComplex_AsCComplex(o);
        if (put_float(b, c.real) < 0 || put_float(b, c.imag) < 0) {
            PyErr_Clear();
            return 0;
        }
        PUT(b, OP_TUPLE2);
        PUT(b, OP_REDUCE);
        return 1;
    }
    if ((PyUnicode_CheckExact(o) && PyUnicode_IS_ASCII(o)) || PyBytes_CheckExact(o)) {
        int text = PyUnicode_Check(o);
        size_t n = text ? (size_t)PyUnicode_GET_LENGTH(o) : (size_t)PyBytes_GET_SIZE(o);
        const void *src = text ? PyUnicode_DATA(o) : (const void *)PyBytes_AS_STRING(o);
        if (n > 0xffffffffu || fb_room(b, n + 8) < 0)
            return 0;
        if (n < 256) {
            PUT(b, text ? OP_SHORT_BINUNICODE : OP_SHORT_BINBYTES);
            PUT(b, n);
        } else {
            PUT(b, text ? OP_BINUNICODE : OP_BINBYTES);
            put_le(b, n, 4);
        }
        memcpy(b->data + b->len, src, n);
        b->len += n;
        return 1;
    }
    return 0;
}

/* A list of scalars: EMPTY_LIST, then MARK items APPENDS. */
static int put_list(ppc_fastbuf *b, PyObject *l)
{
    if (fb_room(b, 3) < 0)
        return 0;
    PUT(b, OP_EMPTY_LIST);
    Py_ssize_t n = PyList_GET_SIZE(l);
    if (n == 0)
        return 1;
    PUT(b, OP_MARK);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyList_GET_ITEM(l, i);
        if (!put_scalar(b, it))
            return 0;
        if (n != PyList_GET_SIZE(l))
            return 0; /* cannot change without Python code running, but be sure */
    }
    if (fb_room(b, 1) < 0)
        return 0;
    PUT(b, OP_APPENDS);
    return 1;
}

static int put_item(ppc_fastbuf *b, PyObject *o)
{
    return PyList_CheckExact(o) ? put_list(b, o) : put_scalar(b, o);
}

size_t ppc_fast_dumps(PyObject *obj, int proto, ppc_fastbuf *b)
{
    b->len = 0;
    b->complex_memo = 0;
    if (proto < 4 || proto > 255 || fb_room(b, 8) < 0)
        return 0;
    PUT(b, OP_PROTO);
    PUT(b, proto);
    if (PyTuple_CheckExact(obj)) {
        Py_ssize_t n = PyTuple_GET_SIZE(obj);
        if (n > MAX_TUPLE)
            return 0;
        /* the same list twice would arrive as two lists: _pickle keeps that */
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *a = PyTuple_GET_ITEM(obj, i);
            if (!PyList_CheckExact(a))
                continue;
            for (Py_ssize_t k = i + 1; k < n; k++)
                if (PyTuple_GET_ITEM(obj, k) == a)
                    return 0;
        }
        if (n == 0) {
            PUT(b, OP_EMPTY_TUPLE);
        } else {
            if (n > 3)
                PUT(b, OP_MARK);
            for (Py_ssize_t i = 0; i < n; i++)
                if (!put_item(b, PyTuple_GET_ITEM(obj, i)))
                    return 0;
            if (fb_room(b, 2) < 0)
                return 0;
            PUT(b, n == 1 ? OP_TUPLE1 : n == 2 ? OP_TUPLE2 : n == 3 ? OP_TUPLE3 : OP_TUPLE);
        }
    } else if (!put_item(b, obj)) {
        return 0;
    }
    if (fb_room(b, 1) < 0)
        return 0;
    PUT(b, OP_STOP);
    return b->len;
}

/* ------------------------------------------------------------ reading */

typedef struct {
    PyObject **stack; /* small[] first, the heap beyond */
    size_t sp, cap;
    PyObject *small[16];
    PyObject **memo;
    size_t nmemo, capmemo;
    size_t marks[32];
    int nmarks;
} reader;

static int push(reader *r, PyObject *o)
{
    if (r->sp == r->cap) {
        size_t cap = r->cap * 2;
        PyObject **s = r->stack == r->small ? PyMem_Malloc(cap * sizeof *s)
                                            : PyMem_Realloc(r->stack, cap * sizeof *s);
        if (!s)
            return -1;
        if (r->stack == r->small)
            memcpy(s, r->small, r->sp * sizeof *s);
        r->stack = s;
        r->cap = cap;
    }
    r->stack[r->sp++] = o;
    return 0;
}

static int memoize(reader *r, PyObject *o)
{
    if (r->nmemo == r->capmemo) {
        size_t cap = r->capmemo ? r->capmemo * 2 : 16;
        PyObject **m = PyMem_Realloc(r->memo, cap * sizeof *m);
        if (!m)
            return -1;
        r->memo = m;
        r->capmemo = cap;
    }
    Py_INCREF(o);
    r->memo[r->nmemo++] = o;
    return 0;
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int is_str(PyObject *o, const char *s)
{
    return PyUnicode_CheckExact(o) && PyUnicode_CompareWithASCIIString(o, s) == 0;
}

/* NULL without an exception: not one of the pickles this reader takes (the
 * caller falls back to _pickle, which also reports malformed data). */
PyObject *ppc_fast_loads(const uint8_t *p, size_t n)
{
    reader r;
    r.stack = r.small;
    r.sp = 0;
    r.cap = sizeof r.small / sizeof r.small[0];
    r.memo = NULL;
    r.nmemo = r.capmemo = 0;
    r.nmarks = 0;
    PyObject *res = NULL;
    if (n < 3 || p[0] != OP_PROTO || p[1] < 4)
        return NULL;
    size_t i = 2;
    while (i < n) {
        uint8_t op = p[i++];
        size_t left = n - i;
        PyObject *o = NULL;
        switch (op) {
        case OP_STOP:
            if (r.sp == 1 && r.nmarks == 0 && i == n) {
                res = r.stack[0];
                r.sp = 0;
            }
            goto out;
        case OP_FRAME:
            if (left < 8)
                goto out;
            i += 8;
            continue;
        case OP_MEMOIZE:
            if (r.sp == 0 || memoize(&r, r.stack[r.sp - 1]) < 0)
                goto out;
            continue;
        case OP_BINGET:
        case OP_LONG_BINGET: {
            int w = op == OP_BINGET ? 1 : 4;
            if (left < (size_t)w)
                goto out;
            size_t k = (size_t)get_le(p + i, w);
            i += (size_t)w;
            if (k >= r.nmemo)
                goto out;
            o = r.memo[k];
            /* complex(re, im) as the picklers write it: G re G im TUPLE2
             * [MEMOIZE] REDUCE, read at once without the float and tuple
             * objects in between */
            if (o == (PyObject *)&PyComplex_Type && n - i >= 20 && p[i] == OP_BINFLOAT &&
                p[i + 9] == OP_BINFLOAT && p[i + 18] == OP_TUPLE2) {
                size_t e = i + 19;
                int memo_t = e < n && p[e] == OP_MEMOIZE;
                if (memo_t)
                    e++;
                if (e < n && p[e] == OP_REDUCE && !memo_t) {
                    double re = PyFloat_Unpack8((const char *)p + i + 1, 0);
                    double im = PyFloat_Unpack8((const char *)p + i + 10, 0);
                    if ((re == -1.0 || im == -1.0) && PyErr_Occurred())
                        goto fail;
                    o = PyComplex_FromDoubles(re, im);
                    i = e + 1;
                    break;
                }
            }
            Py_INCREF(o);
            break;
        }
        case OP_MARK:
            if (r.nmarks == (int)(sizeof r.marks / sizeof r.marks[0]))
                goto out;
            r.marks[r.nmarks++] = r.sp;
            continue;
        case OP_NONE:
            o = Py_None;
            Py_INCREF(o);
            break;
        case OP_NEWTRUE:
            o = Py_True;
            Py_INCREF(o);
            break;
        case OP_NEWFALSE:
            o = Py_False;
            Py_INCREF(o);
            break;
        case OP_BININT1:
            if (left < 1)
                goto out;
            o = PyLong_FromLong(p[i]);
            i += 1;
            break;
        case OP_BININT2:
            if (left < 2)
                goto out;
            o = PyLong_FromLong((long)get_le(p + i, 2));
            i += 2;
            break;
        case OP_BININT:
            if (left < 4)
                goto out;
            o = PyLong_FromLong((long)(int32_t)(uint32_t)get_le(p + i, 4));
            i += 4;
            break;
        case OP_LONG1: {
            if (left < 1 || p[i] > 8 || left < 1u + p[i])
                goto out;
            int k = p[i];
            uint64_t u = get_le(p + i + 1, k);
            if (k > 0 && k < 8 && (p[i + k] & 0x80))
                u |= ~(uint64_t)0 << (8 * k); /* sign-extend */
            o = k == 0 ? PyLong_FromLong(0) : PyLong_FromLongLong((long long)u);
            i += 1 + (size_t)k;
            break;
        }
        case OP_BINFLOAT: {
            if (left < 8)
                goto out;
            double d = PyFloat_Unpack8((const char *)p + i, 0);
            if (d == -1.0 && PyErr_Occurred())
                goto fail;
            o = PyFloat_FromDouble(d);
            i += 8;
            break;
        }
        case OP_SHORT_BINUNICODE:
        case OP_BINUNICODE:
        case OP_SHORT_BINBYTES:
        case OP_BINBYTES: {
            int w = op == OP_SHORT_BINUNICODE || op == OP_SHORT_BINBYTES ? 1 : 4;
            if (left < (size_t)w)
                goto out;
            size_t len = (size_t)get_le(p + i, w);
            if (len > left - (size_t)w)
                goto out;
            const char *s = (const char *)p + i + w;
            if (op == OP_SHORT_BINUNICODE || op == OP_BINUNICODE)
                o = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "surrogatepass");
            else
                o = PyBytes_FromStringAndSize(s, (Py_ssize_t)len);
            i += (size_t)w + len;
            break;
        }
        case OP_STACK_GLOBAL: {
            /* only builtins.complex: anything else is _pickle's business */
            if (r.sp < 2 || (r.nmarks && r.sp - 2 < r.marks[r.nmarks - 1]) ||
                !is_str(r.stack[r.sp - 2], "builtins") || !is_str(r.stack[r.sp - 1], "complex"))
                goto out;
            Py_DECREF(r.stack[--r.sp]);
            Py_DECREF(r.stack[--r.sp]);
            o = (PyObject *)&PyComplex_Type;
            Py_INCREF(o);
            break;
        }
        case OP_REDUCE: {
            if (r.sp < 2 || (r.nmarks && r.sp - 2 < r.marks[r.nmarks - 1]))
                goto out;
            PyObject *fn = r.stack[r.sp - 2], *args = r.stack[r.sp - 1];
            if (fn != (PyObject *)&PyComplex_Type || !PyTuple_CheckExact(args) ||
                PyTuple_GET_SIZE(args) != 2 || !PyFloat_CheckExact(PyTuple_GET_ITEM(args, 0)) ||
                !PyFloat_CheckExact(PyTuple_GET_ITEM(args, 1)))
                goto out;
            o = PyComplex_FromDoubles(PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(args, 0)),
                                      PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(args, 1)));
            if (!o)
                goto fail;
            r.sp -= 2;
            Py_DECREF(fn);
            Py_DECREF(args);
            break;
        }
        case OP_EMPTY_TUPLE:
            o = PyTuple_New(0);
            break;
        case OP_EMPTY_LIST:
            o = PyList_New(0);
            break;
        case OP_TUPLE1:
        case OP_TUPLE2:
        case OP_TUPLE3:
        case OP_TUPLE: {
            size_t k, floor = r.nmarks ? r.marks[r.nmarks - 1] : 0;
            if (op == OP_TUPLE) {
                if (!r.nmarks)
                    goto out;
                k = r.sp - floor;
                r.nmarks--;
            } else {
                k = (size_t)(op - OP_TUPLE1 + 1);
                if (k > r.sp - floor)
                    goto out;
            }
            o = PyTuple_New((Py_ssize_t)k);
            if (!o)
                goto fail;
            for (size_t j = 0; j < k; j++)
                PyTuple_SET_ITEM(o, (Py_ssize_t)j, r.stack[r.sp - k + j]);
            r.sp -= k;
            break;
        }
        case OP_APPEND:
        case OP_APPENDS: {
            size_t k, floor = r.nmarks ? r.marks[r.nmarks - 1] : 0;
            if (op == OP_APPENDS) {
                if (!r.nmarks || floor == 0)
                    goto out;
                k = r.sp - floor;
                r.nmarks--;
            } else {
                if (r.sp - floor < 2)
                    goto out;
                k = 1;
            }
            if (r.sp < k + 1 || !PyList_CheckExact(r.stack[r.sp - k - 1]))
                goto out;
            PyObject *list = r.stack[r.sp - k - 1];
            PyObject *tmp = PyList_New((Py_ssize_t)k);
            if (!tmp)
                goto fail;
            for (size_t j = 0; j < k; j++)
                PyList_SET_ITEM(tmp, (Py_ssize_t)j, r.stack[r.sp - k + j]); /* steals */
            r.sp -= k;
            Py_ssize_t at = PyList_GET_SIZE(list);
            int rc = PyList_SetSlice(list, at, at, tmp);
            Py_DECREF(tmp);
            if (rc < 0)
                goto fail;
            continue;
        }
        default:
            goto out; /* an opcode this reader does not take */
        }
        if (!o)
            goto fail;
        if (push(&r, o) < 0) {
            Py_DECREF(o);
            goto fail;
        }
    }
out:
    while (r.sp > 0)
        Py_DECREF(r.stack[--r.sp]);
    for (size_t k = 0; k < r.nmemo; k++)
        Py_DECREF(r.memo[k]);
    if (r.stack != r.small)
        PyMem_Free(r.stack);
    PyMem_Free(r.memo);
    if (!res)
        PyErr_Clear();
    return res;
fail:
    res = NULL;
    goto out;
}

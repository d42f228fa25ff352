/* fastpickle.c - the hot path of tiny jobs: arguments and results made of
 * scalars (None, bool, int, float, ASCII str, bytes), alone or in a flat
 * tuple, are written and read as standard pickle opcodes by hand, without
 * creating a Pickler or Unpickler object per job (that costs more than the
 * encoding itself for a job like isprime(n)).
 *
 * What ppc_fast_dumps writes is an ordinary protocol 4/5 pickle (without the
 * optional FRAME opcode) that pickle.loads reads; ppc_fast_loads reads such
 * pickles and the small ones the C pickler makes of the same values. Both
 * answer "not handled" for anything else, and the caller uses _pickle. */
#include "ppc_py.h"

#include <string.h>

#define OP_MARK '('
#define OP_STOP '.'
#define OP_BININT 'J'
#define OP_BININT1 'K'
#define OP_BININT2 'M'
#define OP_NONE 'N'
#define OP_BINFLOAT 'G'
#define OP_BINUNICODE 'X'
#define OP_BINBYTES 'B'
#define OP_SHORT_BINBYTES 'C'
#define OP_TUPLE 't'
#define OP_EMPTY_TUPLE ')'
#define OP_PROTO 0x80
#define OP_TUPLE1 0x85
#define OP_TUPLE2 0x86
#define OP_TUPLE3 0x87
#define OP_NEWTRUE 0x88
#define OP_NEWFALSE 0x89
#define OP_LONG1 0x8a
#define OP_SHORT_BINUNICODE 0x8c
#define OP_MEMOIZE 0x94
#define OP_FRAME 0x95

#define MAX_ITEMS 16

/* One scalar at p (room for at least `room` bytes); bytes written, or 0. */
static size_t put_scalar(PyObject *o, uint8_t *p, size_t room)
{
    if (o == Py_None) {
        if (room < 1)
            return 0;
        p[0] = OP_NONE;
        return 1;
    }
    if (o == Py_True || o == Py_False) {
        if (room < 1)
            return 0;
        p[0] = o == Py_True ? OP_NEWTRUE : OP_NEWFALSE;
        return 1;
    }
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        if (room < 10)
            return 0;
        if (v >= 0 && v < 256) {
            p[0] = OP_BININT1;
            p[1] = (uint8_t)v;
            return 2;
        }
        if (v >= 0 && v < 65536) {
            p[0] = OP_BININT2;
            p[1] = (uint8_t)v;
            p[2] = (uint8_t)(v >> 8);
            return 3;
        }
        if (v >= INT32_MIN && v <= INT32_MAX) {
            uint32_t u = (uint32_t)(int32_t)v;
            p[0] = OP_BININT;
            for (int i = 0; i < 4; i++)
                p[1 + i] = (uint8_t)(u >> (8 * i));
            return 5;
        }
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
        p[0] = OP_LONG1;
        p[1] = (uint8_t)n;
        for (int i = 0; i < n; i++)
            p[2 + i] = (uint8_t)(u >> (8 * i));
        return 2 + (size_t)n;
    }
    if (PyFloat_CheckExact(o)) {
        if (room < 9)
            return 0;
        p[0] = OP_BINFLOAT;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(o), (char *)p + 1, 0) < 0) {
            PyErr_Clear();
            return 0;
        }
        return 9;
    }
    if (PyUnicode_CheckExact(o) && PyUnicode_IS_READY(o) && PyUnicode_IS_ASCII(o)) {
        size_t n = (size_t)PyUnicode_GET_LENGTH(o);
        if (n < 256) {
            if (room < 2 + n)
                return 0;
            p[0] = OP_SHORT_BINUNICODE;
            p[1] = (uint8_t)n;
            memcpy(p + 2, PyUnicode_DATA(o), n);
            return 2 + n;
        }
        if (room < 5 + n)
            return 0;
        p[0] = OP_BINUNICODE;
        for (int i = 0; i < 4; i++)
            p[1 + i] = (uint8_t)(n >> (8 * i));
        memcpy(p + 5, PyUnicode_DATA(o), n);
        return 5 + n;
    }
    if (PyBytes_CheckExact(o)) {
        size_t n = (size_t)PyBytes_GET_SIZE(o);
        if (n < 256) {
            if (room < 2 + n)
                return 0;
            p[0] = OP_SHORT_BINBYTES;
            p[1] = (uint8_t)n;
            memcpy(p + 2, PyBytes_AS_STRING(o), n);
            return 2 + n;
        }
        if (room < 5 + n)
            return 0;
        p[0] = OP_BINBYTES;
        for (int i = 0; i < 4; i++)
            p[1 + i] = (uint8_t)(n >> (8 * i));
        memcpy(p + 5, PyBytes_AS_STRING(o), n);
        return 5 + n;
    }
    return 0;
}

size_t ppc_fast_dumps(PyObject *obj, int proto, uint8_t *buf, size_t cap)
{
    if (proto < 4 || proto > 255 || cap < 4)
        return 0;
    size_t at = 0;
    buf[at++] = OP_PROTO;
    buf[at++] = (uint8_t)proto;
    if (PyTuple_CheckExact(obj)) {
        Py_ssize_t n = PyTuple_GET_SIZE(obj);
        if (n > MAX_ITEMS)
            return 0;
        if (n == 0) {
            buf[at++] = OP_EMPTY_TUPLE;
        } else {
            if (n > 3)
                buf[at++] = OP_MARK;
            for (Py_ssize_t i = 0; i < n; i++) {
                size_t k = put_scalar(PyTuple_GET_ITEM(obj, i), buf + at, cap - at - 2);
                if (!k)
                    return 0;
                at += k;
            }
            buf[at++] = n == 1 ? OP_TUPLE1 : n == 2 ? OP_TUPLE2 : n == 3 ? OP_TUPLE3 : OP_TUPLE;
        }
    } else {
        size_t k = put_scalar(obj, buf + at, cap - at - 1);
        if (!k)
            return 0;
        at += k;
    }
    buf[at++] = OP_STOP;
    return at;
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* NULL without an exception: not one of our pickles (the caller falls back
 * to _pickle, which also reports malformed data properly). */
PyObject *ppc_fast_loads(const uint8_t *p, size_t n)
{
    PyObject *stack[MAX_ITEMS];
    int sp = 0, mark = -1;
    size_t i = 0;
    if (n < 3 || p[0] != OP_PROTO || p[1] < 4)
        return NULL;
    i = 2;
    PyObject *res = NULL;
    while (i < n) {
        uint8_t op = p[i++];
        PyObject *o = NULL;
        size_t left = n - i;
        switch (op) {
        case OP_STOP:
            if (sp == 1 && mark < 0 && i == n) {
                res = stack[0];
                sp = 0;
            }
            goto out;
        case OP_FRAME:
            if (left < 8)
                goto out;
            i += 8;
            continue;
        case OP_MEMOIZE:
            continue; /* nothing here reads the memo back (no GET opcodes) */
        case OP_MARK:
            if (mark >= 0)
                goto out;
            mark = sp;
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
        case OP_EMPTY_TUPLE:
            o = PyTuple_New(0);
            break;
        case OP_TUPLE1:
        case OP_TUPLE2:
        case OP_TUPLE3:
        case OP_TUPLE: {
            int k;
            if (op == OP_TUPLE) {
                if (mark < 0)
                    goto out;
                k = sp - mark;
                mark = -1;
            } else {
                k = op - OP_TUPLE1 + 1;
            }
            if (k > sp || (mark >= 0 && sp - k < mark))
                goto out;
            o = PyTuple_New(k);
            if (!o)
                goto fail;
            for (int j = 0; j < k; j++)
                PyTuple_SET_ITEM(o, j, stack[sp - k + j]);
            sp -= k;
            break;
        }
        default:
            goto out; /* an opcode this reader does not know */
        }
        if (!o)
            goto fail;
        if (sp == MAX_ITEMS) {
            Py_DECREF(o);
            goto out;
        }
        stack[sp++] = o;
    }
out:
    while (sp > 0)
        Py_DECREF(stack[--sp]);
    return res;
fail:
    while (sp > 0)
        Py_DECREF(stack[--sp]);
    PyErr_Clear();
    return NULL;
}

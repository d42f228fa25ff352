/* shmmap.c - shared-memory mappings as Python objects (ppc_ShmMap): a
 * mapping whose buffer views are handed out (the worker's view of an
 * argument segment; the client's copy-on-write view of a worker's result
 * segment), counting its exports, unmapped when the object dies. A lent
 * result mapping also gives its segment back to the worker then, through
 * the Server's ppc_retchan; a fork since it was made turns that into a drop
 * (the child still maps it), which proc.c's fork handler tells
 * (ppc_forks_made). A result lying in one of the client's own argument
 * segments (PPC_AUX_INARG) is a copy-on-write mapping of that segment,
 * which goes back to the engine's pool the same way. */
#include "ppc_py.h"
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------ ShmMap */

static int ShmMap_getbuffer(ppc_ShmMap *self, Py_buffer *view, int flags)
{
    if (!self->addr) {
        PyErr_SetString(PyExc_BufferError, "mapping released");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, (Py_ssize_t)self->len,
                          self->readonly, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void ShmMap_releasebuffer(ppc_ShmMap *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
}

ppc_retchan *ppc_retchan_new(void (*give_back)(void *, int, uint64_t, int), void *ctx)
{
    ppc_retchan *c = malloc(sizeof *c);
    if (!c) {
        PyErr_NoMemory();
        return NULL;
    }
    c->refs = 1;
    c->give_back = give_back;
    c->give_seg = NULL;
    c->ctx = ctx;
    return c;
}

static void retchan_decref(ppc_retchan *c)
{
    if (c && --c->refs == 0)
        free(c);
}

void ppc_retchan_close(ppc_retchan *c)
{
    if (!c)
        return;
    c->give_back = NULL;
    c->give_seg = NULL;
    retchan_decref(c);
}

/* Tie m to its return channel c (may be NULL) and note which process,
 * after how many forks, made it. */
static void shmmap_bind(ppc_ShmMap *m, ppc_retchan *c)
{
    if (c)
        c->refs++;
    m->ret = c;
    m->maker = (long)getpid();
    m->forks = ppc_forks_made();
}

void ppc_shmmap_lent(ppc_ShmMap *m, ppc_retchan *c, int pid, uint64_t seg_id)
{
    shmmap_bind(m, c);
    m->ret_pid = pid;
    m->ret_id = seg_id;
}

void ppc_shmmap_own(ppc_ShmMap *m, ppc_retchan *c, ppc_shm_seg *seg, int pinned)
{
    shmmap_bind(m, c);
    m->seg = seg;
    m->seg_pinned = pinned;
}

static void ShmMap_dealloc(ppc_ShmMap *self)
{
    if (self->addr && self->owned)
        munmap(self->addr, self->len);
    ppc_retchan *c = self->ret;
    int same = (long)getpid() == self->maker && ppc_forks_made() == self->forks;
    if (self->seg) {
        /* a fork's child maps it too (and a forked child's copy of the
         * struct is its own): never reused then */
        if (c && c->give_seg && same && !self->seg_pinned)
            c->give_seg(c->ctx, self->seg);
        else
            ppc_shm_free(self->seg);
    } else if (c && c->give_back && (long)getpid() == self->maker)
        c->give_back(c->ctx, self->ret_pid, self->ret_id, ppc_forks_made() != self->forks);
    retchan_decref(c);
    PyObject_Free(self);
}

static PyBufferProcs ShmMap_as_buffer = {(getbufferproc)ShmMap_getbuffer,
                                         (releasebufferproc)ShmMap_releasebuffer};

PyTypeObject ppc_ShmMapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pp._ppc.ShmMap",
    .tp_basicsize = sizeof(ppc_ShmMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mapping of a shared-memory segment (internal).",
    .tp_dealloc = (destructor)ShmMap_dealloc,
    .tp_as_buffer = &ShmMap_as_buffer,
};

ppc_ShmMap *ppc_shmmap_new(void *addr, size_t len, int readonly, int owned)
{
    if (PyType_Ready(&ppc_ShmMapType) < 0)
        return NULL;
    ppc_ShmMap *m = PyObject_New(ppc_ShmMap, &ppc_ShmMapType);
    if (!m) {
        if (owned)
            munmap(addr, len);
        return NULL;
    }
    m->addr = addr;
    m->len = len;
    m->readonly = readonly;
    m->owned = owned;
    m->exports = 0;
    m->id = 0;
    m->ret = NULL;
    m->ret_pid = 0;
    m->ret_id = 0;
    m->maker = 0;
    m->forks = 0;
    m->seg = NULL;
    m->seg_pinned = 0;
    return m;
}

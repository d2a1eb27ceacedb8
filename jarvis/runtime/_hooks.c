/* The trace hooks in C: `jarvis.runtime._hooks.Hooks`.
 *
 * An instrumented program calls a hook after each traced expression and before each
 * statement (see the docstring of jarvis/runtime/trace.py). The Python closures that
 * `Tracer._hooks` builds cost a Python frame per call; these methods do the same work
 * without one, and leave exactly the same entries in the same lists, so nothing that
 * reads the buffer changes:
 *
 *   expr(k, value)          buffer += [k, value], or, for a value that may change
 *                           later, [k, capture(value)] with the position of that pair
 *                           appended to `marks`; returns value
 *   expr_checked(k, value)  the same, then calls spill() when the buffer is full
 *   stmt(k)                 buffer += [k, None]; spill() when full
 *   first(ks, k, value)     stmt(ks) and expr(k, value) in one call; spill() when full
 *   set_capacity(entries)   the buffer length at which spill() is called
 *
 * Values kept as they are: exact ints, floats, bools, None, and strings of at most
 * `longest` characters. For the site indexes in `summarized`, a container of a type
 * in `summaries` is written by its size only (`Renderer.summary`); any other value goes
 * to `capture` (`Renderer.capture`), which returns a (text, type name) pair.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *buffer;      /* list: site index, value, site index, value, ... */
    PyObject *marks;       /* list of buffer positions holding a (text, type) pair */
    PyObject *capture;     /* callable(value) -> (text, type name) */
    PyObject *summarized;  /* set or frozenset of the site indexes shown by size */
    PyObject *summaries;   /* dict: type -> (several, one, empty, type name) */
    PyObject *spill;       /* callable() when the buffer is full */
    Py_ssize_t capacity;   /* buffer length that triggers spill() */
    Py_ssize_t longest;    /* the longest string kept as it is */
} Hooks;

/* Whether `value` is kept as it is until the batch renders it. */
static inline int
is_deferred(const Hooks *self, PyObject *value)
{
    PyTypeObject *kind = Py_TYPE(value);
    if (kind == &PyLong_Type || kind == &PyFloat_Type || kind == &PyBool_Type
            || value == Py_None) {
        return 1;
    }
    return kind == &PyUnicode_Type && PyUnicode_GET_LENGTH(value) <= self->longest;
}

/* `Renderer.summary` for a summarized site: a new reference to a (text, type name)
 * pair, or NULL with no exception set when the value's type has no summary form, or
 * NULL with an exception set on failure. */
static PyObject *
summary(Hooks *self, PyObject *value)
{
    PyObject *form = PyDict_GetItemWithError(self->summaries, (PyObject *)Py_TYPE(value));
    if (form == NULL) {
        return NULL;
    }
    if (!PyTuple_CheckExact(form) || PyTuple_GET_SIZE(form) != 4) {
        PyErr_SetString(PyExc_TypeError, "a summary form is a tuple of four strings");
        return NULL;
    }
    Py_ssize_t size = PyObject_Size(value);
    if (size < 0) {
        return NULL;
    }
    PyObject *text;
    if (size > 1) {
        PyObject *count = PyLong_FromSsize_t(size);
        if (count == NULL) {
            return NULL;
        }
        text = PyUnicode_Format(PyTuple_GET_ITEM(form, 0), count);
        Py_DECREF(count);
        if (text == NULL) {
            return NULL;
        }
    }
    else {
        text = Py_NewRef(PyTuple_GET_ITEM(form, size ? 1 : 2));
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, text);
    PyTuple_SET_ITEM(pair, 1, Py_NewRef(PyTuple_GET_ITEM(form, 3)));
    return pair;
}

/* Append the event of site `k` with `value` to the buffer; 0, or -1 on error. */
static int
record(Hooks *self, PyObject *k, PyObject *value)
{
    if (is_deferred(self, value)) {
        if (PyList_Append(self->buffer, k) < 0) {
            return -1;
        }
        return PyList_Append(self->buffer, value);
    }
    PyObject *rendered = NULL;
    if (PySet_GET_SIZE(self->summarized) > 0) {
        int shown_by_size = PySet_Contains(self->summarized, k);
        if (shown_by_size < 0) {
            return -1;
        }
        if (shown_by_size) {
            rendered = summary(self, value);
            if (rendered == NULL && PyErr_Occurred()) {
                return -1;
            }
        }
    }
    if (rendered == NULL) {
        rendered = PyObject_CallOneArg(self->capture, value);
        if (rendered == NULL) {
            return -1;
        }
    }
    if (PyList_Append(self->buffer, k) < 0) {
        Py_DECREF(rendered);
        return -1;
    }
    PyObject *mark = PyLong_FromSsize_t(PyList_GET_SIZE(self->buffer));
    if (mark == NULL) {
        Py_DECREF(rendered);
        return -1;
    }
    int failed = PyList_Append(self->marks, mark) < 0;
    Py_DECREF(mark);
    if (!failed) {
        failed = PyList_Append(self->buffer, rendered) < 0;
    }
    Py_DECREF(rendered);
    return failed ? -1 : 0;
}

/* Call spill() if the buffer is full; 0, or -1 with its exception. */
static inline int
check_full(Hooks *self)
{
    if (PyList_GET_SIZE(self->buffer) < self->capacity) {
        return 0;
    }
    PyObject *result = PyObject_CallNoArgs(self->spill);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* The arguments check of every hook, and the check that the object was not cleared
 * (tp_clear, when a reference cycle through it is collected: its fields are NULL). */
static int
check_args(const Hooks *self, const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs == expected && self->buffer != NULL) {
        return 0;
    }
    if (self->buffer == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the trace hooks were cleared");
        return -1;
    }
    PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)",
                 name, expected, nargs);
    return -1;
}

static PyObject *
Hooks_expr(Hooks *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args(self, "expr", nargs, 2) < 0 || record(self, args[0], args[1]) < 0) {
        return NULL;
    }
    return Py_NewRef(args[1]);
}

static PyObject *
Hooks_expr_checked(Hooks *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args(self, "expr_checked", nargs, 2) < 0 || record(self, args[0], args[1]) < 0
            || check_full(self) < 0) {
        return NULL;
    }
    return Py_NewRef(args[1]);
}

static PyObject *
Hooks_stmt(Hooks *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args(self, "stmt", nargs, 1) < 0 || PyList_Append(self->buffer, args[0]) < 0
            || PyList_Append(self->buffer, Py_None) < 0 || check_full(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Hooks_first(Hooks *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_args(self, "first", nargs, 3) < 0 || PyList_Append(self->buffer, args[0]) < 0
            || PyList_Append(self->buffer, Py_None) < 0 || record(self, args[1], args[2]) < 0
            || check_full(self) < 0) {
        return NULL;
    }
    return Py_NewRef(args[2]);
}

static PyObject *
Hooks_set_capacity(Hooks *self, PyObject *entries)
{
    Py_ssize_t capacity = PyLong_AsSsize_t(entries);
    if (capacity == -1 && PyErr_Occurred()) {
        return NULL;
    }
    self->capacity = capacity;
    Py_RETURN_NONE;
}

static PyObject *
Hooks_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"buffer", "marks", "capture", "summarized", "summaries",
                               "spill", "capacity", "longest", NULL};
    PyObject *buffer, *marks, *capture, *summarized, *summaries, *spill;
    Py_ssize_t capacity, longest;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!OOO!Onn:Hooks", keywords,
                                     &PyList_Type, &buffer, &PyList_Type, &marks, &capture,
                                     &summarized, &PyDict_Type, &summaries, &spill,
                                     &capacity, &longest)) {
        return NULL;
    }
    if (!PyAnySet_Check(summarized)) {
        PyErr_SetString(PyExc_TypeError, "summarized must be a set or a frozenset");
        return NULL;
    }
    if (!PyCallable_Check(capture) || !PyCallable_Check(spill)) {
        PyErr_SetString(PyExc_TypeError, "capture and spill must be callable");
        return NULL;
    }
    Hooks *self = (Hooks *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->buffer = Py_NewRef(buffer);
    self->marks = Py_NewRef(marks);
    self->capture = Py_NewRef(capture);
    self->summarized = Py_NewRef(summarized);
    self->summaries = Py_NewRef(summaries);
    self->spill = Py_NewRef(spill);
    self->capacity = capacity;
    self->longest = longest;
    return (PyObject *)self;
}

static int
Hooks_traverse(Hooks *self, visitproc visit, void *arg)
{
    Py_VISIT(self->buffer);
    Py_VISIT(self->marks);
    Py_VISIT(self->capture);
    Py_VISIT(self->summarized);
    Py_VISIT(self->summaries);
    Py_VISIT(self->spill);
    return 0;
}

static int
Hooks_clear(Hooks *self)
{
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->marks);
    Py_CLEAR(self->capture);
    Py_CLEAR(self->summarized);
    Py_CLEAR(self->summaries);
    Py_CLEAR(self->spill);
    return 0;
}

static void
Hooks_dealloc(Hooks *self)
{
    PyObject_GC_UnTrack(self);
    Hooks_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Hooks_get_capacity(Hooks *self, void *closure)
{
    return PyLong_FromSsize_t(self->capacity);
}

static PyMethodDef Hooks_methods[] = {
    {"expr", (PyCFunction)(void (*)(void))Hooks_expr, METH_FASTCALL,
     "expr(k, value) -> value: record the value of expression site k."},
    {"expr_checked", (PyCFunction)(void (*)(void))Hooks_expr_checked, METH_FASTCALL,
     "expr_checked(k, value) -> value: expr, then spill() if the buffer is full."},
    {"stmt", (PyCFunction)(void (*)(void))Hooks_stmt, METH_FASTCALL,
     "stmt(k): record statement site k; spill() if the buffer is full."},
    {"first", (PyCFunction)(void (*)(void))Hooks_first, METH_FASTCALL,
     "first(ks, k, value) -> value: stmt(ks) and expr(k, value); spill() if full."},
    {"set_capacity", (PyCFunction)Hooks_set_capacity, METH_O,
     "set_capacity(entries): the buffer length at which the hooks call spill()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Hooks_getset[] = {
    {"capacity", (getter)Hooks_get_capacity, NULL,
     "The buffer length at which the hooks call spill().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HooksType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jarvis.runtime._hooks.Hooks",
    .tp_doc = PyDoc_STR(
        "Hooks(buffer, marks, capture, summarized, summaries, spill, capacity, longest)\n\n"
        "The trace hooks of one Tracer, writing into its buffer and marks lists."),
    .tp_basicsize = sizeof(Hooks),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Hooks_new,
    .tp_dealloc = (destructor)Hooks_dealloc,
    .tp_traverse = (traverseproc)Hooks_traverse,
    .tp_clear = (inquiry)Hooks_clear,
    .tp_methods = Hooks_methods,
    .tp_getset = Hooks_getset,
};

/* -- reprs: the texts of a batch of deferred values ----------------------------------- */

#define SMALL_INT_MIN (-5)
#define SMALL_INT_END 1024

/* The reprs of None and of the ints SMALL_INT_MIN .. SMALL_INT_END - 1, made once:
 * most values of a batch are statement entries (None) and small ints. */
static PyObject *none_text;
static PyObject *small_int_texts[SMALL_INT_END - SMALL_INT_MIN];

/* repr() of an int that fits a C long, written directly (CPython's own conversion
 * allocates a scratch number for every call). */
static PyObject *
int_text(long value)
{
    if (value >= SMALL_INT_MIN && value < SMALL_INT_END) {
        return Py_NewRef(small_int_texts[value - SMALL_INT_MIN]);
    }
    char digits[24];
    char *end = digits + sizeof(digits);
    char *at = end;
    unsigned long magnitude = value < 0 ? 0UL - (unsigned long)value : (unsigned long)value;
    do {
        *--at = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (value < 0) {
        *--at = '-';
    }
    Py_ssize_t size = end - at;
    PyObject *text = PyUnicode_New(size, 127);
    if (text != NULL) {
        memcpy(PyUnicode_DATA(text), at, (size_t)size);
    }
    return text;
}

static PyObject *
value_text(PyObject *value)
{
    if (value == Py_None) {
        return Py_NewRef(none_text);
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long number = PyLong_AsLongAndOverflow(value, &overflow);
        if (!overflow && !(number == -1 && PyErr_Occurred())) {
            return int_text(number);
        }
        PyErr_Clear();
    }
    return PyObject_Repr(value);
}

static PyObject *
hooks_reprs(PyObject *module, PyObject *values)
{
    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "reprs() takes a list");
        return NULL;
    }
    Py_ssize_t size = PyList_GET_SIZE(values);
    PyObject *texts = PyList_New(size);
    if (texts == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        /* A repr cannot change the list: SPy values have no Python-level __repr__. Still,
         * hold the item and read the size again, as if it could. */
        if (i >= PyList_GET_SIZE(values)) {
            Py_DECREF(texts);
            PyErr_SetString(PyExc_RuntimeError, "the list changed size during reprs()");
            return NULL;
        }
        PyObject *value = Py_NewRef(PyList_GET_ITEM(values, i));
        PyObject *text = value_text(value);
        Py_DECREF(value);
        if (text == NULL) {
            Py_DECREF(texts);
            return NULL;
        }
        PyList_SET_ITEM(texts, i, text);
    }
    return texts;
}

static PyMethodDef hooks_functions[] = {
    {"reprs", (PyCFunction)hooks_reprs, METH_O,
     "reprs(values) -> [repr(v) for v in values], faster for None and ints."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hooks_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "jarvis.runtime._hooks",
    .m_doc = "The trace hooks in C (see jarvis.runtime.trace).",
    .m_size = -1,
    .m_methods = hooks_functions,
};

PyMODINIT_FUNC
PyInit__hooks(void)
{
    if (PyType_Ready(&HooksType) < 0) {
        return NULL;
    }
    if (none_text == NULL) {
        none_text = PyUnicode_InternFromString("None");
        if (none_text == NULL) {
            return NULL;
        }
        for (long value = SMALL_INT_MIN; value < SMALL_INT_END; value++) {
            PyObject *number = PyLong_FromLong(value);
            if (number == NULL) {
                return NULL;
            }
            PyObject *text = PyObject_Repr(number);
            Py_DECREF(number);
            if (text == NULL) {
                return NULL;
            }
            small_int_texts[value - SMALL_INT_MIN] = text;
        }
    }
    PyObject *module = PyModule_Create(&hooks_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Hooks", (PyObject *)&HooksType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

/* Trace batches in C: `jarvis.runtime._tracebatch` (the format: tracebatch.py).
 *
 * Two functions, one per side of the channel, each the same as a Python function of
 * jarvis/runtime/tracebatch.py byte for byte (the tests compare them):
 *
 *   encode(...)   the child: an EventBatch's columns as one binary batch, without a
 *                 TraceEvent per event (`tracebatch.encode_columns`)
 *   render(...)   the host: a batch the child sent, checked with bounds checks (the
 *                 child is untrusted), as InfluxDB line protocol split into Kafka
 *                 messages (`tracebatch.render_python`)
 *
 * A malformed batch makes render raise ValueError (tracebatch turns it into
 * ChannelError): a read past the end, a site or type index out of range, bad UTF-8,
 * bytes left over. Every string field is escaped as sinks.escape_string_field does,
 * so no field can end its line or its quotes early.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAGIC "JTB1"
#define HEADER_BYTES 18  /* magic, u64 first seq, u32 count, u16 types */
#define EXPLICIT (-1)     /* the site index of an event carried whole */
#define MAX_TYPES 65535
#define MAX_EVENTS 16384  /* a batch's events, at most (tracebatch.MAX_BATCH_EVENTS) */
#define TYPE_CACHE 8

static const char *const KINDS[] = {
    "expr", "stmt", "print", "book_start", "book_end", "exception", "checkpoint",
    "limit", "output", "sleep",
};
#define KIND_COUNT ((int)(sizeof(KINDS) / sizeof(KINDS[0])))

/* -- a growable byte buffer ------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int
reserve(Buf *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline void
put(Buf *b, const void *data, Py_ssize_t n)
{
    if (n > 0) {
        memcpy(b->data + b->len, data, (size_t)n);
        b->len += n;
    }
}

static int
append(Buf *b, const void *data, Py_ssize_t n)
{
    if (reserve(b, n) < 0) {
        return -1;
    }
    put(b, data, n);
    return 0;
}

static int
append_le(Buf *b, uint64_t value, int bytes)
{
    if (reserve(b, bytes) < 0) {
        return -1;
    }
    for (int i = 0; i < bytes; i++) {
        b->data[b->len++] = (char)((value >> (8 * i)) & 0xff);
    }
    return 0;
}

/* -- the child: encode ------------------------------------------------------------ */

typedef struct {
    Buf types;                   /* the type table as written: u16 length, bytes */
    Py_ssize_t count;
    PyTypeObject *cached_type[TYPE_CACHE];
    Py_ssize_t cached_index[TYPE_CACHE];
    int cached;
    PyObject *names;             /* list: the type names, in table order */
} Types;

/* The UTF-8 of `text` as a new bytes object, a lone surrogate written as an escape
 * (`\ud800`): it has no UTF-8 form. */
static PyObject *
utf8_of(PyObject *text)
{
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(text, &size);
    if (data != NULL) {
        return PyBytes_FromStringAndSize(data, size);
    }
    PyErr_Clear();
    return PyUnicode_AsEncodedString(text, "utf-8", "backslashreplace");
}

/* Append `text` (a str) as u32 length + UTF-8. */
static int
append_text(Buf *b, PyObject *text, int length_bytes)
{
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "a trace text must be a str");
        return -1;
    }
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(text, &size);
    if (data == NULL) {
        PyErr_Clear();
        PyObject *bytes = utf8_of(text);
        if (bytes == NULL) {
            return -1;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(bytes);
        if ((uint64_t)n >= ((uint64_t)1 << (8 * length_bytes))
                || append_le(b, (uint64_t)n, length_bytes) < 0
                || append(b, PyBytes_AS_STRING(bytes), n) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "a trace text is too long");
            }
            Py_DECREF(bytes);
            return -1;
        }
        Py_DECREF(bytes);
        return 0;
    }
    if ((uint64_t)size >= ((uint64_t)1 << (8 * length_bytes))) {
        PyErr_SetString(PyExc_ValueError, "a trace text is too long");
        return -1;
    }
    if (append_le(b, (uint64_t)size, length_bytes) < 0) {
        return -1;
    }
    return append(b, data, size);
}

/* The index of type name `name` (a str) in the table, added if new. */
static Py_ssize_t
type_index(Types *t, PyObject *name)
{
    for (Py_ssize_t i = 0; i < t->count; i++) {
        if (PyList_GET_ITEM(t->names, i) == name) {
            return i;
        }
    }
    for (Py_ssize_t i = 0; i < t->count; i++) {
        int equal = PyUnicode_Compare(PyList_GET_ITEM(t->names, i), name);
        if (equal == 0) {
            return i;
        }
        if (equal == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    if (t->count >= MAX_TYPES) {
        PyErr_SetString(PyExc_ValueError, "too many type names in one trace batch");
        return -1;
    }
    if (PyList_Append(t->names, name) < 0 || append_text(&t->types, name, 2) < 0) {
        return -1;
    }
    return t->count++;
}

/* The index of the type name of `value` (a value the batch kept as it is). */
static Py_ssize_t
value_type_index(Types *t, PyObject *value)
{
    PyTypeObject *kind = Py_TYPE(value);
    for (int i = 0; i < t->cached; i++) {
        if (t->cached_type[i] == kind) {
            return t->cached_index[i];
        }
    }
    PyObject *name = PyType_GetName(kind);
    if (name == NULL) {
        return -1;
    }
    Py_ssize_t index = type_index(t, name);
    Py_DECREF(name);  /* `names` holds it */
    if (index >= 0 && t->cached < TYPE_CACHE) {
        t->cached_type[t->cached] = kind;
        t->cached_index[t->cached++] = index;
    }
    return index;
}

static int
kind_index(PyObject *kind)
{
    if (PyUnicode_Check(kind)) {
        for (int i = 0; i < KIND_COUNT; i++) {
            if (PyUnicode_CompareWithASCIIString(kind, KINDS[i]) == 0) {
                return i;
            }
        }
    }
    PyErr_SetString(PyExc_ValueError, "unknown trace event kind");
    return -1;
}

static int
append_int(Buf *b, PyObject *number)
{
    long long value = PyLong_AsLongLong(number);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    return append_le(b, (uint64_t)value, 8);
}

/* An event carried whole: kind, positions, texts, type, duration. */
static int
encode_explicit(Buf *b, Types *t, PyObject *event)
{
    if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) != 11) {
        PyErr_SetString(PyExc_TypeError, "an engine event must be a TraceEvent");
        return -1;
    }
    int kind = kind_index(PyTuple_GET_ITEM(event, 2));
    if (kind < 0 || append_le(b, (uint64_t)(uint32_t)EXPLICIT, 4) < 0
            || append_le(b, (uint64_t)kind, 1) < 0) {
        return -1;
    }
    for (int field = 3; field <= 6; field++) {
        if (append_int(b, PyTuple_GET_ITEM(event, field)) < 0) {
            return -1;
        }
    }
    if (append_text(b, PyTuple_GET_ITEM(event, 7), 4) < 0
            || append_text(b, PyTuple_GET_ITEM(event, 8), 4) < 0) {
        return -1;
    }
    PyObject *type_name = PyTuple_GET_ITEM(event, 9);
    if (!PyUnicode_Check(type_name)) {
        PyErr_SetString(PyExc_TypeError, "a type name must be a str");
        return -1;
    }
    Py_ssize_t index = type_index(t, type_name);
    if (index < 0 || append_le(b, (uint64_t)index, 2) < 0) {
        return -1;
    }
    PyObject *duration = PyTuple_GET_ITEM(event, 10);
    if (duration == Py_None) {
        return append_le(b, 0, 1);
    }
    double value = PyFloat_AsDouble(duration);
    if (value == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    if (append_le(b, 1, 1) < 0) {
        return -1;
    }
    return append_le(b, bits, 8);
}

PyDoc_STRVAR(encode_doc,
"encode(first_seq, sites, start, stop, expr_sites, texts, values, names, max_chars,\n"
"       clip, engine, /) -> bytes\n\n"
"Entries start..stop of a batch's columns as a binary batch (tracebatch.encode_columns).");

static PyObject *
encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "encode takes 11 arguments");
        return NULL;
    }
    unsigned long long first_seq = PyLong_AsUnsignedLongLong(args[0]);
    if (first_seq == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *sites = args[1];
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[3]);
    if ((start == -1 || stop == -1) && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *expr_sites = args[4], *texts = args[5], *values = args[6], *names = args[7];
    Py_ssize_t max_chars = PyLong_AsSsize_t(args[8]);
    if (max_chars == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *clip = args[9], *engine = args[10];
    if (!PyList_Check(sites) || !PyBytes_Check(expr_sites) || !PyList_Check(values)
            || !(texts == Py_None || PyList_Check(texts)) || !PyDict_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "encode: columns of the wrong types");
        return NULL;
    }
    if (start < 0 || stop < start || stop > PyList_GET_SIZE(sites)
            || PyList_GET_SIZE(values) < stop
            || (texts != Py_None && PyList_GET_SIZE(texts) < stop)
            || stop - start > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "encode: entries out of range");
        return NULL;
    }
    const unsigned char *is_expr = (const unsigned char *)PyBytes_AS_STRING(expr_sites);
    Py_ssize_t site_count = PyBytes_GET_SIZE(expr_sites);

    Types *t = PyMem_Calloc(1, sizeof(Types));
    if (t == NULL) {
        return PyErr_NoMemory();
    }
    Buf body = {NULL, 0, 0};
    PyObject *result = NULL;
    PyObject **overrides = NULL;  /* type name by entry, from `names` */
    t->names = PyList_New(0);
    if (t->names == NULL) {
        goto done;
    }
    if (PyDict_GET_SIZE(names) > 0) {
        overrides = PyMem_Calloc((size_t)(stop - start) + 1, sizeof(PyObject *));
        if (overrides == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *name;
        while (PyDict_Next(names, &pos, &key, &name)) {
            Py_ssize_t index = PyLong_AsSsize_t(key);
            if (index == -1 && PyErr_Occurred()) {
                goto done;
            }
            if (index >= start && index < stop && PyUnicode_Check(name)
                    && PyUnicode_GET_LENGTH(name) > 0) {
                overrides[index - start] = name;
            }
        }
    }
    if (reserve(&body, (stop - start) * 16 + 64) < 0) {
        goto done;
    }
    for (Py_ssize_t i = start; i < stop; i++) {
        PyObject *site = PyList_GET_ITEM(sites, i);
        long k = PyLong_AsLong(site);
        if (k == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (k < 0) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL) {
                goto done;
            }
            PyObject *event = PyObject_CallOneArg(engine, index);
            Py_DECREF(index);
            if (event == NULL) {
                goto done;
            }
            int failed = encode_explicit(&body, t, event);
            Py_DECREF(event);
            if (failed < 0) {
                goto done;
            }
            continue;
        }
        if (k >= site_count || k > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "encode: a site index out of range");
            goto done;
        }
        if (append_le(&body, (uint64_t)k, 4) < 0) {
            goto done;
        }
        if (!is_expr[k]) {
            continue;
        }
        if (texts == Py_None) {
            PyErr_SetString(PyExc_ValueError, "encode: an expression without its text");
            goto done;
        }
        PyObject *value = PyList_GET_ITEM(values, i);
        PyObject *name = overrides != NULL ? overrides[i - start] : NULL;
        Py_ssize_t type = name != NULL ? type_index(t, name) : value_type_index(t, value);
        if (type < 0 || append_le(&body, (uint64_t)type, 2) < 0) {
            goto done;
        }
        PyObject *text = PyList_GET_ITEM(texts, i);
        if (PyUnicode_Check(text) && PyUnicode_GET_LENGTH(text) > max_chars) {
            PyObject *clipped = PyObject_CallFunctionObjArgs(clip, text, value, NULL);
            if (clipped == NULL) {
                goto done;
            }
            int failed = append_text(&body, clipped, 4);
            Py_DECREF(clipped);
            if (failed < 0) {
                goto done;
            }
        }
        else if (append_text(&body, text, 4) < 0) {
            goto done;
        }
    }
    Py_ssize_t size = HEADER_BYTES + t->types.len + body.len;
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) {
        goto done;
    }
    {
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        uint64_t count = (uint64_t)(stop - start);
        memcpy(out, MAGIC, 4);
        for (int i = 0; i < 8; i++) {
            out[4 + i] = (unsigned char)((first_seq >> (8 * i)) & 0xff);
        }
        for (int i = 0; i < 4; i++) {
            out[12 + i] = (unsigned char)((count >> (8 * i)) & 0xff);
        }
        out[16] = (unsigned char)(t->count & 0xff);
        out[17] = (unsigned char)((t->count >> 8) & 0xff);
        if (t->types.len) {
            memcpy(out + HEADER_BYTES, t->types.data, (size_t)t->types.len);
        }
        if (body.len) {
            memcpy(out + HEADER_BYTES + t->types.len, body.data, (size_t)body.len);
        }
    }
done:
    PyMem_Free(overrides);
    PyMem_Free(body.data);
    PyMem_Free(t->types.data);
    Py_XDECREF(t->names);
    PyMem_Free(t);
    return result;
}

/* -- the host: render ------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Reader;

static int
malformed(const char *what)
{
    PyErr_Format(PyExc_ValueError, "malformed trace batch: %s", what);
    return -1;
}

static inline int
read_le(Reader *r, int bytes, uint64_t *value)
{
    if (r->end - r->p < bytes) {
        return malformed("truncated");
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        v |= (uint64_t)r->p[i] << (8 * i);
    }
    r->p += bytes;
    *value = v;
    return 0;
}

/* Append `n` bytes of UTF-8 at `s`, escaped for a line protocol string field; -1 (and
 * ValueError) if they are not valid UTF-8 as Python's strict decoder sees it. */
static int
put_escaped(Buf *b, const unsigned char *s, Py_ssize_t n)
{
    if (reserve(b, 2 * n) < 0) {
        return -1;
    }
    char *out = b->data + b->len;
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            if (c == '\\' || c == '"') {
                *out++ = '\\';
                *out++ = (char)c;
            }
            else if (c == '\n') {
                *out++ = '\\';
                *out++ = 'n';
            }
            else if (c == '\r') {
                *out++ = '\\';
                *out++ = 'r';
            }
            else {
                *out++ = (char)c;
            }
            i++;
            continue;
        }
        int more;
        unsigned char low = 0x80, high = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            more = 1;
        }
        else if (c >= 0xe0 && c <= 0xef) {
            more = 2;
            if (c == 0xe0) {
                low = 0xa0;
            }
            else if (c == 0xed) {
                high = 0x9f;
            }
        }
        else if (c >= 0xf0 && c <= 0xf4) {
            more = 3;
            if (c == 0xf0) {
                low = 0x90;
            }
            else if (c == 0xf4) {
                high = 0x8f;
            }
        }
        else {
            return malformed("bad UTF-8");
        }
        if (n - i <= more || s[i + 1] < low || s[i + 1] > high) {
            return malformed("bad UTF-8");
        }
        for (int j = 2; j <= more; j++) {
            if (s[i + j] < 0x80 || s[i + j] > 0xbf) {
                return malformed("bad UTF-8");
            }
        }
        memcpy(out, s + i, (size_t)more + 1);
        out += more + 1;
        i += more + 1;
    }
    b->len = out - b->data;
    return 0;
}

/* A string field of the batch: u32 length + UTF-8, escaped into `b`. */
static int
put_field(Buf *b, Reader *r)
{
    uint64_t n;
    if (read_le(r, 4, &n) < 0) {
        return -1;
    }
    if ((uint64_t)(r->end - r->p) < n) {
        return malformed("truncated");
    }
    const unsigned char *s = r->p;
    r->p += n;
    return put_escaped(b, s, (Py_ssize_t)n);
}

static inline void
put_int(Buf *b, long long value)
{
    char digits[24];
    int n = 0;
    unsigned long long v = value < 0 ? 0ULL - (unsigned long long)value
                                     : (unsigned long long)value;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (value < 0) {
        b->data[b->len++] = '-';
    }
    while (n) {
        b->data[b->len++] = digits[--n];
    }
}

/* A non-negative number in decimal that counts up by one: the seqs and timestamps of
 * a batch's lines follow each other, so each is written by a copy, not a division per
 * digit. */
typedef struct {
    char digits[24];
    Py_ssize_t n;
} Decimal;

static void
decimal_set(Decimal *x, unsigned long long value)
{
    char reversed[24];
    Py_ssize_t n = 0;
    do {
        reversed[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    for (Py_ssize_t i = 0; i < n; i++) {
        x->digits[i] = reversed[n - 1 - i];
    }
    x->n = n;
}

static inline void
decimal_next(Decimal *x)
{
    Py_ssize_t i = x->n - 1;
    while (i >= 0 && x->digits[i] == '9') {
        x->digits[i--] = '0';
    }
    if (i >= 0) {
        x->digits[i]++;
    }
    else {  /* 99...9 + 1 */
        memmove(x->digits + 1, x->digits, (size_t)x->n);
        x->digits[0] = '1';
        x->n++;
    }
}

#define LITERAL(b, s) put((b), (s), (Py_ssize_t)(sizeof(s) - 1))

/* The `type` field of a line: the batch's type name at index `type` (checked against
 * the batch's table of `count` names, whose ends are `ends`). */
static int
put_type(Buf *b, uint64_t type, uint64_t count, const Py_ssize_t *ends, const char *names)
{
    if (type >= count) {
        return malformed("type index out of range");
    }
    Py_ssize_t from = ends[type], to = ends[type + 1];
    if (reserve(b, to - from + 64) < 0) {
        return -1;
    }
    LITERAL(b, "\",type=\"");
    put(b, names + from, to - from);
    LITERAL(b, "\"");
    return 0;
}

PyDoc_STRVAR(render_doc,
"render(blob, heads, site_kinds, middles, first_ns, skip, max_message_bytes, /)\n"
"    -> (messages, last_seqs)\n\n"
"The batch `blob` as line protocol, the first `skip` events checked but left out:\n"
"Kafka messages of whole lines, each at most max_message_bytes (or one line), and the\n"
"seq of each message's last event (tracebatch.render_python).");

static PyObject *
render(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "render takes 7 arguments");
        return NULL;
    }
    PyObject *blob = args[0], *heads = args[1], *site_kinds = args[2], *middles = args[3];
    long long first_ns = PyLong_AsLongLong(args[4]);
    Py_ssize_t skip = PyLong_AsSsize_t(args[5]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyBytes_Check(blob) || !PyTuple_Check(heads) || PyTuple_GET_SIZE(heads) != KIND_COUNT
            || !PyBytes_Check(site_kinds) || !PyTuple_Check(middles)
            || PyTuple_GET_SIZE(middles) != PyBytes_GET_SIZE(site_kinds)) {
        PyErr_SetString(PyExc_TypeError, "render: arguments of the wrong types");
        return NULL;
    }
    for (int i = 0; i < KIND_COUNT; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(heads, i))) {
            PyErr_SetString(PyExc_TypeError, "render: a head is not bytes");
            return NULL;
        }
    }
    Py_ssize_t site_count = PyBytes_GET_SIZE(site_kinds);
    const unsigned char *kinds = (const unsigned char *)PyBytes_AS_STRING(site_kinds);
    Reader r = {(const unsigned char *)PyBytes_AS_STRING(blob),
                (const unsigned char *)PyBytes_AS_STRING(blob) + PyBytes_GET_SIZE(blob)};
    Buf out = {NULL, 0, 0};
    Buf types = {NULL, 0, 0};  /* the type names, escaped, one after the other */
    Py_ssize_t *type_ends = NULL;
    PyObject *messages = NULL, *last_seqs = NULL, *result = NULL;
    uint64_t first_seq, count, type_count;

    if (r.end - r.p < HEADER_BYTES || memcmp(r.p, MAGIC, 4) != 0) {
        malformed("no header");
        goto done;
    }
    r.p += 4;
    if (read_le(&r, 8, &first_seq) < 0 || read_le(&r, 4, &count) < 0
            || read_le(&r, 2, &type_count) < 0) {
        goto done;
    }
    if (count > MAX_EVENTS) {
        malformed("too many events");
        goto done;
    }
    if (first_seq < 1 || first_seq > (uint64_t)INT64_MAX - count) {
        malformed("seq out of range");
        goto done;
    }
    if (first_ns > INT64_MAX - (long long)count) {
        PyErr_SetString(PyExc_OverflowError, "render: timestamps out of range");
        goto done;
    }
    if ((uint64_t)(r.end - r.p) < 4 * count) {  /* an event takes 4 bytes at least */
        malformed("truncated");
        goto done;
    }
    type_ends = PyMem_Calloc((size_t)type_count + 1, sizeof(Py_ssize_t));
    if (type_ends == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (uint64_t i = 0; i < type_count; i++) {
        uint64_t n;
        if (read_le(&r, 2, &n) < 0) {
            goto done;
        }
        if ((uint64_t)(r.end - r.p) < n) {
            malformed("truncated");
            goto done;
        }
        if (put_escaped(&types, r.p, (Py_ssize_t)n) < 0) {
            goto done;
        }
        r.p += n;
        type_ends[i + 1] = types.len;
    }
    messages = PyList_New(0);
    last_seqs = PyList_New(0);
    if (messages == NULL || last_seqs == NULL) {
        goto done;
    }
    /* About 130 bytes a line for short values: one reservation for most batches. */
    if (reserve(&out, (Py_ssize_t)count * 160 + 256) < 0) {
        goto done;
    }
    Py_ssize_t message_start = 0;
    long long message_seq = 0;  /* the seq of the message's last line so far */
    long long timestamp = first_ns;
    Decimal seq_text, stamp_text;  /* the next shown line's seq and timestamp */
    decimal_set(&stamp_text, first_ns < 0 ? 0ULL : (unsigned long long)first_ns);
    decimal_set(&seq_text, (unsigned long long)first_seq + (skip > 0 ? (uint64_t)skip : 0));
    for (uint64_t i = 0; i < count; i++) {
        long long seq = (long long)(first_seq + i);
        int shown = (Py_ssize_t)i >= skip;
        Py_ssize_t line_start = out.len;
        uint64_t raw;
        if (read_le(&r, 4, &raw) < 0) {
            goto done;
        }
        int32_t k = (int32_t)(uint32_t)raw;
        Buf scratch = {NULL, 0, 0};
        Buf *b = shown ? &out : &scratch;  /* skipped events: checked, then dropped */
        int failed = 0;
        if (k >= 0) {
            if (k >= site_count) {
                malformed("site index out of range");
                goto done;
            }
            if (kinds[k] >= KIND_COUNT) {
                PyErr_SetString(PyExc_TypeError, "render: a site of an unknown kind");
                goto done;
            }
            PyObject *head = PyTuple_GET_ITEM(heads, kinds[k]);
            PyObject *middle = PyTuple_GET_ITEM(middles, k);
            if (!PyBytes_Check(middle)) {
                PyErr_SetString(PyExc_TypeError, "render: a middle is not bytes");
                goto done;
            }
            if (reserve(b, PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(middle) + 64) < 0) {
                goto done;
            }
            put(b, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head));
            if (shown) {
                put(b, seq_text.digits, seq_text.n);
            }
            else {
                put_int(b, seq);
            }
            put(b, PyBytes_AS_STRING(middle), PyBytes_GET_SIZE(middle));
            if (kinds[k] == 0) {  /* an expression: its value and type */
                uint64_t type;
                if (read_le(&r, 2, &type) < 0) {
                    failed = 1;
                }
                else if (type >= type_count) {
                    failed = 1;
                    malformed("type index out of range");
                }
                else if (put_field(b, &r) < 0
                         || put_type(b, type, type_count, type_ends, types.data) < 0) {
                    failed = 1;
                }
            }
        }
        else if (k == EXPLICIT) {
            uint64_t kind, type, has_duration, bits;
            uint64_t position[4];
            if (read_le(&r, 1, &kind) < 0) {
                goto done;
            }
            if (kind >= (uint64_t)KIND_COUNT) {
                malformed("unknown kind");
                goto done;
            }
            for (int j = 0; j < 4; j++) {
                if (read_le(&r, 8, &position[j]) < 0) {
                    goto done;
                }
            }
            PyObject *head = PyTuple_GET_ITEM(heads, kind);
            if (reserve(b, PyBytes_GET_SIZE(head) + 200) < 0) {
                goto done;
            }
            put(b, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head));
            put_int(b, seq);
            static const char *const names[4] = {"i,line=", "i,col=", "i,end_line=",
                                                 "i,end_col="};
            for (int j = 0; j < 4; j++) {
                put(b, names[j], (Py_ssize_t)strlen(names[j]));
                put_int(b, (long long)position[j]);
            }
            LITERAL(b, "i,expr=\"");
            if (put_field(b, &r) < 0 || reserve(b, 16) < 0) {
                failed = 1;
            }
            else {
                LITERAL(b, "\",value=\"");
                if (put_field(b, &r) < 0 || read_le(&r, 2, &type) < 0) {
                    failed = 1;
                }
                else if (type >= type_count) {
                    failed = 1;
                    malformed("type index out of range");
                }
                else if (read_le(&r, 1, &has_duration) < 0) {
                    failed = 1;
                }
                else if (has_duration > 1) {
                    failed = 1;
                    malformed("bad duration flag");
                }
                else if (has_duration && read_le(&r, 8, &bits) < 0) {
                    failed = 1;
                }
                else {
                    if (put_type(b, type, type_count, type_ends, types.data) < 0) {
                        failed = 1;
                    }
                    double duration;
                    if (!failed && has_duration) {
                        memcpy(&duration, &bits, sizeof duration);
                        if (isfinite(duration)) {
                            char *text = PyOS_double_to_string(duration, 'r', 0,
                                                               Py_DTSF_ADD_DOT_0, NULL);
                            if (text == NULL) {
                                failed = 1;
                            }
                            else {
                                Py_ssize_t n = (Py_ssize_t)strlen(text);
                                if (reserve(b, n + 16) < 0) {
                                    failed = 1;
                                }
                                else {
                                    LITERAL(b, ",duration_ms=");
                                    put(b, text, n);
                                }
                                PyMem_Free(text);
                            }
                        }
                    }
                }
            }
        }
        else {
            malformed("site index out of range");
            goto done;
        }
        PyMem_Free(scratch.data);
        if (failed) {
            goto done;
        }
        if (!shown) {
            continue;
        }
        if (reserve(&out, 32) < 0) {
            goto done;
        }
        LITERAL(&out, " ");
        if (first_ns >= 0) {
            put(&out, stamp_text.digits, stamp_text.n);
            decimal_next(&stamp_text);
        }
        else {
            put_int(&out, timestamp);
        }
        timestamp++;
        decimal_next(&seq_text);
        LITERAL(&out, "\n");
        if (out.len - message_start > max_bytes && line_start > message_start) {
            /* the message is full without this line: it ends before it */
            PyObject *value = PyBytes_FromStringAndSize(out.data + message_start,
                                                        line_start - message_start);
            PyObject *last = PyLong_FromLongLong(message_seq);
            int bad = value == NULL || last == NULL || PyList_Append(messages, value) < 0
                      || PyList_Append(last_seqs, last) < 0;
            Py_XDECREF(value);
            Py_XDECREF(last);
            if (bad) {
                goto done;
            }
            message_start = line_start;
        }
        message_seq = seq;
    }
    if (r.p != r.end) {
        malformed("bytes after the last event");
        goto done;
    }
    if (out.len > message_start) {
        PyObject *value = PyBytes_FromStringAndSize(out.data + message_start,
                                                    out.len - message_start);
        PyObject *last = PyLong_FromLongLong(message_seq);
        int bad = value == NULL || last == NULL || PyList_Append(messages, value) < 0
                  || PyList_Append(last_seqs, last) < 0;
        Py_XDECREF(value);
        Py_XDECREF(last);
        if (bad) {
            goto done;
        }
    }
    result = PyTuple_Pack(2, messages, last_seqs);
done:
    Py_XDECREF(messages);
    Py_XDECREF(last_seqs);
    PyMem_Free(type_ends);
    PyMem_Free(types.data);
    PyMem_Free(out.data);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL, encode_doc},
    {"render", (PyCFunction)(void (*)(void))render, METH_FASTCALL, render_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_tracebatch",
    "Trace batches in C: the child's encoder and the host's line protocol renderer.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__tracebatch(void)
{
    return PyModule_Create(&module_def);
}

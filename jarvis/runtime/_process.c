/* Process settings of an execution child in C: `jarvis.runtime._process`.
 *
 * A child forked by the zygote sets its parent-death signal and loads its seccomp
 * filter with prctl(2) before the program runs. Through ctypes each call builds
 * argument objects and walks ctypes' call machinery, and in a freshly forked child
 * every object that touches is a page copied from the zygote: these two functions
 * make the same system calls directly.
 *
 *   set_death_signal(signum)        prctl(PR_SET_PDEATHSIG, signum)
 *   load_filter(program, no_new_privs)
 *                                   prctl(PR_SET_NO_NEW_PRIVS, 1) if no_new_privs,
 *                                   then prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)
 *                                   with `program`: classic BPF, a bytes-like object
 *                                   of whole `struct sock_filter` instructions
 *
 *   fork_alone()                    fork(2) and nothing else: the child's pid in the
 *                                   parent, 0 in the child
 *
 * Any of these raises OSError (with errno) when the system call fails.
 *
 *   signal_handler(decide)          a signal handler (for signal.signal) that calls
 *                                   decide() and, when it returns (thread id,
 *                                   exception class), has that thread raise it
 *                                   (PyThreadState_SetAsyncExc)
 *
 * A handler written in Python cannot do the last part: CPython runs handlers between
 * two bytecodes or from inside a C call that checks for signals (time.sleep, a long
 * integer operation, a system call interrupted), and the exception would be raised in
 * the handler's own next bytecode, cutting that C call short. From C, the handler
 * returns first; the C call goes on, and the exception is raised at the next bytecode
 * boundary, as when another thread sends it (see interrupt.py's alarm clock).
 *
 * `fork_alone` is for the zygote, a process that never starts a thread. os.fork()
 * also runs CPython's at-fork work: in the child, code that mends the locks and thread
 * states the threads that did not come along left behind, and the Python functions
 * modules registered with os.register_at_fork (threading's, logging's, random's). With
 * one thread, holding no lock at the fork, there is nothing to mend, yet that work
 * touches, and so copies, some two hundred of the zygote's pages in every child (about
 * 0.5 ms of CPU). The caller keeps the promise (see zygote.py's `_forker`).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>

static PyObject *
set_death_signal(PyObject *module, PyObject *arg)
{
    long signum = PyLong_AsLong(arg);
    if (signum == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)signum, 0UL, 0UL, 0UL) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *
load_filter(PyObject *module, PyObject *args)
{
    Py_buffer program;
    int no_new_privs;
    if (!PyArg_ParseTuple(args, "y*p:load_filter", &program, &no_new_privs)) {
        return NULL;
    }
    Py_ssize_t count = program.len / (Py_ssize_t)sizeof(struct sock_filter);
    if (program.len % (Py_ssize_t)sizeof(struct sock_filter) != 0 || count == 0
            || count > USHRT_MAX) {
        PyBuffer_Release(&program);
        PyErr_SetString(PyExc_ValueError,
                        "a filter is a non-empty sequence of whole BPF instructions");
        return NULL;
    }
    struct sock_fprog fprog = {
        .len = (unsigned short)count,
        .filter = (struct sock_filter *)program.buf,
    };
    int failed = 0;
    if (no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL) != 0) {
        failed = 1;
    }
    if (!failed && prctl(PR_SET_SECCOMP, (unsigned long)SECCOMP_MODE_FILTER,
                         (unsigned long)&fprog, 0UL, 0UL) != 0) {
        failed = 1;
    }
    PyBuffer_Release(&program);
    if (failed) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *
call_handler(PyObject *decide, PyObject *args)
{
    (void)args;  /* (signum, frame) */
    PyObject *target = PyObject_CallNoArgs(decide);
    if (target == NULL) {
        return NULL;
    }
    if (target != Py_None) {
        unsigned long thread_id;
        PyObject *exception;
        if (!PyArg_ParseTuple(target, "kO:signal_handler", &thread_id, &exception)) {
            Py_DECREF(target);
            return NULL;
        }
        PyThreadState_SetAsyncExc(thread_id, exception);
    }
    Py_DECREF(target);
    Py_RETURN_NONE;
}

static PyObject *
fork_alone(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    pid_t pid = fork();
    if (pid < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong((long)pid);
}

static PyMethodDef handler_def = {
    "signal_handler", call_handler, METH_VARARGS,
    "Call decide(); raise what it names in the thread it names, at its next bytecode.",
};

static PyObject *
signal_handler(PyObject *module, PyObject *decide)
{
    if (!PyCallable_Check(decide)) {
        PyErr_SetString(PyExc_TypeError, "decide must be callable");
        return NULL;
    }
    return PyCFunction_New(&handler_def, decide);
}

static PyMethodDef methods[] = {
    {"set_death_signal", set_death_signal, METH_O,
     "prctl(PR_SET_PDEATHSIG, signum): this process gets signum when its parent dies."},
    {"load_filter", load_filter, METH_VARARGS,
     "Load a classic BPF program as this thread's seccomp filter (no_new_privs first)."},
    {"signal_handler", signal_handler, METH_O,
     "A signal handler that has decide() name an exception and a thread to raise it in."},
    {"fork_alone", fork_alone, METH_NOARGS,
     "fork(2) without CPython's at-fork work: for a process that never started a thread."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_process",
    "prctl(2) for execution children: the death signal and the seccomp filter.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__process(void)
{
    return PyModule_Create(&module);
}

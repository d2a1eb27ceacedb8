/* The zygote's loop and an execution child's process settings in C:
 * `jarvis.runtime._process`.
 *
 * A child forked by the zygote sets its parent-death signal and loads its seccomp
 * filter with prctl(2) before the program runs. Through ctypes each call builds
 * argument objects and walks ctypes' call machinery, and in a freshly forked child
 * every object that touches is a page copied from the zygote: these two functions
 * make the same system calls directly. With this extension, no process of the
 * runtime's loads ctypes (nor libffi) at all.
 *
 *   set_death_signal(signum)        prctl(PR_SET_PDEATHSIG, signum)
 *   load_filter(program, no_new_privs)
 *                                   prctl(PR_SET_NO_NEW_PRIVS, 1) if no_new_privs,
 *                                   then prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)
 *                                   with `program`: classic BPF, a bytes-like object
 *                                   of whole `struct sock_filter` instructions
 *
 *   enter_child(parent, workdir, channel_fd, log_fd)
 *                                   what a child the zygote forked does before it
 *                                   runs Python: dies with `parent` (PDEATHSIG,
 *                                   then exits at once if `parent` is gone already),
 *                                   points stdout and stderr at `log_fd`, moves the
 *                                   channel to descriptor 3, closes every other
 *                                   descriptor from 4 up, moves into `workdir` and
 *                                   unblocks SIGTERM (its handler was installed,
 *                                   blocked, by the zygote)
 *
 *   trim_memory()                   malloc_trim(0) where the C library is glibc: the
 *                                   free memory of the heap goes back to the system
 *                                   (True if any did), so that a fork copies no page
 *                                   tables for it
 *
 * Any of these raises OSError (with errno) when the system call fails.
 *
 *   serve_zygote(control, before_fork, interval)
 *                                   the zygote's request loop (zygote.py's protocol,
 *                                   on the socket `control`): forks on request,
 *                                   passes signals on, reaps children and reports;
 *                                   calls before_fork() before a fork when `interval`
 *                                   seconds have passed since it last did. Returns
 *                                   (request id, directory, channel fd, log fd) in
 *                                   a forked child, None in the zygote once the
 *                                   host went away.
 *
 *   set_async_exc(thread_id, exception)
 *                                   PyThreadState_SetAsyncExc: have that thread
 *                                   raise `exception` (a class) at its next
 *                                   bytecode, or withdraw what was sent (None); the
 *                                   number of threads changed
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
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

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

/* Close every descriptor from `first` up: close_range(2) where the kernel has it. */
static void
close_from(int first)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned int)first, ~0U, 0U) == 0) {
        return;
    }
#endif
    long last = sysconf(_SC_OPEN_MAX);
    for (long fd = first; fd < last; fd++) {
        close((int)fd);
    }
}

/* The forked child's first steps, as zygote.py's `Zygote._become_child` takes them in
 * Python where this extension is not built: done here, they touch (and so copy) none
 * of the zygote's Python objects. */
static PyObject *
enter_child(PyObject *module, PyObject *args)
{
    (void)module;
    long parent;
    const char *workdir;
    int channel, log;
    if (!PyArg_ParseTuple(args, "lsii:enter_child", &parent, &workdir, &channel, &log)) {
        return NULL;
    }
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)SIGKILL, 0UL, 0UL, 0UL) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if ((long)getppid() != parent) {
        _exit(1);  /* the parent died before the request took effect */
    }
    if (dup2(log, 1) < 0 || dup2(log, 2) < 0 || (channel != 3 && dup2(channel, 3) < 0)) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    close_from(4);  /* only stdin, the log and the channel stay open */
    if (chdir(workdir) != 0) {
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, workdir);
    }
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    if (sigprocmask(SIG_UNBLOCK, &term, NULL) != 0) {
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
set_async_exc(PyObject *module, PyObject *args)
{
    (void)module;
    unsigned long thread_id;
    PyObject *exception;
    if (!PyArg_ParseTuple(args, "kO:set_async_exc", &thread_id, &exception)) {
        return NULL;
    }
    int changed = PyThreadState_SetAsyncExc(thread_id,
                                            exception == Py_None ? NULL : exception);
    return PyLong_FromLong((long)changed);
}

static PyObject *
trim_memory(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
#ifdef __GLIBC__
    return PyBool_FromLong(malloc_trim(0));
#else
    Py_RETURN_FALSE;
#endif
}

/* The zygote's request loop (zygote.py's `Zygote.serve`, same protocol), in C, so that
 * the zygote runs no Python between two forks: after a fork every page of its memory
 * is shared with the child and write-protected, and each one the zygote's Python
 * touched (reference counts, frames, the objects of a message) was a page fault and a
 * copy, a hundred and more a fork; this loop writes to a handful. The loop returns to
 * Python in a forked child only, or when the host went away. SIGCHLD is blocked while
 * it runs and read from a signalfd; a child gets the signal mask back as it was.
 *
 * It forks with fork(2) alone, without CPython's at-fork work (os.fork() runs it: code
 * that mends the locks and thread states of threads that did not come along, and the
 * functions modules registered with os.register_at_fork), which would touch, and so
 * copy, some two hundred pages in every child. The caller has one thread, holding no
 * lock (zygote.py's `check_alone`): there is nothing to mend. */

#define MAX_MESSAGE (1 << 16)
#define MAX_FDS 4

struct zygote_child {
    pid_t pid;
    long request_id;
};

static struct zygote_child *zygote_children = NULL;  /* not reaped yet */
static size_t zygote_count = 0;
static size_t zygote_room = 0;
static char zygote_message[MAX_MESSAGE + 1];

/* One message to the host; 0 when sent, -1 when the host went away, -2 on another
 * error (errno set). */
static int
zygote_send(int control, const char *text, int length)
{
    for (;;) {
        if (send(control, text, (size_t)length, MSG_NOSIGNAL) >= 0) {
            return 0;
        }
        if (errno == EINTR) {
            continue;
        }
        return (errno == EPIPE || errno == ECONNRESET) ? -1 : -2;
    }
}

/* Room for one more child in the table; -1 when there is no memory for it. */
static int
zygote_reserve(void)
{
    if (zygote_count == zygote_room) {
        size_t room = zygote_room ? 2 * zygote_room : 64;
        struct zygote_child *grown = realloc(zygote_children, room * sizeof *grown);
        if (grown == NULL) {
            return -1;
        }
        zygote_children = grown;
        zygote_room = room;
    }
    return 0;
}

/* Reap every child that ended and tell the host how; as `_send`'s return. */
static int
zygote_reap(int control)
{
    while (zygote_count > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) {
            return 0;  /* none ended (0), or no child at all (ECHILD) */
        }
        for (size_t i = 0; i < zygote_count; i++) {
            if (zygote_children[i].pid != pid) {
                continue;
            }
            long request_id = zygote_children[i].request_id;
            zygote_children[i] = zygote_children[--zygote_count];
            int code = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
            char text[64];
            int length = snprintf(text, sizeof text, "exited %ld %d", request_id, code);
            int sent = zygote_send(control, text, length);
            if (sent != 0) {
                return sent;
            }
            break;
        }
    }
    return 0;
}

/* "N REST" at `text`: N into *number, *rest after the space (NULL when none). */
static int
zygote_number(char *text, long *number, char **rest)
{
    char *end;
    errno = 0;
    *number = strtol(text, &end, 10);
    if (errno != 0 || end == text || (*end != ' ' && *end != '\0')) {
        return -1;
    }
    *rest = *end == ' ' ? end + 1 : NULL;
    return 0;
}

static double
zygote_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static PyObject *
serve_zygote(PyObject *module, PyObject *args)
{
    (void)module;
    int control;
    PyObject *before_fork;
    double interval;
    if (!PyArg_ParseTuple(args, "iOd:serve_zygote", &control, &before_fork, &interval)) {
        return NULL;
    }
    if (!PyCallable_Check(before_fork)) {
        PyErr_SetString(PyExc_TypeError, "before_fork must be callable");
        return NULL;
    }
    sigset_t chld, previous;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, &previous) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int children = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (children < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        sigprocmask(SIG_SETMASK, &previous, NULL);
        return NULL;
    }
    double called = -1e300;  /* when before_fork was last called */
    int sent = 0;  /* as zygote_send's: 0 while the loop goes on */
    int error = 0;
    while (sent == 0) {
        struct pollfd ready[2] = {{control, POLLIN, 0}, {children, POLLIN, 0}};
        if (poll(ready, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            sent = -2;
            error = errno;
            break;
        }
        if (ready[1].revents) {
            struct signalfd_siginfo info;
            while (read(children, &info, sizeof info) > 0) {
            }
            sent = zygote_reap(control);
            if (sent != 0) {
                error = errno;
                break;
            }
        }
        if (!ready[0].revents) {
            continue;
        }
        char space[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct iovec part = {zygote_message, MAX_MESSAGE};
        struct msghdr header = {0};
        header.msg_iov = &part;
        header.msg_iovlen = 1;
        header.msg_control = space;
        header.msg_controllen = sizeof space;
        ssize_t length = recvmsg(control, &header, 0);
        if (length < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            sent = errno == ECONNRESET ? -1 : -2;
            error = errno;
            break;
        }
        if (length == 0) {
            sent = -1;  /* the host went away */
            break;
        }
        zygote_message[length] = '\0';
        int fds[MAX_FDS];
        int fd_count = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&header); c != NULL;
                c = CMSG_NXTHDR(&header, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
                continue;
            }
            size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < n && fd_count < MAX_FDS; i++) {
                memcpy(&fds[fd_count++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            }
        }
        long request_id = 0;
        char *argument = NULL;
        int is_fork = strncmp(zygote_message, "fork ", 5) == 0;
        int is_signal = strncmp(zygote_message, "signal ", 7) == 0;
        int parsed = (is_fork || is_signal)
            && zygote_number(zygote_message + (is_fork ? 5 : 7), &request_id, &argument) == 0
            && argument != NULL;
        if (!(parsed && is_fork && fd_count == 2)) {
            for (int i = 0; i < fd_count; i++) {
                close(fds[i]);
            }
            if (parsed && is_signal) {
                long signum;
                char *rest;
                if (zygote_number(argument, &signum, &rest) == 0) {
                    for (size_t i = 0; i < zygote_count; i++) {
                        if (zygote_children[i].request_id == request_id) {
                            /* not reaped yet, so the pid is still the child's */
                            kill(zygote_children[i].pid, (int)signum);
                            break;
                        }
                    }
                }
            }
            continue;
        }
        double now = zygote_now();
        if (now - called >= interval) {
            called = now;
            PyObject *done = PyObject_CallNoArgs(before_fork);
            if (done == NULL) {
                close(fds[0]);
                close(fds[1]);
                break;  /* its exception */
            }
            Py_DECREF(done);
        }
        if (zygote_reserve() != 0) {  /* room for the child, before it exists */
            close(fds[0]);
            close(fds[1]);
            PyErr_NoMemory();
            break;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(children);
            sigprocmask(SIG_SETMASK, &previous, NULL);
            free(zygote_children);
            zygote_children = NULL;
            zygote_count = zygote_room = 0;
            PyObject *forked = Py_BuildValue("(lsii)", request_id, argument, fds[0], fds[1]);
            if (forked == NULL) {  /* a directory that is not UTF-8: not the host's */
                PyErr_Print();
                _exit(1);
            }
            return forked;
        }
        int failed = errno;
        close(fds[0]);
        close(fds[1]);
        char text[512];
        int size;
        if (pid < 0) {
            size = snprintf(text, sizeof text, "failed %ld fork failed: [Errno %d] %s",
                            request_id, failed, strerror(failed));
        }
        else {
            zygote_children[zygote_count].pid = pid;  /* reserved above */
            zygote_children[zygote_count].request_id = request_id;
            zygote_count++;
            size = snprintf(text, sizeof text, "forked %ld %ld", request_id, (long)pid);
        }
        sent = zygote_send(control, text, size);
        error = errno;
    }
    close(children);
    sigprocmask(SIG_SETMASK, &previous, NULL);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (sent == -2) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;  /* the host went away */
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
    {"set_async_exc", set_async_exc, METH_VARARGS,
     "Have a thread raise an exception class at its next bytecode (None: withdraw it)."},
    {"serve_zygote", serve_zygote, METH_VARARGS,
     "The zygote's request loop: (request id, directory, channel fd, log fd) in a forked "
     "child, None when the host went away."},
    {"enter_child", enter_child, METH_VARARGS,
     "A forked child's first steps: its parent-death signal, descriptors, directory and "
     "SIGTERM unblocked."},
    {"trim_memory", trim_memory, METH_NOARGS,
     "malloc_trim(0) (glibc): give the heap's free memory back to the system."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_process",
    "The zygote's loop and an execution child's process settings (prctl, signals).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__process(void)
{
    return PyModule_Create(&module);
}

"""OS-level confinement of the child process that runs an execution.

The language layers (validator, restriction, runtime surface) keep a program from
reaching the operating system; this module is the layer under them, for the case where
they have a hole. A child calls `confine()` once, after it has received its start
message and before the program's code runs, whether it was spawned or forked:

- Resource limits (`setrlimit`): address space (`RLIMIT_AS`, the execution's memory
  limit), CPU seconds (`RLIMIT_CPU`: at the limit the kernel ends the process with
  SIGXCPU, which the host reports as `LimitExceeded('cpu_seconds')`), open files,
  processes (`RLIMIT_NPROC` counts every task of the user, so it is set to what the
  user runs plus a headroom; a zygote counts at most every `TASK_COUNT_SECONDS` and
  its children start from that count, see `user_tasks`), file size (the child
  writes no files; the limit bounds its log) and no core files. Hard limits are
  lowered with the soft ones, so the program cannot raise them again.
- A seccomp filter (built by libseccomp through `pyseccomp`) that answers EPERM to starting
  programs (`execve`), creating processes (`fork`, `vfork`, `clone` without
  `CLONE_THREAD`; `clone3` answers ENOSYS so that threads fall back to `clone`),
  opening or creating files, changing the file system, sockets, signals to other
  processes, tracing, io_uring, and changing resource limits. Threads stay allowed: the
  stop grace and the time limit run on timer threads.

The host builds the filter once, as BPF for a placeholder pid (`FilterTemplate`,
checked against what libseccomp builds for another pid), and sends it to its zygote
(zygote.py); each child the zygote forks writes its own pid into it and loads that
program with `prctl`, as libseccomp would load the one it builds for that pid. So the
zygote never loads libseccomp, pyseccomp or ctypes (with the C extension `_process`),
whose libraries and modules would be in every fork. A spawned child builds its filter
with libseccomp, which it loads as it confines itself (`install_filter`).

Where seccomp is not available (no libseccomp, a kernel without it) the child goes on
with the resource limits only; the host logs that once (`warn_if_unavailable`).
`grep Seccomp /proc/PID/status` shows `2` for a child whose filter is on.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C functions: no enums
import contextlib
import errno
import functools
import importlib
import os
import resource
import signal
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Final

from jarvis.runtime.errors import LimitExceeded

OPEN_FILES: Final = 64
"""Descriptors a child may hold (it has four, and opens none after setup)."""

PROCESS_HEADROOM: Final = 128
"""Tasks the user may start, past those it runs when the child confines itself."""

TASK_COUNT_SECONDS: Final = 0.5
"""How old the count of the user's tasks that `RLIMIT_NPROC` starts from may be.

Counting reads one /proc entry per process on the machine (about 0.4 ms); a zygote
counts before it forks when its count is older than this, and a child it forked uses
the count it inherited while it is that fresh (a child that waited longer in a pool
counts for itself). The limit is then at most the headroom above the tasks the user
ran that long ago: the same bound, a fraction of a second older."""

LOG_BYTES: Final = 1 << 20
"""The largest file a child may write to: its log (stdout and stderr) is one."""

CPU_HARD_MARGIN: Final = 2
"""Seconds between the CPU soft limit (SIGXCPU) and the hard one (SIGKILL, should the
first not end the process)."""

PRELOADED: Final = (
    "encodings.ascii", "encodings.latin_1", "encodings.utf_8", "encodings.utf_16",
    "encodings.utf_32", "unicodedata", "json", "json.decoder", "json.encoder", "pickle",
    "copyreg", "threading", "linecache", "traceback", "_strptime",
)
"""Modules the runtime may import lazily while a program runs: imported before the
filter is installed, since after it no file (a module's included) can be opened."""

_CLONE_THREAD: Final = 0x00010000
_PR_SET_PDEATHSIG: Final = 1

DENIED: Final = (
    # starting programs and processes
    "execve", "execveat", "fork", "vfork",
    # files: opening, creating, changing the file system
    "open", "openat", "openat2", "creat", "open_by_handle_at", "name_to_handle_at",
    "mknod", "mknodat", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename",
    "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "truncate",
    "ftruncate", "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "utimensat", "futimesat", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "memfd_create", "chdir", "fchdir",
    "chroot", "pivot_root", "mount", "umount2", "swapon", "swapoff",
    # the network
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # other processes
    "tkill", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "ptrace",
    "process_vm_readv", "process_vm_writev", "kcmp",
    # ways around the filter or the limits
    "io_uring_setup", "io_uring_enter", "io_uring_register", "setrlimit", "unshare",
    "setns", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot",
)
"""System calls a confined child is refused (EPERM), whatever their arguments."""


@dataclass(frozen=True)
class ProcessLimits:
    """The resource limits of one child process."""

    memory_bytes: int
    cpu_seconds: int
    open_files: int = OPEN_FILES
    file_bytes: int = LOG_BYTES
    process_headroom: int = PROCESS_HEADROOM

    @classmethod
    def from_start(cls, limits: Mapping[str, Any]) -> ProcessLimits:
        """The limits a start message's `limits` carry (`max_memory_bytes`, `cpu_seconds`)."""
        return cls(memory_bytes=int(limits["max_memory_bytes"]),
                   cpu_seconds=int(limits["cpu_seconds"]))


@dataclass
class Confinement:
    """What `confine()` put in place."""

    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    seccomp: bool = False
    reason: str | None = None
    """Why the seccomp filter is not on, when it is not."""


def confine(limits: ProcessLimits, *, warn: Callable[[str], None] | None = None) -> Confinement:
    """Confine this process: preload, resource limits, then the seccomp filter.

    Call it from the main thread (it sets the disposition of SIGXCPU). A filter that
    cannot be installed is reported through `warn` (default: one line on stderr,
    which goes to the child's log) and the process goes on without it.
    """
    preload()
    # The CPU limit ends the process even inside a long C call (where no Python-level
    # handler could run), so that the host sees a death it can name.
    _signal.signal(signal.SIGXCPU, _signal.SIG_DFL)  # (no enum made, see child.py)
    confinement = Confinement(rlimits=set_rlimits(limits))
    reason = install_filter()
    confinement.seccomp = reason is None
    confinement.reason = reason
    if reason is not None:
        (warn or _to_stderr)(f"jarvis: no seccomp filter in this child: {reason}")
    return confinement


_PRELOADED_HERE: list[bool] = []
"""Non-empty once `preload` ran in this process (or in the zygote it was forked from)."""


def preload() -> None:
    """Import what the runtime may otherwise import lazily while the program runs."""
    if _PRELOADED_HERE:
        return  # a forked child has what its zygote imported: no lookups to repeat
    for name in PRELOADED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    _PRELOADED_HERE.append(True)


def set_rlimits(limits: ProcessLimits) -> dict[str, tuple[int, int]]:
    """Lower this process's resource limits; the limits now in force, by name."""
    cpu_hard = limits.cpu_seconds + CPU_HARD_MARGIN
    wanted = {
        "RLIMIT_AS": (limits.memory_bytes, limits.memory_bytes),
        "RLIMIT_CPU": (limits.cpu_seconds, cpu_hard),
        "RLIMIT_NOFILE": (limits.open_files, limits.open_files),
        "RLIMIT_FSIZE": (limits.file_bytes, limits.file_bytes),
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_NPROC": (user_tasks() + limits.process_headroom,) * 2,
    }
    applied = {}
    for name, (soft, hard) in wanted.items():
        which = getattr(resource, name)
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:  # never above what is allowed now
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))  # in force as given, or an error
        applied[name] = (soft, hard)
    return applied


_TASKS: list[tuple[float, int]] = []
"""The last count of `user_tasks` (monotonic time, count), inherited by forked children."""


def user_tasks(max_age: float = TASK_COUNT_SECONDS) -> int:
    """The tasks of this process's real user, counted at most `max_age` seconds ago
    (in this process, or in the zygote it was forked from)."""
    now = time.monotonic()
    if _TASKS and 0 <= now - _TASKS[0][0] < max_age:
        return _TASKS[0][1]
    count = _user_tasks()
    _TASKS[:] = [(now, count)]
    return count


def _user_tasks() -> int:
    """The tasks (processes and threads) of this process's real user, now.

    One `stat` a process: `/proc/PID/task` belongs to the process's user, and its link
    count is its number of threads plus two (`.` and the entry in `/proc/PID`)."""
    uid = os.getuid()
    count = 0
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                task = os.stat(f"/proc/{entry.name}/task")
            except OSError:  # the process ended meanwhile
                continue
            if task.st_uid == uid:
                count += max(task.st_nlink - 2, 1)
    return count


def _to_stderr(message: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


@functools.cache
def _pyseccomp() -> tuple[Any, str | None]:
    """The pyseccomp module (None if it cannot be used here) and why not."""
    if not sys.platform.startswith("linux"):
        return None, f"seccomp is a Linux facility; this is {sys.platform}"
    try:
        import pyseccomp  # loads libseccomp.so.2
    except (ImportError, RuntimeError, OSError) as exc:
        return None, f"pyseccomp cannot be loaded ({exc})"
    return pyseccomp, None


PID_RULES: Final = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
"""Calls that may only name this process itself (argument 0 is its pid)."""

_PLACEHOLDERS: Final = (0x3FFF_FFF1, 0x3FFF_FFE2, 0x3FFF_FFD3)
"""Stand-ins for a child's pid while the zygote builds the filter: above 2**22, the
largest `pid_max` Linux allows, so never a pid (and checked not to occur otherwise)."""

_INSTRUCTION: Final = struct.Struct("=HBBI")
"""One classic BPF instruction (`struct sock_filter`): code, jt, jf, k."""

_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_SET_SECCOMP: Final = 22
_SECCOMP_MODE_FILTER: Final = 2


@dataclass(frozen=True)
class FilterTemplate:
    """The whole filter as BPF, built once (by the host) for a placeholder pid.

    A forked child writes its own pid into `slots` (the instructions that compare with
    the pid) and loads the program itself: the very program libseccomp would build for
    that pid (`filter_template` checks it does), without building it again per child.
    """

    program: bytes
    slots: tuple[int, ...]
    no_new_privs: bool

    def __post_init__(self) -> None:
        count, rest = divmod(len(self.program), _INSTRUCTION.size)
        if rest or not 0 < count <= 0xFFFF:
            raise ValueError("a filter is a non-empty sequence of whole BPF instructions "
                             f"(at most 65535), not {len(self.program)} bytes")
        if not self.slots or any(not 0 <= slot < count for slot in self.slots):
            raise ValueError(f"the template's pid slots {self.slots} are not instructions "
                             f"of its {count}")

    def for_pid(self, pid: int) -> bytes:
        program = bytearray(self.program)
        for slot in self.slots:
            code, jt, jf, _k = _INSTRUCTION.unpack_from(program, slot * _INSTRUCTION.size)
            _INSTRUCTION.pack_into(program, slot * _INSTRUCTION.size, code, jt, jf, pid)
        return bytes(program)


_TEMPLATE: list[FilterTemplate] = []
"""The template the zygote was given (`use_template`); a forked child inherits it."""


class PreparedLoad:
    """A template's program ready to load, made once by the zygote: a child writes its
    pid into the slots in place and loads it, with no copy and (where the C extension
    `_process` is built) no ctypes call, whose machinery would cost a forked child
    pages copied from the zygote. Without the extension the program is kept in C
    memory with the `sock_fprog` that points at it, for `prctl` through ctypes."""

    _PID: Final = struct.Struct("=I")
    _K_OFFSET: Final = 4  # of `k` in a `struct sock_filter`

    def __init__(self, template: FilterTemplate) -> None:
        self.template = template
        self.offsets = tuple(slot * _INSTRUCTION.size + self._K_OFFSET
                             for slot in template.slots)
        self.program = bytearray(template.program)
        self.buffer: Any = None  # the ctypes copy, without the extension
        self.fprog: Any = None
        if native() is None:
            import ctypes

            self.buffer = ctypes.create_string_buffer(template.program,
                                                      len(template.program))
            self.fprog = _sock_fprog(template.program, self.buffer)

    def _write_pid(self, pid: int) -> None:
        target = self.program if self.buffer is None else self.buffer
        for offset in self.offsets:
            self._PID.pack_into(target, offset, pid)

    def program_for(self, pid: int) -> bytes:
        """Write `pid` into the slots; the program `load` then loads."""
        self._write_pid(pid)
        return bytes(self.program) if self.buffer is None else bytes(self.buffer.raw)

    def load(self, pid: int) -> None:
        self._write_pid(pid)
        process = native()
        if self.buffer is None and process is not None:
            process.load_filter(self.program, self.template.no_new_privs)
            return
        _load_fprog(self.fprog, self.template.no_new_privs)


_PREPARED: list[PreparedLoad] = []
"""The zygote's template, ready to load (`use_template`); a forked child inherits it."""


def use_template(template: FilterTemplate) -> None:
    """Have this process, and the children it forks, load `template` for their pid
    rather than have libseccomp build the whole filter (about 70 rules) and its BPF for
    each: the zygote calls it with the template its host built (`filter_template`)."""
    if native() is None:
        libc()  # the fallback's calls: loaded once here, for every child
    _TEMPLATE[:] = [template]
    _PREPARED[:] = [PreparedLoad(template)]


def prepare_filter() -> None:
    """Build the template here (`filter_template`) and use it (`use_template`): for a
    zygote whose host sent none, and in tests. Where it cannot be built, libseccomp is
    loaded at least (a forked child builds its own filter with it)."""
    if native() is None:
        libc()
    if not _TEMPLATE:
        template = filter_template()
        if template is not None:
            use_template(template)


def filter_template() -> FilterTemplate | None:
    """The filter as a template, or None where a child must build its own (no
    libseccomp, load flags the template cannot reproduce, an unexpected program)."""
    seccomp, _reason = _pyseccomp()
    if seccomp is None:
        return None
    filters = [build_filter(placeholder) for placeholder in _PLACEHOLDERS]
    if any(_load_flags(seccomp, f) for f in filters):
        return None  # thread sync, logging...: what only libseccomp's load sets
    first, second, check = (_export(f) for f in filters)
    size = _INSTRUCTION.size
    if len(first) != len(second) or len(first) % size:
        return None
    slots = []
    for slot in range(len(first) // size):
        a = _INSTRUCTION.unpack_from(first, slot * size)
        b = _INSTRUCTION.unpack_from(second, slot * size)
        if a == b:
            continue
        if a[:3] != b[:3] or (a[3], b[3]) != _PLACEHOLDERS[:2]:
            return None  # something else depends on the pid: not a template
        slots.append(slot)
    if not slots:
        return None
    template = FilterTemplate(first, tuple(slots),
                              bool(filters[0].get_attr(seccomp.Attr.CTL_NNP)))
    # Patched for a third placeholder, it must be what libseccomp built for that one.
    return template if template.for_pid(_PLACEHOLDERS[2]) == check else None


def _load_flags(seccomp: Any, syscall_filter: Any) -> bool:
    """Whether libseccomp would load `syscall_filter` with flags (seccomp(2)'s)."""
    for attr in (seccomp.Attr.CTL_TSYNC, seccomp.Attr.CTL_LOG, seccomp.Attr.CTL_SSB):
        try:
            if syscall_filter.get_attr(attr):
                return True
        except OSError:  # an attribute this libseccomp does not know: never set
            continue
    return False


def _export(syscall_filter: Any) -> bytes:
    import tempfile  # the host's (or a spawned child's) only: a zygote never exports

    with tempfile.TemporaryFile() as out:
        syscall_filter.export_bpf(out)
        out.seek(0)
        return out.read()


def build_filter(pid: int | None = None) -> Any:
    """The filter for process `pid` (default: this one), a pyseccomp SyscallFilter
    not yet loaded."""
    seccomp, reason = _pyseccomp()
    if seccomp is None:
        raise OSError(reason)
    refuse = seccomp.ERRNO(errno.EPERM)
    arg = seccomp.Arg
    rules: list[tuple[int, str, tuple[Any, ...]]] = [
        (refuse, name, ()) for name in DENIED
    ]
    rules += [
        # New processes are refused; new threads (CLONE_THREAD set) are not.
        (refuse, "clone", (arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0),)),
        # clone3 passes its flags in memory, which a filter cannot read: ENOSYS makes
        # the C library fall back to clone, which is checked above.
        (seccomp.ERRNO(errno.ENOSYS), "clone3", ()),
        # Limits may be read, not changed; the death signal may not be cleared.
        (refuse, "prlimit64", (arg(2, seccomp.NE, 0),)),
        (refuse, "prctl", (arg(0, seccomp.EQ, _PR_SET_PDEATHSIG),)),
    ]
    # Signals only to this process itself.
    target = os.getpid() if pid is None else pid
    rules += [(refuse, name, (arg(0, seccomp.NE, target),)) for name in PID_RULES]
    syscall_filter = seccomp.SyscallFilter(seccomp.ALLOW)
    # A binary tree of the call numbers rather than a chain: on loading, the kernel runs
    # the filter for every call number (to cache which are always allowed), so loading a
    # chain of about 70 rules cost a child about 0.12 ms more. (libseccomp before 2.5
    # builds the chain.)
    with contextlib.suppress(AttributeError, OSError):
        syscall_filter.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    _add_rules(syscall_filter, rules)
    return syscall_filter


def _add_rules(syscall_filter: Any, rules: list[tuple[int, str, tuple[Any, ...]]]) -> None:
    for action, name, args in rules:
        try:
            syscall_filter.add_rule(action, name, *args)
        except (OSError, ValueError, RuntimeError):
            continue  # a call this architecture does not have (open, fork on arm64)


def install_filter() -> str | None:
    """Load the seccomp filter into this process; None when it is on, else why not."""
    try:
        if _TEMPLATE and _PREPARED and _PREPARED[0].template is _TEMPLATE[0]:
            _PREPARED[0].load(os.getpid())
        elif _TEMPLATE:
            template = _TEMPLATE[0]
            load_program(template.for_pid(os.getpid()), template.no_new_privs)
        else:
            build_filter().load()
    except OSError as exc:
        return str(exc) or type(exc).__name__
    return None


# ctypes is imported where it is used: only where the C extension `_process` is not
# built (a zygote without it loads it once, before it forks: `use_template`).


@functools.cache
def _sock_fprog_type() -> Any:
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    return SockFprog


def _sock_fprog(program: bytes, buffer: Any) -> Any:
    """A `struct sock_fprog` for `program`, held in the ctypes `buffer`."""
    import ctypes

    return _sock_fprog_type()(len(program) // _INSTRUCTION.size, ctypes.addressof(buffer))


def _load_fprog(fprog: Any, no_new_privs: bool) -> None:
    import ctypes

    c = libc()
    if no_new_privs:
        _prctl(c, _PR_SET_NO_NEW_PRIVS, 1)
    _prctl(c, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def load_program(program: bytes, no_new_privs: bool) -> None:
    """Load a BPF program as this thread's seccomp filter, as libseccomp loads one with
    no flags: `no_new_privs` first if asked, then `prctl(PR_SET_SECCOMP)`."""
    import ctypes

    buffer = ctypes.create_string_buffer(program, len(program))
    _load_fprog(_sock_fprog(program, buffer), no_new_privs)


def _prctl(c: Any, option: int, value: int, pointer: int = 0) -> None:
    import ctypes

    if c.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(pointer),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {os.strerror(code)}")


_NATIVE: list[ModuleType | None] = []


def native() -> ModuleType | None:
    """The C extension `jarvis.runtime._process` (prctl without ctypes), None where it
    was not built (then ctypes makes the same calls)."""
    if not _NATIVE:
        try:
            from jarvis.runtime import _process
        except ImportError:
            _NATIVE.append(None)
        else:
            _NATIVE.append(_process)
    return _NATIVE[0]


def set_death_signal(signum: int) -> None:
    """`prctl(PR_SET_PDEATHSIG, signum)`: this process gets `signum` when its parent
    (the thread that forked it) ends."""
    process = native()
    if process is not None:
        process.set_death_signal(signum)
    else:
        _prctl(libc(), _PR_SET_PDEATHSIG, signum)


@functools.cache
def libc() -> Any:
    """The C library through ctypes (loaded once: a zygote's children inherit it)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def seccomp_unavailable() -> str | None:
    """Why a child on this machine would run without its seccomp filter (None: it will not)."""
    _, reason = _pyseccomp()
    if reason is not None:
        return reason
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            if not any(line.startswith("Seccomp:") for line in status):
                return "the kernel has no seccomp support"
    except OSError as exc:
        return f"cannot read /proc/self/status ({exc})"
    return None


@functools.cache
def warn_if_unavailable() -> str | None:
    """Log, once per process, that children will run without the seccomp filter."""
    reason = seccomp_unavailable()
    if reason is not None:
        import logging  # the host's: a zygote never warns

        logging.getLogger(__name__).warning(
            "executions run without their seccomp filter (resource limits only): %s",
            reason)
    return reason


def limit_of_death(returncode: int, log_tail: str) -> LimitExceeded | None:
    """The limit a child that died without reporting an outcome ran into, if it shows.

    A child past its CPU time is ended by SIGXCPU; one past its address space where
    the runtime could not turn the MemoryError into an outcome exits with it. (SIGKILL
    is not named: the hard CPU limit and the kernel's OOM killer both send it.)
    """
    if returncode == -signal.SIGXCPU:
        return LimitExceeded("cpu_seconds", "the run's process used up its CPU time and "
                             "was killed by SIGXCPU")
    lines = log_tail.strip().splitlines()
    if returncode > 0 and lines and lines[-1].startswith("MemoryError"):
        return LimitExceeded("memory", "the run's process ran out of memory (its address "
                             "space limit) and exited")
    return None


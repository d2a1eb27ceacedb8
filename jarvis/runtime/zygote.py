"""The zygote: a fork server that starts execution children in a millisecond or two.

A fresh interpreter that imports the runtime costs about 0.3 s of CPU; a worker that
runs hundreds of executions a second cannot pay that per execution. The zygote is one
long-lived process, started by the host (jarvis/runtime/forks.py) as
`python -m jarvis.runtime.zygote FD HOST_PID` with the children's scrubbed environment,
that has imported the child's runtime once and forks one child per request. It is
single-threaded, so a fork never copies a lock held by another thread; the host, which
is multithreaded, never forks.

The protocol is one datagram per message on a SOCK_SEQPACKET socket pair. The first
message is a line of JSON and the bytes it counts; the others are words separated by
single spaces (UTF-8), since JSON's Python code, run between two forks, touches (and so
copies) some fifty pages of the zygote's memory a message:

    host → zygote  {"op": "warm-up", "programs": [LENGTH, ...],      (first, once)
                    "filter": {"length": L, "slots": [...], "no_new_privs": B} | null}
                   LF, then the programs' bytes and the filter's, one after the other
                   fork N DIR            + fds [channel, log]  (DIR: the rest of the line)
                   signal N S
    zygote → host  forked N P
                   exited N C            (negative C: killed by -C)
                   failed N TEXT         (the fork itself failed; TEXT: the rest)

The loop that serves these requests is C where the extension `_process` is built
(`_process.serve_zygote`), Python otherwise: the same steps either way.

The host creates each child's channel and log file and passes them with SCM_RIGHTS.
The forked child closes everything of the zygote's, points stdout and stderr at its log,
moves into its private directory and runs `child.serve` once, then exits. The zygote
reaps its children and reports how each ended; signals to a child go through the zygote,
which alone knows whether the pid is still its child's (no pid reuse races). The zygote
dies with the host, and its children with it (PR_SET_PDEATHSIG at each step).

The first message carries what the zygote would otherwise have to import a lot to make:
the programs it warms up on (compiled by the host: no compiler here, see `warm_up`) and
the seccomp filter as a template (built by the host with libseccomp, see confine.py).
What the zygote imports and maps is in every child, and makes each fork and each exit
slower (tests/test_zygote.py lists what it must not load).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C functions: no enums
import functools
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Final, NamedTuple, NoReturn

from jarvis.runtime import child, confine, tracebatch
from jarvis.runtime.interrupt import use_alarm_clock

MAX_MESSAGE = 1 << 16
_FD: Final = struct.Struct("i")
_FDS_SPACE: Final = socket.CMSG_SPACE(4 * _FD.size)
"""Room for the descriptors of one request (two; four, to see a host that sends more)."""


class Zygote:
    """The zygote's state: its control socket and the children it has forked."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.pid = os.getpid()
        self.pids: dict[int, int] = {}  # pid -> request id, for children not reaped yet

    def serve(self) -> int:
        """Serve the host until it goes away (0); in a forked child, never returns."""
        gc.freeze()  # what is imported stays shared with the children (no copy on write)
        process = confine.native()
        if process is not None:
            check_alone()
            # The heap's free pages (freed by imports and the warm-up) go back to the
            # system: about 0.8 MB less for every fork to map and every exit to unmap.
            process.trim_memory()
            return self._serve_in_c(process)
        return self._serve_in_python()

    def _serve_in_python(self) -> int:
        """The request loop where the C extension is not built."""
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.control, selectors.EVENT_READ)
        self.selector.register(self.wake_read, selectors.EVENT_READ)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_write)
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    if not self._receive():
                        return 0  # the host went away
                else:
                    self._drain_wakeups()
            self._reap()

    def _serve_in_c(self, process: ModuleType) -> int:
        """The request loop in C (`_process.serve_zygote`, the same protocol and the
        same steps as `_serve_in_python`'s): no Python runs between two forks, so the
        zygote writes (and so copies) a few of its pages a fork rather than a hundred
        and more, and handles no signal in Python (SIGCHLD comes through a signalfd).
        It returns here in a forked child only, or once the host went away. The task
        count (see `_fork`) is taken every half `TASK_COUNT_SECONDS`, so that a child
        always inherits a fresh one."""
        sys.stdout.flush()
        sys.stderr.flush()
        # The loop is given the descriptor alone: no socket object of the zygote's is
        # left to close it (a child's channel may take over its number).
        control = self.control.detach()
        forked = process.serve_zygote(control, functools.partial(confine.user_tasks, 0.0),
                                      confine.TASK_COUNT_SECONDS / 2)
        if forked is None:
            os.close(control)
            return 0  # the host went away
        _request_id, workdir, channel_fd, log_fd = forked
        self._become_child(workdir, channel_fd, log_fd, process)

    def _receive(self) -> bool:
        try:
            # recvmsg itself rather than socket.recv_fds, which imports and builds more
            # (pages copied from the children's, between two forks).
            data, ancillary, _flags, _address = self.control.recvmsg(MAX_MESSAGE, _FDS_SPACE)
        except ConnectionResetError:
            return False
        if not data:
            return False
        fds = [fd for level, kind, payload in ancillary
               if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for (fd,) in _FD.iter_unpack(payload[: len(payload) - len(payload) % _FD.size])]
        op, request_id, argument = data.decode("utf-8").split(" ", 2)
        if op == "fork" and len(fds) == 2:
            self._fork(int(request_id), argument, fds[0], fds[1])
        else:
            for fd in fds:
                os.close(fd)
            if op == "signal":
                self._signal(int(request_id), int(argument))
        return True

    def _fork(self, request_id: int, workdir: str, channel_fd: int, log_fd: int) -> None:
        # The count the child's RLIMIT_NPROC starts from, counted here at most every
        # TASK_COUNT_SECONDS rather than in every child.
        confine.user_tasks()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(channel_fd)
            os.close(log_fd)
            self._send(f"failed {request_id} fork failed: {exc}")
            return
        if pid == 0:
            self._become_child(workdir, channel_fd, log_fd)  # never returns
        os.close(channel_fd)
        os.close(log_fd)
        self.pids[pid] = request_id
        self._send(f"forked {request_id} {pid}")

    def _become_child(self, workdir: str, channel_fd: int, log_fd: int,
                      process: ModuleType | None = None) -> NoReturn:
        """The forked child: settle in, serve its one execution, exit. From the C loop
        (`process`), its first steps are C's (`_process.enter_child`): the same steps,
        without touching (and so copying) the zygote's Python objects; the signal
        settings they rely on are the zygote's already (see `main`)."""
        code = 1
        try:
            if process is not None:
                process.enter_child(self.pid, workdir, channel_fd, log_fd)
            else:
                self._settle_in(workdir, channel_fd, log_fd)
            code = child.serve_fd(3)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _settle_in(self, workdir: str, channel_fd: int, log_fd: int) -> None:
        """`_process.enter_child`'s steps in Python, for the Python loop's children."""
        _signal.set_wakeup_fd(-1)
        _signal.signal(signal.SIGCHLD, _signal.SIG_DFL)  # no enum made (see child.py)
        child.become_child(self.pid)  # and a stop that waited, blocked, arrives
        # The control socket, the selector's epoll and the wake-up pipe are closed by
        # the closerange below (the control socket's fd may be 3, which the channel
        # takes over; detached, its object never closes that number again).
        self.control.detach()
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if channel_fd != 3:
            os.dup2(channel_fd, 3)
        # Nothing of the zygote's stays open: only stdin, the log and the channel.
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        os.chdir(workdir)

    def _signal(self, request_id: int, signum: int) -> None:
        for pid, known in self.pids.items():
            if known == request_id:
                os.kill(pid, signum)  # not reaped yet, so the pid is still the child's
                return

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            request_id = self.pids.pop(pid, None)
            if request_id is not None:
                self._send(f"exited {request_id} {os.waitstatus_to_exitcode(status)}")

    def _send(self, message: str) -> None:
        self.control.send(message.encode("utf-8"))


def check_alone() -> None:
    """Refuse to serve with more than one thread: the C loop forks with fork(2) alone.

    os.fork() also runs CPython's at-fork work in the child, which mends what the threads
    that did not come along left behind: CPython's locks and thread states, and the
    functions modules registered with os.register_at_fork: threading's (its other
    threads' locks), logging's (its handlers' locks) and random's (a new seed). It
    touches, and so copies, some two hundred of the zygote's pages in every child (about
    0.5 ms of CPU), and the zygote has none of it to mend: it never starts a thread (its
    children's clock is SIGALRM, see interrupt.py), checked here, and forks from its
    loop, outside any import or lock. No child draws from `random`'s shared generator,
    whose numbers would repeat from child to child (os.urandom, `secrets` and tempfile's
    names do not depend on it).
    """
    if threading.active_count() != 1:
        raise RuntimeError(f"a zygote has one thread, not {threading.active_count()}")


WARM_UP_PROGRAM = """\
def double(x):
    return x * 2
total = 0
for i in range(3):
    total = total + double(i)
parts = [str(total), "x"]
output("ok", {"n": inputs["n"] + total, "parts": parts})
"""
"""What the zygote runs a few times before it forks (see `warm_up`)."""

WARM_UP_ROUNDS = 24


def warm_up(rounds: int = WARM_UP_ROUNDS, programs: Sequence[bytes] | None = None) -> None:
    """Rehearse, a few times here in the zygote, what every child runs: `child.serve`
    itself, from the start message to the outcome, at trace off and full, but for the
    confinement. Each round is a socket pair, the host's end of which has sent the
    start message and its answers ahead (`REHEARSAL_LIMITS`, `REHEARSAL_ANSWERS`).

    `programs` are `WARM_UP_PROGRAM` compiled at trace off and full and encoded (see
    program_bytes.py), as the host sends them (`warm_up_programs`): the zygote then
    never imports the compiler, whose modules would otherwise stay in its memory and
    so in every child's (its pages make each fork and exit slower). Without them, the
    program is compiled here.

    CPython does much of its work on a code path the first few times it runs it: it
    rewrites the bytecode of each function on its first calls (specializing it), fills
    its method caches, builds lazy tables. Done here once, that work is shared with every
    child rather than redone (and its memory copied) in each: a child starts about
    1.5 ms of CPU sooner. The rehearsal covers the child's own code too (its channel on
    a bare descriptor, its requests, its outcome), whose classes and functions the
    children alone would otherwise run. Nothing of it is a program's or an execution's:
    the program is `WARM_UP_PROGRAM`, what it asks of its host stays unread in the
    socket, and what it created is collected before the zygote freezes its heap and
    forks. A failure is only logged.
    """
    from jarvis.runtime.channel import Channel

    try:
        blobs = list(programs) if programs is not None else warm_up_programs()
        for round_ in range(rounds):
            ends = socket.socketpair()
            host = Channel(ends[0])
            try:
                # Non-blocking: an answer missing fails the round rather than hang it.
                ends[1].setblocking(False)
                blob = blobs[round_ % len(blobs)]
                host.send(child.start_message(
                    "warm-up", len(blob), {"n": round_}, dict(REHEARSAL_LIMITS),
                    snapshot_every_effects=100, snapshot_every_seconds=5.0), blob)
                for _ in range(REHEARSAL_ANSWERS):
                    host.send_behind({"ok": True})
                child.serve(child.ChildChannel(ends[1].fileno()), confine_with=_unconfined)
            finally:
                host.close()
                ends[1].close()
    except Exception:  # an optimization: the zygote serves without it
        traceback.print_exc()
    tracebatch.forget_sites()  # the warm-up program's: no child is to free them
    gc.collect()


REHEARSAL_ANSWERS = 64
"""The host's answers sent ahead of a rehearsal (`ok` to each request sent ahead: the
warm-up program's trace batches at trace full); more than it asks for."""


REHEARSAL_LIMITS: Final = {
    "max_steps": None, "max_trace_events": None, "max_seconds": 3600.0,
    "max_recursion_depth": 200, "max_book_calls": 1000, "max_output_bytes": 1 << 20,
    "max_artifact_bytes": 16 << 20, "max_snapshot_bytes": None,
    "max_memory_bytes": 1 << 30, "cpu_seconds": 60,
}
"""The limits of a rehearsal's start (`child.SENT_LIMITS`): a time limit among them,
so that its clock is warmed too (the Deadline is left, and the timer disarmed, before
the run ends)."""


def _unconfined(limits: confine.ProcessLimits) -> None:
    """A rehearsal's confinement: none (the zygote is not to be confined)."""


def warm_up_programs() -> list[bytes]:
    """`WARM_UP_PROGRAM` compiled at trace off and full, encoded: what the host sends
    its zygote to warm up on (`warm_up`)."""
    from jarvis.compiler import Compilation
    from jarvis.runtime.program_bytes import encode_program

    compilation = Compilation.of(WARM_UP_PROGRAM, "<warm-up>")
    return [encode_program(compilation.program(level)) for level in ("off", "full")]


class WarmUp(NamedTuple):
    """The host's first message: what the zygote warms up on and the children's filter."""

    programs: list[bytes]
    template: confine.FilterTemplate | None
    """None: the host could not build one (the zygote tries, see `prepare`)."""


def warm_up_message(programs: Sequence[bytes],
                    template: confine.FilterTemplate | None = None) -> bytes:
    """The host's first message to its zygote (see the protocol above)."""
    header: dict[str, Any] = {"op": "warm-up", "programs": [len(p) for p in programs],
                              "filter": None}
    blobs = list(programs)
    if template is not None:
        header["filter"] = {"length": len(template.program), "slots": list(template.slots),
                            "no_new_privs": template.no_new_privs}
        blobs.append(template.program)
    return json.dumps(header).encode("utf-8") + b"\n" + b"".join(blobs)


def receive_warm_up(control: socket.socket) -> WarmUp | None:
    """The host's first message (None: the host went away first)."""
    try:
        data = control.recv(MAX_MESSAGE)
    except ConnectionResetError:
        return None
    if not data:
        return None
    line, _, rest = data.partition(b"\n")
    message = json.loads(line)
    if message.get("op") != "warm-up":
        raise ValueError(f"the host's first message is not the warm-up: {message.get('op')!r}")
    lengths = [int(length) for length in message["programs"]]
    described = message.get("filter")
    if described is not None:
        lengths.append(int(described["length"]))
    if sum(lengths) != len(rest):
        raise ValueError(f"the warm-up message counts {sum(lengths)} bytes, not {len(rest)}")
    blobs, offset = [], 0
    for length in lengths:
        blobs.append(rest[offset: offset + length])
        offset += length
    template = None
    if described is not None:
        template = confine.FilterTemplate(blobs.pop(), tuple(described["slots"]),
                                          bool(described["no_new_privs"]))
    return WarmUp(blobs, template)


def prepare(template: confine.FilterTemplate | None = None) -> None:
    """Import, load and build once, here, what every child needs: the runtime, what it
    imports lazily and what confinement loads (about 50 ms a child otherwise), the
    seccomp filter as BPF (each child writes its pid into it and loads it).

    The filter is the host's `template`; without one, the zygote builds it itself, which
    loads libseccomp, pyseccomp and what they import (ctypes, subprocess, shutil and the
    compression modules among them), and where that fails its children build their own."""
    import jarvis.runtime.machine
    import jarvis.runtime.program_bytes
    import jarvis.runtime.trace  # noqa: F401

    confine.preload()
    if template is not None:
        confine.use_template(template)
    else:
        confine.prepare_filter()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)  # FD HOST_PID
    child.die_with_parent(int(args[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Blocked here and so in every child until it unblocks it (`child.become_child`, or
    # in C); the host ends the zygote by closing its socket (or SIGKILL), never by
    # SIGTERM. SIGINT, ignored, is ignored in every child too.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    # The children's clock for their time limits, made once here (the zygote arms its
    # timer only in its rehearsals, see `warm_up`, and leaves it disarmed), and their
    # stop handler.
    use_alarm_clock()
    _signal.signal(signal.SIGTERM, child.on_term)  # (no enum made, see child.py)
    control = socket.socket(fileno=int(args[0]))
    first = receive_warm_up(control)
    if first is None:
        return 0  # the host went away
    prepare(first.template)
    warm_up(programs=first.programs)
    try:
        return Zygote(control).serve()
    except BrokenPipeError:
        return 0  # the host went away while told something


if __name__ == "__main__":
    os.environ.pop("PYTHONSTARTUP", None)
    raise SystemExit(main())

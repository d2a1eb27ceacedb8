"""The zygote: a fork server that starts execution children in a millisecond or two.

A fresh interpreter that imports the runtime costs about 0.3 s of CPU; a worker that
runs hundreds of executions a second cannot pay that per execution. The zygote is one
long-lived process, started by the host (jarvis/runtime/forks.py) as
`python -m jarvis.runtime.zygote FD HOST_PID` with the children's scrubbed environment,
that has imported the child's runtime once and forks one child per request. It is
single-threaded, so a fork never copies a lock held by another thread; the host, which
is multithreaded, never forks.

The protocol is one datagram per message on a SOCK_SEQPACKET socket pair, JSON:

    host → zygote  {"op": "fork", "id": N, "workdir": DIR}  + fds [channel, log]
                   {"op": "signal", "id": N, "signal": S}
    zygote → host  {"op": "forked", "id": N, "pid": P}
                   {"op": "exited", "id": N, "code": C}      (negative C: killed by -C)
                   {"op": "exited", "id": N, "error": TEXT}  (the fork itself failed)

The host creates each child's channel and log file and passes them with SCM_RIGHTS.
The forked child closes everything of the zygote's, points stdout and stderr at its log,
moves into its private directory and runs `child.serve` once, then exits. The zygote
reaps its children and reports how each ended; signals to a child go through the zygote,
which alone knows whether the pid is still its child's (no pid reuse races). The zygote
dies with the host, and its children with it (PR_SET_PDEATHSIG at each step).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from jarvis.runtime import child, confine

MAX_MESSAGE = 1 << 16


class Zygote:
    """The zygote's state: its control socket and the children it has forked."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.pid = os.getpid()
        self.pids: dict[int, int] = {}  # pid -> request id, for children not reaped yet
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.control, selectors.EVENT_READ)
        self.selector.register(self.wake_read, selectors.EVENT_READ)

    def serve(self) -> int:
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_write)
        gc.freeze()  # what is imported stays shared with the children (no copy on write)
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    if not self._receive():
                        return 0  # the host went away
                else:
                    self._drain_wakeups()
            self._reap()

    def _receive(self) -> bool:
        try:
            data, fds, _flags, _address = socket.recv_fds(self.control, MAX_MESSAGE, 4)
        except ConnectionResetError:
            return False
        if not data:
            return False
        request: dict[str, Any] = json.loads(data)
        if request.get("op") == "fork" and len(fds) == 2:
            self._fork(int(request["id"]), str(request["workdir"]), fds[0], fds[1])
        else:
            for fd in fds:
                os.close(fd)
            if request.get("op") == "signal":
                self._signal(int(request["id"]), int(request["signal"]))
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
            self._send({"op": "exited", "id": request_id, "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            self._become_child(workdir, channel_fd, log_fd)  # never returns
        os.close(channel_fd)
        os.close(log_fd)
        self.pids[pid] = request_id
        self._send({"op": "forked", "id": request_id, "pid": pid})

    def _become_child(self, workdir: str, channel_fd: int, log_fd: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            child.become_child(self.pid)  # and a stop that waited, blocked, arrives
            self.selector.close()
            os.close(self.control.detach())
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            if channel_fd != 3:
                os.dup2(channel_fd, 3)
            # Nothing of the zygote's stays open: only stdin, the log and the channel.
            os.closerange(4, os.sysconf("SC_OPEN_MAX"))
            os.chdir(workdir)
            code = child.serve_fd(3)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

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
                self._send({"op": "exited", "id": request_id,
                            "code": os.waitstatus_to_exitcode(status)})

    def _send(self, message: dict[str, Any]) -> None:
        self.control.send(json.dumps(message).encode("utf-8"))


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


def warm_up(rounds: int = WARM_UP_ROUNDS) -> None:
    """Run what every child runs (the channel, the program's decoding, a Machine from
    construction to outcome, at trace off and full) a few times here, in the zygote.

    CPython does much of its work on a code path the first few times it runs it: it
    rewrites the bytecode of each function on its first calls (specializing it), fills
    its method caches, builds lazy tables. Done here once, that work is shared with every
    child rather than redone (and its memory copied) in each: a child starts about
    1.5 ms of CPU sooner. Nothing of it is a program's or an execution's: the program is
    `WARM_UP_PROGRAM`, its effects stay in memory, and what it created is collected
    before the zygote freezes its heap and forks. A failure is only logged.
    """
    from jarvis.compiler import Compilation
    from jarvis.runtime.books import BookRegistry
    from jarvis.runtime.channel import Channel
    from jarvis.runtime.effects_log import MemoryEffects
    from jarvis.runtime.machine import Machine, MachineLimits, SnapshotPolicy
    from jarvis.runtime.program_bytes import decode_program, encode_program
    from jarvis.runtime.sinks import NullSink
    from jarvis.runtime.trace import Tracer

    try:
        compilation = Compilation.of(WARM_UP_PROGRAM, "<warm-up>")
        blobs = [encode_program(compilation.program(level)) for level in ("off", "full")]
        ends = socket.socketpair()
        host, child_end = Channel(ends[0]), Channel(ends[1])
        try:
            for round_ in range(rounds):
                blob = blobs[round_ % len(blobs)]
                host.send({"op": "start", "inputs": {"n": round_}}, blob)
                start, data = child_end.receive()
                program = decode_program(data)
                tracer = Tracer("warm-up", program.trace_sites, NullSink())
                machine = Machine(program, execution_id="warm-up", inputs=start["inputs"],
                                  books=BookRegistry(), effects=MemoryEffects(),
                                  tracer=tracer, policy=SnapshotPolicy(),
                                  limits=MachineLimits())
                machine.start_fresh()
                outcome = machine.run()
                child_end.send({"op": "outcome", "status": outcome.status,
                                "outputs": outcome.outputs})
                host.receive()
        finally:
            host.close()
            child_end.close()
    except Exception:  # an optimization: the zygote serves without it
        traceback.print_exc()
    gc.collect()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)  # FD HOST_PID
    child.die_with_parent(int(args[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Blocked here and so in every child until it has set its stop handler; the host
    # ends the zygote by closing its socket (or SIGKILL), never by SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    # What a child needs, imported once here rather than in every child: the runtime,
    # what it imports lazily, and what confinement loads (about 50 ms a child otherwise).
    import jarvis.runtime.machine
    import jarvis.runtime.program_bytes
    import jarvis.runtime.trace  # noqa: F401

    confine.preload()
    with contextlib.suppress(ImportError):
        importlib.import_module("pyseccomp")
    confine.prepare_filter()  # as BPF: each child writes its pid into it and loads it
    warm_up()

    control = socket.socket(fileno=int(args[0]))
    try:
        return Zygote(control).serve()
    except BrokenPipeError:
        return 0  # the host went away while told something


if __name__ == "__main__":
    os.environ.pop("PYTHONSTARTUP", None)
    raise SystemExit(main())

"""Isolation: the host side of running a program in a child process of its own.

The child (jarvis/runtime/child.py) runs the program; the host performs everything
the program asks of the outside world, through one channel: journal appends (with the
host's fencing guard), snapshots (signed with keys the child never sees), trace
batches (to the host's sinks) and Book calls. A child that dies (killed, out of
memory) ends the execution as `failed` with the cause; the host carries on.

Children start before they are needed (`ChildPool`), so a start does not wait for an
interpreter to boot; each child runs one execution and exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from jarvis.runtime.books import BookRegistry, check_json_value
from jarvis.runtime.channel import Channel, ChannelClosed, ChannelError, RemoteError
from jarvis.runtime.errors import BookError
from jarvis.runtime.locate import ErrorLocation
from jarvis.runtime.machine import Outcome
from jarvis.runtime.trace import TraceEvent

CHILD_ENVIRONMENT = {
    "PATH": os.defpath,
    "LANG": "C.UTF-8",
    # Set and string iteration orders must be the same in every process that runs (or
    # resumes) an execution: a replay depends on it.
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
}


class HostJournal(Protocol):
    def append(self, payload: bytes) -> int: ...


class HostSnapshots(Protocol):
    def save(self, payload: bytes, effect_count: int, counters: dict[str, int]) -> None: ...


class HostSink(Protocol):
    def deliver(self, events: Any) -> None: ...


class ChildDied(Exception):
    """The child process running an execution exited without reporting an outcome."""


class ChildProcess:
    """A started child, waiting for the start message of the execution it will run."""

    def __init__(self) -> None:
        host_end, child_end = socket.socketpair()
        self.workdir = tempfile.mkdtemp(prefix="jarvis-child-")
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jarvis.runtime.child", str(child_end.fileno())],
            pass_fds=(child_end.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            cwd=self.workdir,
            env=dict(CHILD_ENVIRONMENT),
            start_new_session=True,  # a terminal's Ctrl-C goes to the host, not here
            close_fds=True,
        )
        child_end.close()
        self.channel = Channel(host_end)

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def log_tail(self, limit: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-limit:]

    def cause_of_death(self) -> str:
        code = self.process.wait(timeout=30)
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return f"the execution's process was killed by {name}{hint}"
        tail = self.log_tail().strip().splitlines()
        last = tail[-1] if tail else "no output"
        return f"the execution's process exited with status {code}: {last}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.channel.close()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class ChildPool:
    """Children started ahead of need; `take()` hands one out and a replacement starts.

    Replacements are started by one long-lived thread of the pool: Linux delivers a
    child's parent-death signal when the *thread* that forked it ends, so a child must
    never be forked by a short-lived thread (a run's) and then outlive it in the pool.
    """

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self.lock = threading.Condition()
        self.ready: deque[ChildProcess] = deque()
        self.wanted = size
        self.closed = False
        self.spawner: threading.Thread | None = None
        if size:
            self.spawner = threading.Thread(target=self._spawn, name="child-pool",
                                            daemon=True)
            self.spawner.start()

    def _spawn(self) -> None:
        while True:
            with self.lock:
                while not self.closed and len(self.ready) >= self.wanted:
                    self.lock.wait()
                if self.closed:
                    return
            child = ChildProcess()
            with self.lock:
                if self.closed:
                    child.close()
                    return
                self.ready.append(child)
                self.lock.notify_all()

    def next_ready(self, timeout: float = 30.0) -> ChildProcess:
        """The child the next `take()` will hand out, once it is started."""
        with self.lock:
            if not self.lock.wait_for(lambda: bool(self.ready) or self.closed, timeout):
                raise TimeoutError("no child process became ready")
            return self.ready[0]

    def take(self) -> ChildProcess:
        """A ready child, or (while none is ready) one started for the caller, which must
        close it before the calling thread ends."""
        with self.lock:
            if self.ready:
                child = self.ready.popleft()
                self.lock.notify_all()
                return child
        return ChildProcess()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()
            while self.ready:
                self.ready.popleft().close()
        if self.spawner is not None:
            self.spawner.join(timeout=30)


@dataclass
class HostServices:
    """What the host performs for its child."""

    journal: HostJournal
    snapshots: HostSnapshots
    sink: HostSink
    books: BookRegistry


def run_in_child(
    child: ChildProcess,
    start: dict[str, Any],
    blob: bytes,
    services: HostServices,
    stop_requested: Callable[[], bool],
) -> Outcome:
    """Start the execution in `child` and serve its requests until it reports an outcome."""
    done = threading.Event()

    def forward_stop() -> None:
        # The program is interrupted by the child itself; the host only signals it.
        while not done.wait(0.05):
            if stop_requested():
                child.signal(signal.SIGTERM)
                return

    watcher = threading.Thread(target=forward_stop, daemon=True)
    watcher.start()
    channel = child.channel
    try:
        channel.send(start, blob)
        while True:
            try:
                header, data = channel.receive()
            except (ChannelClosed, ChannelError) as exc:
                cause = child.cause_of_death() if isinstance(exc, ChannelClosed) else str(exc)
                return Outcome("failed", {}, ChildDied(cause))
            op = header.get("op")
            if op == "outcome":
                return _outcome(header)
            try:
                answer = _perform(op, header, data, services)
            except BookError as exc:
                channel.send({"book_error": {"type": exc.error_type, "message": exc.message,
                                             "status": exc.status}})
                continue
            except Exception as exc:
                channel.send({"error": str(exc), "type": type(exc).__name__})
                if op in ("journal", "snapshot"):
                    # A refused write (a stale lease, a full disk): the run cannot go on.
                    child.signal(signal.SIGKILL)
                    child.process.wait(timeout=30)
                    return Outcome("failed", {}, exc)
                continue
            channel.send(answer)
    finally:
        done.set()


def _perform(op: Any, header: dict[str, Any], data: bytes,
             services: HostServices) -> dict[str, Any]:
    if op == "journal":
        return {"ok": True, "index": services.journal.append(data)}
    if op == "snapshot":
        counters = {str(k): int(v) for k, v in dict(header.get("counters", {})).items()}
        services.snapshots.save(data, int(header["effects"]), counters)
        return {"ok": True}
    if op == "trace":
        events = [TraceEvent.from_json(event) for event in header["events"]]
        services.sink.deliver(events)
        return {"ok": True}
    if op == "book":
        args, kwargs = header["args"], header["kwargs"]
        check_json_value(args, "the arguments")
        check_json_value(kwargs, "the keyword arguments")
        book = services.books.get(str(header["book"]))
        result = book.call(str(header["procedure"]), list(args), dict(kwargs), str(header["key"]))
        return {"ok": True, "result": result}
    raise ChannelError(f"unknown request {op!r}")


def _outcome(header: dict[str, Any]) -> Outcome:
    error_info = header.get("error")
    error: BaseException | None = None
    location: ErrorLocation | None = None
    if error_info:
        error = RemoteError(str(error_info["type"]), str(error_info["message"]))
        error.limit = error_info.get("limit")  # type: ignore[attr-defined]
        if error_info.get("line"):
            location = ErrorLocation(int(error_info["line"]), int(error_info["col"]),
                                     int(error_info["end_line"]), int(error_info["end_col"]))
    counters = {str(k): int(v) for k, v in dict(header.get("counters") or {}).items()}
    return Outcome(str(header["status"]), dict(header.get("outputs") or {}), error, location,
                   counters)

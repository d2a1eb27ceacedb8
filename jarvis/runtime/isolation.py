"""Isolation: the host side of running a program in a child process of its own.

The child (jarvis/runtime/child.py) runs the program; the host performs everything
the program asks of the outside world, through one channel: journal appends (with the
host's fencing guard), snapshots (signed with keys the child never sees), trace
batches (to the host's sinks) and Book calls. A child that dies (killed, out of
memory) ends the execution as `failed` with the cause; the host carries on.

Each child runs one execution and exits. A `ChildPool` keeps children ready before
they are needed: forked by the zygote (forks.py, zygote.py) in a millisecond or two, or,
for a pool of size 0 (a single `jarvis run`), spawned as a fresh interpreter.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from jarvis.runtime.artifacts import ArtifactUploads
from jarvis.runtime.books import BookRegistry, check_json_value
from jarvis.runtime.channel import ChannelClosed, ChannelError, RemoteError
from jarvis.runtime.children import Child
from jarvis.runtime.children import ChildDied as ChildDied
from jarvis.runtime.children import ChildProcess as ChildProcess
from jarvis.runtime.confine import limit_of_death, warn_if_unavailable
from jarvis.runtime.errors import BookError
from jarvis.runtime.forks import ForkServer
from jarvis.runtime.locate import ErrorLocation
from jarvis.runtime.machine import Outcome
from jarvis.runtime.tracebatch import EncodedBatch, SiteTable

if TYPE_CHECKING:
    from jarvis.compiler.trace import Site


class HostJournal(Protocol):
    def append(self, payload: bytes) -> int: ...


class HostSnapshots(Protocol):
    def save(self, payload: bytes, effect_count: int, counters: dict[str, int]) -> None: ...


class HostSink(Protocol):
    def deliver(self, events: Any) -> None: ...


class ChildPool:
    """Children started ahead of need; `take()` hands one out and a replacement starts.

    With `fork` (the default for a pool of size 1 or more) children are forked by a
    zygote the pool starts; otherwise each is a fresh interpreter. Spawned replacements
    are started by one long-lived thread of the pool: Linux delivers a child's
    parent-death signal when the *thread* that started it ends, so a child must never
    be started by a short-lived thread (a run's) and then outlive it in the pool. (A
    forked child's parent is the zygote, so any thread may ask for one.)
    """

    def __init__(self, size: int = 1, fork: bool | None = None) -> None:
        warn_if_unavailable()  # logs once that children would run without seccomp
        self.size = size
        self.forks = ForkServer() if (size > 0 if fork is None else fork) else None
        self.lock = threading.Condition()
        self.ready: deque[Child] = deque()
        self.wanted = size
        self.closed = False
        self.spawner: threading.Thread | None = None
        if size:
            self.spawner = threading.Thread(target=self._spawn, name="child-pool",
                                            daemon=True)
            self.spawner.start()

    def _start(self) -> Child:
        return self.forks.fork() if self.forks is not None else ChildProcess()

    def _spawn(self) -> None:
        while True:
            with self.lock:
                while not self.closed and len(self.ready) >= self.wanted:
                    self.lock.wait()
                if self.closed:
                    return
            try:
                child = self._start()
            except ChildDied:  # no zygote for now: `take()` reports it to its run
                with self.lock:
                    self.lock.wait(1.0)
                continue
            with self.lock:
                if self.closed:
                    child.close()
                    return
                self.ready.append(child)
                self.lock.notify_all()

    def next_ready(self, timeout: float = 30.0) -> Child:
        """The child the next `take()` will hand out, once it is started."""
        with self.lock:
            if not self.lock.wait_for(lambda: bool(self.ready) or self.closed, timeout):
                raise TimeoutError("no child process became ready")
            return self.ready[0]

    def take(self) -> Child:
        """A ready child, or (while none is ready) one started for the caller, which must
        close it (a spawned one before the calling thread ends).

        A forked child's replacement is asked of the zygote here, by the caller (a
        request sent, not waited for): waking the pool's thread for it would cost a
        hand-over of the GIL and back per execution. The pool's thread starts it only
        when that fails (no zygote for now), and spawns the replacements of spawned
        children."""
        with self.lock:
            while self.ready:
                child = self.ready.popleft()
                if child.poll() is None:
                    break
                child.close()  # died while it waited (its zygote died, say)
            else:
                child = None
            if child is None or self.forks is None:
                self.lock.notify_all()
        if child is None:
            return self._start()
        if self.forks is not None:
            self._replace()
        return child

    def _replace(self) -> None:
        """Fork a replacement for a child taken (the caller's thread)."""
        try:
            replacement = self._start()
        except ChildDied:  # no zygote for now: the pool's thread tries again
            with self.lock:
                self.lock.notify_all()
            return
        with self.lock:
            if not self.closed:
                self.ready.append(replacement)
                return
        replacement.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()
            while self.ready:
                self.ready.popleft().close()
        if self.spawner is not None:
            self.spawner.join(timeout=30)
        if self.forks is not None:
            self.forks.close()


@dataclass
class HostServices:
    """What the host performs for its child."""

    journal: HostJournal
    snapshots: HostSnapshots
    sink: HostSink
    books: BookRegistry
    # Checks, keys and stores the child's artifacts (ExecutionArtifacts); None: refused.
    artifacts: ArtifactUploads | None = None
    execution_id: str = ""
    """The id the child's trace events are delivered under."""
    trace_sites: Sequence[Site] = ()
    """The program's trace sites: the child's events name them by index."""
    trace_table: SiteTable | None = field(default=None, init=False, repr=False)


def run_in_child(
    child: Child,
    start: dict[str, Any],
    blob: bytes,
    services: HostServices,
    stop_requested: Callable[[], bool],
) -> Outcome:
    """Start the execution in `child` and serve its requests until it reports an outcome."""
    # The program is interrupted by the child itself; the host only signals it.
    watch = _STOPS.watch(child, stop_requested)
    channel = child.channel
    try:
        channel.send(start, blob)
        while True:
            header, data = channel.receive()
            op = header.get("op")
            if op == "outcome":
                return _outcome(header)
            try:
                answer = _perform(op, header, data, services)
            except BookError as exc:
                answer = {"book_error": {"type": exc.error_type, "message": exc.message,
                                         "status": exc.status}}
            except Exception as exc:
                if op in ("journal", "snapshot"):
                    # A refused write (a stale lease, a full disk): the run cannot go on.
                    child.signal(signal.SIGKILL)
                    child.wait(timeout=30)
                    return Outcome("failed", {}, exc)
                answer = {"error": str(exc), "type": type(exc).__name__}
            channel.send(answer)
    except ChannelClosed:
        # The child died, whether it was found at a read or at a write to it.
        cause = child.cause_of_death()  # a limit it died of is named as one
        limit = limit_of_death(child.wait(timeout=30), child.log_tail())
        return Outcome("failed", {}, limit or ChildDied(cause))
    except ChannelError as exc:  # the child broke the channel's framing
        return Outcome("failed", {}, ChildDied(str(exc)))
    finally:
        _STOPS.forget(watch)


class _StopForwarder:
    """One thread for every child running in this process: every `POLL` seconds it
    sends SIGTERM to each child whose run asked to stop (rather than a thread a run).
    It runs while there are children to watch, and ends once it had none for
    `IDLE_SECONDS` (a busy worker's runs spend most of their time outside their child:
    a thread ended whenever none was in one was started again tens of times a second)."""

    POLL = 0.05
    IDLE_SECONDS = 5.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: dict[int, tuple[Child, Callable[[], bool]]] = {}
        self.next_key = 0
        self.thread: threading.Thread | None = None
        self.last_watched = 0.0

    def watch(self, child: Child, stop_requested: Callable[[], bool]) -> int:
        with self.lock:
            key = self.next_key = self.next_key + 1
            self.watched[key] = (child, stop_requested)
            if self.thread is None:
                self.thread = threading.Thread(target=self._forward, name="stop-forwarder",
                                               daemon=True)
                self.thread.start()
            return key

    def forget(self, key: int) -> None:
        with self.lock:
            self.watched.pop(key, None)
            self.last_watched = time.monotonic()

    def _forward(self) -> None:
        while True:
            time.sleep(self.POLL)
            with self.lock:
                if not self.watched:
                    if time.monotonic() - self.last_watched > self.IDLE_SECONDS:
                        self.thread = None
                        return
                    continue
                watched = list(self.watched.items())
            for key, (child, stop_requested) in watched:
                if stop_requested():
                    with self.lock:
                        if self.watched.pop(key, None) is None:
                            continue  # its run ended meanwhile
                    child.signal(signal.SIGTERM)


_STOPS = _StopForwarder()


def _perform(op: Any, header: dict[str, Any], data: bytes,
             services: HostServices) -> dict[str, Any]:
    if op == "journal":
        return {"ok": True, "index": services.journal.append(data)}
    if op == "snapshot":
        counters = {str(k): int(v) for k, v in dict(header.get("counters", {})).items()}
        services.snapshots.save(data, int(header["effects"]), counters)
        return {"ok": True}
    if op == "trace":
        services.sink.deliver(trace_batch(services, data))
        return {"ok": True}
    if op == "book":
        args, kwargs = header["args"], header["kwargs"]
        check_json_value(args, "the arguments")
        check_json_value(kwargs, "the keyword arguments")
        book = services.books.get(str(header["book"]))
        result = book.call(str(header["procedure"]), list(args), dict(kwargs), str(header["key"]))
        return {"ok": True, "result": result}
    if op == "artifact":
        if services.artifacts is None:
            raise RuntimeError("this host stores no artifacts")
        stored = services.artifacts.upload(int(header["index"]), str(header["name"]), data,
                                           str(header["content_type"]))
        return {"ok": True, "key": stored.key, "url": stored.url, "bytes": stored.size,
                "sha256": stored.sha256}
    raise ChannelError(f"unknown request {op!r}")


def trace_batch(services: HostServices, blob: bytes) -> EncodedBatch:
    """A trace batch of the child, as events of the host's execution id and sites (its
    header checked here, the rest when a sink reads or renders it: ChannelError if it
    is malformed)."""
    if services.trace_table is None:
        services.trace_table = SiteTable(services.execution_id, services.trace_sites)
    return EncodedBatch(blob, services.trace_table)


MAX_ERROR_MESSAGE_CHARS = 16_384
"""How much of an error's message the host keeps (status files, status events): a
program raising a message of megabytes must not get around the output limits."""


def _bounded(message: str) -> str:
    extra = len(message) - MAX_ERROR_MESSAGE_CHARS
    return message if extra <= 0 else (
        f"{message[:MAX_ERROR_MESSAGE_CHARS]}... ({extra:,} more characters)")


def _outcome(header: dict[str, Any]) -> Outcome:
    error_info = header.get("error")
    error: BaseException | None = None
    location: ErrorLocation | None = None
    if error_info:
        error = RemoteError(str(error_info["type"]), _bounded(str(error_info["message"])))
        error.limit = error_info.get("limit")  # type: ignore[attr-defined]
        if error_info.get("line"):
            location = ErrorLocation(int(error_info["line"]), int(error_info["col"]),
                                     int(error_info["end_line"]), int(error_info["end_col"]))
    counters = {str(k): int(v) for k, v in dict(header.get("counters") or {}).items()}
    return Outcome(str(header["status"]), dict(header.get("outputs") or {}), error, location,
                   counters)

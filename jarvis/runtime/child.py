"""The child side of an isolated execution: run one program, ask the host for the rest.

A child is forked by the zygote (jarvis/runtime/zygote.py, which has imported this
module) or started as `python -m jarvis.runtime.child FD HOST_PID`, with one end of a socket
pair as FD. It runs the program the host compiled (sent in the start message, see
program_bytes.py) in a Machine whose every outside effect is a request on the channel:
journal appends, snapshots, trace batches and Book calls are performed by the host,
which holds the files, the keys and the network. The child unpickles only what the
host sent (the program, and the snapshot the host verified), and exits after one
execution, so nothing of one execution survives into another.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C functions: no enums
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from jarvis.runtime.artifacts import StoredArtifact
from jarvis.runtime.channel import Channel, ChannelClosed, RemoteError
from jarvis.runtime.confine import ProcessLimits, confine, set_death_signal
from jarvis.runtime.errors import BookError
from jarvis.runtime.interrupt import (
    Stopped,
    hold_alarms,
    interrupt_main,
    interrupt_main_later,
    release_alarms,
    start_watchdog,
    use_alarm_clock,
)
from jarvis.runtime.machine import Machine, MachineLimits, Outcome, SnapshotPolicy
from jarvis.runtime.program_bytes import decode_program
from jarvis.runtime.trace import Tracer
from jarvis.runtime.tracebatch import encode as encode_trace_batch

_RECORD = struct.Struct(">I")


def split_records(blob: bytes) -> list[bytes]:
    """Records packed as u32 length + bytes, one after the other."""
    records, offset = [], 0
    while offset < len(blob):
        (length,) = _RECORD.unpack_from(blob, offset)
        offset += _RECORD.size
        records.append(blob[offset: offset + length])
        offset += length
    return records


def pack_records(records: Sequence[bytes]) -> bytes:
    return b"".join(_RECORD.pack(len(r)) + r for r in records)


SENT_LIMITS = (
    "max_steps", "max_trace_events", "max_seconds", "max_recursion_depth",
    "max_book_calls", "max_output_bytes", "max_artifact_bytes", "max_snapshot_bytes",
    # The child's own process limits (jarvis/runtime/confine.py).
    "max_memory_bytes", "cpu_seconds",
)
"""The limits of an execution its start message carries."""


def sent_limits(limits: object) -> dict[str, Any]:
    """`SENT_LIMITS` of `limits` (the settings' `Limits`), as a start message has them."""
    return {name: getattr(limits, name) for name in SENT_LIMITS}


def start_message(execution_id: str, program_length: int, inputs: Any,
                  limits: dict[str, Any], *, snapshot_every_effects: int,
                  snapshot_every_seconds: float, journal_first: int = 0,
                  snapshot_length: int = 0, last_delivered: int = 0) -> dict[str, Any]:
    """The host's first message to a child (`serve` reads it), sent with the program's
    bytes, then the snapshot's (`snapshot_length` of them), then the journal's records
    from `journal_first` on (`pack_records`)."""
    return {
        "op": "start", "execution_id": execution_id, "program_length": program_length,
        "inputs": inputs, "journal_first": journal_first,
        "snapshot_length": snapshot_length, "last_delivered": last_delivered,
        "snapshot_every_effects": snapshot_every_effects,
        "snapshot_every_seconds": snapshot_every_seconds, "limits": limits,
    }


class ChannelJournal:
    """The journal as the child sees it: the tail it was given, appends go to the host."""

    def __init__(self, channel: Channel, first: int, tail: list[bytes]) -> None:
        self.channel = channel
        self.first = first
        self.records = tail

    @property
    def count(self) -> int:
        return self.first + len(self.records)

    def append(self, payload: bytes) -> int:
        # Sent ahead: the answer is read before the next request's (see the channel).
        self.channel.send_ahead({"op": "journal"}, payload)
        self.records.append(payload)
        return self.count - 1

    def record(self, index: int) -> bytes:
        return self.records[index - self.first]


class ChannelSnapshots:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def save(self, payload: bytes, effect_count: int, counters: dict[str, int]) -> None:
        self.channel.request({"op": "snapshot", "effects": effect_count,
                              "counters": counters}, payload)


class ChannelSink:
    """Trace batches go to the host, which delivers them to its sinks: one binary batch
    each (jarvis/runtime/tracebatch.py), without the execution id, which the host knows
    (and does not take from the child), nor the sites' positions and texts, which the
    host has in the program it compiled."""

    def __init__(self, channel: Channel, last_delivered: int) -> None:
        self.channel = channel
        self.last_delivered = last_delivered

    def deliver(self, events: Sequence[Any]) -> None:
        encoded = encode_trace_batch(events, self.last_delivered)
        if encoded is not None:
            # Sent ahead: the program goes on while the host delivers the batch; its
            # answer is read before the next request (an error raises there).
            blob, self.last_delivered = encoded
            self.channel.send_ahead({"op": "trace"}, blob)

    def close(self) -> None:
        pass


class ChannelBook:
    def __init__(self, channel: Channel, name: str) -> None:
        self.channel = channel
        self.name = name

    def call(self, procedure: str, args: list[Any], kwargs: dict[str, Any],
             idempotency_key: str) -> Any:
        # Behind the journal record of the effect before it, if that was sent ahead:
        # the host writes the record, then makes the call (one round trip for both).
        self.channel.send_behind({"op": "book", "book": self.name, "procedure": procedure,
                                  "args": args, "kwargs": kwargs, "key": idempotency_key})
        self.channel.settle()
        answer, _ = self.channel.receive()
        if "book_error" in answer:
            failure = answer["book_error"]
            raise BookError(self.name, procedure, str(failure["type"]),
                            str(failure["message"]), failure.get("status"))
        if "error" in answer:
            raise RemoteError(str(answer.get("type", "Error")), str(answer["error"]))
        return answer.get("result")


class ChannelBooks:
    """The Book registry as the child sees it: every call is performed by the host."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def get(self, name: str) -> ChannelBook:
        return ChannelBook(self.channel, name)


class ChannelArtifacts:
    """Uploads as the child sees them: the host checks, keys and stores each artifact."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def upload(self, index: int, name: str, content: bytes, content_type: str) -> StoredArtifact:
        answer, _ = self.channel.request({"op": "artifact", "index": index, "name": name,
                                          "content_type": content_type}, content)
        return StoredArtifact(str(answer["key"]), str(answer["url"]), int(answer["bytes"]),
                              str(answer["sha256"]))


class ChildChannel(Channel):
    """The child's end of its channel: a message is read or written whole before a
    time limit or the stop grace fires (they come from SIGALRM, see interrupt.py's
    alarm clock, and would otherwise cut a message waiting in a system call in two).

    It reads and writes the socket's descriptor itself (`os.read` of what it needs,
    `os.write`), with no socket object nor buffered file (`socket.makefile`): the same
    frames, with fewer objects made or touched in a child just forked (each one
    touches, and so copies, pages of the zygote's). A read asks for what the frame
    still lacks, no more: three reads a frame with a blob rather than one, but no
    buffer of 64 KB filled in part, joined and sliced (fresh pages, each a fault)."""

    def __init__(self, fd: int) -> None:  # no super(): no socket, no makefile
        self.fd = fd
        self._unanswered = 0

    def _read(self, count: int) -> bytes:
        chunks: list[bytes] = []
        have = 0
        while have < count:
            try:
                chunk = os.read(self.fd, count - have)
            except OSError as exc:  # ConnectionResetError among them
                raise ChannelClosed(str(exc)) from exc
            if not chunk:  # what came of the frame is consumed, as by a file's read
                raise ChannelClosed("the channel closed mid-frame" if have
                                    else "the channel closed")
            if len(chunk) == count:
                return chunk  # the common case: all of it at once
            chunks.append(chunk)
            have += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self.fd)

    def receive(self) -> tuple[dict[str, Any], bytes]:
        hold_alarms()
        try:
            return super().receive()
        finally:
            release_alarms()

    def send_behind(self, header: dict[str, Any], blob: bytes = b"") -> None:
        hold_alarms()
        try:
            super().send_behind(header, blob)
        finally:
            release_alarms()

    def _write(self, frame: bytes) -> None:
        """`frame` written with os.write, until all of it is."""
        rest = memoryview(frame)
        while rest:
            try:
                rest = rest[os.write(self.fd, rest):]
            except OSError as exc:  # BrokenPipeError, ConnectionResetError
                raise ChannelClosed(str(exc)) from exc


_STOP = threading.Event()
_GRACE_SECONDS = [2.0]


def on_term(signum: int, frame: object) -> None:
    """SIGTERM: stop at the next effect (with a snapshot); after a grace, interrupt."""
    if _STOP.is_set():
        interrupt_main(Stopped)
        return
    _STOP.set()
    interrupt_main_later(_GRACE_SECONDS[0], Stopped)


def serve(channel: Channel,
          confine_with: Callable[[ProcessLimits], object] = confine) -> int:
    """Run the one execution the host starts on `channel`.

    `confine_with` is the zygote's to change, for its rehearsals alone (see
    `zygote.warm_up`: the zygote runs this path, unconfined, before it forks, so that
    its children find it warm); every child confines itself with `confine`."""
    if not use_alarm_clock():
        # No C extension for the alarm clock: the time limits' thread, started while
        # threads still can be (before the filter), and before the start message.
        start_watchdog()
    start, blob = channel.receive()
    if start.get("op") != "start":
        return 2
    _GRACE_SECONDS[0] = float(start.get("stop_grace", 2.0))
    stop = _STOP
    program_length = int(start["program_length"])
    snapshot_end = program_length + int(start.get("snapshot_length", 0))
    program = decode_program(blob[:program_length])
    snapshot = blob[program_length:snapshot_end] if snapshot_end > program_length else None
    tail = split_records(blob[snapshot_end:])
    limits = start["limits"]
    tracer = Tracer(start["execution_id"], program.trace_sites,
                    ChannelSink(channel, int(start.get("last_delivered", 0))),
                    max_steps=limits.get("max_steps"),
                    max_events=limits.get("max_trace_events"))
    journal = ChannelJournal(channel, int(start["journal_first"]), tail)
    machine = Machine(
        program,
        execution_id=start["execution_id"],
        inputs=start["inputs"],
        books=ChannelBooks(channel),  # type: ignore[arg-type]
        effects=journal,
        tracer=tracer,
        snapshots=ChannelSnapshots(channel),
        policy=SnapshotPolicy(start["snapshot_every_effects"], start["snapshot_every_seconds"]),
        limits=MachineLimits(
            max_recursion_depth=limits["max_recursion_depth"],
            max_book_calls=limits["max_book_calls"],
            max_output_bytes=limits["max_output_bytes"],
            max_print_bytes=limits["max_output_bytes"],
            max_snapshot_bytes=limits["max_snapshot_bytes"],
            max_artifact_bytes=limits["max_artifact_bytes"],
            max_seconds=limits.get("max_seconds"),
        ),
        clock=time.time,
        wait=time.sleep,
        stop_requested=stop.is_set,
        artifacts=ChannelArtifacts(channel),
    )
    # Everything from here on runs the program: this is the one place where a child,
    # forked or spawned, confines itself before the program's code runs.
    confine_with(ProcessLimits.from_start(limits))
    if snapshot is not None:
        machine.restore(snapshot)
    else:
        machine.start_fresh()
    try:
        outcome = machine.run()
    except Stopped:  # a stop that arrived outside the program's own run
        outcome = machine.stopped_outcome()
    try:
        channel.settle()  # the last trace batch was delivered, or the run failed
    except RemoteError as exc:
        if outcome.error is None:
            outcome = Outcome("failed", outcome.outputs, exc, None, outcome.counters)
    error: dict[str, Any] | None = None
    if outcome.error is not None:
        where = outcome.location
        error = {
            # A host failure keeps the host's name for it (RuntimeSetupError, ...).
            "type": (outcome.error.type_name if isinstance(outcome.error, RemoteError)
                     else type(outcome.error).__name__),
            "message": str(outcome.error),
            "limit": getattr(outcome.error, "limit", None),
            "line": where.line if where else None,
            "col": where.col if where else None,
            "end_line": where.end_line if where else None,
            "end_col": where.end_col if where else None,
        }
    channel.send({"op": "outcome", "status": outcome.status, "outputs": outcome.outputs,
                  "error": error, "counters": outcome.counters})
    return 0


def die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent (`parent`, the host or the
    zygote) dies: an execution must never go on running unobserved (its effects could
    not be journaled anyway)."""
    if sys.platform.startswith("linux"):
        set_death_signal(signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)



def become_child(parent: int) -> None:
    """The process settings of a child, spawned or forked: a stop (SIGTERM) is kept from
    now on, the child dies with `parent`, Ctrl-C in a terminal is not its, and its time
    limits come from SIGALRM where it can (no thread: see interrupt.py's alarm clock)."""
    use_alarm_clock()  # before a stop can arrive: its grace is on that clock
    # `_signal` rather than `signal`: the same calls, without turning what they
    # return into enums (Python code that would cost a forked child copied pages).
    _signal.signal(signal.SIGTERM, on_term)
    # The parent starts a child with SIGTERM blocked: a stop sent while the child still
    # started (an interpreter importing, say) waited, and is handled from here on.
    _signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM,))
    die_with_parent(parent)
    _signal.signal(signal.SIGINT, _signal.SIG_IGN)


def serve_fd(fd: int) -> int:
    """`serve` on the channel socket `fd`, which is closed afterwards."""
    channel = ChildChannel(fd)
    try:
        return serve(channel)
    finally:
        channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    # First of all, so that a stop sent while the interpreter still imports is kept.
    args = list(sys.argv[1:] if argv is None else argv)  # FD HOST_PID
    become_child(int(args[1]))
    return serve_fd(int(args[0]))


if __name__ == "__main__":
    os.environ.pop("PYTHONSTARTUP", None)
    raise SystemExit(main())

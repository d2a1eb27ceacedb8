"""The Machine: drives a program's frame stack, performs its effects, keeps it durable.

Each frame is advanced by its step function until it returns, raises, calls another
resumable function (a frame is pushed) or asks for an effect. Effects go through one
place, `perform`, which replays them from the journal after a resume and otherwise
does them for real, journals them and counts them against the limits. At effect
boundaries the whole continuation (frames, globals, outputs, counters) is plain data,
so that is where snapshots are taken: every N effects or T seconds, on `checkpoint()`,
and when a stop is requested.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any, Final, Protocol

from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.contract import ARTIFACT, BOOK, CALL, CHECKPOINT, RETURN, SLEEP
from jarvis.runtime.artifacts import (
    ArtifactUploads,
    ExecutionArtifacts,
    MemoryArtifactStore,
    artifact_arguments,
    sha256_hex,
)
from jarvis.runtime.books import PLAIN_SCALARS, BookRegistry, json_copy
from jarvis.runtime.builtins import set_inputs
from jarvis.runtime.channel import RemoteError
from jarvis.runtime.effects_log import (
    EffectStore,
    book_outcome,
    book_record,
    decode,
    encode,
    encode_book_ok,
    expect,
)
from jarvis.runtime.errors import BookError, LimitExceeded, RuntimeSetupError
from jarvis.runtime.frames import Frame, ResumableFunction
from jarvis.runtime.guards import SandboxViolation
from jarvis.runtime.interrupt import Deadline, Stopped
from jarvis.runtime.locate import ErrorLocation, locate, mark_origin
from jarvis.runtime.namespace import Namespace
from jarvis.runtime.trace import DEFERRED_TYPES


class TimeLimitExceeded(LimitExceeded):
    """The wall-clock limit of a run; raised inside the program by a timer."""

    def __init__(self) -> None:
        super().__init__("seconds", "the run took longer than its time limit")


class SnapshotSink(Protocol):
    """Where the Machine writes snapshots of the live state (a SnapshotStore)."""

    def save(self, payload: bytes, effect_count: int, counters: dict[str, int]) -> None: ...


class TraceHooks(Protocol):
    """The parts of a tracer (jarvis.runtime.trace.Tracer) the Machine uses."""

    @property
    def seq(self) -> int: ...

    @property
    def steps(self) -> int: ...

    def event(self, kind: str, line: int = 0, col: int = 0, end_line: int = 0,
              end_col: int = 0, expr: str = "", value: object = ..., *,
              text: str | None = None, duration_ms: float | None = None) -> Any: ...

    def engine_event(self, kind: str, line: int, col: int, end_line: int, end_col: int,
                     expr: str, value: object = ..., duration_ms: float | None = None) -> None:
        ...

    def hooks(self) -> dict[str, Callable[..., Any]]: ...

    def flush(self) -> None: ...

    def resume_at(self, seq: int, steps: int) -> None: ...


@dataclass
class MachineLimits:
    """Limits the Machine itself enforces."""

    max_recursion_depth: int = 200
    max_book_calls: int = 1_000_000
    max_output_bytes: int = 1 << 20
    max_print_bytes: int = 1 << 20
    max_seconds: float | None = None
    max_artifact_bytes: int = 16 << 20
    max_snapshot_bytes: int | None = None


@dataclass
class Outcome:
    """How a run of the Machine ended."""

    status: str  # "completed" | "failed" | "suspended"
    outputs: dict[str, Any]
    error: BaseException | None = None
    location: ErrorLocation | None = None
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class SnapshotPolicy:
    every_effects: int = 100
    every_seconds: float = 5.0


class Machine:
    """Runs one execution of a compiled program, from its start or from a snapshot."""

    def __init__(
        self,
        program: CompiledProgram,
        *,
        execution_id: str,
        inputs: dict[str, Any],
        books: BookRegistry,
        effects: EffectStore,
        tracer: TraceHooks,
        snapshots: SnapshotSink | None = None,
        policy: SnapshotPolicy | None = None,
        limits: MachineLimits | None = None,
        clock: Callable[[], float] = time.time,
        wait: Callable[[float], None] = time.sleep,
        stop_requested: Callable[[], bool] = lambda: False,
        artifacts: ArtifactUploads | None = None,
    ) -> None:
        self.program = program
        self.execution_id = execution_id
        self.books = books
        self.effects = effects
        self.tracer = tracer
        self.snapshots = snapshots
        self.policy = policy or SnapshotPolicy()
        self.limits = limits or MachineLimits()
        self.clock = clock
        self.wait = wait
        self.stop_requested = stop_requested
        self._artifacts = artifacts
        self.namespace = Namespace(program, self, tracer.hooks())
        set_inputs(self.namespace.builtins, inputs)
        self.outputs: dict[str, Any] = {}
        self.output_bytes = 0
        self.print_bytes = 0
        self.book_calls = 0
        self.artifact_count = 0
        self.artifact_bytes = 0
        self.effect_count = 0
        self.stack: list[Frame] = []
        self.resume: tuple[int, Any] = (0, None)
        # A durable sleep in progress: the wall-clock time it ends.
        self.waiting_until: float | None = None
        self.snapshot_effects = 0
        self.snapshot_time = clock()
        self.snapshots_taken = 0
        self.snapshots_skipped = 0

    @property
    def artifacts(self) -> ArtifactUploads:
        """Where `artifact()` stores; without a store given, in memory (tests,
        non-durable runs), made on the first artifact."""
        if self._artifacts is None:
            self._artifacts = ExecutionArtifacts(
                MemoryArtifactStore(), self.execution_id, self.limits.max_artifact_bytes)
        return self._artifacts

    # -- state --------------------------------------------------------------------

    def start_fresh(self) -> None:
        self.stack = [Frame(0, 0, {}, "<module>")]
        self.resume = (0, None)

    def state_bytes(self) -> bytes:
        state = {
            "stack": self.stack,
            "globals": self.namespace.user_globals(),
            "outputs": self.outputs,
            "resume": self.resume,
            "waiting_until": self.waiting_until,
            "effects": self.effect_count,
            "counters": self.counters(),
            "tracer": (self.tracer.seq, self.tracer.steps),
        }
        return self.namespace.dumps(state)

    def restore(self, payload: bytes) -> None:
        """Continue from a verified snapshot's payload."""
        state = self.namespace.loads(payload)
        self.stack = state["stack"]
        self.namespace.globals.update(state["globals"])
        self.outputs = state["outputs"]
        self.resume = state["resume"]
        self.waiting_until = state["waiting_until"]
        self.effect_count = state["effects"]
        counters = state["counters"]
        self.output_bytes = counters.get("output_bytes", 0)
        self.print_bytes = counters.get("print_bytes", 0)
        self.book_calls = counters.get("book_calls", 0)
        self.artifact_count = counters.get("artifacts", 0)
        self.artifact_bytes = counters.get("artifact_bytes", 0)
        self.tracer.resume_at(*state["tracer"])
        self.snapshot_effects = self.effect_count

    def counters(self) -> dict[str, int]:
        return {
            "effects": self.effect_count,
            "book_calls": self.book_calls,
            "output_bytes": self.output_bytes,
            "print_bytes": self.print_bytes,
            "artifacts": self.artifact_count,
            "artifact_bytes": self.artifact_bytes,
            "snapshots": self.snapshots_taken,
            "snapshots_skipped": self.snapshots_skipped,
            "trace_seq": self.tracer.seq,
        }

    def take_snapshot(self) -> None:
        if self.snapshots is None:
            return
        self.tracer.flush()
        self.snapshot_effects = self.effect_count
        self.snapshot_time = self.clock()
        try:
            payload = self.state_bytes()
        except (TypeError, AttributeError, pickle.PicklingError) as exc:
            # Something live cannot be pickled (a value the state pickler does not
            # know; generators of generator expressions are picklable, see lazy.py).
            # The journal still holds every effect, so the execution stays durable:
            # a resume replays from the previous snapshot instead of this one.
            self.snapshots_skipped += 1
            self.tracer.event("checkpoint", 0, 0, 0, 0, "snapshot skipped",
                              text=f"the live state cannot be saved: {exc}")
            return
        limit = self.limits.max_snapshot_bytes
        if limit is not None and len(payload) > limit:
            raise LimitExceeded("snapshot_bytes", f"the live state takes {len(payload):,} "
                                f"bytes to save; the limit is {limit:,}")
        self.snapshots.save(payload, self.effect_count, self.counters())
        self.snapshots_taken += 1

    # -- driving ------------------------------------------------------------------

    def run(self) -> Outcome:
        """Drive the program until it completes, fails or is stopped."""
        if not self.stack:
            self.start_fresh()
        seconds = self.limits.max_seconds
        try:
            # Without a time limit a Deadline would do nothing: none is made.
            with (Deadline(seconds, TimeLimitExceeded) if seconds is not None and seconds > 0
                  else _NO_DEADLINE):
                self.drive()
            self.tracer.flush()  # may find the trace past its limit (trace_events)
        except Stopped:
            return self.stopped_outcome()
        except LimitExceeded as exc:
            return self.limit_outcome(exc, locate(exc, self.program.path))
        except (Exception, SandboxViolation) as exc:
            # A SandboxViolation is not catchable by the program, but it ends the
            # execution like any uncaught error: failed, with where it happened.
            where = locate(exc, self.program.path)
            limit = limit_of(exc)
            if limit is not None:
                if isinstance(exc, MemoryError):
                    # Let go of what the program holds, so that reporting has room.
                    exc.__traceback__ = None
                    self.stack.clear()
                    for name in self.namespace.user_globals():
                        del self.namespace.globals[name]
                return self.limit_outcome(limit, where)
            line, col = (where.line, where.col) if where else (0, 0)
            end_line, end_col = (where.end_line, where.end_col) if where else (0, 0)
            self.tracer.event("exception", line, col, end_line, end_col,
                              type(exc).__name__, str(exc))
            self.tracer.flush()
            return Outcome("failed", self.outputs, exc, where, self.counters())
        return Outcome("completed", self.outputs, counters=self.counters())

    def limit_outcome(self, exc: LimitExceeded, where: ErrorLocation | None) -> Outcome:
        line, col = (where.line, where.col) if where else (0, 0)
        self.tracer.event("limit", line, col, 0, 0, exc.limit, exc.detail)
        self.tracer.flush()
        return Outcome("failed", self.outputs, exc, where, self.counters())

    def stopped_outcome(self) -> Outcome:
        try:
            self.tracer.flush()
        except LimitExceeded as exc:  # the trace was past its limit when the stop came
            return self.limit_outcome(exc, None)
        return Outcome("suspended", self.outputs, counters=self.counters())

    def drive(self) -> None:
        if self.waiting_until is not None:
            self.wait_until(self.waiting_until, snapshot_on_stop=True)
        stack = self.stack
        steps = self.namespace.steps
        mode, value = self.resume
        max_depth = self.limits.max_recursion_depth
        while stack:
            frame = stack[-1]
            try:
                result = steps[frame.fid](frame, mode, value)
            except Exception as exc:
                stack.pop()
                if not stack:
                    raise
                mode, value = 1, exc
                continue
            kind = result[0]
            if kind == RETURN:
                stack.pop()
                mode, value = 0, result[1]
            elif kind == CALL:
                mode, value = self.call(result[1], result[2], result[3], max_depth)
            else:
                mode, value = self.suspension(kind, result)
                if self.stop_requested():
                    self.resume = (mode, value)
                    self.take_snapshot()
                    raise Stopped()

    def call(self, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
             max_depth: int) -> tuple[int, Any]:
        if type(function) is ResumableFunction:
            try:
                local_vars = function.bind(args, kwargs)
            except Exception as exc:
                return 1, exc
            if len(self.stack) >= max_depth:
                return 1, RecursionError(
                    f"maximum recursion depth exceeded ({max_depth} frames of functions "
                    "that call Books)")
            self.stack.append(Frame(function.fid, 0, local_vars, function.qualname))
            return 0, None
        try:
            return 0, function(*args, **kwargs)
        except Exception as exc:
            return 1, exc

    def suspension(self, kind: int, effect: tuple[Any, ...]) -> tuple[int, Any]:
        """Perform the effect a frame suspended on; snapshot when due."""
        _, target, args, kwargs, site_index = effect
        site = self.program.suspension_sites[site_index]
        try:
            if kind == BOOK:
                result = self.book_call(target[0], target[1], list(args), kwargs, site)
            elif kind == SLEEP:
                self.waiting_until = self.sleep_record(*args, **kwargs)
                result = None
            elif kind == CHECKPOINT:
                _no_arguments("checkpoint", args, kwargs)
                self.checkpoint_effect(site)
                result = None
            elif kind == ARTIFACT:
                result = self.artifact_effect(*artifact_arguments(args, kwargs))
            else:
                raise AssertionError(f"unknown effect kind {kind}")
        except (RuntimeSetupError, RemoteError) as exc:
            # The host could not perform the effect (a Book that does not load, a
            # request it refused): not the program's error to catch; the run fails.
            mark_origin(exc, site.line, site.col, site.end_line, site.end_col)
            raise
        except Exception as exc:
            mark_origin(exc, site.line, site.col, site.end_line, site.end_col)
            outcome: tuple[int, Any] = (1, exc)
        else:
            outcome = (0, result)
        self.resume = outcome
        if self._snapshot_due(kind):
            self.take_snapshot()
        if self.waiting_until is not None:
            self.wait_until(self.waiting_until, snapshot_on_stop=True)
        return outcome

    def _snapshot_due(self, kind: int) -> bool:
        """Whether the policy wants a snapshot after this effect (never while replaying).
        The common answer, not yet, comes from the cheapest tests."""
        if self.snapshots is None or not (
            kind == CHECKPOINT
            or self.effect_count - self.snapshot_effects >= self.policy.every_effects
            or self.clock() - self.snapshot_time >= self.policy.every_seconds
        ):
            return False
        return self.effect_count >= self.effects.count

    # -- effects (the Effects interface of the builtins) ----------------------------

    def replaying(self) -> bool:
        return self.effect_count < self.effects.count

    def next_record(self) -> dict[str, Any]:
        record = decode(self.effects.record(self.effect_count))
        return record

    def commit(self, record: dict[str, Any]) -> None:
        self.effects.append(encode(record))
        self.effect_count += 1

    def book_call(self, book: str, procedure: str, args: list[Any], kwargs: dict[str, Any],
                  site: Any = None) -> Any:
        """A Book call, performed or replayed. `args` and `kwargs` are the caller's to
        give away: the trace may keep them as they are (the Book gets copies)."""
        kinds = set(map(type, args))
        if kwargs:
            kinds.update(map(type, kwargs.values()))
        if kinds <= PLAIN_SCALARS:
            # The common case, checked and copied without walking anything.
            copied_args: list[Any] = list(args)
            copied_kwargs: dict[str, Any] = dict(kwargs)
        else:
            try:
                # Checked and copied once: the Book gets these copies (see `Book.call`).
                copied_args = json_copy(args, "the arguments")
                copied_kwargs = json_copy(kwargs, "the keyword arguments")
            except TypeError as exc:
                raise TypeError(f"{book}.{procedure}(): {exc}") from None
        if self.book_calls >= self.limits.max_book_calls:
            raise LimitExceeded("book_calls", f"more than {self.limits.max_book_calls} Book calls")
        self.book_calls += 1
        if site is None:
            line = col = end_line = end_col = 0
        else:
            line, col, end_line, end_col = site.line, site.col, site.end_line, site.end_col
        call_text = f"{book}.{procedure}"
        tracer = self.tracer
        arguments = {"args": args, "kwargs": kwargs}
        if kinds <= DEFERRED_TYPES:
            # Nothing in them can change: rendered only if a sink reads the event.
            tracer.engine_event("book_start", line, col, end_line, end_col, call_text,
                                arguments)
        else:
            tracer.event("book_start", line, col, end_line, end_col, call_text, arguments)
        index = self.effect_count
        if index < self.effects.count:
            record = self.next_record()
            expect(record, "book", index, b=book, p=procedure)
            self.effect_count += 1
            value, failure = book_outcome(record)
            duration_ms = record.get("ms")
        else:
            started = perf_counter_ns()
            try:
                value = self.books.get(book).call(
                    procedure, copied_args, copied_kwargs, f"{self.execution_id}:{index + 1}")
            except BookError as exc:
                record = book_record(book, procedure, None, exc,
                                     (perf_counter_ns() - started) / 1e6)
                self.commit(record)
                # Raised as a replay would raise it: made from the journaled fields.
                value, failure = book_outcome(record)
                duration_ms = record["ms"]
            else:
                # Whole microseconds, in ms: what `round_ms` makes, from ints alone.
                duration_ms = (perf_counter_ns() - started + 500) // 1000 / 1000
                # The record `book_record` makes, encoded without being built.
                self.effects.append(encode_book_ok(book, procedure, duration_ms, value))
                self.effect_count += 1
                failure = None
        if failure is not None:
            # The error's fields are strings and a number, in a record nothing else holds.
            tracer.engine_event("book_end", line, col, end_line, end_col, call_text,
                                {"error": record["err"]}, duration_ms)
            raise failure
        if type(value) in DEFERRED_TYPES:
            tracer.engine_event("book_end", line, col, end_line, end_col, call_text, value,
                                duration_ms)
        else:  # the program gets this value and may change it: rendered now
            tracer.event("book_end", line, col, end_line, end_col, call_text, value,
                         duration_ms=duration_ms)
        return value

    def now(self) -> float:
        if self.replaying():
            record = self.next_record()
            expect(record, "now", self.effect_count)
            self.effect_count += 1
            return float(record["v"])
        value = self.clock()
        self.commit({"k": "now", "v": value})
        return value

    def sleep(self, seconds: float = 0.0, *extra: Any, **kwargs: Any) -> None:
        """`sleep()` reached without suspending (called through a variable)."""
        self.wait_until(self.sleep_record(seconds, *extra, **kwargs), snapshot_on_stop=False)

    def sleep_record(self, seconds: float = 0.0, *extra: Any, **kwargs: Any) -> float:
        """Journal (or replay) a sleep; return the wall-clock time it ends."""
        if extra or kwargs:
            raise TypeError("sleep() takes exactly one argument (seconds)")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError("sleep(): seconds must be a number")
        if not seconds >= 0:
            raise ValueError("sleep(): seconds must be zero or more")
        if not math.isfinite(seconds):
            raise ValueError("sleep(): seconds must be a finite number")
        if self.replaying():
            record = self.next_record()
            expect(record, "sleep", self.effect_count)
            self.effect_count += 1
            until = float(record["until"])
        else:
            until = self.clock() + float(seconds)
            self.commit({"k": "sleep", "until": until})
        self.tracer.event("sleep", 0, 0, 0, 0, "sleep", seconds)
        return until

    def wait_until(self, until: float, snapshot_on_stop: bool) -> None:
        """Wait for a durable sleep to end; a stop meanwhile suspends the execution
        (with a snapshot that remembers when the sleep ends, if the frames allow)."""
        while True:
            remaining = until - self.clock()
            if remaining <= 0:
                self.waiting_until = None
                return
            if self.stop_requested():
                if snapshot_on_stop:
                    self.take_snapshot()
                raise Stopped()
            self.wait(min(remaining, 0.1))

    def checkpoint(self) -> None:
        self.checkpoint_effect(None)

    def checkpoint_effect(self, site: Any) -> None:
        if self.replaying():
            record = self.next_record()
            expect(record, "checkpoint", self.effect_count)
            self.effect_count += 1
        else:
            self.commit({"k": "checkpoint"})
        line, col, end_line, end_col = _position(site)
        self.tracer.event("checkpoint", line, col, end_line, end_col, "checkpoint()",
                          self.effect_count)

    def artifact(self, name: str, content: bytes, content_type: str) -> str:
        """`artifact()` reached without suspending (called through a variable)."""
        return self.artifact_effect(name, content, content_type)

    def artifact_effect(self, name: str, content: bytes, content_type: str) -> str:
        """Store `content` as the artifact `name` (or replay the journaled upload);
        return its URL. An upload that fails is journaled too, and raises RuntimeError."""
        if len(content) > self.limits.max_artifact_bytes:
            raise LimitExceeded("artifact_bytes",
                                f"artifact {name!r} has {len(content)} bytes; the limit is "
                                f"{self.limits.max_artifact_bytes}")
        index = self.effect_count
        digest = sha256_hex(content)
        if self.replaying():
            record = self.next_record()
            expect(record, "artifact", index, n=name, sha256=digest)
            self.effect_count += 1
        else:
            started = time.perf_counter()
            record = {"k": "artifact", "n": name, "sha256": digest}
            try:
                # Key from the effect's number: a retried upload overwrites the same object.
                stored = self.artifacts.upload(index + 1, name, content, content_type)
            except Exception as exc:
                record["err"] = f"{type(exc).__name__}: {exc}"
            else:
                record.update(key=stored.key, url=stored.url, bytes=stored.size)
            record["ms"] = round((time.perf_counter() - started) * 1000, 3)
            self.commit(record)
        if "err" in record:
            raise RuntimeError(f"artifact(): storing {name!r} failed: {record['err']}")
        self.artifact_count += 1
        self.artifact_bytes += int(record["bytes"])
        return str(record["url"])

    def output(self, name: str, value: Any) -> None:
        size = _json_size(value)
        previous = self.outputs.get(name)
        previous_size = 0 if previous is None else _json_size(previous)
        total = self.output_bytes - previous_size + size
        if total > self.limits.max_output_bytes:
            raise LimitExceeded("output_bytes",
                                f"outputs would take {total} bytes; the limit is "
                                f"{self.limits.max_output_bytes}")
        self.output_bytes = total
        self.outputs[name] = value
        if type(value) in DEFERRED_TYPES:
            # It cannot change: rendered only if a sink reads the event.
            self.tracer.engine_event("output", 0, 0, 0, 0, name, value)
        else:
            self.tracer.event("output", 0, 0, 0, 0, name, value)

    def print(self, text: str) -> None:
        self.print_bytes += len(text)
        if self.print_bytes > self.limits.max_print_bytes:
            raise LimitExceeded("print_bytes",
                                f"printed more than {self.limits.max_print_bytes} bytes")
        self.tracer.event("print", 0, 0, 0, 0, "print", text=text)


def limit_of(error: BaseException) -> LimitExceeded | None:
    """The limit an uncaught Python error means the program ran into, if any: memory
    (a MemoryError, past the process's address space), recursion depth, or the digits
    of an int converted to or from a string."""
    if isinstance(error, MemoryError):
        return LimitExceeded("memory", "the program ran out of memory (its process's "
                             "address space limit)")
    if isinstance(error, RecursionError):
        return LimitExceeded("recursion_depth", str(error))
    if isinstance(error, ValueError) and "integer string conversion" in str(error):
        return LimitExceeded("int_digits", "an int of more than "
                             f"{sys.get_int_max_str_digits():,} decimal digits cannot be "
                             "converted to or from a string")
    return None




_NO_DEADLINE: Final = contextlib.nullcontext()

_JSON: Final = json.JSONEncoder(ensure_ascii=False)
"""`json.dumps(value, ensure_ascii=False)`, without making an encoder per call."""

_JSON_WORDS: Final[dict[Any, int]] = {None: 4, True: 4, False: 5}


def _json_size(value: Any) -> int:
    """len(json.dumps(value, ensure_ascii=False)), the common scalars without encoding."""
    kind = type(value)
    if kind is int:
        return len(int.__repr__(value))  # what the encoder writes (and raises)
    if kind is bool or value is None:
        return _JSON_WORDS[value]
    return len(_JSON.encode(value))


def _position(site: Any) -> tuple[int, int, int, int]:
    if site is None:
        return 0, 0, 0, 0
    return site.line, site.col, site.end_line, site.end_col


def _no_arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if args or kwargs:
        raise TypeError(f"{name}() takes no arguments")

"""Jarvis runs for the suite: the real Machine, with the journal each row asks for.

- `run_machine`: a compiled program in a Machine with an in-memory journal
  (`MemoryEffects`), no snapshots, a Tracer into the given sink and no step limit:
  the CPU rows, where durability has nothing to do.
- `run_execution`: an `Execution` under a fresh state directory: the real journal file
  (fsync on or off), snapshots by the given policy: the Book rows.

`run_machine` times from building the Machine (the program's namespace included) to
the end of its run, `run_execution` the whole of `Execution.run()` (state directory,
journal, Machine, run, status). Compiling is done before, through the program cache,
and timed on its own rows.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jarvis.compiler import Compilation
from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.trace import TraceLevel
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.execution import Execution
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.machine import Machine, Outcome
from jarvis.runtime.sinks import JsonlSink, NullSink, Sink
from jarvis.runtime.trace import Tracer
from jarvis.settings import load_settings


def compiled(source: str, path: str, trace: TraceLevel) -> CompiledProgram:
    return Compilation.of(source, path).program(trace)


@dataclass
class Run:
    """What one Jarvis run did: its time, its outcome and how many trace events."""

    seconds: float
    outcome: Outcome
    events: int
    extra: dict[str, Any] = field(default_factory=dict)


def _check(outcome: Outcome, expected: Mapping[str, Any] | None) -> None:
    if outcome.status != "completed":
        raise RuntimeError(f"the benchmark program did not complete: {outcome.status} "
                           f"{outcome.error!r}")
    if expected is not None and dict(outcome.outputs) != dict(expected):
        raise RuntimeError(f"wrong outputs {outcome.outputs!r}, expected {expected!r}")


def run_machine(program: CompiledProgram, inputs: Mapping[str, Any], sink: Sink,
                books: BookRegistry | None = None,
                expected: Mapping[str, Any] | None = None) -> Run:
    started = time.perf_counter()
    tracer = Tracer("bench", program.trace_sites, sink)
    machine = Machine(program, execution_id="bench", inputs=dict(inputs),
                      books=books or BookRegistry(), effects=MemoryEffects(), tracer=tracer)
    outcome = machine.run()
    sink.close()
    seconds = time.perf_counter() - started
    _check(outcome, expected)
    return Run(seconds, outcome, sink.last_delivered)


class JsonlFile:
    """A JSONL sink on a fresh temporary file; `close()` removes it, `size` tells how big."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="jarvis-bench-trace-"))
        self.path = self.directory / "trace.jsonl"
        self.sink = JsonlSink(self.path)

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        self.sink.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def book_registry(base: Path, book_source: str) -> BookRegistry:
    """A registry with one in-process Book, `counter`, whose file is written under `base`."""
    (base / "counter.py").write_text(book_source, encoding="utf-8")
    (base / "books.toml").write_text('[books.counter]\npython = "counter.py"\n',
                                     encoding="utf-8")
    return BookRegistry.load(base / "books.toml")


def http_registry(base: Path, url: str) -> BookRegistry:
    """A registry whose `counter` Book is the HTTP server at `url`."""
    (base / "books.toml").write_text(f'[books.counter]\nurl = "{url}"\n', encoding="utf-8")
    return BookRegistry.load(base / "books.toml")


def run_execution(program: CompiledProgram, inputs: Mapping[str, Any], books: BookRegistry,
                  *, fsync: bool, snapshot_every_effects: int = 100,
                  expected: Mapping[str, Any] | None = None,
                  stop: Callable[[], bool] = lambda: False,
                  sink: Sink | None = None, isolation: ChildPool | None = None) -> Run:
    """A fresh durable execution (journal file, snapshots) under a temporary state dir;
    in a child of `isolation` if given, as `jarvis run` and the worker run programs."""
    state = Path(tempfile.mkdtemp(prefix="jarvis-bench-state-"))
    try:
        settings = load_settings(state_dir=state, journal_fsync=fsync,
                                 snapshot_every_effects=snapshot_every_effects)
        execution = Execution(program, execution_id="bench", inputs=dict(inputs),
                              books=books, settings=settings, sink=sink or NullSink(),
                              stop_requested=stop, isolation=isolation)
        started = time.perf_counter()
        outcome = execution.run()
        seconds = time.perf_counter() - started
        _check(outcome, expected)
        counters = dict(outcome.counters)
        return Run(seconds, outcome, 0, {"snapshots": counters.get("snapshots", 0)})
    finally:
        shutil.rmtree(state, ignore_errors=True)

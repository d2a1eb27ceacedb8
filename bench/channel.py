"""The channel rows: what running a program in its own child process costs.

An isolated execution (the way `jarvis run` and the worker run every program) runs
the program in a child forked by the zygote; every Book call and every trace batch
crosses the channel to the host, which performs it (docs/architecture.md). In the same
rounds, the same durable Execution runs in this process (`in_process`) and isolated
(`isolated`):

- Book calls: `book_loop.spy`, 10k calls of an in-process Book at full size, trace
  off, journal on (fsync off), snapshots at the default policy. Channel cost per call
  = (isolated - in_process) / calls, round by round.
- Trace events: `arith.spy` at trace=full into a counting null sink, at a size that
  gives about 100k events at full scale. Channel cost per event
  = (isolated - in_process) / events.

The isolated figure includes one child's fork, confinement and exit, spread over the
calls or events of the run; the fixed part is shown by the `trivial` row (a program
with one output), measured the same way.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.engine import book_registry, compiled, run_execution
from bench.timing import Cell, Stats, rounds
from bench.workloads import BOOK_LOOP, BOOK_SOURCE, CPU_WORKLOADS
from jarvis.compiler.compiled import CompiledProgram
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.sinks import NullSink
from jarvis.runtime.trace import TraceEvent

TRACE_ITERATIONS = 20_000
"""arith.spy iterations for the trace rows at full scale (5 events per iteration)."""


class CountingSink(NullSink):
    """A null sink that counts the events it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.events = 0

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        self.events += len(events)
        super().deliver(events)


def _per_unit(cell: Stats, base: Stats, units: int) -> Stats:
    """µs per unit of `cell` beyond `base`, paired round by round."""
    return Stats(tuple((a - b) / units * 1e6 for a, b in zip(cell.runs, base.runs,
                                                             strict=True)))


def measure(config: Config) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="jarvis-bench-channel-books-"))
    pool = ChildPool(size=1)
    try:
        registry = book_registry(base, BOOK_SOURCE)
        calls = config.size(BOOK_LOOP.full_size)
        book_program = compiled(BOOK_LOOP.source, BOOK_LOOP.file, "off")
        arith = next(w for w in CPU_WORKLOADS if w.name == "arith")
        iterations = config.size(TRACE_ITERATIONS)
        trace_program = compiled(arith.source, arith.file, "full")
        trivial = compiled("output('ok', 1)\n", "trivial.spy", "off")
        counted: dict[str, int] = {}

        def cell(program: CompiledProgram, inputs: dict[str, Any], isolated: bool,
                 key: str) -> Cell:
            def run() -> float:
                sink = CountingSink()
                seconds = run_execution(program, inputs, registry, fsync=False, sink=sink,
                                        isolation=pool if isolated else None).seconds
                counted[key] = sink.events
                return seconds
            return run

        cells: dict[str, Cell] = {
            "trivial_in_process": cell(trivial, {}, False, "trivial"),
            "trivial_isolated": cell(trivial, {}, True, "trivial_isolated"),
            "books_in_process": cell(book_program, {"n": calls}, False, "books"),
            "books_isolated": cell(book_program, {"n": calls}, True, "books_isolated"),
            "trace_in_process": cell(trace_program, {"n": iterations}, False, "trace"),
            "trace_isolated": cell(trace_program, {"n": iterations}, True,
                                   "trace_isolated"),
        }
        config.say(f"channel ({calls} Book calls, arith n={iterations} at trace=full): "
                   f"{', '.join(cells)}")
        stats = rounds(cells, config.repeats, config.warmup)
        if counted["trace"] != counted["trace_isolated"]:
            raise RuntimeError(f"the isolated run delivered {counted['trace_isolated']} "
                               f"events, the in-process run {counted['trace']}")
        events = counted["trace"]
        return {
            "calls": calls,
            "events": events,
            "cells": {name: s.to_json() for name, s in stats.items()},
            "trivial_overhead_ms": Stats(tuple(
                (a - b) * 1e3 for a, b in zip(stats["trivial_isolated"].runs,
                                              stats["trivial_in_process"].runs,
                                              strict=True))).to_json(),
            "per_call_us": _per_unit(stats["books_isolated"], stats["books_in_process"],
                                     calls).to_json(),
            "per_event_us": _per_unit(stats["trace_isolated"], stats["trace_in_process"],
                                      events).to_json(),
        }
    finally:
        pool.close()
        shutil.rmtree(base, ignore_errors=True)


"""The Book rows: what one Book call costs beyond the Book's own time.

The program is `book_loop.spy` (10k calls of `counter.inc` at full size). In the same
rounds:

- `direct`: plain CPython, `counter.inc` being the Python function itself: the loop
  and the Book's own time, nothing else;
- `jarvis`: a durable Execution, the in-process Book, the real journal file with fsync
  off, snapshots at the default policy (every 100 effects), trace off: the target row;
- `jarvis_no_snapshots`: the same with snapshots out of the way (one per 10^9 effects);
- `jarvis_memory`: the Machine with an in-memory journal and no snapshots;
- `monty`: pydantic-monty, each call a snapshot `resume` round trip to its worker.

Overhead per call = (cell - direct) / calls, per round. The HTTP rows run in rounds of
their own: the Execution against a loopback HTTP Book (a server in a child process),
and a bare httpx loop posting the same requests to the same server. They make
HTTP_CALLS calls, not 10k: a loopback round trip takes 0.3-3 ms on the loaded 2-core
machine, and 10k of them per cell and round would not fit the suite's 10 minutes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.baselines import MontyPool, PlainPython
from bench.config import Config
from bench.engine import book_registry, compiled, http_registry, run_execution, run_machine
from bench.loopback_book import LoopbackBook
from bench.timing import Cell, Stats, rounds
from bench.workloads import BOOK_LOOP, BOOK_SOURCE, inc
from jarvis.runtime.sinks import NullSink

BOOKS = {"counter": {"inc": inc}}
HTTP_CALLS = 1_000


def _overhead(cell: Stats, direct: Stats, calls: int) -> Stats:
    """Per-call µs of `cell` beyond `direct`, paired round by round."""
    return Stats(tuple((a - b) / calls * 1e6 for a, b in zip(cell.runs, direct.runs,
                                                             strict=True)))


def measure(config: Config, monty: MontyPool | None) -> dict[str, Any]:
    calls = config.size(BOOK_LOOP.full_size)
    inputs = {"n": calls}
    expected = {"n": calls}
    base = Path(tempfile.mkdtemp(prefix="jarvis-bench-books-"))
    try:
        registry = book_registry(base, BOOK_SOURCE)
        program = compiled(BOOK_LOOP.source, BOOK_LOOP.file, "off")
        direct = PlainPython(BOOK_LOOP.source, BOOK_LOOP.file, BOOKS)
        snapshots: dict[str, int] = {}

        def run_jarvis(every: int, key: str) -> Cell:
            def cell() -> float:
                run = run_execution(program, inputs, registry, fsync=False,
                                    snapshot_every_effects=every, expected=expected)
                snapshots[key] = run.extra["snapshots"]
                return run.seconds
            return cell

        cells: dict[str, Cell] = {
            "direct": lambda: direct.run(inputs),
            "jarvis": run_jarvis(100, "jarvis"),
            "jarvis_no_snapshots": run_jarvis(10**9, "jarvis_no_snapshots"),
            "jarvis_memory": lambda: run_machine(program, inputs, NullSink(), registry,
                                                 expected).seconds,
        }
        if monty is not None:
            cells["monty"] = lambda: _monty_cell(monty, inputs, expected)
        config.say(f"books in-process ({calls} calls): {', '.join(cells)}")
        stats = rounds(cells, config.repeats, config.warmup)
        result: dict[str, Any] = {
            "calls": calls,
            "seconds": {name: cell.to_json() for name, cell in stats.items()},
            "per_call_us": {name: cell.scaled(1e6 / calls).to_json(3)
                            for name, cell in stats.items()},
            "overhead_us": {name: _overhead(cell, stats["direct"], calls).to_json(3)
                            for name, cell in stats.items() if name != "direct"},
            "snapshots_per_run": snapshots,
        }
        result["http"] = _http(config, base, program, config.size(HTTP_CALLS))
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _monty_cell(monty: MontyPool, inputs: dict[str, Any], expected: dict[str, Any]) -> float:
    seconds, outputs = monty.run(BOOK_LOOP.source, inputs, BOOKS)
    if outputs != expected:
        raise RuntimeError(f"Monty got {outputs!r}")
    return seconds


def _http(config: Config, base: Path, program: Any, calls: int) -> dict[str, Any]:
    inputs = {"n": calls}
    with LoopbackBook() as server:
        registry = http_registry(base, server.url)
        client = httpx.Client(headers={"Content-Type": "application/json"})

        def raw() -> float:
            url = f"{server.url}/procedures/inc"
            n = 0
            started = time.perf_counter()
            for index in range(calls):
                response = client.post(url, content=b'{"args":[%d],"kwargs":{}}' % n,
                                       headers={"Idempotency-Key": f"bench:{index + 1}"})
                n = response.json()["result"]
            seconds = time.perf_counter() - started
            if n != calls:
                raise RuntimeError(f"the raw HTTP loop got {n}")
            return seconds

        def jarvis() -> float:
            return run_execution(program, inputs, registry, fsync=False,
                                 expected={"n": calls}).seconds

        config.say(f"books over HTTP ({calls} calls): raw httpx, jarvis")
        try:
            stats = rounds({"raw_httpx": raw, "jarvis": jarvis}, config.repeats, config.warmup)
        finally:
            client.close()
            registry.close()
    return {
        "calls": calls,
        "seconds": {name: cell.to_json() for name, cell in stats.items()},
        "per_call_us": {name: cell.scaled(1e6 / calls).to_json(3)
                        for name, cell in stats.items()},
        "overhead_us": {"jarvis": _overhead(stats["jarvis"], stats["raw_httpx"],
                                            calls).to_json(3)},
    }

"""The CPU rows and the trace-volume rows.

Per workload, in interleaved rounds: plain CPython, RestrictedPython, Monty, and Jarvis
at trace levels off, statements and full into a NullSink, all at the same size. Then,
in rounds of their own at `trace_file_scale`, Jarvis at trace=full into a JSONL file.
Every Jarvis run goes through the real Machine (in-memory journal, no snapshots).

Ratios between in-process interpreters (plain CPython, RestrictedPython, Jarvis) are
taken on this process's CPU time (`vs_plain_cpu`, and Jarvis vs RestrictedPython):
all of them run single-threaded here, and CPU time is what stays put when the shared
machine is loaded. Monty works in its own process, so Jarvis vs Monty is wall time.
Wall-time ratios of everything are kept too (`vs_plain`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.baselines import MontyPool, PlainPython, Restricted
from bench.config import Config
from bench.engine import JsonlFile, compiled, run_machine
from bench.timing import Cell, Ratio, Stats, rounds
from bench.workloads import CPU_WORKLOADS, Workload
from jarvis.runtime.sinks import NullSink

JARVIS_LEVELS = ("off", "statements", "full")


def _cells(workload: Workload, size: int, monty: MontyPool | None,
           events: dict[str, int], notes: dict[str, str]) -> dict[str, Cell]:
    inputs = {"n": size}
    plain = PlainPython(workload.source, workload.file)
    plain.run(inputs)
    expected = dict(plain.outputs)
    restricted = Restricted(workload.source, workload.file)

    def run_restricted() -> float:
        seconds = restricted.run(inputs)
        if restricted.outputs != expected:
            raise RuntimeError(f"RestrictedPython got {restricted.outputs!r}")
        return seconds

    cells: dict[str, Cell] = {"plain": lambda: plain.run(inputs), "restricted": run_restricted}
    if monty is not None:
        try:
            _, outputs = monty.run(workload.source, inputs)
        except Exception as exc:  # any failure makes the cell "unsupported", with the reason
            notes["monty"] = f"unsupported: {type(exc).__name__}: {exc}"
        else:
            if outputs != expected:
                notes["monty"] = f"unsupported: different outputs {outputs!r}"
            else:
                def run_monty() -> float:
                    return monty.run(workload.source, inputs)[0]

                cells["monty"] = run_monty
    for level in JARVIS_LEVELS:
        program = compiled(workload.source, workload.file, level)  # type: ignore[arg-type]

        def run_jarvis(program: Any = program, level: str = level) -> float:
            run = run_machine(program, inputs, NullSink(), expected=expected)
            events[level] = run.events
            return run.seconds

        cells[f"jarvis_{level}"] = run_jarvis
    return cells


def measure(config: Config, monty: MontyPool | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for workload in CPU_WORKLOADS:
        size = workload.size(config.scale)
        events: dict[str, int] = {}
        notes: dict[str, str] = {}
        cells = _cells(workload, size, monty, events, notes)
        plain_once = cells["plain"]()
        repeats = config.repeats_for(plain_once[0] if isinstance(plain_once, tuple)
                                     else plain_once)
        config.say(f"cpu {workload.name} (n={size}, {repeats} runs): {', '.join(cells)}")
        stats = rounds(cells, repeats, config.warmup, _progress(config, workload))
        plain = stats["plain"]
        in_process = {name: cell for name, cell in stats.items() if name != "monty"}
        versus = {"restricted": Ratio.of(stats["jarvis_off"].cpu, stats["restricted"].cpu)}
        if "monty" in stats:
            versus["monty"] = Ratio.of(stats["jarvis_off"], stats["monty"])
        results[workload.name] = {
            "title": workload.title,
            "size": size,
            "runs": repeats,
            "seconds": {name: cell.to_json() for name, cell in stats.items()},
            "vs_plain": {name: Ratio.of(cell, plain).to_json() for name, cell in stats.items()},
            "vs_plain_cpu": {name: Ratio.of(cell.cpu, plain.cpu).to_json()
                             for name, cell in in_process.items()},
            "jarvis_off_vs": {name: ratio.to_json() for name, ratio in versus.items()},
            "events": {"statements": events.get("statements", 0),
                       "full": events.get("full", 0)},
            "notes": notes,
        }
    results["trace_file"] = _trace_file(config)
    return results


def _progress(config: Config, workload: Workload) -> Callable[[str], None]:
    return lambda label: config.say(f"  cpu {workload.name} {label}")


def _trace_file(config: Config) -> dict[str, Any]:
    """trace=full into a JSONL file, and into a NullSink for comparison, at
    `trace_file_scale` of the CPU size."""
    scale = config.scale * config.trace_file_scale
    rows: dict[str, Any] = {}
    for workload in CPU_WORKLOADS:
        size = workload.size(scale)
        config.say(f"trace file {workload.name} (n={size})")
        rows[workload.name] = _trace_file_row(config, workload, size)
    return rows


def _trace_file_row(config: Config, workload: Workload, size: int) -> dict[str, Any]:
    inputs = {"n": size}
    plain = PlainPython(workload.source, workload.file)
    plain.run(inputs)
    program = compiled(workload.source, workload.file, "full")
    seen: dict[str, int] = {}

    def run_null() -> float:
        run = run_machine(program, inputs, NullSink(), expected=plain.outputs)
        seen["events"] = run.events
        return run.seconds

    def run_jsonl() -> float:
        trace = JsonlFile()
        try:
            run = run_machine(program, inputs, trace.sink, expected=plain.outputs)
            seen["bytes"] = trace.size
        finally:
            trace.close()
        return run.seconds

    stats = rounds({"null": run_null, "jsonl": run_jsonl}, config.repeats, config.warmup)
    events = seen["events"]
    return {
        "size": size,
        "events": events,
        "jsonl_bytes": seen.get("bytes", 0),
        "seconds": {name: cell.to_json() for name, cell in stats.items()},
        "events_per_second": {name: _rate(events, cell) for name, cell in stats.items()},
        "jsonl_vs_null": Ratio.of(stats["jsonl"], stats["null"]).to_json(),
    }


def _rate(events: int, seconds: Stats) -> dict[str, float]:
    # The fastest run gives the highest rate: min and max swap.
    return {"median": round(events / seconds.median), "min": round(events / seconds.max),
            "max": round(events / seconds.min)}

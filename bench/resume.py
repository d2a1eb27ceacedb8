"""Resume cost: how long a stopped execution takes to come back, and how big its
snapshot is, after 1k, 10k and 100k completed Book calls (in-process Book, fsync off).

Run: .venv/bin/python -m bench.resume  (prints a JSON object; bench/run.py collects it)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.execution import Execution
from jarvis.runtime.sinks import NullSink
from jarvis.settings import load_settings

PROGRAM = """\
from books import counter
n = 0
for i in range(inputs["count"]):
    n = counter.inc(n)
output("n", n)
"""

BOOK = "def inc(n):\n    return n + 1\n"


def _execution(base: Path, count: int, stop: Any, source: str = PROGRAM,
               inputs: dict[str, Any] | None = None) -> Execution:
    program = Compilation.of(source, "loop.spy").program("off")
    settings = load_settings(state_dir=base / "state", journal_fsync=False,
                             snapshot_every_effects=1000, snapshot_every_seconds=3600.0)
    registry = BookRegistry.load(base / "books.toml")
    return Execution(program, execution_id="bench", inputs={"count": count, **(inputs or {})},
                     books=registry, settings=settings, sink=NullSink(),
                     stop_requested=stop)


class StoppedRun:
    """`source` stopped after `count` Book calls, in its own state directory, ready to
    be resumed again and again (each resume makes one live Book call, writes a
    snapshot and stops)."""

    def __init__(self, count: int, resumes: int, source: str = PROGRAM,
                 inputs: dict[str, Any] | None = None) -> None:
        self.count, self.source, self.inputs = count, source, inputs
        self._tmp = tempfile.TemporaryDirectory()
        self.base = base = Path(self._tmp.name)
        (base / "counter.py").write_text(BOOK)
        (base / "books.toml").write_text('[books.counter]\npython = "counter.py"\n')
        self.total = count + 10 + resumes
        holder: dict[str, Execution] = {}

        def stop_at_count() -> bool:
            machine = holder["e"].machine
            return machine is not None and machine.effect_count >= count

        started = time.perf_counter()
        holder["e"] = _execution(base, self.total, stop_at_count, source, inputs)
        outcome = holder["e"].run()
        self.run_seconds = time.perf_counter() - started
        assert outcome.status == "suspended", outcome
        snapshots = sorted((base / "state" / "executions" / "bench" / "snapshots").iterdir())
        self.snapshot_bytes = snapshots[-1].stat().st_size
        self.times: list[float] = []
        self.resumed: list[float] = []
        self.resumed_cpu: list[float] = []

    def resume(self, keep: bool) -> None:
        """Resume once; `keep` the times (False: a warm-up)."""
        asked: list[tuple[float, float]] = []

        def stop_now() -> bool:
            # First asked after the first effect.
            asked.append((time.perf_counter(), time.process_time()))
            return True

        execution = _execution(self.base, self.total, stop_now, self.source, self.inputs)
        begin, begin_cpu = time.perf_counter(), time.process_time()
        outcome = execution.run()  # restore, one live Book call, snapshot, stop
        end = time.perf_counter()
        assert outcome.status == "suspended", outcome
        assert execution.report.replayed_effects <= 1
        if keep:
            self.times.append(end - begin)
            self.resumed.append(asked[0][0] - begin)
            self.resumed_cpu.append(asked[0][1] - begin_cpu)

    def close(self) -> None:
        self._tmp.cleanup()

    def row(self) -> dict[str, Any]:
        return {
            "book_calls": self.count,
            "first_run_seconds": round(self.run_seconds, 3),
            "snapshot_bytes": self.snapshot_bytes,
            **_milliseconds("resume_ms", self.times),
            **_milliseconds("resumed_ms", self.resumed),
            **_milliseconds("resumed_cpu_ms", self.resumed_cpu, spread=False),
            "runs": len(self.times),
        }


def _milliseconds(name: str, seconds: list[float], spread: bool = True) -> dict[str, Any]:
    """`name`_median (and, with `spread`, _min and _max) and `name`_runs, in ms."""
    runs = [round(t * 1000, 3) for t in seconds]
    found: dict[str, Any] = {f"{name}_median": round(statistics.median(seconds) * 1000, 3)}
    if spread:
        found |= {f"{name}_min": min(runs), f"{name}_max": max(runs)}
    return found | {f"{name}_runs": runs}


def measure_interleaved(counts: Sequence[int], repeats: int, warmup: int = 0,
                        source: str = PROGRAM,
                        inputs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A row per count of Book calls: `source` stopped after that many, then resumed
    `warmup` + `repeats` times, in rounds that resume each of them once (so that a
    slow minute of a shared machine falls on every row alike, not on one).

    `resumed_ms_*` is the time to the first live Book call after the restore (and
    `resumed_cpu_ms_*` this process's CPU time for it); `resume_ms_*` also includes the
    snapshot the stop then writes."""
    runs = [StoppedRun(count, warmup + repeats, source, inputs) for count in counts]
    try:
        for round_ in range(warmup + repeats):
            for run in runs:
                run.resume(keep=round_ >= warmup)
        return [run.row() for run in runs]
    finally:
        for run in runs:
            run.close()


def measure(count: int, repeats: int, warmup: int = 0, source: str = PROGRAM,
            inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of `measure_interleaved`."""
    return measure_interleaved([count], repeats, warmup, source, inputs)[0]


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rows = measure_interleaved((1_000, 10_000, 100_000), repeats)
    ratio = rows[-1]["resume_ms_median"] / rows[0]["resume_ms_median"]
    print(json.dumps({"resume": rows, "resume_ratio_100k_vs_1k": round(ratio, 3)}, indent=2))


if __name__ == "__main__":
    main()

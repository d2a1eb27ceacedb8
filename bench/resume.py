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


def measure(count: int, repeats: int, warmup: int = 0, source: str = PROGRAM,
            inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stop `source` after `count` Book calls, then time `warmup` + `repeats` resumes.

    `resumed_ms_*` is the time to the first live Book call after the restore (and
    `resumed_cpu_ms_*` this process's CPU time for it); `resume_ms_*` also includes the
    snapshot the stop then writes."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "counter.py").write_text(BOOK)
        (base / "books.toml").write_text('[books.counter]\npython = "counter.py"\n')
        holder: dict[str, Execution] = {}

        def stop_at_count() -> bool:
            machine = holder["e"].machine
            return machine is not None and machine.effect_count >= count

        started = time.perf_counter()
        total = count + 10 + warmup + repeats
        holder["e"] = _execution(base, total, stop_at_count, source, inputs)
        outcome = holder["e"].run()
        run_seconds = time.perf_counter() - started
        assert outcome.status == "suspended", outcome
        snapshots = sorted((base / "state" / "executions" / "bench" / "snapshots").iterdir())
        snapshot_bytes = snapshots[-1].stat().st_size
        times, resumed, resumed_cpu = [], [], []
        for run in range(warmup + repeats):
            asked: list[tuple[float, float]] = []

            def stop_now(asked: list[tuple[float, float]] = asked) -> bool:
                # First asked after the first effect.
                asked.append((time.perf_counter(), time.process_time()))
                return True

            execution = _execution(base, total, stop_now, source, inputs)
            begin, begin_cpu = time.perf_counter(), time.process_time()
            outcome = execution.run()  # restore, one live Book call, snapshot, stop
            end = time.perf_counter()
            assert outcome.status == "suspended", outcome
            assert execution.report.replayed_effects <= 1
            if run >= warmup:
                times.append(end - begin)
                resumed.append(asked[0][0] - begin)
                resumed_cpu.append(asked[0][1] - begin_cpu)
    return {
        "book_calls": count,
        "first_run_seconds": round(run_seconds, 3),
        "snapshot_bytes": snapshot_bytes,
        "resume_ms_median": round(statistics.median(times) * 1000, 3),
        "resume_ms_min": round(min(times) * 1000, 3),
        "resume_ms_max": round(max(times) * 1000, 3),
        "resume_ms_runs": [round(t * 1000, 3) for t in times],
        "resumed_ms_median": round(statistics.median(resumed) * 1000, 3),
        "resumed_ms_min": round(min(resumed) * 1000, 3),
        "resumed_ms_max": round(max(resumed) * 1000, 3),
        "resumed_ms_runs": [round(t * 1000, 3) for t in resumed],
        "resumed_cpu_ms_median": round(statistics.median(resumed_cpu) * 1000, 3),
        "resumed_cpu_ms_runs": [round(t * 1000, 3) for t in resumed_cpu],
        "runs": repeats,
    }


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rows = [measure(count, repeats) for count in (1_000, 10_000, 100_000)]
    ratio = rows[-1]["resume_ms_median"] / rows[0]["resume_ms_median"]
    print(json.dumps({"resume": rows, "resume_ratio_100k_vs_1k": round(ratio, 3)}, indent=2))


if __name__ == "__main__":
    main()

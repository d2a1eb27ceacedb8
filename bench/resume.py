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


def _execution(base: Path, count: int, stop: Any) -> Execution:
    program = Compilation.of(PROGRAM, "loop.spy").program("off")
    settings = load_settings(state_dir=base / "state", journal_fsync=False,
                             snapshot_every_effects=1000, snapshot_every_seconds=3600.0)
    registry = BookRegistry.load(base / "books.toml")
    return Execution(program, execution_id="bench", inputs={"count": count + 10},
                     books=registry, settings=settings, sink=NullSink(),
                     stop_requested=stop)


def measure(count: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "counter.py").write_text(BOOK)
        (base / "books.toml").write_text('[books.counter]\npython = "counter.py"\n')
        holder: dict[str, Execution] = {}

        def stop_at_count() -> bool:
            machine = holder["e"].machine
            return machine is not None and machine.effect_count >= count

        started = time.perf_counter()
        holder["e"] = _execution(base, count, stop_at_count)
        outcome = holder["e"].run()
        run_seconds = time.perf_counter() - started
        assert outcome.status == "suspended", outcome
        snapshots = sorted((base / "state" / "executions" / "bench" / "snapshots").iterdir())
        snapshot_bytes = snapshots[-1].stat().st_size
        times = []
        for _ in range(repeats):
            execution = _execution(base, count, lambda: True)
            begin = time.perf_counter()
            outcome = execution.run()  # restore, one live Book call, snapshot, stop
            times.append(time.perf_counter() - begin)
            assert outcome.status == "suspended", outcome
            assert execution.report.replayed_effects <= 1
    return {
        "book_calls": count,
        "first_run_seconds": round(run_seconds, 3),
        "snapshot_bytes": snapshot_bytes,
        "resume_ms_median": round(statistics.median(times) * 1000, 3),
        "resume_ms_min": round(min(times) * 1000, 3),
        "resume_ms_max": round(max(times) * 1000, 3),
        "runs": repeats,
    }


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rows = [measure(count, repeats) for count in (1_000, 10_000, 100_000)]
    ratio = rows[-1]["resume_ms_median"] / rows[0]["resume_ms_median"]
    print(json.dumps({"resume": rows, "resume_ratio_100k_vs_1k": round(ratio, 3)}, indent=2))


if __name__ == "__main__":
    main()

"""Quick measure of tracing overhead: plain CPython vs traced runs into a null sink.

Runs a few CPU-heavy SPy programs under plain `exec` and instrumented at trace levels
"statements" and "full" (every expression's value rendered), and prints the median of
three runs of each and the ratios to plain. Not a test; numbers vary with the machine.

    .venv/bin/python bench/trace_micro.py [NAME ...]
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from typing import Any

from jarvis.compiler import Compilation
from jarvis.compiler.trace import TraceLevel, instrument
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.builtins import make_builtins
from jarvis.runtime.reference import ReferenceEffects
from jarvis.runtime.sinks import NullSink
from jarvis.runtime.trace import Tracer

PROGRAMS: dict[str, str] = {
    "arith": """
total = 0
for i in range(2000000):
    total = total + i * 2 % 7
output("total", total)
""",
    "fib": """
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)

output("fib", fib(25))
""",
    "dicts": """
rows = []
for i in range(200000):
    rows.append({"id": i, "group": i % 10, "value": i * 3})
groups = {}
for row in rows:
    key = row["group"]
    if key not in groups:
        groups[key] = []
    groups[key].append(row["value"])
output("sizes", [len(groups[k]) for k in sorted(groups)])
""",
    "csv": """
lines = []
for i in range(100000):
    lines.append(f"{i},name{i},{i * 7 % 100}")
text = "\\n".join(lines)
total = 0
for line in text.split("\\n"):
    fields = line.split(",")
    total += int(fields[2])
output("total", total)
""",
}


def run_once(name: str, level: TraceLevel | None) -> tuple[float, int]:
    """Seconds to run program `name` (plain when level is None), and events made."""
    compilation = Compilation.of(PROGRAMS[name], f"<{name}>")
    assert compilation.ok, compilation.diagnostics
    assert compilation.tree is not None and compilation.source is not None
    effects = ReferenceEffects(BookRegistry())
    namespace: dict[str, Any] = {"__builtins__": make_builtins(effects, []), "__name__": "__spy__"}
    sink = NullSink()
    tracer: Tracer | None = None
    if level is None:
        code = compile(compilation.source.text, name, "exec")
    else:
        tree, sites = instrument(compilation.tree, compilation.source, level)
        code = compile(tree, name, "exec")
        tracer = Tracer(name, sites, sink)
        namespace.update(tracer.hooks())
    gc.collect()
    start = time.process_time()
    exec(code, namespace)
    if tracer is not None:
        tracer.flush()
    elapsed = time.process_time() - start
    return elapsed, sink.last_delivered


def main(argv: list[str]) -> None:
    names = argv or list(PROGRAMS)
    ratios: dict[str, list[float]] = {"statements": [], "full": []}
    print(f"{'program':8} {'plain s':>8} {'stmts s':>8} {'full s':>8} {'stmts x':>8} "
          f"{'full x':>8} {'events':>10}")
    for name in names:
        timings: dict[str, float] = {}
        events = 0
        for level in (None, "statements", "full"):
            runs = [run_once(name, level) for _ in range(3)]
            timings[str(level)] = statistics.median(elapsed for elapsed, _ in runs)
            events = max(events, runs[0][1])
        plain = timings["None"]
        ratios["statements"].append(timings["statements"] / plain)
        ratios["full"].append(timings["full"] / plain)
        print(f"{name:8} {plain:8.3f} {timings['statements']:8.3f} {timings['full']:8.3f} "
              f"{ratios['statements'][-1]:8.1f} {ratios['full'][-1]:8.1f} {events:10,}")
    print(f"geometric mean: statements {statistics.geometric_mean(ratios['statements']):.1f}x, "
          f"full {statistics.geometric_mean(ratios['full']):.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:])

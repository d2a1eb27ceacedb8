"""The compile rows: a generated 1,000-line program, cold and cached.

- cold: `Compilation.of(text, path).program("off")` of a text the process has not
  seen (each run appends a distinct comment line, so the program cache misses);
- cached: the same call for a text already compiled: a new `Compilation`, as a worker
  makes for each execution, whose `program()` finds the program cache;
- cached, same Compilation: `program()` again on one `Compilation` object.

A call too short to time on its own is timed in a batch, and the batch divided.
"""

from __future__ import annotations

import time
from itertools import count
from typing import Any

from bench import timing
from bench.config import Config
from bench.workloads.generate import generate_program
from jarvis.compiler import Compilation

LINES = 1000
PATH = "generated.spy"


def measure(config: Config) -> dict[str, Any]:
    lines = max(20, round(LINES * min(config.scale, 1.0)))
    text = generate_program(lines)
    if not Compilation.of(text, PATH).ok:
        raise RuntimeError("the generated program is not valid SPy")
    fresh = count()

    def cold() -> float:
        unique = f"{text}# run {next(fresh)}\n"
        started = time.perf_counter()
        Compilation.of(unique, PATH).program("off")
        return time.perf_counter() - started

    Compilation.of(text, PATH).program("off")
    started = time.perf_counter()
    Compilation.of(text, PATH).program("off")
    # A batch only where one call is too short to time on its own.
    size = max(1, min(1000, round(0.01 / max(time.perf_counter() - started, 1e-6))))

    same = Compilation.of(text, PATH)
    same.program("off")
    cached = timing.batch(lambda: Compilation.of(text, PATH).program("off"), size)
    cached_same = timing.batch(lambda: same.program("off"), 1000)

    config.say(f"compile a {lines}-line program: cold, cached")
    return {
        "lines": lines,
        "bytes": len(text.encode("utf-8")),
        "cold_off_seconds": timing.repeat(cold, config.repeats, config.warmup).to_json(),
        "cached_seconds": timing.repeat(cached, config.repeats, config.warmup).to_json(),
        "cached_same_compilation_seconds": timing.repeat(cached_same, config.repeats,
                                                         config.warmup).to_json(),
        "cached_batch": size,
    }

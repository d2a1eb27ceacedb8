"""The benchmark's programs: SPy files that also run, unchanged, under plain CPython.

A program reads its size from `inputs["n"]` (and `inputs["records"]` for the live
state program) and reports through `output(name, value)`; those two names are the
whole shim another interpreter needs. Sizes are given at full scale; `size(scale)`
shrinks them for quick and smoke runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

DIRECTORY = Path(__file__).parent

_GOLDEN = (1 + 5**0.5) / 2


@dataclass(frozen=True)
class Workload:
    """One program of the suite and its full-scale size."""

    name: str
    title: str
    file: str
    full_size: int
    exponential: bool = False
    """The work grows like phi**n (fib): scaling subtracts from n instead of dividing."""

    @cached_property
    def source(self) -> str:
        return (DIRECTORY / self.file).read_text(encoding="utf-8")

    def size(self, scale: float) -> int:
        if scale >= 1:
            return self.full_size
        if self.exponential:
            return max(5, round(self.full_size + math.log(scale, _GOLDEN)))
        return max(10, round(self.full_size * scale))


CPU_WORKLOADS: tuple[Workload, ...] = (
    Workload("arith", "arithmetic loop, 2M iterations", "arith.spy", 2_000_000),
    Workload("fib", "recursive fib(25)", "fib.spy", 25, exponential=True),
    Workload("records", "200k dict records, grouped", "records.spy", 200_000),
    Workload("csv", "100k-line CSV string, built and split", "csv_lines.spy", 100_000),
)

BOOK_LOOP = Workload("book_loop", "10k calls of counter.inc", "book_loop.spy", 10_000)

LIVE_STATE = Workload("live_state", "live records, then Book calls", "live_state.spy", 0)

BOOK_SOURCE = "def inc(n):\n    return n + 1\n"
"""The in-process Book of the Book rows: `counter.inc`, as trivial as a procedure gets."""


def inc(n: int) -> int:
    """`counter.inc` called directly, for the baselines (the same body as BOOK_SOURCE)."""
    return n + 1

"""How the suite times things: warm-up rounds, then interleaved measured rounds.

Every cell of a comparison is a callable that does its own setup, times only the work
it stands for and returns those (wall-clock) seconds. `rounds` also takes the CPU time
of this process across each call: on a shared machine a run's wall time stretches
with the load, while its CPU time barely moves, so in-process comparisons are steadier
in CPU time. (Work done in another process, such as Monty's worker, is not in it.)

`rounds` runs all the cells of a comparison once per round, in the same order, so slow
drift of a noisy machine hits every cell alike; a ratio is then taken between two
cells of the same rounds: the headline is the ratio of their medians, and the
per-round ratios give its min and max.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Cell = Callable[[], "float | tuple[float, float]"]
"""Runs one measured thing once and returns the seconds it took, or (wall, CPU) seconds
when it times its own CPU as well (a cell that divides a batch by its size)."""


@dataclass(frozen=True)
class Stats:
    """Measured values of one cell (seconds, bytes, ...), in the order they were taken."""

    runs: tuple[float, ...]
    cpu_runs: tuple[float, ...] = ()
    """This process's CPU seconds across each run (setup inside the cell included)."""

    @property
    def cpu(self) -> Stats:
        return Stats(self.cpu_runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)

    def scaled(self, factor: float) -> Stats:
        """The same values multiplied by `factor` (seconds to µs, totals to per-call)."""
        return Stats(tuple(value * factor for value in self.runs))

    def to_json(self, digits: int = 9) -> dict[str, Any]:
        data: dict[str, Any] = {
            "median": round(self.median, digits),
            "min": round(self.min, digits),
            "max": round(self.max, digits),
            "runs": [round(value, digits) for value in self.runs],
        }
        if self.cpu_runs:
            data["cpu"] = self.cpu.to_json(digits)
        return data


@dataclass(frozen=True)
class Ratio:
    """`numerator / denominator` over paired rounds: ratio of medians, per-round range."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, numerator: Stats, denominator: Stats) -> Ratio:
        paired = [a / b for a, b in zip(numerator.runs, denominator.runs, strict=True)]
        return cls(numerator.median / denominator.median, min(paired), max(paired))

    def to_json(self) -> dict[str, float]:
        return {"median": round(self.median, 4), "min": round(self.min, 4),
                "max": round(self.max, 4)}


def rounds(cells: Mapping[str, Cell], repeats: int, warmup: int,
           progress: Callable[[str], None] | None = None) -> dict[str, Stats]:
    """Run every cell `warmup` times unrecorded, then `repeats` recorded rounds."""
    taken: dict[str, list[float]] = {name: [] for name in cells}
    cpu: dict[str, list[float]] = {name: [] for name in cells}
    for round_number in range(warmup + repeats):
        for name, cell in cells.items():
            gc.collect()
            started = time.process_time()
            measured = cell()
            used = time.process_time() - started
            if isinstance(measured, tuple):
                seconds, used = measured
            else:
                seconds = measured
            if round_number >= warmup:
                taken[name].append(seconds)
                cpu[name].append(used)
        if progress is not None:
            label = "warm-up" if round_number < warmup else f"run {round_number - warmup + 1}"
            progress(f"{label}/{repeats}")
    return {name: Stats(tuple(values), tuple(cpu[name])) for name, values in taken.items()}


def repeat(cell: Cell, repeats: int, warmup: int) -> Stats:
    """`rounds` for a single cell."""
    return rounds({"cell": cell}, repeats, warmup)["cell"]


def batch(operation: Callable[[], object], size: int) -> Callable[[], tuple[float, float]]:
    """A cell timing `size` back-to-back calls of a short operation: per-call seconds."""

    def cell() -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(size):
            operation()
        return ((time.perf_counter() - started) / size,
                (time.process_time() - cpu) / size)

    return cell


"""The knobs of one suite run, and the progress line it prints while it works."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    """How big and how often. The full run is scale 1, 5 runs after 1 warm-up."""

    scale: float = 1.0
    repeats: int = 5
    warmup: int = 1
    trace_file_scale: float = 0.02
    """The JSONL rows run the CPU programs at this fraction of `scale`: at 8-25 µs an
    event, full size would write 3 GB and take minutes per round."""
    monty: bool = True
    out_dir: Path = Path("docs")
    sections: tuple[str, ...] = ("cpu", "books", "channel", "durability", "compile", "worker")
    page_only: bool = False
    started: float = field(default_factory=time.perf_counter)

    @property
    def cheap_repeats(self) -> int:
        """Runs of cells that take milliseconds (resumes, appends): more runs steady the
        median on a noisy machine at no real cost."""
        return self.repeats * 3

    def repeats_for(self, seconds: float) -> int:
        """Runs of a comparison whose plain cell takes `seconds`: enough for about 1.5 s
        of the plain cell, between `repeats` and 5x that, so that a shorter workload's
        medians hold still on a noisy machine (fib, about 10 ms a run, gets 5x)."""
        if seconds <= 0:
            return self.repeats * 5
        return max(self.repeats, min(self.repeats * 5, int(1.5 / seconds)))

    def size(self, full: int) -> int:
        """A count of things (calls, records) at this run's scale."""
        return max(2, round(full * min(self.scale, 1.0)))

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "repeats": self.repeats, "warmup": self.warmup,
                "trace_file_scale": self.trace_file_scale, "monty": self.monty,
                "sections": list(self.sections)}

    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)

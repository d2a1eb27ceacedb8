"""What the figures were measured on: the machine, the versions, the date."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jarvis
from bench.baselines import monty_version

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


SPEED_PROBE_ITERATIONS = 300_000
SPEED_PROBE_ROUNDS = 5


def speed_probe() -> float:
    """CPU milliseconds of a fixed pure-Python loop, the median of a few rounds: the
    same work in every run, so its time says how fast the machine ran then (this
    virtual machine's speed drifts by tens of percent from hour to hour, and every
    figure of a run drifts with it)."""
    times = []
    for _ in range(SPEED_PROBE_ROUNDS):
        started = time.process_time()
        total, table = 0, {}
        for i in range(SPEED_PROBE_ITERATIONS):
            total += i * i % 7
            table[i & 255] = total
        times.append((time.process_time() - started) * 1e3)
    return round(statistics.median(times), 1)


def describe() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "memory_gib": _memory_gib(),
            "os": f"{platform.system()} {platform.release()}",
            "load_average_at_start": load_average(),
            "speed_probe_ms_at_start": speed_probe(),
        },
        "versions": {
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "jarvis": jarvis.__version__,
            "jarvis_commit": _git_commit(),
            "RestrictedPython": _version("RestrictedPython"),
            "pydantic-monty": monty_version(),
        },
    }

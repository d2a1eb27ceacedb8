"""Every limit of an execution holds on the real isolated path, as `jarvis run` and the
worker run programs: an Execution whose Machine runs in a child of a ChildPool.

Each test trips one limit and checks that the execution ends `failed` with
`LimitExceeded` naming that limit, within a bounded time, and that the same pool then
runs the next execution normally (the host carries on).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.execution import Execution, error_type_name
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.machine import Outcome
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import CPU_MARGIN_SECONDS, Limits, load_settings

BOUND = 30.0
"""Seconds any limit may take to stop its execution on a busy two-core machine (the
limits below trip in well under a second of the program's own work)."""

BOOK = '''
def echo(value):
    return value
'''


@pytest.fixture(scope="module")
def pool() -> Iterator[ChildPool]:
    children = ChildPool(size=1)
    yield children
    children.close()


@pytest.fixture
def books(tmp_path: Path) -> BookRegistry:
    (tmp_path / "svc.py").write_text(BOOK)
    (tmp_path / "books.toml").write_text('[books.svc]\npython = "svc.py"\n')
    return BookRegistry.load(tmp_path / "books.toml")


def execute(tmp_path: Path, pool: ChildPool, source: str, limits: dict[str, Any],
            books: BookRegistry | None = None, trace: str = "statements",
            execution_id: str = "limited") -> tuple[Outcome, float, MemorySink]:
    program = Compilation.of(source, "prog.spy").program(trace)  # type: ignore[arg-type]
    settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False,
                             limits=limits)
    sink = MemorySink()
    execution = Execution(program, execution_id=execution_id, inputs={},
                          books=books or BookRegistry(), settings=settings, sink=sink,
                          isolation=pool)
    started = time.monotonic()
    outcome = execution.run()
    return outcome, time.monotonic() - started, sink


def assert_stopped_by(outcome: Outcome, elapsed: float, limit: str,
                      bound: float = BOUND) -> None:
    assert outcome.status == "failed", outcome
    assert outcome.error is not None
    # LimitExceeded, or its subclass for the wall clock (TimeLimitExceeded)
    assert error_type_name(outcome.error).endswith("LimitExceeded"), outcome.error
    assert getattr(outcome.error, "limit", None) == limit, outcome.error
    assert f"limit '{limit}' exceeded" in str(outcome.error)
    assert elapsed < bound, f"{limit} took {elapsed:.1f}s to stop the execution"


def assert_pool_carries_on(tmp_path: Path, pool: ChildPool) -> None:
    outcome, _, _ = execute(tmp_path, pool, "output('total', sum(range(10)))\n", {},
                            execution_id="after")
    assert outcome.status == "completed", outcome
    assert outcome.outputs == {"total": 45}


def test_steps(tmp_path: Path, pool: ChildPool) -> None:
    outcome, elapsed, sink = execute(tmp_path, pool, "n = 0\nwhile True:\n    n += 1\n",
                                     {"max_steps": 5000})
    assert_stopped_by(outcome, elapsed, "steps")
    assert [e.expr for e in sink.events if e.kind == "limit"] == ["steps"]
    assert_pool_carries_on(tmp_path, pool)


def test_trace_events(tmp_path: Path, pool: ChildPool) -> None:
    source = "for i in range(100000):\n    x = i\n"
    outcome, elapsed, sink = execute(tmp_path, pool, source, {"max_trace_events": 1000})
    assert_stopped_by(outcome, elapsed, "trace_events")
    assert sink.events[-1].kind == "limit"
    assert len(sink.events) == 1001  # the first 1000, then the one naming the limit
    assert_pool_carries_on(tmp_path, pool)


def test_wall_time_without_a_trace(tmp_path: Path, pool: ChildPool) -> None:
    # Untraced, a loop counts no steps: the wall-clock limit stops it.
    outcome, elapsed, _ = execute(tmp_path, pool, "while True:\n    pass\n",
                                  {"max_seconds": 1.0}, trace="off")
    assert_stopped_by(outcome, elapsed, "seconds")
    assert elapsed >= 1.0
    assert_pool_carries_on(tmp_path, pool)


def test_cpu_time_stops_work_the_wall_clock_cannot_interrupt(
    tmp_path: Path, pool: ChildPool
) -> None:
    # One C call (a modular power of 100,000-bit numbers) runs for many seconds and
    # cannot be interrupted between bytecodes; the CPU limit ends the process.
    source = "e = 2 ** 100000\nm = 3 ** 70000\nx = pow(5, e, m)\noutput('x', 1)\n"
    outcome, elapsed, _ = execute(tmp_path, pool, source,
                                  {"max_seconds": 1.0, "max_cpu_seconds": 2.0})
    assert_stopped_by(outcome, elapsed, "cpu_seconds")
    assert "SIGXCPU" in str(outcome.error)
    assert_pool_carries_on(tmp_path, pool)


def test_memory(tmp_path: Path, pool: ChildPool) -> None:
    source = "blocks = []\nwhile True:\n    blocks.append('x' * 1000000)\n"
    outcome, elapsed, _ = execute(tmp_path, pool, source, {"max_memory_bytes": 256 << 20})
    assert_stopped_by(outcome, elapsed, "memory")
    assert outcome.location is not None and outcome.location.line == 3
    assert_pool_carries_on(tmp_path, pool)


def test_memory_caught_by_the_program_is_still_bounded(tmp_path: Path,
                                                       pool: ChildPool) -> None:
    # A program that swallows MemoryError keeps its memory and goes on failing to
    # allocate: it is stopped by a MemoryError it does not catch (one in a statement
    # outside its `try`) or by another limit (here steps). The host is never at risk.
    source = (
        "blocks = []\n"
        "while True:\n"
        "    try:\n"
        "        blocks.append('x' * 1000000)\n"
        "    except Exception:\n"
        "        pass\n"
    )
    outcome, elapsed, _ = execute(tmp_path, pool, source,
                                  {"max_memory_bytes": 256 << 20, "max_steps": 20000})
    limit = getattr(outcome.error, "limit", None)
    assert limit in ("memory", "steps"), outcome.error
    assert_stopped_by(outcome, elapsed, str(limit))
    assert_pool_carries_on(tmp_path, pool)


def test_recursion_depth_of_plain_functions(tmp_path: Path, pool: ChildPool) -> None:
    outcome, elapsed, _ = execute(tmp_path, pool, "def f(n):\n    return f(n + 1)\nf(0)\n", {})
    assert_stopped_by(outcome, elapsed, "recursion_depth")
    assert_pool_carries_on(tmp_path, pool)


def test_recursion_depth_of_functions_that_call_books(
    tmp_path: Path, pool: ChildPool, books: BookRegistry
) -> None:
    source = (
        "from books import svc\n"
        "def down(n):\n"
        "    return down(svc.echo(n + 1))\n"
        "down(0)\n"
    )
    outcome, elapsed, _ = execute(tmp_path, pool, source, {"max_recursion_depth": 20}, books)
    assert_stopped_by(outcome, elapsed, "recursion_depth")
    assert "20 frames" in str(outcome.error)
    # The module's frame and 19 of `down`, each after its Book call; the 20th is refused.
    assert outcome.counters["book_calls"] == 19
    assert_pool_carries_on(tmp_path, pool)


def test_output_bytes(tmp_path: Path, pool: ChildPool) -> None:
    source = "output('small', 'a' * 100)\noutput('big', 'b' * 5000)\n"
    outcome, elapsed, _ = execute(tmp_path, pool, source, {"max_output_bytes": 1000})
    assert_stopped_by(outcome, elapsed, "output_bytes")
    assert outcome.outputs == {"small": "a" * 100}  # what fitted is kept
    assert_pool_carries_on(tmp_path, pool)


def test_print_volume(tmp_path: Path, pool: ChildPool) -> None:
    source = "while True:\n    print('spam ' * 20)\n"
    outcome, elapsed, sink = execute(tmp_path, pool, source, {"max_output_bytes": 10_000})
    assert_stopped_by(outcome, elapsed, "print_bytes")
    printed = sum(len(e.value) for e in sink.events if e.kind == "print")
    assert 9_000 < printed <= 10_000
    assert_pool_carries_on(tmp_path, pool)


def test_snapshot_size(tmp_path: Path, pool: ChildPool) -> None:
    source = "data = list(range(100000))\ncheckpoint()\noutput('n', len(data))\n"
    outcome, elapsed, _ = execute(tmp_path, pool, source, {"max_snapshot_bytes": 10_000})
    assert_stopped_by(outcome, elapsed, "snapshot_bytes")
    assert "the limit is 10,000" in str(outcome.error)
    assert not list((tmp_path / "state").rglob("*.jsnap"))  # nothing was written
    assert_pool_carries_on(tmp_path, pool)


def test_book_calls(tmp_path: Path, pool: ChildPool, books: BookRegistry) -> None:
    source = "from books import svc\nfor i in range(10):\n    svc.echo(i)\n"
    outcome, elapsed, _ = execute(tmp_path, pool, source, {"max_book_calls": 3}, books)
    assert_stopped_by(outcome, elapsed, "book_calls")
    assert outcome.counters["book_calls"] == 3
    assert_pool_carries_on(tmp_path, pool)


@pytest.mark.parametrize("source", [
    "n = 10 ** 8\nx = 7 ** n\n",  # a power
    "n = 40\nx = 1 << (10 ** n)\n",  # a shift
    "x = 3 ** 100000\ny = x * x * x * x * x * x * x * x * x * x * x * x * x * x * x * x\n",
], ids=["power", "shift", "product"])
def test_huge_ints(tmp_path: Path, pool: ChildPool, source: str) -> None:
    outcome, elapsed, _ = execute(tmp_path, pool, source, {})
    assert_stopped_by(outcome, elapsed, "memory", bound=10.0)
    assert_pool_carries_on(tmp_path, pool)


@pytest.mark.parametrize("source", [
    "n = 10 ** 9\ns = 'ab' * n\n",
    "n = 10 ** 5\nrows = [0] * n * n\n",
], ids=["string", "list"])
def test_repetitions(tmp_path: Path, pool: ChildPool, source: str) -> None:
    outcome, elapsed, _ = execute(tmp_path, pool, source, {})
    assert_stopped_by(outcome, elapsed, "memory", bound=10.0)
    assert_pool_carries_on(tmp_path, pool)


@pytest.mark.parametrize("source", [
    "x = 7 ** 20000\ns = str(x)\n",
    "x = 7 ** 20000\ns = f'{x}'\n",
    "digits = '9' * 5000\nx = int(digits)\n",
], ids=["str", "f-string", "int"])
def test_int_to_str_of_huge_ints(tmp_path: Path, pool: ChildPool, source: str) -> None:
    outcome, elapsed, _ = execute(tmp_path, pool, source, {})
    assert_stopped_by(outcome, elapsed, "int_digits", bound=10.0)
    assert "4,300 decimal digits" in str(outcome.error)
    assert_pool_carries_on(tmp_path, pool)


def test_the_defaults_bound_every_run() -> None:
    """Without any setting, a run is bounded in steps, wall time, CPU and memory (an
    untraced `while True: pass` counts no steps: the time limits stop it)."""
    limits = Limits()
    assert limits.max_steps == 10_000_000
    assert limits.max_seconds == 3600.0
    assert limits.cpu_seconds == 3600 + CPU_MARGIN_SECONDS
    assert limits.max_memory_bytes == 1 << 30
    assert Limits(max_seconds=5).cpu_seconds == 5 + CPU_MARGIN_SECONDS
    assert Limits(max_seconds=60, max_cpu_seconds=2.5).cpu_seconds == 3


def test_a_traced_endless_loop_stops_at_the_step_limit(tmp_path: Path,
                                                      pool: ChildPool) -> None:
    outcome, elapsed, sink = execute(tmp_path, pool, "while True:\n    pass\n",
                                     {"max_steps": 200_000})
    assert_stopped_by(outcome, elapsed, "steps")
    # The step past the limit is recorded, then refused.
    assert sum(1 for e in sink.events if e.kind == "stmt") == 200_001

"""Profile one cell of the suite with cProfile: where does its time go?

    python -m bench.profile cpu WORKLOAD LEVEL   # LEVEL: off, statements, full, jsonl
    python -m bench.profile books                # the Book-overhead row (journal, fsync off)
    python -m bench.profile compile [cached]     # compile the 1,000-line program
    python -m bench.profile resume COUNT [KB]    # resume after COUNT Book calls (with
                                                 # KB of live state: live_state.spy)

Prints the functions with the most own time, then the most cumulative time. `--scale`
shrinks the sizes as in `bench.run`; `--top N` sets how many lines (default 25).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

from bench.engine import JsonlFile, book_registry, compiled, run_execution, run_machine
from bench.workloads import BOOK_LOOP, BOOK_SOURCE, CPU_WORKLOADS
from bench.workloads.generate import generate_program
from jarvis.compiler import Compilation
from jarvis.runtime.sinks import NullSink


def _cpu(name: str, level: str, scale: float) -> Callable[[], Any]:
    workload = {w.name: w for w in CPU_WORKLOADS}[name]
    inputs = {"n": workload.size(scale)}
    program = compiled(workload.source, workload.file, "full" if level == "jsonl" else level)  # type: ignore[arg-type]

    def cell() -> Any:
        if level != "jsonl":
            return run_machine(program, inputs, NullSink())
        trace = JsonlFile()
        try:
            return run_machine(program, inputs, trace.sink)
        finally:
            trace.close()

    return cell


def _books(scale: float, base: Path) -> Callable[[], Any]:
    registry = book_registry(base, BOOK_SOURCE)
    program = compiled(BOOK_LOOP.source, BOOK_LOOP.file, "off")
    inputs = {"n": BOOK_LOOP.size(scale)}
    return lambda: run_execution(program, inputs, registry, fsync=False)


def _compile(cached: bool) -> Callable[[], Any]:
    text = generate_program(1000)
    runs = count()

    def cell() -> Any:
        # Cold: a text not seen before. Cached: the same text, a new Compilation.
        unique = text if cached else f"{text}# run {next(runs)}\n"
        return Compilation.of(unique, "generated.spy").program("off")

    return cell


def _resume(count: int, kilobytes: int | None) -> Callable[[], Any]:
    from bench import resume
    from bench.durability import records_for
    from bench.workloads import LIVE_STATE

    if kilobytes is None:
        return lambda: resume.measure(count, 10)
    inputs = {"records": records_for(kilobytes << 10)}
    return lambda: resume.measure(count, 10, 0, LIVE_STATE.source, inputs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cell", choices=("cpu", "books", "compile", "resume"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="jarvis-bench-profile-"))
    try:
        if args.cell == "cpu":
            cell = _cpu(args.args[0], args.args[1], args.scale)
        elif args.cell == "books":
            cell = _books(args.scale, base)
        elif args.cell == "compile":
            cell = _compile(args.args == ["cached"])
        else:
            cell = _resume(int(args.args[0]) if args.args else 100_000,
                           int(args.args[1]) if len(args.args) > 1 else None)
        cell()  # warm-up: caches, imports
        profiler = cProfile.Profile()
        profiler.runcall(cell)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()

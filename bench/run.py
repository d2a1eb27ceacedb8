"""The benchmark suite, one command: `python -m bench.run [--quick]` (or `make bench`).

Runs every section (CPU and trace volume, Book calls, durability, compile, and the Kafka
worker against real Kafka and Redis), then writes
OUT/performance.json (every figure, every run) and OUT/performance.md (tables, targets
marked PASS or FAIL, the machine, the versions, the date). OUT is `docs/` for a full
run. The full run takes about 5 minutes on 2 cores; `--quick` (sizes / 10, 3 runs) is
a 1-2 minute smoke run that writes to a temporary directory unless `--out` says where.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import book_calls, channel, compile_cost, cpu, durability, worker
from bench.baselines import MontyPool, MontyUnavailable
from bench.config import Config
from bench.environment import ROOT, describe, load_average, speed_probe
from bench.report import DEFAULT_INTRO, MARKER, markdown, targets, targets_json

SECTIONS = ("cpu", "books", "channel", "durability", "compile", "worker")


def parse(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sizes / 10, 3 runs after 1 warm-up")
    parser.add_argument("--scale", type=float, help="size factor (1 = the issue's sizes)")
    parser.add_argument("--repeats", type=int, help="measured runs per cell (default 5)")
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default 1)")
    parser.add_argument("--out", type=Path,
                        help="where performance.md and performance.json go (default docs/)")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable)")
    parser.add_argument("--no-monty", action="store_true", help="leave pydantic-monty out")
    parser.add_argument("--page-only", action="store_true",
                        help="measure nothing: judge the targets and render "
                             "OUT/performance.md again from the figures in "
                             "OUT/performance.json (after editing the intro, say)")
    args = parser.parse_args(argv)
    scale, repeats, warmup = (0.1, 3, 1) if args.quick else (1.0, 5, 1)
    scale = args.scale if args.scale is not None else scale
    repeats = args.repeats if args.repeats is not None else repeats
    warmup = args.warmup if args.warmup is not None else warmup
    if not 0 < scale <= 1 or repeats < 1 or warmup < 0:
        parser.error("--scale must be in (0, 1], --repeats at least 1, --warmup at least 0")
    out = args.out
    if out is None:
        out = ROOT / "docs" if scale == 1 else Path(tempfile.mkdtemp(prefix="jarvis-bench-"))
    return Config(scale=scale, repeats=repeats, warmup=warmup, monty=not args.no_monty,
                  out_dir=out, sections=tuple(args.only or SECTIONS),
                  page_only=args.page_only)


def run(config: Config, command: str) -> dict[str, Any]:
    results: dict[str, Any] = {"meta": describe()}
    monty: MontyPool | None = None
    if config.monty:
        try:
            monty = MontyPool()
        except MontyUnavailable as exc:
            config.say(f"Monty left out: {exc}")
    try:
        if "cpu" in config.sections:
            results["cpu"] = cpu.measure(config, monty)
        if "books" in config.sections:
            results["books"] = book_calls.measure(config, monty)
        if "channel" in config.sections:
            results["channel"] = channel.measure(config)
        if "durability" in config.sections:
            results["durability"] = durability.measure(config, monty)
        if "compile" in config.sections:
            results["compile"] = compile_cost.measure(config)
        if "worker" in config.sections:
            results["worker"] = worker.measure(config)
    finally:
        if monty is not None:
            monty.close()
    meta = results["meta"]
    meta["command"] = command
    meta["config"] = config.to_json()
    meta["duration_seconds"] = round(time.perf_counter() - config.started, 1)
    meta["load_average_at_end"] = load_average()
    meta["speed_probe_ms_at_end"] = speed_probe()
    results["targets"] = targets_json(results)
    return results


def intro_of(page: Path) -> str:
    """The hand-written top of an existing page (above MARKER), or the default one."""
    try:
        text = page.read_text(encoding="utf-8")
    except FileNotFoundError:
        return DEFAULT_INTRO
    return text.split(MARKER, 1)[0] if MARKER in text else DEFAULT_INTRO


def write(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "performance.json"
    page = out_dir / "performance.md"
    data.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    page.write_text(markdown(results, intro_of(page)), encoding="utf-8")
    return page, data


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    config = parse(arguments)
    command = " ".join(["python -m bench.run", *arguments])
    if config.page_only:
        results = json.loads((config.out_dir / "performance.json").read_text("utf-8"))
        results["targets"] = targets_json(results)
    else:
        config.say(f"{command}: scale {config.scale:g}, {config.repeats} runs after "
                   f"{config.warmup} warm-up, writing to {config.out_dir}")
        results = run(config, command)
    page, data = write(results, config.out_dir)
    for target in targets(results):
        print(f"{target.status:>12}  {target.name}: {target.measured} (limit {target.limit})")
    config.say(f"wrote {page} and {data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

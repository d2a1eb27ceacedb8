"""`jarvis run`: run one SPy program locally as a durable execution.

Embedded defaults: state under ./.jarvis/, in-process or HTTP Books from a registry
file, a readable live trace on stderr (unless --quiet), JSONL trace events to --log.
The outputs are one JSON object on stdout. Exit codes: 0 completed, 1 the program
raised or hit a limit, 2 compile or usage error, 3 suspended (SIGINT or SIGTERM: a
snapshot is taken; the same --execution-id and --state-dir resume it).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from jarvis.cli.inputs import InputError, parse_inputs
from jarvis.cli.report.text import caret_lines
from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.errors import RuntimeSetupError
from jarvis.runtime.execution import Execution, error_type_name
from jarvis.runtime.interrupt import Stopped, interrupt_main
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.machine import Outcome
from jarvis.runtime.sinks import ConsoleSink, FanOutSink, JsonlSink, NullSink, Sink
from jarvis.runtime.statedir import StateError
from jarvis.settings import load_settings

EXIT_COMPLETED, EXIT_FAILED, EXIT_USAGE, EXIT_SUSPENDED = 0, 1, 2, 3

STOP_GRACE_SECONDS = 2.0
"""After SIGINT/SIGTERM the program gets this long to reach its next effect, where a
fresh snapshot is taken; then it is interrupted, and the last snapshot plus the
journal are what it resumes from (nothing is lost either way)."""


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a SPy program as a durable execution; print its outputs as JSON.",
    )
    parser.add_argument("program", help="path of the .spy program")
    parser.add_argument(
        "--input", action="append", default=[], metavar="NAME=JSON",
        help="one input value, as JSON (a bare word is taken as a string); repeatable",
    )
    parser.add_argument("--inputs", metavar="FILE", help="a JSON object of inputs")
    parser.add_argument("--books", metavar="FILE", help="the Book registry (TOML)")
    parser.add_argument("--execution-id", metavar="ID",
                        help="the execution's id; the same id and state dir resume it")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where journals and snapshots live (default: ./.jarvis)")
    parser.add_argument("--trace", choices=["full", "statements", "off"], default=None,
                        help="trace level (default: statements, or JARVIS_TRACE_LEVEL)")
    parser.add_argument("--log", metavar="FILE", help="append trace events to FILE as JSONL")
    parser.add_argument("--quiet", action="store_true",
                        help="no live trace on stderr; errors only")
    return parser


class _StopSignal:
    """SIGINT/SIGTERM: ask the program to stop at its next effect, then insist."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.timer: threading.Timer | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            interrupt_main(Stopped)
            return
        self.requested.set()
        self.timer = threading.Timer(STOP_GRACE_SECONDS, interrupt_main, args=(Stopped,))
        self.timer.daemon = True
        self.timer.start()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def main(argv: Sequence[str] | None = None, prog: str = "jarvis run") -> int:
    args = _parser(prog).parse_args(argv)
    try:
        inputs = parse_inputs(args.inputs, args.input)
        data = Path(args.program).read_bytes()
    except InputError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{prog}: cannot read {args.program}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE

    overrides: dict[str, Any] = {}
    if args.state_dir:
        overrides["state_dir"] = Path(args.state_dir)
    if args.trace:
        overrides["trace_level"] = args.trace
    try:
        settings = load_settings(**overrides)
    except ValueError as exc:
        print(f"{prog}: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE

    compilation = Compilation.of(data, args.program)
    if not compilation.ok:
        from jarvis.cli.report.text import PLAIN, Palette, render_text

        palette = Palette.ansi() if sys.stderr.isatty() else PLAIN
        sys.stderr.write(render_text([compilation], palette))
        return EXIT_USAGE
    program = compilation.program(settings.trace_level)
    try:
        registry = BookRegistry.load(args.books) if args.books else BookRegistry()
    except RuntimeSetupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    execution_id = args.execution_id or uuid.uuid4().hex[:12]
    sinks: list[Sink] = []
    if not args.quiet:
        sinks.append(ConsoleSink(sys.stderr))
    if args.log:
        sinks.append(JsonlSink(args.log))
    sink: Sink = FanOutSink(sinks) if sinks else NullSink()
    stop = _StopSignal()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        execution = Execution(program, execution_id=execution_id, inputs=inputs,
                              books=registry, settings=settings, sink=sink,
                              stop_requested=stop.requested.is_set,
                              isolation=ChildPool(size=0))
        finished = execution.finished()
        if finished is not None:
            print(json.dumps(finished.get("outputs", {}), indent=2, ensure_ascii=False))
            if not args.quiet:
                print(f"jarvis: execution {execution_id} had already {finished['status']}",
                      file=sys.stderr)
            return EXIT_COMPLETED if finished["status"] == "completed" else EXIT_FAILED
        if not args.quiet:
            # An earlier run left its status (and a journal once it had an effect).
            directory = execution.directory
            verb = ("resuming" if directory.status.exists() or directory.journal.exists()
                    else "running")
            print(f"jarvis: {verb} {args.program} as execution {execution_id} "
                  f"(trace {settings.trace_level}, state in {settings.state_dir})",
                  file=sys.stderr)
        try:
            outcome = execution.run()
        except Stopped:
            outcome = Outcome("suspended", {})
    except (RuntimeSetupError, StateError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        stop.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sink.close()
        registry.close()
    return _report(outcome, args, execution_id, compilation)


def _report(outcome: Outcome, args: argparse.Namespace, execution_id: str,
            compilation: Compilation) -> int:
    print(json.dumps(outcome.outputs, indent=2, ensure_ascii=False))
    if outcome.status == "suspended":
        print(f"jarvis: execution {execution_id} suspended; resume it with:\n"
              f"  jarvis run {args.program} --execution-id {execution_id}"
              + (f" --state-dir {args.state_dir}" if args.state_dir else ""),
              file=sys.stderr)
        return EXIT_SUSPENDED
    if outcome.status == "failed":
        _report_error(outcome, args.program, compilation)
        return EXIT_FAILED
    if not args.quiet:
        print(f"jarvis: execution {execution_id} completed", file=sys.stderr)
    return EXIT_COMPLETED


def _report_error(outcome: Outcome, path: str, compilation: Compilation) -> None:
    error = outcome.error
    assert error is not None
    where = outcome.location
    name = error_type_name(error)
    if where is None:
        print(f"{path}: {name}: {error}", file=sys.stderr)
        return
    print(f"{path}:{where.line}:{where.col}: {name}: {error}", file=sys.stderr)
    source = compilation.source
    if source is not None:
        shown, marker = caret_lines(source.line_text(where.line), where.col, where.end_col,
                                    multiline=where.end_line > where.line)
        print(f"  {shown}\n  {marker}", file=sys.stderr)

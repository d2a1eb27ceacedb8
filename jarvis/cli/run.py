"""`jarvis run`: run one SPy program locally and print its outputs as JSON.

This version runs the program on the reference interpreter (plain CPython with the SPy
runtime, in-process Books, real sleep): checked by the compiler first, not yet durable
or traced. Prints and Book calls are shown on stderr as they happen unless --quiet;
the outputs are one JSON object on stdout. Exit codes: 0 completed, 1 the program
raised, 2 compile or usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.errors import RuntimeSetupError
from jarvis.runtime.locate import locate
from jarvis.runtime.reference import ReferenceEffects, run_reference


class _UsageError(Exception):
    pass


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a SPy program locally; its outputs are printed as one JSON object.",
    )
    parser.add_argument("program", help="path of the .spy program")
    parser.add_argument(
        "--input", action="append", default=[], metavar="NAME=JSON",
        help="one input value, as JSON (a bare word is taken as a string); repeatable",
    )
    parser.add_argument("--inputs", metavar="FILE", help="a JSON object of inputs")
    parser.add_argument("--books", metavar="FILE", help="the Book registry (TOML)")
    parser.add_argument("--execution-id", metavar="ID", help="the execution's id")
    parser.add_argument(
        "--quiet", action="store_true", help="show nothing on stderr but errors",
    )
    return parser


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.inputs:
        try:
            loaded = json.loads(Path(args.inputs).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _UsageError(f"--inputs {args.inputs}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise _UsageError(f"--inputs {args.inputs}: must hold a JSON object")
        values.update(loaded)
    for item in args.input:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise _UsageError(f"--input {item!r}: expected NAME=JSON")
        try:
            values[name] = json.loads(raw)
        except ValueError:
            values[name] = raw
    return values


def main(argv: Sequence[str] | None = None, prog: str = "jarvis run") -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    try:
        inputs = _inputs(args)
        data = Path(args.program).read_bytes()
    except _UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: cannot read {args.program}: {exc.strerror}", file=sys.stderr)
        return 2

    compilation = Compilation.of(data, args.program)
    if not compilation.ok:
        from jarvis.cli.report.text import PLAIN, Palette, render_text

        palette = Palette.ansi() if sys.stderr.isatty() else PLAIN
        sys.stderr.write(render_text([compilation], palette))
        return 2
    try:
        registry = BookRegistry.load(args.books) if args.books else BookRegistry()
    except RuntimeSetupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2

    execution_id = args.execution_id or uuid.uuid4().hex[:12]
    live = not args.quiet

    class _LiveEffects(ReferenceEffects):
        def book_call(self, book: str, procedure: str, args_: list[Any],
                      kwargs: dict[str, Any]) -> Any:
            result = super().book_call(book, procedure, args_, kwargs)
            if live:
                shown = ", ".join([*map(repr, args_), *(f"{k}={v!r}" for k, v in kwargs.items())])
                print(f"  book  {book}.{procedure}({_clip(shown)}) -> {_clip(repr(result))}",
                      file=sys.stderr)
            return result

        def print(self, text: str) -> None:
            super().print(text)
            if live:
                sys.stderr.write(f"  print {text}")

    if live:
        print(f"jarvis: running {args.program} as execution {execution_id}", file=sys.stderr)
    try:
        result = run_reference(
            data, inputs=inputs, books=registry, path=args.program,
            execution_id=execution_id, real_sleep=True, effects_type=_LiveEffects,
        )
    except RuntimeSetupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except TypeError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.outputs, indent=2, ensure_ascii=False))
    if result.error is not None:
        _report_error(result.error, args.program, compilation)
        return 1
    if live:
        print(f"jarvis: execution {execution_id} completed", file=sys.stderr)
    return 0


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _report_error(error: BaseException, path: str, compilation: Compilation) -> None:
    where = locate(error, path)
    name = type(error).__name__
    if where is None:
        print(f"{path}: {name}: {error}", file=sys.stderr)
        return
    print(f"{path}:{where.line}:{where.col}: {name}: {error}", file=sys.stderr)
    source = compilation.source
    if source is not None:
        text = source.line_text(where.line)
        width = max(1, (where.end_col - where.col) if where.end_line == where.line else 1)
        print(f"  {text}", file=sys.stderr)
        print("  " + " " * (where.col - 1) + "^" * width, file=sys.stderr)

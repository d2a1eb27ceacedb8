"""`jarvis-compile`: check SPy programs and report their diagnostics.

    jarvis-compile [--format text|json|sarif] [--color auto|always|never]
                   [--emit python | --list-books] PATH...

A PATH is a file, a directory (searched recursively for `*.spy`, in sorted order)
or `-` for stdin (reported as `<stdin>`). Every input is read before anything is
compiled, so a usage error never leaves half a report behind.

Exit status: 0 when every program is clean, 1 when any has a diagnostic, 2 on a
usage error (bad option, no paths, a path that is missing or cannot be read).
docs/cli.md is the user reference.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, TextIO

from jarvis import __version__
from jarvis.cli.report import FORMATS, render_books, render_json, render_sarif, render_text
from jarvis.cli.report.sarif import STDIN_NAME
from jarvis.cli.report.text import Palette, printable, summary_line
from jarvis.compiler import Compilation

SPY_SUFFIX = ".spy"
STDIN_PATH = "-"

EXIT_CLEAN = 0
EXIT_DIAGNOSTICS = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line cannot be carried out; reported on stderr with exit status 2."""


@dataclass(frozen=True)
class Program:
    """One input: the name it is reported under and its content, undecoded when possible."""

    path: str
    data: bytes | str


class _Parser(argparse.ArgumentParser):
    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        # argparse ends the process on --help and on bad options; `main` is also
        # called in-process (`jarvis compile`, tests), so turn that into a return.
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _parser(prog: str) -> _Parser:
    parser = _Parser(
        prog=prog,
        description="Check SPy programs and report their diagnostics.",
        epilog=(
            "Exit status: 0 no diagnostics, 1 diagnostics found, 2 usage error. "
            "See docs/cli.md."
        ),
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH",
        help="a .spy file, a directory to search for *.spy files, or - for stdin",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=FORMATS[0],
        help="how to report diagnostics (default: %(default)s)",
    )
    parser.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto",
        help="colour text output: auto = when stdout is a terminal and NO_COLOR is unset",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--emit", choices=("python",),
        help="print the compiled Python of one program instead of a report",
    )
    action.add_argument(
        "--list-books", action="store_true",
        help="list the Book procedures each program calls",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


# -- inputs -------------------------------------------------------------------------


def _walk_error(error: OSError) -> None:
    raise error


def _spy_files(directory: str) -> list[str]:
    """The *.spy files under `directory`, recursively, sorted by path components."""
    found: list[tuple[tuple[str, ...], str]] = []
    for root, _, files in os.walk(directory, onerror=_walk_error):
        relative = os.path.relpath(root, directory)
        parts = () if relative == os.curdir else tuple(relative.split(os.sep))
        found += [
            ((*parts, name), os.path.join(root, name))
            for name in files
            if name.endswith(SPY_SUFFIX)
        ]
    return [path for _, path in sorted(found)]


def _read_stdin() -> bytes | str:
    stream = sys.stdin
    if stream is None:
        raise UsageError("cannot read `-`: there is no stdin")
    buffer = getattr(stream, "buffer", None)
    data: bytes | str = buffer.read() if buffer is not None else stream.read()
    return data


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from error


def _inputs(paths: Sequence[str], note: Callable[[str], None]) -> list[str]:
    """The programs `paths` name, as the paths they are reported under, without repeats."""
    if paths.count(STDIN_PATH) > 1:
        raise UsageError("`-` (stdin) can be given only once")
    found: list[str] = []
    for path in paths:
        if path == STDIN_PATH:
            found.append(STDIN_NAME)
        elif os.path.isdir(path):
            try:
                files = _spy_files(path)
            except OSError as error:
                where = error.filename or path
                raise UsageError(f"cannot read {where}: {error.strerror or error}") from error
            if not files:
                note(f"no SPy files (*{SPY_SUFFIX}) in {path}")
            found += files
        elif os.path.lexists(path):
            found.append(path)
        else:
            raise UsageError(f"no such file or directory: {path}")
    unique: dict[str, str] = {}
    for path in found:
        key = path if path == STDIN_NAME else os.path.normcase(os.path.abspath(path))
        unique.setdefault(key, path)
    return list(unique.values())


def collect(paths: Sequence[str], note: Callable[[str], None]) -> list[Program]:
    """Read every program named by `paths`; `note` receives remarks for stderr."""
    return [
        Program(path, _read_stdin() if path == STDIN_NAME else _read(path))
        for path in _inputs(paths, note)
    ]


# -- output -------------------------------------------------------------------------


def _wants_colour(choice: str, stream: TextIO) -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _write(stream: TextIO, text: str) -> None:
    """Write `text`, escaping what the stream's encoding cannot represent."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        text = text.encode(encoding, "backslashreplace").decode(encoding, "replace")
    stream.write(text)


def _report(programs: Sequence[Compilation], fmt: str, palette: Palette) -> str:
    if fmt == "json":
        return render_json(programs)
    if fmt == "sarif":
        return render_sarif(programs)
    return render_text(programs, palette)


def _run(args: argparse.Namespace, prog: str) -> int:
    stdout, stderr = sys.stdout, sys.stderr

    def note(message: str) -> None:
        _write(stderr, f"{prog}: note: {printable(message)}\n")

    if not args.paths:
        raise UsageError("no paths given; name .spy files, directories, or - for stdin")
    if args.list_books and args.format == "sarif":
        raise UsageError("--list-books works with --format text or json")
    inputs = collect(args.paths, note)
    if args.emit and len(inputs) != 1:
        raise UsageError(f"--emit {args.emit} takes exactly one program; got {len(inputs)}")

    programs = [Compilation.of(program.data, program.path) for program in inputs]
    status = EXIT_DIAGNOSTICS if any(p.diagnostics for p in programs) else EXIT_CLEAN
    palette = Palette.ansi() if _wants_colour(args.color, stdout) else Palette()

    if args.emit and programs[0].ok:
        python = programs[0].python
        _write(stdout, python if python.endswith("\n") else python + "\n")
        return status
    if args.list_books and args.format == "text":
        # The listing owns stdout, so a script can read it; diagnostics go to stderr.
        _write(stdout, render_books(programs))
        stderr_palette = Palette.ansi() if _wants_colour(args.color, stderr) else Palette()
        _write(stderr, render_text(programs, stderr_palette))
    else:
        _write(stdout, _report(programs, args.format, palette))
    if args.format == "text":
        _write(stderr, summary_line(programs) + "\n")
    return status


def main(argv: Sequence[str] | None = None, prog: str = "jarvis-compile") -> int:
    """Run `jarvis-compile` on `argv` (default: the process's arguments); return the exit status."""
    parser = _parser(prog)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except _ParserExit as stop:
        return stop.status
    try:
        return _run(args, prog)
    except UsageError as error:
        _write(sys.stderr, f"{prog}: error: {printable(str(error))}\n")
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`| head`); stop quietly, as other Unix tools do.
        _silence_stdout()
        return EXIT_DIAGNOSTICS


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())

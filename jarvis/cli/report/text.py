"""The text format: diagnostics as people read them in a terminal.

Each diagnostic is a block:

    path:line:col: CODE message
        the source line
            ^~~~~~
      hint: what to do instead

The caret line is laid out in terminal cells, not characters: tabs expand to the
next multiple of `TAB_WIDTH`, wide (East Asian) characters take two cells and
combining marks none, so the caret stays under the code it points at. Control and
invisible formatting characters (which could move the cursor, recolour the terminal
or reorder text) are shown as U+FFFD, in source lines, messages and paths alike.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from jarvis.compiler import Compilation, Diagnostic

TAB_WIDTH = 4
"""Tab stops of the source lines shown under a diagnostic."""

_SHOWN_AS = "\N{REPLACEMENT CHARACTER}"
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


@dataclass(frozen=True)
class Palette:
    """ANSI styles for each part of a block; the default palette is plain text."""

    location: str = ""
    code: str = ""
    caret: str = ""
    hint: str = ""
    reset: str = ""

    @classmethod
    def ansi(cls) -> Palette:
        return cls(
            location="\x1b[1m",
            code="\x1b[1;31m",
            caret="\x1b[1;31m",
            hint="\x1b[36m",
            reset="\x1b[0m",
        )

    def paint(self, style: str, text: str) -> str:
        return f"{style}{text}{self.reset}" if style and text else text


PLAIN = Palette()
"""No colour at all."""


def _is_hidden(char: str) -> bool:
    return unicodedata.category(char) in _HIDDEN_CATEGORIES


def printable(text: str) -> str:
    """`text` with control and formatting characters replaced by U+FFFD."""
    return "".join(_SHOWN_AS if _is_hidden(char) else char for char in text)


def _cells(char: str, at: int) -> tuple[str, int]:
    """How `char` is drawn when it starts at terminal cell `at`: text and width."""
    if char == "\t":
        width = TAB_WIDTH - at % TAB_WIDTH
        return " " * width, width
    if _is_hidden(char):
        return _SHOWN_AS, 1
    if unicodedata.combining(char):
        return char, 0
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return char, 2
    return char, 1


def caret_lines(text: str, col: int, end_col: int, multiline: bool = False) -> tuple[str, str]:
    """The source line as shown, and the marker line under columns [col, end_col).

    Columns are 1-based characters. A span that runs past the line (or onto later
    lines, `multiline`) is cut at the end of the line; a position just past the end
    (where "expected ':'" points) gets a caret after the last character.
    """
    shown: list[str] = []
    starts: list[int] = []
    at = 0
    for char in text:
        drawn, width = _cells(char, at)
        shown.append(drawn)
        starts.append(at)
        at += width
    # One virtual cell past the end, for positions at the end of the line.
    starts.append(at)
    starts.append(at + 1)

    length = len(text)
    first = min(max(col, 1), length + 1) - 1
    last = length if multiline else end_col - 1
    last = min(max(last, first + 1), max(length, first + 1))
    width = max(starts[last] - starts[first], 1)
    marker = " " * starts[first] + "^" + "~" * (width - 1)
    return "".join(shown), marker


def render_diagnostic(
    diagnostic: Diagnostic, source_line: str | None, palette: Palette = PLAIN
) -> str:
    """One diagnostic as a block of lines (without a trailing newline)."""
    where = f"{printable(diagnostic.path)}:{diagnostic.line}:{diagnostic.col}:"
    lines = [
        f"{palette.paint(palette.location, where)} "
        f"{palette.paint(palette.code, diagnostic.code)} {printable(diagnostic.message)}"
    ]
    if source_line is not None:
        shown, marker = caret_lines(
            source_line,
            diagnostic.col,
            diagnostic.end_col,
            multiline=diagnostic.end_line > diagnostic.line,
        )
        lines.append(f"    {shown}".rstrip())
        lines.append(f"    {palette.paint(palette.caret, marker)}")
    if diagnostic.hint:
        lines.append(f"  {palette.paint(palette.hint, 'hint:')} {printable(diagnostic.hint)}")
    return "\n".join(lines)


def render_text(programs: Sequence[Compilation], palette: Palette = PLAIN) -> str:
    """Every diagnostic of every program, blocks separated by a blank line."""
    blocks: list[str] = []
    for program in programs:
        source = program.source
        for diagnostic in program.diagnostics:
            line = None if source is None else source.line_text(diagnostic.line)
            blocks.append(render_diagnostic(diagnostic, line, palette))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def render_books(programs: Sequence[Compilation]) -> str:
    """One `path: book.procedure` line per distinct Book call, sorted within each program."""
    lines: list[str] = []
    for program in programs:
        path = printable(program.path)
        for book, procedures in program.books().items():
            lines += [f"{path}: {book}.{procedure}" for procedure in procedures]
    return "".join(f"{line}\n" for line in lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def summary_line(programs: Sequence[Compilation]) -> str:
    """`3 diagnostics in 1 file (2 files checked)` or `2 files checked, no problems`."""
    checked = _count(len(programs), "file")
    found = sum(len(program.diagnostics) for program in programs)
    if not found:
        return f"{checked} checked, no problems"
    failing = sum(1 for program in programs if program.diagnostics)
    return f"{_count(found, 'diagnostic')} in {_count(failing, 'file')} ({checked} checked)"

"""Program text as the compiler sees it: decoded, checked, and able to map positions.

`load_source` turns raw bytes into a `Source` or a diagnostic: invalid UTF-8, NUL
bytes and oversized programs are refused here, before the parser sees them. A leading
byte-order mark is dropped. `Source.span` converts the UTF-8 byte offsets that
Python's `ast` reports into the character columns people and editors use.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import cached_property

from jarvis.compiler.diagnostics import RULES, Diagnostic

MAX_SOURCE_BYTES = 1_000_000
"""The largest program the compiler accepts; larger ones get SPY004."""

_BOM = "\ufeff"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
"""Line ends as Python's tokenizer counts them (`str.splitlines` also splits at form
feeds, U+2028 and others, which would shift every later line number)."""


@dataclass(frozen=True)
class _LineColumns:
    """Where the multi-byte characters of one line are, to map byte offsets to columns."""

    starts: list[int]
    """The byte offset at which each multi-byte character starts, ascending."""
    ends: list[int]
    """The byte offset just past each of those characters."""
    extra: list[int]
    """`extra[k]`: bytes beyond one per character, summed over the first k of them."""
    length: int
    """The line's length in bytes."""

    @classmethod
    def of(cls, text: str) -> _LineColumns:
        starts: list[int] = []
        ends: list[int] = []
        extra = [0]
        offset = 0
        if not text.isascii():
            for char in text:
                width = len(char.encode("utf-8", errors="surrogatepass"))
                if width > 1:
                    starts.append(offset)
                    ends.append(offset + width)
                    extra.append(extra[-1] + width - 1)
                offset += width
        else:
            offset = len(text)
        return cls(starts, ends, extra, offset)


@dataclass(frozen=True)
class Source:
    """A SPy program's text and the name it is reported under."""

    path: str
    text: str
    lines: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _columns: dict[int, _LineColumns] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        lines = _LINE_BREAK.split(self.text)
        if lines and not lines[-1]:
            lines.pop()  # the text ends with a line break, not with an empty line
        object.__setattr__(self, "lines", tuple(lines))

    @cached_property
    def digest(self) -> str:
        """The SHA-256 of the text: the program's identity for caches and snapshots."""
        import hashlib  # the compiler's: a zygote (which has Sources) never loads OpenSSL

        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def line_text(self, line: int) -> str:
        """The text of 1-based `line`, or "" past the end."""
        if 1 <= line <= len(self.lines):
            return self.lines[line - 1]
        return ""

    def char_col(self, line: int, byte_offset: int) -> int:
        """The 1-based character column of a UTF-8 byte offset within `line`.

        An offset inside a multi-byte character counts up to that character's start; an
        offset past the end of the line counts one column per byte beyond it.
        """
        columns = self._columns.get(line)
        if columns is None:
            # Built once per line: a program with many diagnostics on one long line
            # must not re-encode that line for each of them.
            columns = self._columns[line] = _LineColumns.of(self.line_text(line))
        if byte_offset >= columns.length:
            chars = columns.length - columns.extra[-1]
            return chars + 1 + max(0, byte_offset - columns.length)
        before = bisect_left(columns.starts, byte_offset)
        if before and columns.ends[before - 1] > byte_offset:
            before -= 1
            byte_offset = columns.starts[before]
        return byte_offset - columns.extra[before] + 1

    def diagnostic(
        self,
        code: str,
        message: str,
        line: int,
        byte_col: int,
        end_line: int | None = None,
        end_byte_col: int | None = None,
        hint: str | None = None,
    ) -> Diagnostic:
        """A diagnostic at an `ast`-style position (byte offsets) in this source."""
        end_line = line if end_line is None else end_line
        col = self.char_col(line, byte_col)
        end_col = col + 1 if end_byte_col is None else self.char_col(end_line, end_byte_col)
        if end_line == line and end_col <= col:
            end_col = col + 1
        return Diagnostic(
            code=code,
            message=message,
            path=self.path,
            line=line,
            col=col,
            end_line=end_line,
            end_col=end_col,
            hint=RULES[code].hint if hint is None else hint,
        )


def _whole_file(path: str, code: str, message: str, line: int = 1, col: int = 1) -> Diagnostic:
    return Diagnostic(code, message, path, line, col, line, col + 1, RULES[code].hint)


def load_source(data: bytes | str, path: str = "<string>") -> Source | Diagnostic:
    """Decode and check program text; return the `Source` or why it cannot be one."""
    if isinstance(data, bytes):
        if len(data) > MAX_SOURCE_BYTES:
            return _whole_file(
                path, "SPY004",
                f"the program is {len(data):,} bytes; the limit is {MAX_SOURCE_BYTES:,}",
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line = before.count(b"\n") + 1
            col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")) + 1
            return _whole_file(
                path, "SPY002",
                f"byte 0x{data[exc.start]:02x} at offset {exc.start} is not valid UTF-8",
                line, col,
            )
    else:
        text = data
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > MAX_SOURCE_BYTES:
            return _whole_file(
                path, "SPY004",
                f"the program is {size:,} bytes; the limit is {MAX_SOURCE_BYTES:,}",
            )
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        return _whole_file(path, "SPY003", "the program contains a NUL byte", line, col)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        col = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
        return _whole_file(path, "SPY002", "the program contains a lone surrogate", line, col)
    return Source(path=path, text=text)

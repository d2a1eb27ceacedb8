"""Where in a SPy program an exception was raised: line, column and the source line."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class ErrorLocation:
    """A 1-based line and column span in the program's source."""

    line: int
    col: int
    end_line: int
    end_col: int


_ORIGIN = "_jv_origin"
"""The attribute where `mark_origin` keeps a position (SPy programs cannot name it)."""


def mark_origin(error: BaseException, line: int, col: int, end_line: int, end_col: int) -> None:
    """Record that `error` comes from the effect at this span (1-based columns, as in
    `ErrorLocation` and trace events).

    An effect's error (a Book's, a bad `sleep` argument) is raised into the program
    by the step function's entry, whose position says nothing; the span of the call
    that suspended is where it happened. The first mark wins.
    """
    if getattr(error, _ORIGIN, None) is None:
        with contextlib.suppress(AttributeError):  # a type without a __dict__
            setattr(error, _ORIGIN, (line, col, end_line, end_col))


def locate(error: BaseException, path: str) -> ErrorLocation | None:
    """Where `error` was raised in the program at `path`: the effect it came from
    (`mark_origin`), else the innermost position in `path` on its traceback."""
    origin = getattr(error, _ORIGIN, None)
    if isinstance(origin, tuple) and len(origin) == 4:
        return ErrorLocation(*origin)
    found: ErrorLocation | None = None
    tb: TracebackType | None = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == path:
            positions = list(code.co_positions())
            index = tb.tb_lasti // 2
            line, end_line, col, end_col = (
                positions[index] if 0 <= index < len(positions) else (None, None, None, None)
            )
            line = line or tb.tb_lineno
            found = ErrorLocation(
                line=line,
                col=(col or 0) + 1,
                end_line=end_line or line,
                end_col=(end_col or (col or 0) + 1) + 1,
            )
        tb = tb.tb_next
    return found

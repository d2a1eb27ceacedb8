"""Where in a SPy program an exception was raised: line, column and the source line."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class ErrorLocation:
    """A 1-based line and column span in the program's source."""

    line: int
    col: int
    end_line: int
    end_col: int


def locate(error: BaseException, path: str) -> ErrorLocation | None:
    """The innermost position in `path` on the traceback of `error`, if any."""
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

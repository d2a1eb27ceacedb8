"""The records in a compiled program's tables: its functions and its positions.

A `CompiledProgram` carries a table of resumable functions (`FunctionInfo`), the
positions of its suspension points (`SuspensionSite`) and the points its trace hooks
report (`Site`). The compiler fills the tables; the runtime reads them, and they travel
pickled from the host to a child (`jarvis.runtime.program_bytes`). They are defined
here, in a module that imports nothing of the compiler's pipeline, so that the runtime
and a child load them without loading the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FunctionInfo:
    """A resumable function of the program: what the runtime needs to call it."""

    fid: int
    name: str
    qualname: str
    cells: tuple[str, ...]


@dataclass
class SuspensionSite:
    """Where a suspension point stands, for errors and trace events."""

    line: int
    col: int
    end_line: int
    end_col: int


@dataclass(frozen=True)
class Site:
    """One traced point of a program: a statement or an expression.

    Lines are 1-based; columns are 1-based and count characters; `end_col` is the
    column just past the last character (the convention of `Diagnostic`). For compound
    statements (`if`, `for`, `while`, `try`, `def`) the span and the text are the
    header, up to and including the colon that opens the body.
    """

    kind: Literal["expr", "stmt"]
    line: int
    col: int
    end_line: int
    end_col: int
    text: str
    summarize: bool = False
    """The expression is the container of a subscript (`d` in `d[k]`) or of a
    membership test (`d` in `k in d`), or the receiver of a method call (`xs` in
    `xs.append(x)`): the program uses one item or a method, not the whole value, so a
    container value is shown by its size only."""

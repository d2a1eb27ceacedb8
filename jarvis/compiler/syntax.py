"""Parsing: `Source` to a Python `ast.Module`, or a diagnostic that says where it broke.

Whatever the parser throws (SyntaxError and its IndentationError/TabError kin,
MemoryError and RecursionError on pathological nesting, ValueError on oversized
literals) becomes one diagnostic. A tree deeper than `MAX_DEPTH` is refused here, so
every later pass may recurse over the tree without risking the interpreter's stack.
"""

from __future__ import annotations

import ast
import warnings

from jarvis.compiler.diagnostics import Diagnostic
from jarvis.compiler.source import Source

MAX_DEPTH = 100
"""The deepest nesting of AST nodes a program may have."""


def parse(source: Source) -> ast.Module | Diagnostic:
    """Parse `source`; return the tree or the one diagnostic that explains the failure."""
    try:
        with warnings.catch_warnings():
            # Invalid escape sequences and similar only warn in CPython; they are not
            # errors in SPy either, and warnings must not reach the user's terminal.
            warnings.simplefilter("ignore")
            tree = ast.parse(source.text, filename=source.path, type_comments=False)
    except SyntaxError as exc:
        return _syntax_diagnostic(source, exc)
    except (MemoryError, RecursionError):
        return source.diagnostic(
            "SPY005", "the program nests too deeply for the parser", 1, 0,
        )
    except ValueError as exc:
        return source.diagnostic("SPY001", f"invalid program: {exc}", 1, 0)
    deep = _too_deep(tree)
    if deep is not None:
        line = getattr(deep, "lineno", 1)
        col = getattr(deep, "col_offset", 0)
        return source.diagnostic(
            "SPY005",
            f"the program nests more than {MAX_DEPTH} levels deep",
            line,
            col,
        )
    return tree


def _syntax_diagnostic(source: Source, exc: SyntaxError) -> Diagnostic:
    line = exc.lineno or 1
    # SyntaxError offsets are 1-based character columns (not bytes) in CPython 3.10+.
    col = max(exc.offset or 1, 1)
    end_line = exc.end_lineno or line
    end_col = exc.end_offset or col + 1
    if end_line == line and end_col <= col:
        end_col = col + 1
    reason = exc.msg or "invalid syntax"
    kind = type(exc).__name__
    message = reason if kind == "SyntaxError" else f"{reason} ({kind})"
    return Diagnostic(
        code="SPY001",
        message=message,
        path=source.path,
        line=line,
        col=col,
        end_line=end_line,
        end_col=end_col,
        hint=_syntax_hint(reason),
    )


def _syntax_hint(reason: str) -> str:
    if "tab" in reason.lower():
        return "indent with spaces only"
    if "indent" in reason.lower():
        return "check that the block is indented consistently"
    if "nested" in reason.lower():
        return "move inner parts into variables or functions"
    return "fix the syntax at the marked position"


def _too_deep(tree: ast.AST) -> ast.AST | None:
    """The first node deeper than MAX_DEPTH, found without recursion; None if none."""
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return node
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return None

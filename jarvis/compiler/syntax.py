"""Parsing: `Source` to a Python `ast.Module`, or a diagnostic that says where it broke.

Whatever the parser throws (SyntaxError and its IndentationError/TabError kin,
MemoryError and RecursionError on pathological nesting, ValueError on oversized
literals) becomes one diagnostic. A tree deeper than `MAX_DEPTH` is refused here, so
every later pass may recurse over the tree without risking the interpreter's stack.

Some rules of Python are checked only when CPython compiles a tree, not when it parses
one (`return` outside a function, `break` outside a loop, a repeated keyword argument,
too many nested loops, ...). `compile_errors` runs that step, so a program the front
end accepts is one Python can run.
"""

from __future__ import annotations

import ast
import re
import sys
import warnings

from jarvis.compiler.diagnostics import Diagnostic
from jarvis.compiler.source import Source
from jarvis.compiler.trees import child_nodes

MAX_DEPTH = 100
"""The deepest nesting of AST nodes a program may have."""

_FILENAME = "<spy>"
"""The file name CPython is given. Diagnostics carry `Source.path`; passing that to
CPython too would refuse paths with a NUL character and read files named like it."""


def parse(source: Source) -> ast.Module | Diagnostic:
    """Parse `source`; return the tree or the one diagnostic that explains the failure."""
    try:
        with warnings.catch_warnings():
            # Invalid escape sequences and similar only warn in CPython; they are not
            # errors in SPy either, and warnings must not reach the user's terminal.
            warnings.simplefilter("ignore")
            tree = ast.parse(source.text, filename=_FILENAME, type_comments=False)
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


def compile_errors(source: Source, tree: ast.Module) -> Diagnostic | None:
    """The first error CPython's compiler finds in a parsed `tree`, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(tree, _FILENAME, "exec", dont_inherit=True)
    except SyntaxError as exc:
        # The compiler reports positions of tree nodes: 1-based UTF-8 byte offsets.
        line = exc.lineno or 1
        end_line = exc.end_lineno or line
        end = exc.end_offset - 1 if exc.end_offset and exc.end_offset > 0 else None
        reason = exc.msg or "invalid program"
        return source.diagnostic(
            _nesting_code(reason), reason, line, max((exc.offset or 1) - 1, 0), end_line, end,
            hint=_syntax_hint(reason),
        )
    except (MemoryError, RecursionError):
        return source.diagnostic("SPY005", "the program nests too deeply to compile", 1, 0)
    except ValueError as exc:
        return source.diagnostic("SPY001", f"invalid program: {exc}", 1, 0)
    return None


def _nesting_code(reason: str) -> str:
    """SPY005 for the parser's and compiler's own nesting limits, SPY001 otherwise."""
    lowered = reason.lower()
    if "too many" in lowered and ("nested" in lowered or "levels of indentation" in lowered):
        return "SPY005"
    return "SPY001"


_BYTE_OFFSET_ERRORS = ("leading zeros in decimal integer literal",)
"""Tokenizer errors whose offsets CPython 3.11 reports in UTF-8 bytes, not characters."""

_LONG_INT = re.compile(r"(?<![\w.])[0-9][0-9_]*")


def _syntax_diagnostic(source: Source, exc: SyntaxError) -> Diagnostic:
    line = exc.lineno or 1
    # SyntaxError offsets are 1-based character columns (not bytes) in CPython 3.10+.
    col = max(exc.offset or 1, 1)
    end_line = exc.end_lineno or line
    end_col = exc.end_offset or col + 1
    reason = exc.msg or "invalid syntax"
    if reason.startswith(_BYTE_OFFSET_ERRORS):
        col = source.char_col(line, col - 1)
        end_col = source.char_col(end_line, end_col - 1)
    if reason.startswith("Exceeds the limit") and "integer string conversion" in reason:
        line, col, end_col, reason = _long_int_literal(source, line, col, end_col)
        end_line = line
    if end_line == line and end_col <= col:
        end_col = col + 1
    kind = type(exc).__name__
    message = reason if kind == "SyntaxError" else f"{reason} ({kind})"
    return Diagnostic(
        code=_nesting_code(reason),
        message=message,
        path=source.path,
        line=line,
        col=col,
        end_line=end_line,
        end_col=end_col,
        hint=_syntax_hint(reason),
    )


def _long_int_literal(
    source: Source, line: int, col: int, end_col: int
) -> tuple[int, int, int, str]:
    """Where the decimal literal that is too long stands, and a message without the
    interpreter-level advice CPython gives (its position is unknown to CPython 3.11)."""
    limit = sys.get_int_max_str_digits()
    message = f"an int literal may have at most {limit} decimal digits"
    for number, text in enumerate(source.lines, start=1):
        for match in _LONG_INT.finditer(text):
            if len(match.group().replace("_", "")) > limit:
                return number, match.start() + 1, match.end() + 1, message
    return line, col, end_col, message


def _syntax_hint(reason: str) -> str:
    if "tab" in reason.lower():
        return "indent with spaces only"
    if "indent" in reason.lower():
        return "check that the block is indented consistently"
    if "nested" in reason.lower():
        return "move inner parts into variables or functions"
    return "fix the syntax at the marked position"


def _too_deep(tree: ast.AST) -> ast.AST | None:
    """The first node deeper than MAX_DEPTH, right to left, depth first; None if none.

    A node without a position (a context such as `Load`, an operator) stands for the
    nearest enclosing node that has one, so the diagnostic points into the program.
    The walk recurses, but never below MAX_DEPTH, so it cannot exhaust the stack.
    """
    return _deepest(tree, 0, tree)


_PLACED: dict[type, bool] = {}
"""For each node class: whether its nodes have a position (`lineno`)."""


def _deepest(node: ast.AST, depth: int, placed: ast.AST) -> ast.AST | None:
    kind = type(node)
    located = _PLACED.get(kind)
    if located is None:
        located = _PLACED[kind] = "lineno" in kind._attributes
    if located:
        placed = node
    if depth >= MAX_DEPTH:
        if depth > MAX_DEPTH:
            return placed
        # The children, if any, are too deep: the last of them is found first.
        children = child_nodes(node)
        return _deepest(children[-1], depth + 1, placed) if children else None
    fields = node.__dict__
    below = depth + 1
    for name in reversed(kind._fields):
        value = fields.get(name)
        if type(value) is list:
            for item in reversed(value):
                if isinstance(item, ast.AST) and item._fields:
                    found = _deepest(item, below, placed)
                    if found is not None:
                        return found
        elif isinstance(value, ast.AST) and value._fields:
            # A child without fields (`Load`, `Add`, `Pass`) has nothing below it.
            found = _deepest(value, below, placed)
            if found is not None:
                return found
    return None

"""The whitelist validator: every node, name and attribute of a program, checked.

A node type is allowed only if it is listed in `ALLOWED_NODES`; everything else gets a
diagnostic, the well-known refused constructs with their own code and hint, and the walk
goes on inside it so that one run reports every problem of a program. Names and
attributes that start with `_`, attributes outside the language's allow-list and
assignments to attributes are refused here too. Name resolution (what a name refers to)
is the resolver's job (`resolve.py`); this pass looks at one node at a time.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from jarvis.compiler.diagnostics import Diagnostic
from jarvis.compiler.language import (
    ATTRIBUTES,
    BOOKS_MODULE,
    REFUSED_ATTRIBUTES,
    REFUSED_BUILTINS,
)
from jarvis.compiler.source import Source
from jarvis.compiler.syntax import compile_errors

ALLOWED_NODES: frozenset[type[ast.AST]] = frozenset({
    # module and statements
    ast.Module, ast.FunctionDef, ast.Return, ast.Delete, ast.Assign, ast.AugAssign,
    ast.For, ast.While, ast.If, ast.Raise, ast.Try, ast.Assert, ast.ImportFrom,
    ast.Expr, ast.Pass, ast.Break, ast.Continue,
    # expressions
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Lambda, ast.IfExp, ast.Dict, ast.Set,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Compare, ast.Call,
    ast.FormattedValue, ast.JoinedStr, ast.Constant, ast.Attribute, ast.Subscript,
    ast.Starred, ast.Name, ast.List, ast.Tuple, ast.Slice,
    # contexts
    ast.Load, ast.Store, ast.Del,
    # operators
    ast.And, ast.Or, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Mod, ast.Pow, ast.LShift,
    ast.RShift, ast.BitOr, ast.BitXor, ast.BitAnd, ast.FloorDiv, ast.Invert, ast.Not,
    ast.UAdd, ast.USub, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is,
    ast.IsNot, ast.In, ast.NotIn,
    # helpers
    ast.comprehension, ast.ExceptHandler, ast.arguments, ast.arg, ast.keyword, ast.alias,
})

_REFUSED_NODE_CODES: dict[type[ast.AST], tuple[str, str]] = {
    ast.ClassDef: ("SPY101", "classes are not part of SPy"),
    ast.Import: ("SPY102", "`import` is not part of SPy; only `from books import NAME`"),
    ast.With: ("SPY103", "`with` statements are not part of SPy"),
    ast.AsyncWith: ("SPY104", "`async with` is not part of SPy"),
    ast.AsyncFor: ("SPY104", "`async for` is not part of SPy"),
    ast.AsyncFunctionDef: ("SPY104", "`async def` is not part of SPy"),
    ast.Await: ("SPY104", "`await` is not part of SPy"),
    ast.Yield: ("SPY105", "`yield` is not part of SPy"),
    ast.YieldFrom: ("SPY105", "`yield from` is not part of SPy"),
    ast.Global: ("SPY106", "`global` is not part of SPy"),
    ast.Nonlocal: ("SPY106", "`nonlocal` is not part of SPy"),
    ast.Match: ("SPY108", "`match` statements are not part of SPy"),
    ast.TryStar: ("SPY109", "`except*` is not part of SPy"),
    ast.NamedExpr: ("SPY110", "assignment expressions (`:=`) are not part of SPy"),
    ast.AnnAssign: ("SPY113", "annotated assignments are not part of SPy v1"),
    ast.MatMult: ("SPY116", "the `@` operator is not part of SPy"),
}

_PARTS_OF_REFUSED: tuple[type[ast.AST], ...] = (ast.withitem, ast.match_case)
"""Nodes that occur only inside a refused statement, which is reported already; the
code they hold is still checked."""

_ALLOWED_CONSTANT_TYPES = (str, int, float, bool, type(None))


class _Validator:
    """One walk over the tree; collects diagnostics instead of stopping at the first."""

    def __init__(self, source: Source, book_names: frozenset[str]) -> None:
        self.source = source
        self.book_names = book_names
        self.diagnostics: list[Diagnostic] = []

    # -- reporting ----------------------------------------------------------------

    def report(self, code: str, message: str, node: ast.AST, hint: str | None = None) -> None:
        line = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        end_line = getattr(node, "end_lineno", None)
        end_col = getattr(node, "end_col_offset", None)
        self.diagnostics.append(
            self.source.diagnostic(code, message, line, col, end_line, end_col, hint)
        )

    def report_span(
        self, code: str, message: str, line: int, col: int, end_col: int, hint: str | None = None
    ) -> None:
        self.diagnostics.append(
            self.source.diagnostic(code, message, line, col, line, end_col, hint)
        )

    # -- walking ------------------------------------------------------------------

    def walk(self, node: ast.AST, parent: ast.AST | None) -> None:
        kind = type(node)
        if kind not in ALLOWED_NODES:
            if isinstance(node, ast.pattern):
                return  # `case` patterns bind and compare; the `match` is reported already
            if not isinstance(node, _PARTS_OF_REFUSED):
                code, message = _REFUSED_NODE_CODES.get(
                    kind, ("SPY119", f"`{kind.__name__}` is not part of SPy")
                )
                # Operators carry no position; report them at their parent expression.
                self.report(code, message, node if hasattr(node, "lineno") else parent or node)
        check = _check_of(kind)
        if check is not None:
            check(self, node, parent)
        skipped = _SKIPPED_FIELDS.get(kind)
        fields = node.__dict__
        for name in kind._fields:
            if skipped is not None and name in skipped:
                continue
            value = fields.get(name)
            if type(value) is list:
                for item in value:
                    if isinstance(item, ast.AST) and (item._fields
                                                      or type(item) not in _LEAVES):
                        self.walk(item, node)
            elif isinstance(value, ast.AST) and (value._fields or type(value) not in _LEAVES):
                # A context, an allowed operator or `pass`: nothing to check or enter.
                self.walk(value, node)

    # -- statements ---------------------------------------------------------------

    def check_FunctionDef(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef, parent: ast.AST | None
    ) -> None:
        line, col, _ = binding_position(self.source, node)
        self.check_name(node.name, line, col)
        for decorator in node.decorator_list:
            self.report("SPY107", "decorators are not part of SPy", decorator)
        if node.returns is not None:
            self.report("SPY113", "return annotations are not part of SPy v1", node.returns)

    check_AsyncFunctionDef = check_FunctionDef

    def check_arguments(self, node: ast.arguments, parent: ast.AST | None) -> None:
        for arg in node.posonlyargs:
            self.report(
                "SPY114", f"parameter `{arg.arg}` is positional-only (`/`), not part of SPy", arg
            )
        for arg in _all_args(node):
            if arg.annotation is not None:
                self.report(
                    "SPY113", "parameter annotations are not part of SPy v1", arg.annotation
                )

    def check_arg(self, node: ast.arg, parent: ast.AST | None) -> None:
        self.check_name(node.arg, node.lineno, node.col_offset)

    def check_Assign(self, node: ast.Assign, parent: ast.AST | None) -> None:
        for target in node.targets:
            self.check_target(target)

    def check_AugAssign(self, node: ast.AugAssign, parent: ast.AST | None) -> None:
        self.check_target(node.target)

    def check_For(self, node: ast.For, parent: ast.AST | None) -> None:
        self.check_target(node.target)

    def check_comprehension(self, node: ast.comprehension, parent: ast.AST | None) -> None:
        if node.is_async:
            self.report("SPY117", "`async for` in a comprehension is not part of SPy", node.target)
        self.check_target(node.target)

    def check_Delete(self, node: ast.Delete, parent: ast.AST | None) -> None:
        for target in node.targets:
            if not isinstance(target, ast.Subscript):
                self.report("SPY112", "`del` can only remove an item: `del d[key]`", target)

    def check_ImportFrom(self, node: ast.ImportFrom, parent: ast.AST | None) -> None:
        if node.module != BOOKS_MODULE or node.level != 0:
            if node.level == 0:
                self.report("SPY102", f"`from {node.module} import ...` is not allowed; "
                            "only `from books import NAME`", node)
            else:
                self.report("SPY304", "relative imports are not allowed", node)
            return
        if not isinstance(parent, ast.Module):
            self.report("SPY303", "`from books import ...` must be at the top level", node)
        for alias in node.names:
            if alias.name == "*":
                self.report("SPY304", "`from books import *` is not allowed", alias)
                continue
            self.check_name(alias.name, alias.lineno, alias.col_offset)
            if alias.asname is not None:
                # `NAME as ASNAME`: the alias node ends where ASNAME does.
                line = alias.end_lineno or alias.lineno
                end = alias.end_col_offset or alias.col_offset
                start = max(end - len(alias.asname.encode("utf-8")), 0)
                self.check_name(alias.asname, line, start)

    def check_ExceptHandler(self, node: ast.ExceptHandler, parent: ast.AST | None) -> None:
        if node.name is not None:
            line, col, _ = binding_position(self.source, node)
            self.check_name(node.name, line, col)

    # -- expressions --------------------------------------------------------------

    def check_Name(self, node: ast.Name, parent: ast.AST | None) -> None:
        if isinstance(node.ctx, ast.Load) and node.id in REFUSED_BUILTINS:
            return  # `__import__` and kin: the resolver reports SPY204 with the reason
        self.check_name(node.id, node.lineno, node.col_offset)

    def check_keyword(self, node: ast.keyword, parent: ast.AST | None) -> None:
        if node.arg is not None:
            self.check_name(node.arg, node.lineno, node.col_offset)

    def check_Attribute(self, node: ast.Attribute, parent: ast.AST | None) -> None:
        line, col, end_col = self._attribute_position(node)
        name = node.attr
        if not isinstance(node.ctx, ast.Load):
            return  # reported by check_target / check_Delete
        if name.startswith("_"):
            self.report_span(
                "SPY202", f"attribute `{name}` starts with `_` and is not accessible",
                line, col, end_col,
            )
        elif name not in ATTRIBUTES and not self._is_book(node.value):
            reason = REFUSED_ATTRIBUTES.get(name)
            message = f"`.{name}` is not an attribute of any SPy value"
            self.report_span("SPY203", message, line, col, end_col, hint=reason)

    def check_Constant(self, node: ast.Constant, parent: ast.AST | None) -> None:
        if not isinstance(node.value, _ALLOWED_CONSTANT_TYPES):
            kind = {bytes: "bytes", complex: "complex-number"}.get(
                type(node.value), "`...` (Ellipsis)"
            )
            self.report("SPY115", f"{kind} literals are not part of SPy", node)
        elif type(node.value) is int and _too_long_to_print(node.value):
            # The parser refuses such decimal literals; hex, octal and binary ones get
            # here, and Python could not write them out again (`ast.unparse`, repr).
            limit = sys.get_int_max_str_digits()
            self.report("SPY001", f"an int literal may have at most {limit} decimal digits", node)

    # -- helpers ------------------------------------------------------------------

    def check_name(self, name: str, line: int, col: int) -> None:
        if name.startswith("_"):
            end = col + len(name.encode("utf-8"))
            self.report_span(
                "SPY201", f"name `{name}` starts with `_`; such names are reserved",
                line, col, end,
            )

    def check_target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Attribute):
            self.report(
                "SPY111", f"cannot assign to attribute `.{target.attr}`; SPy has no objects "
                "with settable attributes", target,
            )
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.check_target(element)
        elif isinstance(target, ast.Starred):
            self.check_target(target.value)

    def _is_book(self, node: ast.expr) -> bool:
        """`BOOK.procedure`: the attribute names a procedure, not a value's method.

        The resolver guarantees that a Book name is never rebound, so a Name that
        matches an imported Book always refers to it; it also reports (SPY301) a
        procedure named without being called.
        """
        return isinstance(node, ast.Name) and node.id in self.book_names

    def _attribute_position(self, node: ast.Attribute) -> tuple[int, int, int]:
        """Where the attribute's name stands (byte offsets), for a precise caret."""
        end_line = node.end_lineno or node.lineno
        end_col = node.end_col_offset if node.end_col_offset is not None else node.col_offset
        start = end_col - len(node.attr.encode("utf-8"))
        if start < 0:
            return node.lineno, node.col_offset, end_col
        return end_line, start, end_col


def binding_position(
    source: Source, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ExceptHandler
) -> tuple[int, int, int]:
    """Where the name bound by `def NAME` or `except ... as NAME` stands, as the line and
    the UTF-8 byte offsets of its start and end; the statement's start if not found."""
    if isinstance(node, ast.ExceptHandler):
        name = node.name or ""
        keyword = "as"
        after = node.type if node.type is not None else node
        line, offset = after.end_lineno or node.lineno, after.end_col_offset or 0
        last = node.body[0].lineno if node.body else line
    else:
        name, keyword = node.name, "def"
        line, offset = node.lineno, node.col_offset
        last = node.body[0].lineno if node.body else line
    pattern = re.compile(rf"\b{keyword}\s+({re.escape(name)})(?!\w)")
    for number in range(line, max(line, last) + 1):
        text = source.line_text(number)
        start = source.char_col(number, offset) - 1 if number == line else 0
        found = pattern.search(text, start)
        if found is not None:
            col = len(text[: found.start(1)].encode("utf-8"))
            return number, col, col + len(name.encode("utf-8"))
    return node.lineno, node.col_offset, node.col_offset + 1


def _too_long_to_print(value: int) -> bool:
    """Whether `value` has more decimal digits than `str(value)` may produce."""
    limit = sys.get_int_max_str_digits()
    # A bit costs at most 0.302 decimal digits: cheap test first, exact one near the limit.
    return limit > 0 and value.bit_length() * 0.302 > limit - 1 and abs(value) >= 10**limit


def _all_args(node: ast.arguments) -> Iterator[ast.arg]:
    yield from node.posonlyargs
    yield from node.args
    if node.vararg is not None:
        yield node.vararg
    yield from node.kwonlyargs
    if node.kwarg is not None:
        yield node.kwarg


_CHECKS: dict[type, Callable[[_Validator, Any, ast.AST | None], None] | None] = {}


def _check_of(kind: type) -> Callable[[_Validator, Any, ast.AST | None], None] | None:
    """The validator's `check_<class>` method for nodes of `kind`, if it has one."""
    try:
        return _CHECKS[kind]
    except KeyError:
        check = _CHECKS[kind] = getattr(_Validator, f"check_{kind.__name__}", None)
        return check


_LEAVES: frozenset[type[ast.AST]] = frozenset(
    kind for kind in ALLOWED_NODES if not kind._fields and _check_of(kind) is None)
"""Allowed nodes with no fields and no check (contexts, operators, `pass`, `break`)."""


_SKIPPED_FIELDS: dict[type[ast.AST], frozenset[str]] = {
    # Reported by the parent's check; walking them would report their insides too.
    ast.FunctionDef: frozenset({"decorator_list", "returns"}),
    ast.AsyncFunctionDef: frozenset({"decorator_list", "returns"}),
    ast.arg: frozenset({"annotation"}),
}


def book_imports(tree: ast.Module) -> dict[str, str]:
    """The Books a program imports at its top level: local name to Book name."""
    names: dict[str, str] = {}
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module == BOOKS_MODULE:
            if statement.level:
                continue
            for alias in statement.names:
                if alias.name != "*":
                    names[alias.asname or alias.name] = alias.name
    return names


def validate(source: Source, tree: ast.Module) -> list[Diagnostic]:
    """Check every node of `tree` against the SPy whitelist; return all diagnostics.

    A tree that passes is also compiled by CPython, which enforces the rules its parser
    leaves to the compiler (see `syntax.compile_errors`). Refused constructs are reported
    first: CPython would call some of them (a top-level `await`) mere syntax errors.
    """
    validator = _Validator(source, frozenset(book_imports(tree)))
    validator.walk(tree, None)
    if not validator.diagnostics:
        failure = compile_errors(source, tree)
        if failure is not None:
            validator.diagnostics.append(failure)
    return validator.diagnostics

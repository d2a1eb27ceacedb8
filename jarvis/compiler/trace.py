"""The trace pass: hooks that report each statement and expression as it runs.

`instrument` takes a validated tree and returns a new tree in which every traced point
calls the runtime, plus the table of those points (`Site`s). At level "full":

- each statement `S` is preceded by the expression statement `_jv_s(K)`;
- each traced expression `E` becomes `_jv_t(K, E)`: the hook receives the value and
  returns it unchanged, and because `E` is the call's last argument Python evaluates
  everything in the original order, short-circuits and all. Inside comprehension and
  lambda bodies, which repeat within one statement, the hook is `_jv_c(K, E)`: the
  same, plus the check of the event buffer and the step limit that `_jv_t` leaves to
  the next statement hook;
- when nothing observable happens between a statement's start and its first traced
  expression (`x = a + 1`: loading `a`), the two hooks are one call,
  `_jv_f(Ks, K, a)`, with the same events in the same order.

Level "statements" inserts only the statement hooks; level "off" returns the tree as it
is. K is an integer literal, the index of the point in the site table, so a hook call
costs one name lookup and one call. What is not traced, and why:

- literals (`1`, `'a'`, `None`, and `-1`): their value is their text;
- the callee of a call (`f` in `f(x)`, `xs.append` in `xs.append(x)`): its value is a
  function, and `BOOK.procedure` must stay a literal attribute of the Book for the
  Book rules; the parts of a callee expression are traced (`xs` in `xs.append(x)`);
  the call itself is traced;
- the names of imported Books (`crm` in `crm.create_lead(...)`): a Book is not a value;
- assignment and `del` targets; but the container and the key of a subscript target
  (`d` and `k` in `d[k] = v`) are evaluated, and traced;
- lambdas, comprehensions and generator expressions themselves (the object is noise);
  the expressions inside them are traced each time they run;
- `*` and `**` markers (their operand is traced), keyword names, slices (their bounds
  are traced) and the parts of an f-string that are text.

A leading docstring gets no statement hook: it is never "run" in any visible sense,
and it stays the first statement. The hook names start with `_`, which no SPy
program can write, so a program can neither call nor shadow them. docs/events.md
describes the events these hooks produce.
"""

from __future__ import annotations

import ast
import io
import tokenize
from bisect import bisect_left
from collections.abc import Sequence
from typing import Literal

from jarvis.compiler.source import Source
from jarvis.compiler.tables import Site as Site
from jarvis.compiler.trees import copy_tree, fix_missing_locations
from jarvis.compiler.validate import book_imports

TraceLevel = Literal["full", "statements", "off"]

EXPR_HOOK = "_jv_t"
"""The runtime name of the expression hook: `_jv_t(K, value) -> value`."""

LOOP_EXPR_HOOK = "_jv_c"
"""The expression hook for expressions that can run many times within one statement:
the element, conditions and inner iterables of comprehensions and generator
expressions, and lambda bodies. It also checks the event buffer and the step limit,
which `_jv_t` leaves to the next statement hook (see `jarvis.runtime.trace`)."""

STMT_HOOK = "_jv_s"
"""The runtime name of the statement hook: `_jv_s(K) -> None`."""

FIRST_EXPR_HOOK = "_jv_f"
"""At level "full", the statement hook and the hook of the statement's first
expression in one call, `_jv_f(Ks, K, value) -> value`, used when nothing observable
happens between the two (the first expression is a name, say). It saves a call per
statement; the events are the same, in the same order."""

MAX_SITE_TEXT = 200
"""Site texts longer than this are clipped and end with "…"."""

_COMPOUND = (ast.If, ast.For, ast.While, ast.Try, ast.FunctionDef, ast.AsyncFunctionDef,
             ast.AsyncFor, ast.With, ast.AsyncWith, ast.ClassDef)
_NOT_TRACED = (ast.Constant, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
               ast.GeneratorExp, ast.Starred, ast.Slice, ast.FormattedValue)


def instrument(
    tree: ast.Module, source: Source, level: TraceLevel
) -> tuple[ast.Module, tuple[Site, ...]]:
    """A new tree with the trace hooks of `level`, and its site table (index = K).

    The input tree is not modified. The result compiles with `compile()` and, with
    hooks that return their value, behaves exactly as the original program.
    """
    if level == "off":
        return tree, ()
    if level not in ("full", "statements"):
        raise ValueError(f"unknown trace level {level!r}")
    module = copy_tree(tree)
    pass_ = _Instrumenter(source, expressions=level == "full", books=frozenset(book_imports(tree)))
    module.body = pass_.block(module.body, docstring=True)
    fix_missing_locations(module)
    return module, tuple(pass_.sites)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SITE_TEXT else text[: MAX_SITE_TEXT - 1] + "…"


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _is_literal(node: ast.expr) -> bool:
    """A constant, or a signed number literal (`-1` parses as an operator applied to 1)."""
    if isinstance(node, ast.Constant):
        return True
    return (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, (int, float, complex))
        and not isinstance(node.operand.value, bool)
    )


class _Instrumenter:
    """One walk over a copy of the tree, rewriting it in place and recording sites."""

    def __init__(self, source: Source, *, expressions: bool, books: frozenset[str]) -> None:
        self.source = source
        self.expressions = expressions
        self.books = books
        self.sites: list[Site] = []
        self.repeated = 0
        """How deep the walk is inside code that repeats within one statement
        (comprehension bodies, lambda bodies)."""
        self._colons: list[tuple[int, int]] | None = None

    # -- sites --------------------------------------------------------------------

    def span(self, node: ast.AST) -> tuple[int, int, int, int]:
        """The 1-based character span of a node."""
        line: int = getattr(node, "lineno", 1)
        byte_col: int = getattr(node, "col_offset", 0)
        end_line: int = getattr(node, "end_lineno", None) or line
        end_byte_col = getattr(node, "end_col_offset", None)
        col = self.source.char_col(line, byte_col)
        end_col = col if end_byte_col is None else self.source.char_col(end_line, end_byte_col)
        return line, col, end_line, end_col

    def text(self, line: int, col: int, end_line: int, end_col: int) -> str:
        if end_line < line:
            return ""
        if line == end_line:
            return self.source.line_text(line)[col - 1 : end_col - 1]
        parts = [self.source.line_text(line)[col - 1 :]]
        # A site is clipped to MAX_SITE_TEXT characters: do not join more lines than that.
        size = len(parts[0])
        for number in range(line + 1, end_line):
            if size > MAX_SITE_TEXT:
                break
            parts.append(self.source.line_text(number))
            size += len(parts[-1])
        else:
            parts.append(self.source.line_text(end_line)[: end_col - 1])
        return "\n".join(parts)

    def site(self, kind: Literal["expr", "stmt"], node: ast.AST, summarize: bool = False) -> int:
        line, col, end_line, end_col = self.span(node)
        if kind == "stmt" and isinstance(node, _COMPOUND):
            end_line, end_col = self.header_end(node, line, col, end_line, end_col)
        text = self.text(line, col, end_line, end_col)
        if not text and kind == "expr":
            text = ast.unparse(node)  # a position CPython got wrong; show the code anyway
        self.sites.append(Site(kind, line, col, end_line, end_col, _clip(text), summarize))
        return len(self.sites) - 1

    def header_end(
        self, node: ast.stmt, line: int, col: int, end_line: int, end_col: int
    ) -> tuple[int, int]:
        """Where the header of a compound statement ends: just past the colon before
        its body (the last colon outside brackets between the start and the body)."""
        body: list[ast.stmt] = getattr(node, "body", [])
        if not body:
            return end_line, end_col
        body_line, body_col, _, _ = self.span(body[0])
        colons = self.colons()
        at = bisect_left(colons, (body_line, body_col)) - 1
        if at >= 0 and colons[at] >= (line, col):
            colon_line, colon_col = colons[at]
            return colon_line, colon_col + 1
        return line, len(self.source.line_text(line)) + 1

    def colons(self) -> list[tuple[int, int]]:
        """The 1-based positions of every `:` outside brackets, in source order."""
        if self._colons is None:
            found: list[tuple[int, int]] = []
            depth = 0
            text = self.source.text.replace("\r\n", "\n").replace("\r", "\n")
            try:
                for token in tokenize.generate_tokens(io.StringIO(text).readline):
                    if token.type != tokenize.OP:
                        continue
                    if token.string in "([{":
                        depth += 1
                    elif token.string in ")]}":
                        depth -= 1
                    elif token.string == ":" and depth == 0:
                        found.append((token.start[0], token.start[1] + 1))
            except (tokenize.TokenError, SyntaxError):
                pass  # headers fall back to their first line
            self._colons = found
        return self._colons

    # -- hooks --------------------------------------------------------------------

    def statement_hook(self, statement: ast.stmt) -> ast.stmt:
        k = self.site("stmt", statement)
        call = ast.Call(ast.Name(STMT_HOOK, ast.Load()), [ast.Constant(k)], [])
        hook = ast.Expr(call)
        for node in (hook, call, call.func, call.args[0]):
            node.lineno = node.end_lineno = statement.lineno
            node.col_offset = node.end_col_offset = statement.col_offset
        return hook

    def traced(self, node: ast.expr, *, summarize: bool = False) -> ast.expr:
        """`node` with its parts instrumented, wrapped in the expression hook if traced."""
        if not self.expressions:
            return node
        if _is_literal(node) or isinstance(node, _NOT_TRACED) or self.is_book(node):
            return self.inner(node)
        k = self.site("expr", node, summarize)
        inner = self.inner(node)
        hook = LOOP_EXPR_HOOK if self.repeated else EXPR_HOOK
        call = ast.Call(ast.Name(hook, ast.Load()), [ast.Constant(k), inner], [])
        for new in (call, call.func, call.args[0]):
            ast.copy_location(new, node)
        return call

    def is_book(self, node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id in self.books

    # -- statements ---------------------------------------------------------------

    def block(self, statements: list[ast.stmt], *, docstring: bool = False) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for index, statement in enumerate(statements):
            if docstring and index == 0 and _is_docstring(statement):
                out.append(statement)
                continue
            hook = self.statement_hook(statement)
            statement = self.statement(statement)
            if not (self.expressions and self.fold(hook, statement)):
                out.append(hook)
            out.append(statement)
        return out

    def fold(self, hook: ast.stmt, statement: ast.stmt) -> bool:
        """Merge the statement hook into the statement's first expression hook, when
        nothing observable happens between the two: `_jv_t(K, x)` becomes
        `_jv_f(Ks, K, x)`, which records both events. True if it did."""
        if isinstance(statement, ast.While):
            return False  # its test runs again at every iteration
        first = _first_hook(_evaluated_first(statement))
        if not isinstance(first, ast.Call):
            return False
        assert isinstance(hook, ast.Expr) and isinstance(hook.value, ast.Call)
        first.func = ast.copy_location(ast.Name(FIRST_EXPR_HOOK, ast.Load()), first.func)
        first.args.insert(0, ast.copy_location(hook.value.args[0], first.args[0]))
        return True

    def statement(self, node: ast.stmt) -> ast.stmt:
        if isinstance(node, ast.FunctionDef):
            self.arguments(node.args)
            node.body = self.block(node.body, docstring=True)
        elif isinstance(node, ast.Return):
            if node.value is not None:
                node.value = self.traced(node.value)
        elif isinstance(node, ast.Delete):
            node.targets = [self.target(target) for target in node.targets]
        elif isinstance(node, ast.Assign):
            node.value = self.traced(node.value)
            node.targets = [self.target(target) for target in node.targets]
        elif isinstance(node, ast.AugAssign):
            node.target = self.target(node.target)  # type: ignore[assignment]
            node.value = self.traced(node.value)
        elif isinstance(node, ast.For):
            node.iter = self.traced(node.iter)
            node.target = self.target(node.target)
            node.body = self.block(node.body)
            node.orelse = self.block(node.orelse)
        elif isinstance(node, (ast.While, ast.If)):
            node.test = self.traced(node.test)
            node.body = self.block(node.body)
            node.orelse = self.block(node.orelse)
        elif isinstance(node, ast.Raise):
            if node.exc is not None:
                node.exc = self.traced(node.exc)
            if node.cause is not None:
                node.cause = self.traced(node.cause)
        elif isinstance(node, ast.Try):
            node.body = self.block(node.body)
            for handler in node.handlers:
                if handler.type is not None:
                    handler.type = self.traced(handler.type)
                handler.body = self.block(handler.body)
            node.orelse = self.block(node.orelse)
            node.finalbody = self.block(node.finalbody)
        elif isinstance(node, ast.Assert):
            node.test = self.traced(node.test)
            if node.msg is not None:
                node.msg = self.traced(node.msg)
        elif isinstance(node, ast.Expr):
            node.value = self.traced(node.value)
        # ImportFrom, Pass, Break and Continue evaluate nothing; constructs outside SPy
        # (the validator refuses them) are left as they are.
        return node

    def arguments(self, args: ast.arguments) -> None:
        args.defaults = [self.traced(default) for default in args.defaults]
        args.kw_defaults = [
            None if default is None else self.traced(default) for default in args.kw_defaults
        ]

    def target(self, node: ast.expr) -> ast.expr:
        """An assignment or `del` target: not traced, but what it evaluates is."""
        if isinstance(node, ast.Subscript):
            node.value = self.traced(node.value, summarize=True)
            node.slice = self.subscript(node.slice)
        elif isinstance(node, ast.Attribute):
            node.value = self.traced(node.value)
        elif isinstance(node, (ast.Tuple, ast.List)):
            node.elts = [self.target(element) for element in node.elts]
        elif isinstance(node, ast.Starred):
            node.value = self.target(node.value)
        return node

    # -- expressions --------------------------------------------------------------

    def subscript(self, node: ast.expr) -> ast.expr:
        """The index of a subscript: slices and tuples of slices are not values."""
        if isinstance(node, ast.Slice):
            return self.inner(node)
        if isinstance(node, ast.Tuple) and any(isinstance(e, ast.Slice) for e in node.elts):
            node.elts = [self.subscript(element) for element in node.elts]
            return node
        return self.traced(node)

    def callee(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Name):
            return node
        if isinstance(node, ast.Attribute):
            if not self.is_book(node.value):
                node.value = self.traced(node.value, summarize=True)  # the receiver
            return node
        return self.inner(node)

    def elements(self, nodes: list[ast.expr]) -> list[ast.expr]:
        return [self.traced(node) for node in nodes]

    def inner(self, node: ast.expr) -> ast.expr:
        """Instrument the parts of `node` (not `node` itself); return it."""
        if isinstance(node, (ast.Constant, ast.Name)):
            pass
        elif isinstance(node, ast.Attribute):
            if not self.is_book(node.value):
                node.value = self.traced(node.value)
        elif isinstance(node, ast.Subscript):
            node.value = self.traced(node.value, summarize=True)
            node.slice = self.subscript(node.slice)
        elif isinstance(node, ast.Call):
            node.func = self.callee(node.func)
            node.args = self.elements(node.args)
            for keyword in node.keywords:
                keyword.value = self.traced(keyword.value)
        elif isinstance(node, ast.BinOp):
            node.left = self.traced(node.left)
            node.right = self.traced(node.right)
        elif isinstance(node, ast.UnaryOp):
            node.operand = self.traced(node.operand)
        elif isinstance(node, ast.BoolOp):
            node.values = self.elements(node.values)
        elif isinstance(node, ast.Compare):
            node.left = self.traced(node.left)
            node.comparators = [
                self.traced(right, summarize=isinstance(op, (ast.In, ast.NotIn)))
                for op, right in zip(node.ops, node.comparators, strict=True)
            ]
        elif isinstance(node, ast.IfExp):
            node.test = self.traced(node.test)
            node.body = self.traced(node.body)
            node.orelse = self.traced(node.orelse)
        elif isinstance(node, ast.Dict):
            node.keys = [None if key is None else self.traced(key) for key in node.keys]
            node.values = self.elements(node.values)
        elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            node.elts = self.elements(node.elts)
        elif isinstance(node, ast.Starred):
            node.value = self.traced(node.value)
        elif isinstance(node, ast.Slice):
            node.lower = None if node.lower is None else self.traced(node.lower)
            node.upper = None if node.upper is None else self.traced(node.upper)
            node.step = None if node.step is None else self.traced(node.step)
        elif isinstance(node, ast.Lambda):
            self.arguments(node.args)
            self.repeated += 1
            node.body = self.traced(node.body)
            self.repeated -= 1
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            self.generators(node.generators)
            node.elt = self.traced(node.elt)
            self.repeated -= 1
        elif isinstance(node, ast.DictComp):
            self.generators(node.generators)
            node.key = self.traced(node.key)
            node.value = self.traced(node.value)
            self.repeated -= 1
        elif isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.FormattedValue):
                    self.inner(part)
        elif isinstance(node, ast.FormattedValue):
            node.value = self.traced(node.value)
            if node.format_spec is not None:
                self.inner(node.format_spec)
        return node

    def generators(self, generators: list[ast.comprehension]) -> None:
        """The generators of a comprehension, in evaluation order: the first iterable
        runs once, in the enclosing scope; everything after it runs per item. Leaves
        the walk inside the repeated part (the caller does the element and leaves)."""
        for index, generator in enumerate(generators):
            generator.iter = self.traced(generator.iter)
            if index == 0:
                self.repeated += 1
            generator.target = self.target(generator.target)
            generator.ifs = self.elements(generator.ifs)


# -- folding the statement hook --------------------------------------------------------

_CLEAR = "clear"
"""`_first_hook`: the code evaluated nothing observable and reached no hook."""
_BLOCKED = "blocked"
"""`_first_hook`: something observable (a call, a branch) may happen before a hook."""

_HOOKS = (EXPR_HOOK, LOOP_EXPR_HOOK)


def _evaluated_first(statement: ast.stmt) -> Sequence[ast.AST]:
    """What a statement evaluates, in order, up to where the order stops being fixed."""
    if isinstance(statement, (ast.Assign, ast.Expr)):
        return [statement.value]
    if isinstance(statement, ast.AugAssign):
        target = statement.target
        parts: list[ast.AST] = [target.value, target.slice] if isinstance(
            target, ast.Subscript) else []
        return [*parts, statement.value]
    if isinstance(statement, ast.Return):
        return [] if statement.value is None else [statement.value]
    if isinstance(statement, ast.If):
        return [statement.test]
    if isinstance(statement, ast.For):
        return [statement.iter]
    if isinstance(statement, ast.Assert):
        return [statement.test]
    if isinstance(statement, ast.Raise):
        return [] if statement.exc is None else [statement.exc]
    if isinstance(statement, ast.Delete):
        return [part for target in statement.targets if isinstance(target, ast.Subscript)
                for part in (target.value, target.slice)]
    if isinstance(statement, ast.FunctionDef):
        return [*statement.args.defaults, *(d for d in statement.args.kw_defaults if d)]
    return []


def _first_hook(nodes: Sequence[ast.AST]) -> ast.Call | str:
    """The hook call that runs first when `nodes` are evaluated in order, if nothing
    observable runs before it; else `_CLEAR` or `_BLOCKED`.

    Loading a name, a constant, and the operators of SPy's built-in types have no
    effect (but they may raise, in which case the statement's event goes unrecorded
    with the rest). A call runs code; the operands of `and`, `or`, `x if c else y`,
    later comparisons and comprehension bodies may not run at all.
    """
    for node in nodes:
        found = _first_in(node)
        if found != _CLEAR:
            return found
    return _CLEAR


def _first_in(node: ast.AST) -> ast.Call | str:
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in _HOOKS:
            found = _first_in(node.args[1])
            return node if found == _CLEAR else found
        found = _first_hook([node.func, *node.args, *(k.value for k in node.keywords)])
        return _BLOCKED if found == _CLEAR else found  # the call itself runs next
    if isinstance(node, (ast.Name, ast.Constant)):
        return _CLEAR
    if isinstance(node, ast.BoolOp):
        return _unconditional(node.values[:1])
    if isinstance(node, ast.IfExp):
        return _unconditional([node.test])
    if isinstance(node, ast.Compare):
        if len(node.comparators) == 1:
            return _first_hook([node.left, node.comparators[0]])
        return _unconditional([node.left, node.comparators[0]])
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        return _unconditional([node.generators[0].iter])
    if isinstance(node, ast.Lambda):
        return _first_hook([*node.args.defaults, *(d for d in node.args.kw_defaults if d)])
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Subscript, ast.Attribute, ast.List,
                         ast.Tuple, ast.Set, ast.Dict, ast.Starred, ast.Slice, ast.JoinedStr,
                         ast.FormattedValue)):
        return _first_hook([child for child in _evaluation_order(node) if child is not None])
    return _BLOCKED


def _unconditional(nodes: Sequence[ast.AST]) -> ast.Call | str:
    """`_first_hook` of the parts that always run, when more may run only sometimes."""
    found = _first_hook(nodes)
    return _BLOCKED if found == _CLEAR else found


def _evaluation_order(node: ast.AST) -> Sequence[ast.AST | None]:
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.Subscript):
        return [node.value, node.slice]
    if isinstance(node, (ast.Attribute, ast.Starred)):
        return [node.value]
    if isinstance(node, ast.FormattedValue):
        return [node.value, node.format_spec]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return list(node.elts)
    if isinstance(node, ast.Dict):
        return [part for key, value in zip(node.keys, node.values, strict=True)
                for part in (key, value)]
    if isinstance(node, ast.Slice):
        return [node.lower, node.upper, node.step]
    if isinstance(node, ast.JoinedStr):
        return list(node.values)
    return []

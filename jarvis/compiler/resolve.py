"""Name resolution: what each name refers to, and what a program asks of its Books.

Scopes follow Python's: the module, each function and lambda, and each comprehension.
A name that is used must be bound in its scope or an enclosing one, or be a SPy
builtin. Books are names bound by `from books import NAME` and are not values: the only
use of one is `NAME.procedure(...)`, and no other binding may shadow it. The resolver
returns the diagnostics it found and the Book calls the program makes.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field

from jarvis.compiler.diagnostics import Diagnostic
from jarvis.compiler.language import (
    BOOKS_MODULE,
    BUILTINS,
    REFUSED_BUILTINS,
    RUNTIME_BUILTINS,
)
from jarvis.compiler.source import Source
from jarvis.compiler.trees import child_nodes
from jarvis.compiler.validate import binding_position, book_imports

MAX_SPELLING_HINTS = 20
"""How many undefined names get a "did you mean" hint. Each hint compares the name with
every visible one; without a bound, a large program of misspellings takes hours."""

_MAX_HINT_NAME = 64
"""Longer names are not compared for hints: comparing long strings is slow, and a
misspelling worth a hint is short."""


@dataclass(frozen=True)
class BookCall:
    """One `BOOK.procedure(...)` call site in a program."""

    book: str
    procedure: str
    line: int
    col: int


@dataclass
class Scope:
    """The names bound in one function, lambda, comprehension or the module."""

    kind: str
    parent: Scope | None
    bindings: set[str] = field(default_factory=set)
    uses: list[ast.Name] = field(default_factory=list)

    def visible(self) -> set[str]:
        names: set[str] = set()
        scope: Scope | None = self
        while scope is not None:
            names |= scope.bindings
            scope = scope.parent
        return names

    def binds(self, name: str) -> bool:
        """Whether this scope or an enclosing one binds `name`."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.bindings:
                return True
            scope = scope.parent
        return False

    def shadows(self, name: str) -> bool:
        """Whether a scope inside the module, from this one outward, binds `name`."""
        scope: Scope | None = self
        while scope is not None and scope.parent is not None:
            if name in scope.bindings:
                return True
            scope = scope.parent
        return False


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

_SPECIAL_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, *_COMPREHENSIONS,
                  ast.ImportFrom, ast.Assign, ast.AugAssign, ast.For, ast.AsyncFor,
                  ast.ExceptHandler, ast.Name, ast.ClassDef, ast.Import, ast.pattern)
"""The nodes `_Resolver.visit` handles itself; it walks through all others."""

_SPECIAL: dict[type, bool] = {}


def _special(kind: type) -> bool:
    try:
        return _SPECIAL[kind]
    except KeyError:
        special = _SPECIAL[kind] = issubclass(kind, _SPECIAL_NODES)
        return special


class _Resolver:
    def __init__(self, source: Source, tree: ast.Module) -> None:
        self.source = source
        self.books = book_imports(tree)
        # Book imports seen so far in the walk: local name to Book name.
        self.imported: dict[str, str] = {}
        # Each `X.attr(...)` call, by the id of its Attribute node: how a Book name
        # learns that it is being called rather than used as a value. The walk meets
        # a call before the names inside it, and adds it here.
        self.called: set[int] = set()
        self.diagnostics: list[Diagnostic] = []
        self.calls: list[BookCall] = []
        self.scopes: list[Scope] = []
        # Book names read other than in a call, with where: SPY301 unless shadowed.
        self.book_values: list[tuple[ast.Name, ast.AST | None, Scope]] = []

    def report(self, code: str, message: str, node: ast.AST, hint: str | None = None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ExceptHandler)):
            # Point at the name the statement binds, not at the whole statement.
            line, col, end_col = binding_position(self.source, node)
            self.diagnostics.append(
                self.source.diagnostic(code, message, line, col, line, end_col, hint)
            )
            return
        self.diagnostics.append(
            self.source.diagnostic(
                code,
                message,
                getattr(node, "lineno", 1),
                getattr(node, "col_offset", 0),
                getattr(node, "end_lineno", None),
                getattr(node, "end_col_offset", None),
                hint,
            )
        )

    def new_scope(self, kind: str, parent: Scope | None) -> Scope:
        scope = Scope(kind, parent)
        self.scopes.append(scope)
        return scope

    # -- binding ------------------------------------------------------------------

    def bind(self, name: str, scope: Scope, node: ast.AST, is_book_import: bool = False) -> None:
        if name.startswith("_"):
            return  # refused by the validator already
        if name in RUNTIME_BUILTINS:
            self.report(
                "SPY206", f"`{name}` is a SPy builtin and cannot be reassigned", node,
            )
        elif name in self.books and not is_book_import:
            self.report(
                "SPY302",
                f"`{name}` is the Book imported as `{name}` and cannot be reassigned or shadowed",
                node,
            )
        scope.bindings.add(name)

    def bind_import(self, node: ast.ImportFrom, alias: ast.alias, scope: Scope) -> None:
        local = alias.asname or alias.name
        if node.module == BOOKS_MODULE and node.level == 0 and scope.kind == "module":
            # A name may stand for one Book only (`book_imports` keeps the last one, so
            # calls made before a second import would be counted against the wrong Book).
            earlier = self.imported.setdefault(local, alias.name)
            if earlier != alias.name:
                self.report(
                    "SPY302",
                    f"`{local}` is the Book `{earlier}` already and cannot be imported "
                    f"as `{alias.name}` too",
                    alias,
                )
        self.bind(local, scope, alias, is_book_import=True)

    def bind_target(self, target: ast.AST, scope: Scope) -> None:
        if isinstance(target, ast.Name):
            self.bind(target.id, scope, target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.bind_target(element, scope)
        elif isinstance(target, ast.Starred):
            self.bind_target(target.value, scope)
        else:
            # Subscript (and refused Attribute) targets bind nothing; their parts are uses.
            self.visit(target, scope, None)

    def bind_arguments(self, args: ast.arguments, scope: Scope) -> None:
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        every += [a for a in (args.vararg, args.kwarg) if a is not None]
        for arg in every:
            self.bind(arg.arg, scope, arg)

    # -- walking ------------------------------------------------------------------

    def visit(self, node: ast.AST, scope: Scope, parent: ast.AST | None) -> None:
        if isinstance(node, ast.Name):
            self.visit_name(node, scope, parent)
            return
        if not _special(type(node)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                self.called.add(id(node.func))
            for child in child_nodes(node):
                if child._fields:  # not a context, an operator, `pass` ...: nothing to resolve
                    self.visit(child, scope, node)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # `async def` is refused by the validator; resolving it like `def` keeps its
            # parameters from being reported as undefined names too.
            self.bind(node.name, scope, node)
            self.visit_defaults(node.args, scope)
            inner = self.new_scope("function", scope)
            self.bind_arguments(node.args, inner)
            for statement in node.body:
                self.visit(statement, inner, node)
        elif isinstance(node, ast.Lambda):
            self.visit_defaults(node.args, scope)
            inner = self.new_scope("lambda", scope)
            self.bind_arguments(node.args, inner)
            self.visit(node.body, inner, node)
        elif isinstance(node, _COMPREHENSIONS):
            # The first iterable is evaluated in the enclosing scope, as in Python.
            self.visit(node.generators[0].iter, scope, node)
            inner = self.new_scope("comprehension", scope)
            for index, generator in enumerate(node.generators):
                if index:
                    self.visit(generator.iter, inner, generator)
                self.bind_target(generator.target, inner)
                for condition in generator.ifs:
                    self.visit(condition, inner, generator)
            if isinstance(node, ast.DictComp):
                self.visit(node.key, inner, node)
                self.visit(node.value, inner, node)
            else:
                self.visit(node.elt, inner, node)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    self.bind_import(node, alias, scope)
        elif isinstance(node, ast.Assign):
            self.visit(node.value, scope, node)
            for target in node.targets:
                self.bind_target(target, scope)
        elif isinstance(node, ast.AugAssign):
            self.visit(node.value, scope, node)
            if isinstance(node.target, ast.Name):
                self.bind(node.target.id, scope, node.target)
                scope.uses.append(node.target)
            else:
                self.visit(node.target, scope, node)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.visit(node.iter, scope, node)
            self.bind_target(node.target, scope)
            for statement in [*node.body, *node.orelse]:
                self.visit(statement, scope, node)
        elif isinstance(node, ast.ExceptHandler):
            if node.type is not None:
                self.visit(node.type, scope, node)
            if node.name is not None:
                self.bind(node.name, scope, node)
            for statement in node.body:
                self.visit(statement, scope, node)
        elif isinstance(node, ast.Name):
            self.visit_name(node, scope, parent)
        elif isinstance(node, (ast.ClassDef, ast.Import, ast.pattern)):
            self.visit_refused_binding(node, scope)
        else:
            for child in child_nodes(node):
                self.visit(child, scope, node)

    def visit_refused_binding(
        self, node: ast.ClassDef | ast.Import | ast.pattern, scope: Scope
    ) -> None:
        """A class, `import` or `case` pattern: refused by the validator already. The
        names it binds are recorded without further checks, so that their uses are not
        reported as undefined as well."""
        if isinstance(node, ast.ClassDef):
            scope.bindings.add(node.name)
            for expression in [*node.decorator_list, *node.bases, *node.keywords]:
                self.visit(expression, scope, node)
            body = self.new_scope("class", scope)
            for statement in node.body:
                self.visit(statement, body, node)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                scope.bindings.add(alias.asname or alias.name.partition(".")[0])
            return
        for name in (getattr(node, "name", None), getattr(node, "rest", None)):
            if isinstance(name, str):
                scope.bindings.add(name)
        for child in child_nodes(node):
            self.visit(child, scope, node)

    def visit_defaults(self, args: ast.arguments, scope: Scope) -> None:
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.visit(default, scope, args)

    def visit_name(self, node: ast.Name, scope: Scope, parent: ast.AST | None) -> None:
        if not isinstance(node.ctx, ast.Load):
            if isinstance(node.ctx, ast.Store):
                self.bind(node.id, scope, node)
            return
        if node.id in self.books:
            if isinstance(parent, ast.Attribute) and id(parent) in self.called:
                self.calls.append(
                    BookCall(
                        self.books[node.id],
                        parent.attr,
                        node.lineno,
                        self.source.char_col(node.lineno, node.col_offset),
                    )
                )
            else:
                self.book_values.append((node, parent, scope))
            return
        scope.uses.append(node)

    # -- after the walk -----------------------------------------------------------

    def check_book_values(self) -> None:
        for node, parent, scope in self.book_values:
            if scope.shadows(node.id):
                continue  # a parameter or local of that name, reported as SPY302 already
            self.report(
                "SPY301",
                f"the Book `{node.id}` is used as a value; call one of its procedures: "
                f"`{node.id}.procedure(...)`",
                parent if isinstance(parent, ast.Attribute) else node,
            )

    def check_uses(self) -> None:
        hints_left = MAX_SPELLING_HINTS
        for scope in self.scopes:
            for use in scope.uses:
                name = use.id
                if name in BUILTINS or scope.binds(name):
                    continue
                # Before the `_` test: `__import__` deserves its reason, not just SPY201.
                if name in REFUSED_BUILTINS:
                    self.report(
                        "SPY204", f"`{name}` is not available in SPy ({REFUSED_BUILTINS[name]})",
                        use,
                    )
                    continue
                if name.startswith("_"):
                    continue  # refused by the validator already
                hint = None
                if hints_left and len(name) <= _MAX_HINT_NAME:
                    hints_left -= 1
                    hint = self.spelling_hint(name, scope)
                self.report("SPY205", f"name `{name}` is not defined", use, hint)

    def spelling_hint(self, name: str, scope: Scope) -> str | None:
        known = sorted(n for n in scope.visible() | BUILTINS if len(n) <= _MAX_HINT_NAME)
        close = difflib.get_close_matches(name, known, n=1)
        return f"did you mean `{close[0]}`?" if close else None


def resolve(source: Source, tree: ast.Module) -> tuple[list[Diagnostic], list[BookCall]]:
    """Resolve every name in `tree`; return the diagnostics and the Book call sites."""
    resolver = _Resolver(source, tree)
    module = resolver.new_scope("module", None)
    for statement in tree.body:
        resolver.visit(statement, module, tree)
    resolver.check_uses()
    resolver.check_book_values()
    return resolver.diagnostics, resolver.calls

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
from jarvis.compiler.language import BUILTINS, REFUSED_BUILTINS, RUNTIME_BUILTINS
from jarvis.compiler.source import Source
from jarvis.compiler.validate import book_imports


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


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class _Resolver:
    def __init__(self, source: Source, tree: ast.Module) -> None:
        self.source = source
        self.books = book_imports(tree)
        # Each `X.attr(...)` call, by the id of its Attribute node: how a Book name
        # learns that it is being called rather than used as a value.
        self.call_of = {
            id(node.func): node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        self.diagnostics: list[Diagnostic] = []
        self.calls: list[BookCall] = []
        self.scopes: list[Scope] = []

    def report(self, code: str, message: str, node: ast.AST, hint: str | None = None) -> None:
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
        if isinstance(node, ast.FunctionDef):
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
                    self.bind(alias.asname or alias.name, scope, alias, is_book_import=True)
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
        elif isinstance(node, ast.For):
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
        else:
            for child in ast.iter_child_nodes(node):
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
            self.check_book_use(node, parent)
            return
        scope.uses.append(node)

    def check_book_use(self, node: ast.Name, parent: ast.AST | None) -> None:
        call = self.call_of.get(id(parent)) if isinstance(parent, ast.Attribute) else None
        if isinstance(parent, ast.Attribute) and call is not None:
            self.calls.append(
                BookCall(self.books[node.id], parent.attr, node.lineno, node.col_offset + 1)
            )
            return
        self.report(
            "SPY301",
            f"the Book `{node.id}` is used as a value; call one of its procedures: "
            f"`{node.id}.procedure(...)`",
            parent if isinstance(parent, ast.Attribute) else node,
        )

    # -- after the walk -----------------------------------------------------------

    def check_uses(self) -> None:
        for scope in self.scopes:
            visible: set[str] | None = None
            for use in scope.uses:
                name = use.id
                if name.startswith("_") or name in BUILTINS:
                    continue
                if visible is None:
                    visible = scope.visible()
                if name in visible:
                    continue
                if name in REFUSED_BUILTINS:
                    self.report(
                        "SPY204", f"`{name}` is not available in SPy: it {REFUSED_BUILTINS[name]}",
                        use,
                    )
                    continue
                close = difflib.get_close_matches(name, sorted(visible | BUILTINS), n=1)
                hint = f"did you mean `{close[0]}`?" if close else None
                self.report("SPY205", f"name `{name}` is not defined", use, hint)


def resolve(source: Source, tree: ast.Module) -> tuple[list[Diagnostic], list[BookCall]]:
    """Resolve every name in `tree`; return the diagnostics and the Book call sites."""
    resolver = _Resolver(source, tree)
    module = resolver.new_scope("module", None)
    for statement in tree.body:
        resolver.visit(statement, module, tree)
    resolver.check_uses()
    return resolver.diagnostics, resolver.calls

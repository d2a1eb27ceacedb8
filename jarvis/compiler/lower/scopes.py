"""Scopes of a validated SPy tree: which names each scope binds and where each name resolves.

SPy's scoping is Python's without `global`, `nonlocal` and classes: a name bound
anywhere in a function (parameter, assignment, loop target, `except ... as`, `def`)
is local to it; a name used but not bound resolves to the nearest enclosing function,
lambda or comprehension that binds it, else to the module or the builtins. The lowering
pass needs this exactly, to know which variables a nested function captures.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field

from jarvis.compiler.trees import child_nodes

SCOPE_NODES = (ast.Module, ast.FunctionDef, ast.Lambda, ast.ListComp, ast.SetComp,
               ast.DictComp, ast.GeneratorExp)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(eq=False)
class Scope:
    """One scope: the module, a function, a lambda or a comprehension."""

    node: ast.AST
    parent: Scope | None
    bound: set[str] = field(default_factory=set)
    params: list[str] = field(default_factory=list)
    children: list[Scope] = field(default_factory=list)
    # Names of this scope that nested scopes read (Python makes them cells).
    captured: set[str] = field(default_factory=set)
    # Names this scope reads from an enclosing function scope.
    free: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        if isinstance(self.node, ast.Module):
            return "module"
        if isinstance(self.node, ast.FunctionDef):
            return "function"
        if isinstance(self.node, ast.Lambda):
            return "lambda"
        return "comprehension"

    def function_scopes(self) -> Iterator[Scope]:
        yield self
        for child in self.children:
            yield from child.function_scopes()


@dataclass
class ScopeTable:
    """Every scope of a module, and the scope each Name node resolves to."""

    module: Scope
    by_node: dict[int, Scope]
    # id(Name node) -> the scope that binds it; None means module global or builtin.
    resolution: dict[int, Scope | None]
    # id(Name node) -> the scope the Name appears in.
    home: dict[int, Scope]
    # id(Name node) -> the name it stands for.
    names: dict[int, str] = field(default_factory=dict)
    # Every Name node, with the scope it appears in, in the order of the walk.
    name_nodes: list[tuple[ast.Name, Scope]] = field(default_factory=list)
    # Every call, and every `def`, assignment, `except` handler and import (the
    # statements that bind names), with the scope whose code runs it, in the order
    # of the walk: what the suspension analysis looks at, found in the same walk.
    calls: list[tuple[ast.Call, Scope]] = field(default_factory=list)
    binders: list[tuple[ast.stmt | ast.ExceptHandler, Scope]] = field(default_factory=list)

    def scope_of(self, node: ast.AST) -> Scope:
        return self.by_node[id(node)]


def _target_names(target: ast.AST) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _target_names(element)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def _arg_names(args: ast.arguments) -> list[str]:
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if args.vararg is not None:
        names.append(args.vararg.arg)
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg is not None:
        names.append(args.kwarg.arg)
    return names


class _Builder:
    def __init__(self) -> None:
        self.by_node: dict[int, Scope] = {}
        self.names: list[tuple[ast.Name, Scope]] = []
        self.calls: list[tuple[ast.Call, Scope]] = []
        self.binders: list[tuple[ast.stmt | ast.ExceptHandler, Scope]] = []

    def scope(self, node: ast.AST, parent: Scope | None) -> Scope:
        scope = Scope(node, parent)
        if parent is not None:
            parent.children.append(scope)
        self.by_node[id(node)] = scope
        return scope

    def visit(self, node: ast.AST, scope: Scope) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Store):
                scope.bound.add(node.id)
            self.names.append((node, scope))
        elif isinstance(node, ast.Call):
            self.calls.append((node, scope))
            for child in child_nodes(node):
                self.visit(child, scope)
        elif isinstance(node, ast.Assign):
            self.binders.append((node, scope))
            for child in child_nodes(node):
                self.visit(child, scope)
        elif isinstance(node, ast.FunctionDef):
            self.binders.append((node, scope))
            scope.bound.add(node.name)
            self.defaults(node.args, scope)
            for decorator in node.decorator_list:
                self.visit(decorator, scope)
            inner = self.scope(node, scope)
            inner.params = _arg_names(node.args)
            inner.bound.update(inner.params)
            for statement in node.body:
                self.visit(statement, inner)
        elif isinstance(node, ast.Lambda):
            self.defaults(node.args, scope)
            inner = self.scope(node, scope)
            inner.params = _arg_names(node.args)
            inner.bound.update(inner.params)
            self.visit(node.body, inner)
        elif isinstance(node, COMPREHENSIONS):
            self.visit(node.generators[0].iter, scope)
            inner = self.scope(node, scope)
            for index, generator in enumerate(node.generators):
                if index:
                    self.visit(generator.iter, inner)
                inner.bound.update(_target_names(generator.target))
                self.visit(generator.target, inner)
                for condition in generator.ifs:
                    self.visit(condition, inner)
            if isinstance(node, ast.DictComp):
                self.visit(node.key, inner)
                self.visit(node.value, inner)
            else:
                self.visit(node.elt, inner)
        elif isinstance(node, ast.ImportFrom):
            self.binders.append((node, scope))
            for alias in node.names:
                scope.bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.ExceptHandler):
            self.binders.append((node, scope))
            if node.name is not None:
                scope.bound.add(node.name)
            for child in child_nodes(node):
                self.visit(child, scope)
        else:
            for child in child_nodes(node):
                if child._fields:  # not a context or an operator, which hold nothing
                    self.visit(child, scope)

    def defaults(self, args: ast.arguments, scope: Scope) -> None:
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.visit(default, scope)


def analyse_scopes(tree: ast.Module) -> ScopeTable:
    """Build the scope table of a (validated) module."""
    builder = _Builder()
    module = builder.scope(tree, None)
    for statement in tree.body:
        builder.visit(statement, module)
    resolution: dict[int, Scope | None] = {}
    home: dict[int, Scope] = {}
    names: dict[int, str] = {}
    for name, scope in builder.names:
        key = id(name)
        home[key] = scope
        names[key] = name.id
        resolution[key] = _resolve(name.id, scope)
    return ScopeTable(module, builder.by_node, resolution, home, names, builder.names,
                      builder.calls, builder.binders)


def _resolve(name: str, scope: Scope) -> Scope | None:
    if name in scope.bound:
        return None if scope.kind == "module" else scope
    walker = scope.parent
    while walker is not None and walker.kind != "module":
        if name in walker.bound:
            walker.captured.add(name)
            inner: Scope | None = scope
            while inner is not None and inner is not walker:
                inner.free.add(name)
                inner = inner.parent
            return walker
        walker = walker.parent
    return None

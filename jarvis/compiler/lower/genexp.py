"""Generator expressions whose generator may outlive a statement become picklable.

A CPython generator cannot be pickled, so a generator expression whose object may be
alive at a suspension point would make the snapshot there fail. This pass rewrites
such an expression into a call of the runtime's `make_generator`
(`jarvis.runtime.lazy`), whose generator is plain data:

    (x * k for x in xs if x)
    ==>  _jv_genexp(xs, ((None, 'x', (lambda _jv_g1: _jv_g1['x'],)),),
                    lambda _jv_g1: _jv_g1['x'] * k)

The expression's own variables live in a dict (`_jv_g1`) that the generator hands to
each part; the parts are lambdas, so the variables of the enclosing function they read
are captured as closures are (and boxed in cells when the function may suspend, by
the rest of the lowering). The first iterable stays where it was, evaluated where the
expression stands. A `for` clause with a tuple (or subscript) target gets a lambda
that unpacks an item with Python's own rules: `[(a, b) for (a, b) in (item,)][0]`.

A generator expression whose object is consumed where it stands keeps the native
form, which is faster: one that is the argument of a builtin that consumes or drops
it (`sum`, `any`, `list`, `sorted`, `",".join`, `print`, ...), the iterable of a `for`
loop whose body cannot suspend, an iterable of a list, set or dict comprehension, a
`*` operand, an operand of a comparison; or one wrapped by `zip`, `map`, `enumerate`,
`filter` or `iter` in such a place. Anything else (a variable, a return value, an
argument of a function of the program, an item of a container) may keep the object
across a suspension, in any function, so it gets the picklable form.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator

from jarvis.compiler.language import BUILTINS
from jarvis.compiler.lower.scopes import Scope, ScopeTable
from jarvis.compiler.lower.suspension import SuspensionInfo
from jarvis.compiler.trace import EXPR_HOOK, FIRST_EXPR_HOOK, LOOP_EXPR_HOOK
from jarvis.compiler.trees import child_nodes, fix_missing_locations, walk

MAKE = "_jv_genexp"
"""The runtime's `make_generator`."""

READ = "_jv_genvar"
"""The runtime's read of a variable of the expression that may not be bound yet."""

_HOOKS = frozenset({EXPR_HOOK, LOOP_EXPR_HOOK, FIRST_EXPR_HOOK})
"""Trace hooks: they hand their last argument back unchanged."""

_CONSUMERS = frozenset({
    "all", "any", "ascii", "bool", "callable", "dict", "frozenset", "isinstance", "len",
    "list", "next", "repr", "set", "sorted", "str", "sum", "tuple",
})
"""Builtins that consume (or only look at) their first argument and do not keep it."""

_WRAPPERS: dict[str, frozenset[int] | None] = {
    "iter": frozenset({0}), "enumerate": frozenset({0}), "reversed": frozenset({0}),
    "filter": frozenset({1}), "map": None, "zip": None,
}
"""Builtins whose result keeps the iterable given at these positions (None: any
position, for `map` any after the first): the iterable is consumed in place only if
their result is."""

_CONSUMING_METHODS = frozenset({
    "join", "extend", "update", "union", "intersection", "difference",
    "symmetric_difference", "intersection_update", "difference_update",
    "symmetric_difference_update", "issubset", "issuperset", "isdisjoint", "fromkeys",
})
"""Methods of the built-in value types that consume an iterable first argument."""


class _Places:
    """Which generator expressions are consumed where they stand."""

    def __init__(self, tree: ast.Module, scopes: ScopeTable, info: SuspensionInfo,
                 books: set[str]) -> None:
        self.scopes = scopes
        self.contains = info.contains
        self.resumable = info.resumable
        self.books = books
        self.parents: dict[int, ast.AST] = {}
        for parent in walk(tree):
            for child in child_nodes(parent):
                self.parents[id(child)] = parent
        self._native: dict[int, bool] = {}

    def builtin(self, func: ast.expr) -> str | None:
        if not isinstance(func, ast.Name) or func.id not in BUILTINS:
            return None
        if self.scopes.resolution.get(id(func)) is not None:
            return None
        return None if func.id in self.scopes.module.bound else func.id

    def native(self, node: ast.GeneratorExp) -> bool:
        known = self._native.get(id(node))
        if known is None:
            known = self._native[id(node)] = self.consumed(node)
        return known

    def consumed(self, node: ast.expr) -> bool:
        """Whether the value of `node` is used up (or dropped) by what it stands in,
        with no suspension point while it is alive."""
        parent = self.parents.get(id(node))
        if isinstance(parent, ast.Expr):
            return True
        if isinstance(parent, ast.For):
            return parent.iter is node and self.native_loop(parent)
        if isinstance(parent, ast.comprehension):
            owner = self.parents.get(id(parent))
            if isinstance(owner, ast.GeneratorExp):
                return self.native(owner)
            return isinstance(owner, (ast.ListComp, ast.SetComp, ast.DictComp))
        if isinstance(parent, ast.Starred):
            holder = self.parents.get(id(parent))
            if isinstance(holder, (ast.List, ast.Tuple, ast.Set)):
                return True  # a display unpacks it at once, even one kept for later
            return isinstance(holder, ast.Call) and id(holder) not in self.contains
        if isinstance(parent, ast.Compare):
            return id(parent) not in self.contains
        if isinstance(parent, ast.Call):
            return self.consumed_by_call(node, parent)
        return False

    def native_loop(self, loop: ast.For) -> bool:
        """Whether a `for` loop stays a Python `for` (its iterator never in a frame's
        variables): always in a function that cannot suspend; in one that may, when
        nothing in it suspends and no `return` or jump out of its `else` makes the
        lowering take it apart (see anf.py, `needs_lowering`)."""
        owner: ast.AST | None = loop
        while owner is not None and not isinstance(owner, (ast.FunctionDef, ast.Module)):
            owner = self.parents.get(id(owner))
        if owner is None or id(owner) not in self.resumable:
            return True
        if id(loop) in self.contains:
            return False
        jumps = (ast.Return, ast.Break, ast.Continue)
        return not any(isinstance(n, ast.Return) for n in walk(loop)) and not any(
            isinstance(n, jumps) for statement in loop.orelse for n in walk(statement))

    def consumed_by_call(self, node: ast.expr, call: ast.Call) -> bool:
        if id(call) in self.contains:
            return False
        position = next((i for i, a in enumerate(call.args) if a is node), None)
        if position is None:
            return False  # a keyword argument (`default=`, `key=`, ...) may be kept
        func = call.func
        if isinstance(func, ast.Name) and func.id in _HOOKS:
            return position == len(call.args) - 1 and self.consumed(call)
        name = self.builtin(func)
        if name is not None:
            if name == "print":
                return True
            if name in ("min", "max"):
                # `max(a, b, key=...)` may return one of its arguments.
                return len(call.args) == 1
            if name in _CONSUMERS:
                return position == 0
            if name in _WRAPPERS:
                positions = _WRAPPERS[name]
                fits = position >= (1 if name == "map" else 0) if positions is None \
                    else position in positions
                return fits and self.consumed(call)
            return False
        if isinstance(func, ast.Attribute) and func.attr in _CONSUMING_METHODS:
            receiver = func.value
            if isinstance(receiver, ast.Name) and receiver.id in self.books:
                return False
            return position == 0
        return False


def _target_names(target: ast.expr) -> list[str]:
    """The variables a `for` target binds, in order, each once."""
    names: list[str] = []
    for node in walk(target):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) \
                and node.id not in names:
            names.append(node.id)
    return names


class _Renamer(ast.NodeTransformer):
    """Reads of the expression's variables become reads of its dict."""

    def __init__(self, scopes: ScopeTable, scope: Scope, env: str) -> None:
        self.scopes = scopes
        self.scope = scope
        self.env = env
        self.bound: set[str] = set()

    def part(self, node: ast.expr, bound: set[str]) -> ast.expr:
        self.bound = bound
        result = self.visit(node)
        assert isinstance(result, ast.expr)
        return result

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if not isinstance(node.ctx, ast.Load) or self.scopes.resolution.get(id(node)) \
                is not self.scope:
            return node
        key = ast.Constant(value=node.id)
        if node.id in self.bound:
            read: ast.expr = ast.Subscript(value=ast.Name(id=self.env, ctx=ast.Load()),
                                           slice=key, ctx=ast.Load())
        else:
            # Bound by a later clause: unbound on the first pass, as in Python.
            read = ast.Call(func=ast.Name(id=READ, ctx=ast.Load()),
                            args=[ast.Name(id=self.env, ctx=ast.Load()), key], keywords=[])
        return ast.copy_location(read, node)


class _Rewriter(ast.NodeTransformer):
    def __init__(self, scopes: ScopeTable, places: _Places,
                 counter: Iterator[int]) -> None:
        self.scopes = scopes
        self.places = places
        self.counter = counter
        self.changed = False

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        self.generic_visit(node)  # inner generator expressions first
        if self.places.native(node):
            return node
        self.changed = True
        env = f"_jv_g{next(self.counter)}"
        renamer = _Renamer(self.scopes, self.scopes.by_node[id(node)], env)
        bound: set[str] = set()
        clauses: list[ast.expr] = []
        for index, generator in enumerate(node.generators):
            iterable: ast.expr = ast.Constant(value=None)
            if index:
                iterable = _lambda([env], renamer.part(generator.iter, set(bound)),
                                   generator.iter)
            names = _target_names(generator.target)
            target = self.target(generator.target, names, renamer, set(bound), env)
            bound.update(names)
            conditions: list[ast.expr] = [
                _lambda([env], renamer.part(c, set(bound)), c) for c in generator.ifs]
            clauses.append(_at(ast.Tuple(elts=[
                iterable, target, _at(ast.Tuple(elts=conditions, ctx=ast.Load()), node),
            ], ctx=ast.Load()), node))
        element = _lambda([env], renamer.part(node.elt, bound), node.elt)
        call = ast.Call(
            func=ast.Name(id=MAKE, ctx=ast.Load()),
            args=[node.generators[0].iter, _at(ast.Tuple(elts=clauses, ctx=ast.Load()), node),
                  element],
            keywords=[],
        )
        return fix_missing_locations(_at(call, node))

    def target(self, target: ast.expr, names: list[str], renamer: _Renamer,
               bound: set[str], env: str) -> ast.expr:
        if isinstance(target, ast.Name):
            return _at(ast.Constant(value=target.id), target)
        # `lambda env, item: [(a, b) for (a, b) in (item,)][0]`: Python's own unpacking
        # (and stores into subscripts), the values of the names handed back in order.
        item = "_jv_item"
        stored = renamer.part(target, bound)
        values = ast.Tuple(elts=[ast.Name(id=n, ctx=ast.Load()) for n in names], ctx=ast.Load())
        unpack = ast.Subscript(
            value=ast.ListComp(elt=values, generators=[ast.comprehension(
                target=stored,
                iter=ast.Tuple(elts=[ast.Name(id=item, ctx=ast.Load())], ctx=ast.Load()),
                ifs=[], is_async=0)]),
            slice=ast.Constant(value=0), ctx=ast.Load())
        names_tuple = ast.Tuple(elts=[ast.Constant(value=n) for n in names], ctx=ast.Load())
        pair = ast.Tuple(elts=[names_tuple, _lambda([env, item], unpack, target)],
                         ctx=ast.Load())
        return fix_missing_locations(_at(pair, target))


def _at(node: ast.expr, where: ast.AST) -> ast.expr:
    return ast.copy_location(node, where)


def _lambda(params: list[str], body: ast.expr, where: ast.AST) -> ast.Lambda:
    function = ast.Lambda(
        args=ast.arguments(posonlyargs=[], args=[ast.arg(arg=p) for p in params],
                           vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None,
                           defaults=[]),
        body=body,
    )
    ast.copy_location(function, where)
    fix_missing_locations(function)
    return function


def has_generator_expressions(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.GeneratorExp) for node in walk(tree))


def lazy_generators(tree: ast.Module, scopes: ScopeTable, info: SuspensionInfo,
                    books: set[str]) -> bool:
    """Rewrite (in place) the generator expressions whose generator may outlive the
    place it is made in; `scopes` and `info` describe `tree`. True if any was."""
    rewriter = _Rewriter(scopes, _Places(tree, scopes, info, books), itertools.count(1))
    tree.body = [rewriter.visit(statement) for statement in tree.body]
    return rewriter.changed

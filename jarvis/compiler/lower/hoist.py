"""Hoisting: suspending lambdas and comprehensions become ordinary `def`s.

A frame can only suspend at a statement boundary of a function it runs. A lambda that
may suspend is therefore rewritten into a `def` placed just before the statement that
creates it, and a list, set or dict comprehension that holds a suspension point into a
`def` that loops and is called in its place with the first iterable, which is exactly
how Python evaluates a comprehension. Generator expressions that would suspend, and
suspending functions created inside a comprehension that stays native, cannot be
expressed this way and are reported.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass, field

from jarvis.compiler.lower.suspension import SuspensionInfo
from jarvis.compiler.trees import child_nodes, fix_missing_locations

_COMPREHENSION_TYPES = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass
class HoistResult:
    tree: ast.Module
    changed: bool
    problems: list[tuple[str, str, ast.AST]] = field(default_factory=list)
    # synthesized function name -> the name people should see ("<lambda>", "<listcomp>")
    display_names: dict[str, str] = field(default_factory=dict)


class _Hoister:
    def __init__(self, info: SuspensionInfo, counter: itertools.count[int]) -> None:
        self.info = info
        self.counter = counter
        self.problems: list[tuple[str, str, ast.AST]] = []
        self.display: dict[str, str] = {}
        self.changed = False
        self.hoistable_cache: dict[int, bool] = {}

    # -- what needs hoisting ----------------------------------------------------------

    def needs_hoist(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Lambda):
            cached = self.hoistable_cache.get(id(node))
            if cached is None:
                cached = id(node) in self.info.resumable or any(
                    self.needs_hoist(inner) for inner in self.expressions_below(node.body)
                )
                self.hoistable_cache[id(node)] = cached
            return cached
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return id(node) in self.info.contains
        return False

    def expressions_below(self, node: ast.AST) -> list[ast.AST]:
        """`node` and the nodes below it, not entering nested defs."""
        out: list[ast.AST] = []
        stack = [node]
        while stack:
            current = stack.pop()
            out.append(current)
            for child in child_nodes(current):
                if not isinstance(child, ast.FunctionDef):
                    stack.append(child)
        return out

    def outermost(self, statement: ast.stmt) -> list[ast.AST]:
        """Hoistable nodes in a statement's own expressions, outermost first, in order."""
        found: list[ast.AST] = []

        def visit(node: ast.AST, in_native_comprehension: bool) -> None:
            for child in child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.stmt)):
                    continue  # nested statements are processed with their own body
                if self.needs_hoist(child):
                    if isinstance(child, ast.GeneratorExp):
                        self.problems.append((
                            "SPY402",
                            "a generator expression cannot call Books; "
                            "use a list comprehension",
                            child,
                        ))
                    elif in_native_comprehension:
                        self.problems.append((
                            "SPY403",
                            "a function that calls Books cannot be created inside a "
                            "comprehension that does not call Books itself",
                            child,
                        ))
                    else:
                        found.append(child)
                    continue
                inside = in_native_comprehension or isinstance(child, _COMPREHENSION_TYPES)
                visit(child, inside)

        for field_name, value in ast.iter_fields(statement):
            if field_name in ("body", "orelse", "finalbody", "handlers"):
                if field_name == "handlers":
                    for handler in value:
                        if handler.type is not None:
                            holder = ast.Expr(value=handler.type)
                            visit(holder, False)
                continue
            items = value if isinstance(value, list) else [value]
            for item in items:
                if not isinstance(item, ast.AST) or isinstance(item, ast.stmt):
                    continue
                if self.needs_hoist(item):
                    found.append(item)
                else:
                    visit(item, isinstance(item, _COMPREHENSION_TYPES))
        return found

    # -- rewriting ----------------------------------------------------------------------

    def body(self, statements: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for statement in statements:
            hoisted: list[ast.stmt] = []
            for node in self.outermost(statement):
                hoisted.append(self.hoist(node, statement))
            for definition in hoisted:
                out.extend(self.body([definition]))
            self.nested_bodies(statement)
            out.append(statement)
        return out

    def nested_bodies(self, statement: ast.stmt) -> None:
        for field_name in ("body", "orelse", "finalbody"):
            inner = getattr(statement, field_name, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                setattr(statement, field_name, self.body(inner))
        if isinstance(statement, ast.Try):
            for handler in statement.handlers:
                handler.body = self.body(handler.body)

    def hoist(self, node: ast.AST, statement: ast.stmt) -> ast.FunctionDef:
        self.changed = True
        number = next(self.counter)
        if isinstance(node, ast.Lambda):
            name = f"_jv_lambda{number}"
            self.display[name] = "<lambda>"
            definition = ast.FunctionDef(
                name=name,
                args=node.args,
                body=[ast.copy_location(ast.Return(value=node.body), node.body)],
                decorator_list=[],
                returns=None,
                type_comment=None,
            )
            replacement: ast.expr = ast.Name(id=name, ctx=ast.Load())
            if not all(_simple(d) for d in [*node.args.defaults, *node.args.kw_defaults]):
                definition.args, replacement = _defaults_at_site(node.args, name)
        else:
            assert isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp))
            name = f"_jv_comp{number}"
            self.display[name] = {
                ast.ListComp: "<listcomp>", ast.SetComp: "<setcomp>", ast.DictComp: "<dictcomp>"
            }[type(node)]
            definition = self.comprehension_def(name, node)
            replacement = ast.Call(
                func=ast.Name(id=name, ctx=ast.Load()),
                args=[node.generators[0].iter],
                keywords=[],
            )
        ast.copy_location(definition, statement)
        ast.copy_location(replacement, node)
        fix_missing_locations(definition)
        _replace(statement, node, replacement)
        return definition

    def comprehension_def(
        self, name: str, node: ast.ListComp | ast.SetComp | ast.DictComp
    ) -> ast.FunctionDef:
        accumulator = ast.Name(id="_jv_acc", ctx=ast.Load())
        add: list[ast.stmt]
        if isinstance(node, ast.ListComp):
            start: ast.expr = ast.List(elts=[], ctx=ast.Load())
            add = [ast.Expr(ast.Call(
                func=ast.Attribute(value=accumulator, attr="append", ctx=ast.Load()),
                args=[node.elt], keywords=[]))]
        elif isinstance(node, ast.SetComp):
            start = ast.Call(func=ast.Name(id="set", ctx=ast.Load()), args=[], keywords=[])
            add = [ast.Expr(ast.Call(
                func=ast.Attribute(value=accumulator, attr="add", ctx=ast.Load()),
                args=[node.elt], keywords=[]))]
        else:
            # Python evaluates a dict comprehension's key before its value.
            start = ast.Dict(keys=[], values=[])
            key = ast.Name(id="_jv_key", ctx=ast.Load())
            add = [
                ast.Assign(targets=[ast.Name(id="_jv_key", ctx=ast.Store())], value=node.key),
                ast.Assign(
                    targets=[ast.Subscript(value=accumulator, slice=key, ctx=ast.Store())],
                    value=node.value,
                ),
            ]
        for statement in add:
            ast.copy_location(statement, node)
        inner: list[ast.stmt] = add
        for index in range(len(node.generators) - 1, -1, -1):
            generator = node.generators[index]
            for condition in reversed(generator.ifs):
                test = ast.If(test=condition, body=inner, orelse=[])
                inner = [ast.copy_location(test, condition)]
            iterable = (
                ast.Name(id="_jv_src", ctx=ast.Load()) if index == 0 else generator.iter
            )
            loop = ast.For(target=generator.target, iter=iterable, body=inner, orelse=[],
                           type_comment=None)
            inner = [ast.copy_location(loop, generator.target)]
        body: list[ast.stmt] = [
            ast.Assign(targets=[ast.Name(id="_jv_acc", ctx=ast.Store())], value=start),
            *inner,
            ast.Return(value=ast.Name(id="_jv_acc", ctx=ast.Load())),
        ]
        for statement in body:
            ast.copy_location(statement, node)
        return ast.FunctionDef(
            name=name,
            args=ast.arguments(
                posonlyargs=[], args=[ast.arg(arg="_jv_src")], vararg=None, kwonlyargs=[],
                kw_defaults=[], kwarg=None, defaults=[],
            ),
            body=body,
            decorator_list=[],
            returns=None,
            type_comment=None,
        )


def _simple(default: ast.expr | None) -> bool:
    """A default whose value is the same before its statement as where it stands."""
    return default is None or isinstance(default, (ast.Constant, ast.Name))


def _defaults_at_site(args: ast.arguments, name: str) -> tuple[ast.arguments, ast.expr]:
    """A hoisted lambda's defaults are evaluated where the lambda stands, as Python does:
    the `def` gets placeholders and the lambda becomes `_jv_defaults(name, (...), {...})`,
    the function with the defaults evaluated there."""
    placeholders = ast.arguments(
        posonlyargs=args.posonlyargs, args=args.args, vararg=args.vararg,
        kwonlyargs=args.kwonlyargs,
        kw_defaults=[None if d is None else ast.Constant(value=None) for d in args.kw_defaults],
        kwarg=args.kwarg, defaults=[ast.Constant(value=None) for _ in args.defaults],
    )
    keyword = [(a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
               if d is not None]
    call = ast.Call(
        func=ast.Name(id="_jv_defaults", ctx=ast.Load()),
        args=[
            ast.Name(id=name, ctx=ast.Load()),
            ast.Tuple(elts=list(args.defaults), ctx=ast.Load()),
            ast.Dict(keys=[ast.Constant(value=k) for k, _ in keyword],
                     values=[d for _, d in keyword]),
        ],
        keywords=[],
    )
    return placeholders, call


def _replace(root: ast.AST, old: ast.AST, new: ast.AST) -> None:
    """Replace the node `old` (by identity) below `root` with `new`."""
    stack = [root]
    while stack:
        node = stack.pop()
        for field_name, value in ast.iter_fields(node):
            if value is old:
                setattr(node, field_name, new)
                return
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if item is old:
                        value[index] = new
                        return
                    if isinstance(item, ast.AST):
                        stack.append(item)
            elif isinstance(value, ast.AST):
                stack.append(value)
    raise AssertionError("node to replace not found")


def hoist(tree: ast.Module, info: SuspensionInfo, counter: itertools.count[int]) -> HoistResult:
    """One round of hoisting, in place: `info` refers to the nodes of `tree` by id."""
    hoister = _Hoister(info, counter)
    tree.body = hoister.body(tree.body)
    return HoistResult(tree, hoister.changed, hoister.problems, hoister.display)

"""Fast whole-tree operations on syntax trees: copy, children, missing locations.

The compiler's passes walk the program's tree many times. The standard library's
helpers are generic and slow for this: `copy.deepcopy` keeps a memo and goes through
the reduce protocol for every node, and `ast.iter_child_nodes` (which `ast.walk` and
`ast.fix_missing_locations` use) is two nested generators that probe every field with
`getattr`. The versions here read a node's fields from its `__dict__`, in the order of
its class's `_fields`, and do the same work several times faster.

A tree from `ast.parse` shares no nodes and holds only immutable leaves (names,
constants), so `copy_tree` gives a tree equal to `copy.deepcopy`'s.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

Node = TypeVar("Node", bound=ast.AST)

_LOCATED: dict[type, bool] = {}
"""For each node class: whether its nodes have source positions (`lineno` ...)."""


def copy_tree(node: Node, rewrite: Callable[[ast.AST], ast.AST] | None = None) -> Node:
    """A deep copy of `node`. `rewrite`, when given, is applied to every copied node,
    children first, and its result takes the node's place (a one-pass copy-and-rewrite;
    it must return a node of a type that fits where the node was)."""
    new: Node = _copy(node, rewrite)  # type: ignore[assignment]
    return new


def _copy(node: ast.AST, rewrite: Callable[[ast.AST], ast.AST] | None) -> ast.AST:
    fields = node.__dict__.copy()
    for key, value in fields.items():
        if isinstance(value, ast.AST):
            fields[key] = _copy(value, rewrite)
        elif type(value) is list:
            fields[key] = [_copy(item, rewrite) if isinstance(item, ast.AST) else item
                           for item in value]
    copied = ast.AST.__new__(type(node))
    copied.__dict__.update(fields)
    return copied if rewrite is None else rewrite(copied)


def child_nodes(node: ast.AST) -> list[ast.AST]:
    """The direct children of `node`, in the order of `ast.iter_child_nodes`."""
    fields = node.__dict__
    out: list[ast.AST] = []
    for name in node._fields:
        value = fields.get(name)
        if isinstance(value, ast.AST):
            out.append(value)
        elif type(value) is list:
            out.extend(item for item in value if isinstance(item, ast.AST))
    return out


def fix_missing_locations(node: Node, complete: frozenset[int] = frozenset()) -> Node:
    """`ast.fix_missing_locations`, faster: a node without a position takes its parent's.

    `complete` names (by id) nodes known to have positions all the way down: they are
    not walked."""
    _fix(node, 1, 0, 1, 0, complete)
    return node


def _fix(node: ast.AST, lineno: int, col: int, end_lineno: int, end_col: int,
         complete: frozenset[int]) -> None:
    kind = type(node)
    located = _LOCATED.get(kind)
    if located is None:
        located = _LOCATED[kind] = "lineno" in kind._attributes
    if not located and not kind._fields:
        return  # a context or an operator (`Load`, `Add`): no position, no children
    fields = node.__dict__
    if located:
        if complete and id(node) in complete and "lineno" in fields:
            return
        if "lineno" in fields:
            lineno = fields["lineno"]
        else:
            node.lineno = lineno  # type: ignore[attr-defined]
        if fields.get("end_lineno") is not None:
            end_lineno = fields["end_lineno"]
        else:
            node.end_lineno = end_lineno  # type: ignore[attr-defined]
        if "col_offset" in fields:
            col = fields["col_offset"]
        else:
            node.col_offset = col  # type: ignore[attr-defined]
        if fields.get("end_col_offset") is not None:
            end_col = fields["end_col_offset"]
        else:
            node.end_col_offset = end_col  # type: ignore[attr-defined]
    for name in kind._fields:
        value = fields.get(name)
        if isinstance(value, ast.AST):
            _fix(value, lineno, col, end_lineno, end_col, complete)
        elif type(value) is list:
            for item in value:
                if isinstance(item, ast.AST):
                    _fix(item, lineno, col, end_lineno, end_col, complete)


def walk(node: ast.AST) -> Iterator[ast.AST]:
    """`ast.walk`, faster: `node` and everything below it, breadth first."""
    todo = deque([node])
    while todo:
        current = todo.popleft()
        todo.extend(child_nodes(current))
        yield current


class FastTransformer(ast.NodeTransformer):
    """`ast.NodeTransformer`, the same behaviour, faster: `visit` looks up the method
    for a node class once per transformer class (the table lives on the class, so a
    class made per call goes away with it), and `generic_visit` reads the fields
    from the node's `__dict__` and rebuilds a list only when a visit changed it (in
    place, as `ast.NodeTransformer` does)."""

    def visit(self, node: ast.AST) -> Any:
        return dispatch(self, node)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        return transform_children(self, node)


def dispatch(visitor: ast.NodeVisitor, node: ast.AST) -> Any:
    """`ast.NodeVisitor.visit(visitor, node)`, faster: `visit_<class>` if the
    visitor's class has one, else its `generic_visit`."""
    kind = type(visitor)
    table: dict[type, Callable[[Any, ast.AST], Any]] | None = kind.__dict__.get(
        "_visitor_table")
    if table is None:
        table = {}
        kind._visitor_table = table  # type: ignore[attr-defined]
    method = table.get(type(node))
    if method is None:
        method = getattr(kind, "visit_" + type(node).__name__, None)
        if method is None:
            method = kind.generic_visit
        table[type(node)] = method
    return method(visitor, node)


def transform_children(transformer: ast.NodeTransformer, node: ast.AST) -> ast.AST:
    """`ast.NodeTransformer.generic_visit(transformer, node)`, faster."""
    fields = node.__dict__
    visit = transformer.visit
    for name in node._fields:
        old = fields.get(name)
        if type(old) is list:
            changed = False
            new_values: list[Any] = []
            for value in old:
                if isinstance(value, ast.AST):
                    new = visit(value)
                    if new is None:
                        changed = True
                        continue
                    if not isinstance(new, ast.AST):
                        new_values.extend(new)
                        changed = True
                        continue
                    if new is not value:
                        changed = True
                    value = new
                new_values.append(value)
            if changed:
                old[:] = new_values
        elif isinstance(old, ast.AST):
            new_node = visit(old)
            if new_node is None:
                delattr(node, name)
            elif new_node is not old:
                setattr(node, name, new_node)
    return node

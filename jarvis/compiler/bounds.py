"""Bounded operations: the arithmetic that could hang a worker or exhaust its memory.

`10**10**10` computes for hours, `'a' * 10**10` asks for ten gigabytes and
`1 << 10**10` for a gigabyte; none of them is a statement a step counter could
interrupt. This pass routes `**`, `<<` and `*` through runtime helpers
(`jarvis/runtime/bounded.py`) that check the size of the result before computing it.

A `*` with a small numeric literal operand (`n * 2`, `[0] * 16`) cannot grow a value
by more than that literal and is left native: the common case stays fast. `*=` and
`**=` and `<<=` on a plain name are rewritten to the in-place helpers, which keep
Python's in-place semantics (`xs *= 2` still extends the same list).
"""

from __future__ import annotations

import ast

from jarvis.compiler.trees import copy_tree

SMALL_FACTOR = 10_000
"""A literal factor up to this size is a bounded growth: `*` stays native."""

_HELPERS = {ast.Pow: "_jv_pow", ast.LShift: "_jv_lshift", ast.Mult: "_jv_mul"}
_INPLACE = {ast.Pow: "_jv_ipow", ast.LShift: "_jv_ilshift", ast.Mult: "_jv_imul"}


def _small_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    if not isinstance(node, ast.Constant):
        return False
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= SMALL_FACTOR


def _helper_call(helper: str, args: list[ast.expr], like: ast.AST) -> ast.Call:
    func = ast.copy_location(ast.Name(id=helper, ctx=ast.Load()), like)
    return ast.copy_location(ast.Call(func=func, args=args, keywords=[]), like)


def _bound_binop(node: ast.BinOp) -> ast.AST:
    helper = _HELPERS.get(type(node.op))
    if helper is None:
        return node
    if isinstance(node.op, ast.Mult) and (
        _small_literal(node.left) or _small_literal(node.right)
    ):
        return node
    if (isinstance(node.op, ast.Pow) and _small_literal(node.left)
            and isinstance(node.right, ast.Constant) and type(node.right.value) is int
            and 0 <= node.right.value <= 64):
        return node  # `2 ** 10`: a constant-sized result
    return _helper_call(helper, [node.left, node.right], node)


def _bound_augassign(node: ast.AugAssign) -> ast.AST:
    helper = _INPLACE.get(type(node.op))
    if helper is None or not isinstance(node.target, ast.Name):
        return node
    if isinstance(node.op, ast.Mult) and _small_literal(node.value):
        return node
    load = ast.copy_location(ast.Name(id=node.target.id, ctx=ast.Load()), node.target)
    call = _helper_call(helper, [load, node.value], node)
    return ast.copy_location(ast.Assign(targets=[node.target], value=call), node)


def _rewrite(node: ast.AST) -> ast.AST:
    kind = type(node)
    if kind is ast.BinOp:
        return _bound_binop(node)  # type: ignore[arg-type]
    if kind is ast.AugAssign:
        return _bound_augassign(node)  # type: ignore[arg-type]
    return node


def bound_operations(tree: ast.Module, *, copy: bool = True) -> ast.Module:
    """`tree` with size-checked `**`, `<<` and `*`: a copy (one pass, the copy rewritten
    as it is made), or with `copy=False` the tree itself, rewritten in place (for a
    tree no one else will read). Every node made here takes the position of the node it
    replaces, so the tree needs no `fix_missing_locations`."""
    if copy:
        return copy_tree(tree, _rewrite)
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        fields = node.__dict__
        for name in node._fields:
            value = fields.get(name)
            if type(value) is list:
                for index, item in enumerate(value):
                    if isinstance(item, ast.AST) and item._fields:
                        kind = type(item)
                        if kind is ast.BinOp or kind is ast.AugAssign:
                            item = value[index] = _rewrite(item)
                        stack.append(item)
            elif isinstance(value, ast.AST) and value._fields:
                # (Nodes without fields, contexts and operators, hold nothing to bound.)
                kind = type(value)
                if kind is ast.BinOp or kind is ast.AugAssign:
                    value = _rewrite(value)
                    setattr(node, name, value)
                stack.append(value)
    return tree

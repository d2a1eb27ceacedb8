"""Emission: a validated SPy tree to the Python source Jarvis runs.

The front end's output is plain Python: Book imports become lookups in the runtime's
Book table (`_jv_books`), a name no SPy program can write because user names may not
start with `_`. The lowering pass (resumable frames, trace hooks) plugs in here.
"""

from __future__ import annotations

import ast
import copy

from jarvis.compiler.language import BOOKS_MODULE

BOOKS_TABLE = "_jv_books"
"""The runtime name through which emitted code reaches its Books."""


class _BookImports(ast.NodeTransformer):
    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST | list[ast.stmt]:
        if node.module != BOOKS_MODULE:
            return node
        statements: list[ast.stmt] = []
        for alias in node.names:
            lookup = ast.Subscript(
                value=ast.Name(id=BOOKS_TABLE, ctx=ast.Load()),
                slice=ast.Constant(alias.name),
                ctx=ast.Load(),
            )
            target = ast.Name(id=alias.asname or alias.name, ctx=ast.Store())
            statements.append(
                ast.copy_location(ast.Assign(targets=[target], value=lookup), node)
            )
        return statements


def emit_python(tree: ast.Module, header: str) -> str:
    """The Python source for a validated tree, with `header` as a leading comment."""
    module = _BookImports().visit(copy.deepcopy(tree))
    ast.fix_missing_locations(module)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    return "\n".join([*lines, ast.unparse(module), ""])

"""Emission: the generated Python of a program as text, for `jarvis-compile --emit`.

Programs run from their syntax tree, never from this text; the text is for people.
CPython 3.11 cannot write out an f-string whose expression holds a string that needs a
backslash escape (`f"{'\\x1f' * 2}"`), so such f-strings are written as the equivalent
`''.join(...)` of formatted parts instead.
"""

from __future__ import annotations

import ast
import copy

# The helpers the rewritten f-strings call (defined where the runtime can import them
# without this module; importable from here as before).
from jarvis.compiler.contract import runtime_names as runtime_names

_CONVERSIONS = {-1: None, ord("s"): "_jv_str", ord("r"): "_jv_repr", ord("a"): "_jv_ascii"}


class _PlainFStrings(ast.NodeTransformer):
    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        self.generic_visit(node)
        parts: list[ast.expr] = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                converted = value.value
                wrapper = _CONVERSIONS.get(value.conversion)
                if wrapper is not None:
                    converted = ast.Call(func=ast.Name(id=wrapper, ctx=ast.Load()),
                                         args=[converted], keywords=[])
                spec = value.format_spec if value.format_spec is not None else ast.Constant("")
                parts.append(ast.Call(func=ast.Name(id="_jv_format", ctx=ast.Load()),
                                      args=[converted, spec], keywords=[]))
            else:
                parts.append(value)
        join = ast.Call(
            func=ast.Attribute(value=ast.Constant(""), attr="join", ctx=ast.Load()),
            args=[ast.Tuple(elts=parts, ctx=ast.Load())], keywords=[],
        )
        return ast.copy_location(join, node)


def unparse(module: ast.Module) -> str:
    """Python source for `module`, equivalent to it even where CPython's own
    `ast.unparse` gives up."""
    try:
        return ast.unparse(module)
    except ValueError:
        plain = _PlainFStrings().visit(copy.deepcopy(module))
        ast.fix_missing_locations(plain)
        return ast.unparse(plain)

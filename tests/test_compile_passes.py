"""Compiler passes rewritten for speed give what the plain versions give.

- the size bounds applied in place give the tree the copying version gives;
- the depth check (syntax.py) finds the node a plain stack walk finds;
- a cold compile at trace level `off` parses the program once: the lowering takes over
  the parsed tree instead of copying it, and `Compilation.tree` parses again if asked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jarvis.compiler import Compilation, phases
from jarvis.compiler.bounds import bound_operations
from jarvis.compiler.syntax import MAX_DEPTH, _too_deep
from jarvis.compiler.trees import child_nodes

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "tests" / "spec").glob("*.spy"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_bounds_in_place_equal_bounds_on_a_copy(path: Path) -> None:
    text = path.read_text(encoding="utf-8-sig")
    copied = bound_operations(ast.parse(text))
    in_place = ast.parse(text)
    assert bound_operations(in_place, copy=False) is in_place
    assert ast.dump(in_place, include_attributes=True) == \
        ast.dump(copied, include_attributes=True)


def test_bounds_in_place_rewrite_nested_operations() -> None:
    tree = bound_operations(ast.parse("x = a * b ** c << d\ny *= z\nw = n * 2\n"), copy=False)
    assert ast.unparse(tree) == (
        "x = _jv_lshift(_jv_mul(a, _jv_pow(b, c)), d)\ny = _jv_imul(y, z)\nw = n * 2")


def _reference_too_deep(tree: ast.AST) -> ast.AST | None:
    """The first node deeper than MAX_DEPTH in a plain stack walk (the last child is
    taken first), reported as its nearest node with a position."""
    stack: list[tuple[ast.AST, int, ast.AST]] = [(tree, 0, tree)]
    while stack:
        node, depth, placed = stack.pop()
        if hasattr(node, "lineno"):
            placed = node
        if depth > MAX_DEPTH:
            return placed
        stack.extend((child, depth + 1, placed) for child in child_nodes(node))
    return None


_LEAVES = ["x", "1", "f()", "a[0]", "x.y", "-x"]
_WRAPS = ["({e} + {o})", "-{e}", "[{e}, {o}]", "f({e}, k={o})", "{{'a': {e}}}",
          "(lambda q: {e})", "[{e} for v in {o}]", "not {e}", "({o} if {e} else {o})",
          "{e}[{o}]", "{e}.y"]
_BLOCKS = ["if x:\n", "while x:\n", "def g():\n", "for i in x:\n", "try:\n"]


@st.composite
def nested_programs(draw: st.DrawFn) -> str:
    expression = draw(st.sampled_from(_LEAVES))
    for _ in range(draw(st.integers(20, 110))):
        wrap = draw(st.sampled_from(_WRAPS))
        expression = wrap.format(e=expression, o=draw(st.sampled_from(_LEAVES)))
    body = f"y = {expression}\n"
    for _ in range(draw(st.integers(0, 50))):
        block = draw(st.sampled_from(_BLOCKS))
        inner = "".join(f"    {line}\n" for line in body.splitlines())
        body = block + inner + ("except E:\n    pass\n" if block == "try:\n" else "")
    return body


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(nested_programs())
def test_the_depth_check_finds_what_a_plain_walk_finds(source: str) -> None:
    try:
        tree = ast.parse(source)
    except (SyntaxError, RecursionError, MemoryError):
        return  # the parser's own limits
    assert _too_deep(tree) is _reference_too_deep(tree)


def test_the_depth_check_reports_deep_programs() -> None:
    source = "y = " + "-" * (MAX_DEPTH + 5) + "x\n"
    tree = ast.parse(source)
    found = _too_deep(tree)
    assert found is not None and found is _reference_too_deep(tree)
    assert _too_deep(ast.parse("y = " + "-" * (MAX_DEPTH - 5) + "x\n")) is None


def test_a_cold_compile_at_trace_off_parses_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[int] = []
    original = phases.parse

    def counted(source: object) -> object:
        parses.append(1)
        return original(source)  # type: ignore[arg-type]

    monkeypatch.setattr(phases, "parse", counted)
    text = ("from books import erp, crm\ndef total(xs):\n    return sum([x * 2 for x in xs])\n"
            "crm.update(id=1, total=total([1, 2]))\nprint(erp.lookup(3))\n# parsed once\n")
    compilation = Compilation.of(text, "once.spy")
    program = compilation.program("off")
    assert parses == [1]
    assert program.books == ("crm", "erp")
    # The lowering rewrote the parsed tree in place; asked for again, it is parsed again.
    tree = compilation.tree
    assert parses == [1, 1]
    assert tree is not None
    assert ast.dump(tree) == ast.dump(ast.parse(text))

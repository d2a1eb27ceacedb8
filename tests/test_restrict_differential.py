"""The one-walk restriction pass (compiler/policy.py) against RestrictedPython's.

With static proofs on, every program compile applies the policy with one walk of our
own (`check_proven`) instead of RestrictedPython's transformer with `RestrictionPolicy`
(`restrict_with_restrictedpython`, still the guarded mode). The two must agree on the
generated code: on the lowered spec programs, at trace levels `off` and `full`, both
accept and leave the same tree with the same positions; on those trees broken on
purpose (a `_` name where a name, parameter, `def` or handler stands, a refused or
inspect attribute, an attribute of the compiler's objects it does not use, an
assignment to a program value's attribute, `eval`/`exec`, a node type RestrictedPython
refuses), both refuse; an attribute outside the allow-list is guarded the same way.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from RestrictedPython.transformer import RestrictingNodeTransformer

from jarvis.compiler import Compilation
from jarvis.compiler.bounds import bound_operations
from jarvis.compiler.lower.program import lower_program
from jarvis.compiler.policy import GENERATED_NODES, check_proven
from jarvis.compiler.restrict import RestrictionError, restrict_with_restrictedpython
from jarvis.compiler.trace import instrument

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "tests" / "spec").glob("*.spy"))
LEVELS = ("off", "full")


@cache
def lowered(path: Path, trace: str) -> ast.Module:
    """The lowered module of a spec program at `trace`, before the restriction pass
    (keep it: each use takes a copy)."""
    compilation = Compilation.of(path.read_text(encoding="utf-8"), str(path))
    assert compilation.ok and compilation.tree is not None and compilation.source is not None
    tree, _ = instrument(compilation.tree, compilation.source, trace)  # type: ignore[arg-type]
    if tree is compilation.tree:
        tree = copy.deepcopy(tree)
    return lower_program(bound_operations(tree, copy=False), copy=False).module


def verdicts(module: ast.Module) -> tuple[str | None, str | None]:
    """Each pass's result on its own copy of `module`: the tree it leaves (dumped with
    positions), or None when it refuses the code."""
    results: list[str | None] = []
    passes: list[Callable[[ast.Module], ast.Module]] = [
        check_proven, lambda tree: restrict_with_restrictedpython(tree, static_proofs=True)]
    for restrict in passes:
        try:
            results.append(ast.dump(restrict(copy.deepcopy(module)), include_attributes=True))
        except RestrictionError:
            results.append(None)
    return results[0], results[1]


@pytest.mark.parametrize("trace", LEVELS)
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_both_passes_accept_the_spec_programs_alike(path: Path, trace: str) -> None:
    ours, theirs = verdicts(lowered(path, trace))
    assert ours is not None and theirs is not None
    assert ours == theirs, "the same tree, every node at the same position"


def _names(module: ast.Module) -> list[ast.AST]:
    return [n for n in ast.walk(module) if isinstance(
        n, (ast.Name, ast.arg, ast.FunctionDef, ast.ExceptHandler))]


def _rename(node: ast.AST, name: str) -> None:
    if isinstance(node, ast.Name):
        node.id = name
    elif isinstance(node, ast.arg):
        node.arg = name
    else:
        assert isinstance(node, (ast.FunctionDef, ast.ExceptHandler))
        node.name = name


def _attributes(module: ast.Module) -> list[ast.Attribute]:
    return [n for n in ast.walk(module) if isinstance(n, ast.Attribute)]


def _calls(module: ast.Module) -> list[ast.Call]:
    return [n for n in ast.walk(module) if isinstance(n, ast.Call)]


def _statements(module: ast.Module) -> list[list[ast.stmt]]:
    return [n.body for n in ast.walk(module) if isinstance(n, (ast.FunctionDef, ast.If))]


REFUSED_STATEMENTS = [
    "nonlocal x",
    "async def f():\n    pass",
    "async def f():\n    await g()",
    "try:\n    pass\nexcept* ValueError:\n    pass",
]
"""Statements RestrictedPython refuses outright; the generated code never holds one."""


@st.composite
def broken(draw: st.DrawFn) -> ast.Module:
    """A lowered spec program with one thing in it that the policy refuses."""
    path = draw(st.sampled_from(SPECS))
    module = copy.deepcopy(lowered(path, draw(st.sampled_from(LEVELS))))
    kind = draw(st.sampled_from(["name", "attribute", "internal", "store", "call",
                                 "statement"]))
    if kind == "name":
        node = draw(st.sampled_from(_names(module)))
        _rename(node, draw(st.sampled_from(["_secret", "__import__", "__builtins__",
                                            "_getattr_", "_"])))
    elif kind == "attribute":
        attributes = _attributes(module)
        assume(bool(attributes))
        attribute = draw(st.sampled_from(attributes))
        attribute.attr = draw(st.sampled_from(["__class__", "_jv_F", "gi_frame",
                                               "f_globals", "tb_frame", "co_code"]))
    elif kind == "internal":
        owners = [a for a in _attributes(module) if isinstance(a.value, ast.Name)
                  and a.value.id.startswith(("_jv_F", "_jv_b_", "_jv_H_"))]
        assume(bool(owners))
        draw(st.sampled_from(owners)).attr = draw(st.sampled_from(["fid", "name", "clear"]))
    elif kind == "store":
        # `x.count = v`: an assignment to an attribute of a program value.
        assignments = [n for n in ast.walk(module) if isinstance(n, ast.Assign)
                       and isinstance(n.targets[0], ast.Name)
                       and not n.targets[0].id.startswith("_jv_")]
        assume(bool(assignments))
        assignment = draw(st.sampled_from(assignments))
        target = assignment.targets[0]
        assert isinstance(target, ast.Name)
        assignment.targets[0] = ast.copy_location(ast.Attribute(
            value=ast.Name(id=target.id, ctx=ast.Load()), attr="count", ctx=ast.Store()),
            target)
    elif kind == "call":
        calls = [c for c in _calls(module) if isinstance(c.func, ast.Name)]
        assume(bool(calls))
        func = draw(st.sampled_from(calls)).func
        assert isinstance(func, ast.Name)
        func.id = draw(st.sampled_from(["eval", "exec"]))
    else:
        body = draw(st.sampled_from(_statements(module)))
        statement = ast.parse(draw(st.sampled_from(REFUSED_STATEMENTS))).body[0]
        body.insert(draw(st.integers(0, len(body))), statement)
    return module


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(broken())
def test_both_passes_refuse_what_breaks_the_policy(module: ast.Module) -> None:
    assert verdicts(module) == (None, None)


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(SPECS), st.sampled_from(LEVELS), st.data())
def test_both_passes_guard_an_attribute_outside_the_allow_list(
    path: Path, trace: str, data: st.DataObject,
) -> None:
    module = copy.deepcopy(lowered(path, trace))
    reads = [a for a in _attributes(module) if isinstance(a.ctx, ast.Load)
             and not (isinstance(a.value, ast.Name) and a.value.id.startswith("_jv_"))]
    if not reads:
        reads = [n for n in ast.walk(module) if isinstance(n, ast.Attribute)]
        if not reads:
            return
    data.draw(st.sampled_from(reads)).attr = "create_lead"
    ours, theirs = verdicts(module)
    if theirs is None:  # the attribute stood where a compiler object's must
        assert ours is None
        return
    assert ours is not None and "_getattr_" in ours
    assert ours == theirs


@pytest.mark.parametrize("source", [
    "class C:\n    pass",
    "import os",
    "from books import crm",
    "with f() as g:\n    pass",
    "def f():\n    yield 1",
    "x = (y := 1)",
])
def test_the_walk_refuses_node_types_the_generated_code_never_has(source: str) -> None:
    # RestrictedPython rewrites or allows some of these; the walk is stricter.
    with pytest.raises(RestrictionError, match="not part of the generated code"):
        check_proven(ast.parse(source))


def test_every_generated_node_type_is_one_restrictedpython_reviewed() -> None:
    unknown = {kind.__name__ for kind in GENERATED_NODES
               if not hasattr(RestrictingNodeTransformer, f"visit_{kind.__name__}")}
    assert unknown == set()


def test_a_guard_takes_the_position_of_the_attribute() -> None:
    tree = check_proven(ast.parse("x = 1\nif x:\n    y = crm.create_lead\n"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call))
    assert ast.unparse(call) == "_getattr_(crm, 'create_lead')"
    for node in (call, call.func, call.args[1]):
        assert (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset) == \
            (3, 8, 3, 23)

"""The restriction policy (compiler/restrict.py) and the runtime guards (runtime/guards.py).

The policy lets the compiler's `_jv_` names through and refuses every other `_` name;
with static proofs on, no guard is left in a valid program; with them off, every
access of a program value is guarded, and the program behaves exactly the same: the
spec programs and a set of failing programs run under the Machine both ways, with the
same outputs, prints, trace events, errors and error positions.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
from virtual_clock import VirtualClock

from jarvis.compiler import Compilation, phases
from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.restrict import (
    RestrictionError,
    restrict,
    restricted_compile,
    unpack_spec,
)
from jarvis.compiler.validate import book_imports
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.builtins import BookProxy
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.frames import Cell, Frame
from jarvis.runtime.guards import (
    SandboxViolation,
    _getattr_,
    _getitem_,
    _getiter_,
    _inplacevar_,
    _iter_unpack_sequence_,
    _unpack_sequence_,
    _write_,
    guard_table,
)
from jarvis.runtime.machine import Machine
from jarvis.runtime.trace import TraceEvent, Tracer

ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = ROOT / "tests" / "spec"
SPEC_REGISTRY = SPEC_DIR / "books.toml"
SPECS = sorted(SPEC_DIR.glob("*.spy"))
GUARDS = frozenset(guard_table())


# -- the policy on hand-made trees ------------------------------------------------------


def restricted(source: str, static_proofs: bool = True) -> ast.Module:
    return restrict(ast.parse(source), static_proofs=static_proofs)


@pytest.mark.parametrize("source", [
    "x = _secret",
    "_secret = 1",
    "_getattr_ = len",
    "def f(_x):\n    return 1",
    "def _f():\n    return 1",
    "f = lambda _x: 1",
    "try:\n    pass\nexcept Exception as _e:\n    pass",
    "x = __builtins__",
])
def test_a_name_starting_with_underscore_that_is_not_ours_is_refused(source: str) -> None:
    with pytest.raises(RestrictionError, match="compiler bug"):
        restricted(source)


def test_a_name_injected_into_generated_code_is_refused() -> None:
    # As if the validator had let `__import__` through: the policy still refuses it.
    compilation = Compilation.of("x = 1\n")
    assert compilation.lowered is not None
    module = compilation.lowered.module
    assignment = next(n for n in ast.walk(module) if isinstance(n, ast.Assign)
                      and isinstance(n.targets[0], ast.Name) and n.targets[0].id == "x")
    assignment.value = ast.copy_location(ast.Name(id="__import__", ctx=ast.Load()),
                                         assignment.value)
    with pytest.raises(RestrictionError, match="'__import__' starts with '_'"):
        restricted_compile(module, "<injected>")


@pytest.mark.parametrize("source", [
    "x = y.__class__",
    "x = y._jv_name",
    "x = g.gi_frame",
    "x = f.f_globals",
    "y.count = 1",
    "del y.count",
    "x = _jv_F.fid",
    "x = _jv_b_n.name",
    "x = eval('1')",
])
def test_refused_attributes_and_calls(source: str) -> None:
    with pytest.raises(RestrictionError):
        restricted(source)
    with pytest.raises(RestrictionError):
        restricted(source, static_proofs=False)


def test_the_compilers_own_names_and_attributes_are_allowed() -> None:
    source = (
        "def _jv_step_0(_jv_F, _jv_mode, _jv_V):\n"
        "    global total\n"
        "    _jv_D = _jv_F.locals\n"
        "    _jv_b_n = _jv_Cell('n')\n"
        "    _jv_b_n.value = 1\n"
        "    _jv_F.pc = _jv_b_n.free\n"
        "    _jv_h = _jv_H_0.get(_jv_F.pc)\n"
        "    _jv_acc = []\n"
        "    _jv_acc.append(_jv_D['_jv_r1'])\n"
        "    total = _jv_books['crm']\n"
    )
    for static_proofs in (True, False):
        tree = restricted(source, static_proofs)
        compile(tree, "<policy>", "exec", dont_inherit=True)
        assert _called(tree) == set(), "the compiler's own accesses are never guarded"


def test_a_boxed_variable_is_a_program_variable() -> None:
    tree = restricted("_jv_b_n.value += 1", static_proofs=False)
    assert ast.unparse(tree) == "_jv_b_n.value = _inplacevar_('+=', _jv_b_n.value, 1)"
    compile(tree, "<policy>", "exec", dont_inherit=True)


def test_print_stays_the_runtime_builtin() -> None:
    tree = restricted("print('x', end='')\nprinted = 1\nbuiltins = 2\n")
    assert ast.unparse(tree) == "print('x', end='')\nprinted = 1\nbuiltins = 2"


def test_static_proofs_leave_allow_listed_accesses_native() -> None:
    source = ("d = {'a': [1, 2]}\nd['b'] = d.get('a')\nfor k, v in d.items():\n    x = v[0]\n"
              "a, (b, c) = 1, (2, 3)\nx += 1\nd['a'] += [3]\nf(*x, **d)\nys = [*x, {**d}]\n")
    assert _called(restricted(source)) == set()
    guarded = _called(restricted(source, static_proofs=False))
    assert guarded == {"_getattr_", "_getitem_", "_write_", "_iter_unpack_sequence_",
                       "_unpack_sequence_", "_inplacevar_", "_getiter_"}
    assert guarded <= GUARDS


def test_an_attribute_outside_the_allow_list_stays_guarded_even_with_proofs() -> None:
    # The validator refuses it in a program; a Book procedure is the one legitimate case.
    tree = restricted("x = crm.create_lead")
    assert ast.unparse(tree) == "x = _getattr_(crm, 'create_lead')"


def test_star_arguments_are_not_rewritten_into_apply() -> None:
    text = ast.unparse(restricted("f(*xs, **kw)", static_proofs=False))
    assert text == "f(*_getiter_(xs), **_getiter_(kw))"


def test_multiple_targets_evaluate_the_value_once() -> None:
    text = ast.unparse(restricted("a, b = c = [d] = f()", static_proofs=False))
    assert text.count("f()") == 1


def test_unpack_spec_describes_nested_and_starred_targets() -> None:
    def spec(target: str) -> Any:
        node = ast.parse(f"{target} = x").body[0]
        assert isinstance(node, ast.Assign)
        assert isinstance(node.targets[0], (ast.Tuple, ast.List))
        return unpack_spec(node.targets[0])

    assert spec("a, b") == (2, False, ())
    assert spec("a, *b, (c, d)") == (2, True, ((-1, (2, False, ())),))
    assert spec("[a, [b, *c]], d") == (2, False, ((0, (2, False, ((1, (1, True, ())),))),))


def test_positions_are_kept() -> None:
    source = "x = 1\nif x:\n    y = x[0]\n"
    tree = restricted(source, static_proofs=False)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call))
    assert (call.lineno, call.col_offset, call.end_lineno, call.end_col_offset) == (3, 8, 3, 12)


# -- the guards -------------------------------------------------------------------------


def _generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(("value", "name"), [
    ("text", "__class__"),
    ("text", "format"),
    ("text", "format_map"),
    (_generator(), "gi_frame"),
    (_generator(), "send"),
    (KeyError("k"), "with_traceback"),
    (KeyError("k"), "__traceback__"),
    (len, "__self__"),
    ([], "__class__"),
])
def test_getattr_refuses_names_outside_the_allow_list(value: Any, name: str) -> None:
    with pytest.raises(SandboxViolation, match=repr(name)):
        _getattr_(value, name)


def test_getattr_reads_allow_listed_attributes() -> None:
    assert _getattr_("abc", "upper")() == "ABC"
    assert _getattr_({"a": 1}, "get")("a") == 1
    assert _getattr_(KeyError("k"), "args") == ("k",)
    assert _getattr_(3, "real") == 3
    assert _getattr_(str, "join")(",", "ab") == "a,b"
    with pytest.raises(AttributeError, match="'int' object has no attribute 'upper'"):
        _getattr_(3, "upper")


def test_getattr_lets_any_procedure_name_through_on_a_book() -> None:
    book = BookProxy("crm", MemoryEffects())  # type: ignore[arg-type]
    assert repr(_getattr_(book, "send")) == "<procedure crm.send>"
    with pytest.raises(SandboxViolation):
        _getattr_(book, "_jv_effects")


@pytest.mark.parametrize("value", [
    Cell("x", 1), Frame(0, 0, {}, "<module>"), object(), type, Frame, ast,
])
def test_guards_refuse_values_a_program_cannot_hold(value: Any) -> None:
    guards: list[Callable[[], object]] = [
        lambda: _getattr_(value, "count"), lambda: _getitem_(value, 0),
        lambda: _getiter_(value), lambda: _write_(value), lambda: _inplacevar_("+=", value, 1),
        lambda: _unpack_sequence_(value, (2, False, ())),
        lambda: _iter_unpack_sequence_(value, (2, False, ())),
    ]
    for guard in guards:
        with pytest.raises(SandboxViolation):
            guard()


def test_a_violation_is_not_catchable_as_exception() -> None:
    assert not issubclass(SandboxViolation, Exception)


def test_guards_hand_values_back_unchanged() -> None:
    xs = [1, [2, 3]]
    assert _getiter_(xs) is xs
    assert _write_(xs) is xs
    assert _unpack_sequence_(xs, (2, False, ((1, (2, False, ())),))) is xs
    assert _getitem_(xs, slice(0, 1)) == [1]
    assert _iter_unpack_sequence_(5, (2, False, ())) == 5  # the loop raises the TypeError
    assert list(_iter_unpack_sequence_({"a": 1}.items(), (2, False, ()))) == [("a", 1)]
    assert _inplacevar_("+=", xs, [4]) is xs and xs[-1] == 4
    assert _inplacevar_("//=", 7, 2) == 3


def test_unpack_checks_nested_parts_it_will_reach() -> None:
    with pytest.raises(SandboxViolation):
        _unpack_sequence_([1, Cell("c", 1)], (2, False, ((1, (2, False, ())),)))
    # A length that will not unpack: Python's own error comes first.
    assert _unpack_sequence_([1, Cell("c")], (3, False, ((1, (2, False, ())),)))


# -- programs under the Machine, with and without static proofs --------------------------


@dataclass
class Run:
    status: str
    outputs: dict[str, Any]
    printed: str
    error: str | None
    location: Any
    events: list[TraceEvent]


class EventList(list[TraceEvent]):
    def deliver(self, events: Any) -> None:
        self.extend(event._replace(duration_ms=None) for event in events)


class PrintingMachine(Machine):
    printed: list[str]

    def print(self, text: str) -> None:
        self.printed.append(text)
        super().print(text)


def compile_program(source: str, path: str, static_proofs: bool,
                    trace: str = "off") -> tuple[CompiledProgram, ast.Module]:
    """The program through the whole pipeline, its last phase set to `static_proofs`;
    with the restricted tree that was compiled."""
    trees: list[ast.Module] = []

    def compile_and_keep(module: ast.Module, filename: str) -> CodeType:
        code = restricted_compile(module, filename, static_proofs=static_proofs)
        trees.append(module)  # restricted in place
        return code

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(phases, "_PROGRAM_CACHE", {})
        patch.setattr(phases, "restricted_compile", compile_and_keep)
        compilation = Compilation.of(source, path)
        assert compilation.ok, [d.message for d in compilation.diagnostics]
        program = compilation.program(trace)  # type: ignore[arg-type]
    return program, trees[0]


def run_program(program: CompiledProgram, inputs: dict[str, Any] | None = None) -> Run:
    events = EventList()
    clock = VirtualClock()
    machine = PrintingMachine(
        program, execution_id="restrict", inputs=inputs or {},
        books=BookRegistry.load(SPEC_REGISTRY), effects=MemoryEffects(),
        tracer=Tracer("restrict", program.trace_sites, events), clock=clock, wait=clock.wait,
    )
    machine.printed = []
    outcome = machine.run()
    error = None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}"
    return Run(outcome.status, outcome.outputs, "".join(machine.printed), error,
               outcome.location, list(events))


def _called(tree: ast.AST) -> set[str]:
    return {
        node.func.id for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in GUARDS
    }


def unproven(tree: ast.Module, books: set[str]) -> list[str]:
    """The guards left in `tree` other than reads of a procedure of a Book: those are
    not proven by the policy, and the guard lets any procedure name through."""
    return [
        ast.unparse(node) for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in GUARDS
        and not (node.func.id == "_getattr_" and isinstance(node.args[0], ast.Name)
                 and node.args[0].id in books)
    ]


@pytest.mark.parametrize("trace", ["off", "full"])
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_program_behaves_the_same_with_full_guards(path: Path, trace: str) -> None:
    source = path.read_text(encoding="utf-8")
    inputs_file = path.with_suffix(".inputs.json")
    inputs = json.loads(inputs_file.read_text(encoding="utf-8")) if inputs_file.exists() else {}
    proven, proven_tree = compile_program(source, str(path), True, trace)
    guarded, guarded_tree = compile_program(source, str(path), False, trace)
    tree = Compilation.of(source, str(path)).tree
    assert tree is not None
    books = set(book_imports(tree))
    assert unproven(proven_tree, books) == [], "static proofs leave no guard in a valid program"
    assert unproven(guarded_tree, books), "with the proofs off the accesses are guarded"
    expected = run_program(proven, inputs)
    assert expected.status == "completed", expected.error
    assert run_program(guarded, inputs) == expected


def test_attribute_guards_only_without_static_proofs() -> None:
    source = (SPEC_DIR / "dicts.spy").read_text(encoding="utf-8")

    def names(program: CompiledProgram) -> set[str]:
        return set().union(*(set(code.co_names) for code in program.codes))

    assert "_getattr_" not in names(compile_program(source, "dicts.spy", True)[0])
    assert "_getattr_" in names(compile_program(source, "dicts.spy", False)[0])


FAILING = [
    "x = 5\ny = x[0]\n",
    "xs = [1, 2]\ny = xs['a':]\n",
    "for a in 5:\n    pass\n",
    "for a in 5:\n    sleep(0)\n",
    "for a, b in [(1, 2), 3]:\n    pass\n",
    "a, b = 5\n",
    "a, (b, c) = [1, (2, 3, 4)]\n",
    "a, *b = []\n",
    "ys = [y for y, z in [1]]\n",
    "def f(*args):\n    return args\nf(*5)\n",
    "def f(**kw):\n    return kw\nf(**[1])\n",
    "def f(a):\n    return a\nf(1, **{'a': 2})\n",
    "xs = [*5]\n",
    "d = {**[1]}\n",
    "d = {}\nd['k'] += 1\n",
    "t = (1, 2)\nt[0] = 3\n",
    "t = 'ab'\ndel t[0]\n",
    "x = 'a'\nx += 1\n",
    "xs = [1]\nxs.upper()\n",
    "def outer():\n    n = 0\n    def inc():\n        return n + 1\n    n += 'x'\n"
    "    return inc\nouter()\n",
    "from books import echo\nd = echo.echo(1)\nd['missing']\n",
]


@pytest.mark.parametrize("source", FAILING)
def test_errors_are_the_same_with_full_guards(source: str) -> None:
    expected = run_program(compile_program(source, "<failing>", True, "full")[0])
    assert expected.status == "failed" and expected.location is not None
    assert run_program(compile_program(source, "<failing>", False, "full")[0]) == expected

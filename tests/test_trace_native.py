"""The trace hooks in C (`jarvis.runtime._hooks`) and their Python fallback.

Both implementations must leave the same entries in the Tracer's buffer and so produce
the same events: every test that compares runs does it under both, and the C type's
reference counting is checked directly (`sys.getrefcount`) and by memory that stays
flat over many traced runs.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jarvis.compiler import Compilation
from jarvis.compiler.trace import Site
from jarvis.compiler.validate import book_imports
from jarvis.runtime import trace
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.errors import LimitExceeded
from jarvis.runtime.machine import Machine
from jarvis.runtime.sinks import MemorySink, NullSink
from jarvis.runtime.trace import TraceEvent, Tracer

if TYPE_CHECKING:
    from jarvis.runtime._hooks import Hooks as NativeHooks

ROOT = Path(__file__).resolve().parent.parent


def _without_books(path: Path) -> bool:
    tree = Compilation.of(path.read_bytes(), str(path)).tree
    assert tree is not None
    return not book_imports(tree)


SPECS = sorted(path for path in (ROOT / "tests" / "spec").glob("*.spy") if _without_books(path))
try:
    from jarvis.runtime import _hooks
except ImportError:  # not built: test_this_install_built_and_uses_the_c_hooks fails
    NATIVE: type[NativeHooks] | None = None
    NATIVE_REPRS: Callable[[list[Any]], list[str]] = trace._python_reprs
else:
    NATIVE, NATIVE_REPRS = _hooks.Hooks, _hooks.reprs
CHOSEN = trace._native, trace._reprs
"""What `jarvis.runtime.trace` chose when imported: the C hooks, unless not built or
JARVIS_TRACE_HOOKS=python."""


@pytest.fixture(autouse=True)
def c_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tracers use the C hooks (whatever JARVIS_TRACE_HOOKS says) unless a test asks
    for `python_hooks`."""
    monkeypatch.setattr(trace, "_native", NATIVE)
    monkeypatch.setattr(trace, "_reprs", NATIVE_REPRS)
    yield


@pytest.fixture
def python_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tracers made under this fixture use the hooks written in Python."""
    monkeypatch.setattr(trace, "_native", None)
    monkeypatch.setattr(trace, "_reprs", trace._python_reprs)
    yield


def is_native(tracer: Tracer) -> bool:
    return NATIVE is not None and isinstance(getattr(tracer.hook_expr, "__self__", None), NATIVE)


def run_program(source: str | bytes, *, native: bool, batch_size: int = 64,
                max_steps: int | None = None, inputs: dict[str, Any] | None = None,
                ) -> tuple[str, list[TraceEvent]]:
    """Run `source` at trace=full in a Machine; its status and its events."""
    saved = trace._native, trace._reprs
    trace._native = NATIVE if native else None
    trace._reprs = NATIVE_REPRS if native else trace._python_reprs
    try:
        program = Compilation.of(source, "<native>").program("full")
        sink = MemorySink()
        tracer = Tracer("ex", program.trace_sites, sink, batch_size=batch_size,
                        max_steps=max_steps)
        assert is_native(tracer) == native
        clock = [1.8e9]  # the same time in every run; `sleep` moves it on at once
        machine = Machine(program, execution_id="ex", inputs=inputs or {}, books=BookRegistry(),
                          effects=MemoryEffects(), tracer=tracer, clock=lambda: clock[0],
                          wait=lambda seconds: clock.__setitem__(0, clock[0] + seconds))
        outcome = machine.run()
        tracer.flush()
        return outcome.status, sink.events
    finally:
        trace._native, trace._reprs = saved


def both(source: str | bytes, **options: Any) -> tuple[str, list[TraceEvent]]:
    """Run under both hooks; assert the same status and events; return them."""
    c_run = run_program(source, native=True, **options)
    python_run = run_program(source, native=False, **options)
    assert c_run[0] == python_run[0]
    assert c_run[1] == python_run[1]
    return c_run


# -- which hooks ------------------------------------------------------------------------


def test_this_install_built_and_uses_the_c_hooks() -> None:
    from jarvis.runtime import _hooks

    chosen_hooks, chosen_reprs = CHOSEN
    assert chosen_hooks is _hooks.Hooks and chosen_reprs is _hooks.reprs
    assert Path(_hooks.__file__ or "").suffix in {".so", ".pyd"}
    tracer = Tracer("ex", [], NullSink())
    assert is_native(tracer)
    hooks = tracer.hooks()
    assert hooks["_jv_t"].__name__ == "expr" and hooks["_jv_c"].__name__ == "expr_checked"
    assert hooks["_jv_s"].__name__ == "stmt" and hooks["_jv_f"].__name__ == "first"


@pytest.mark.usefixtures("python_hooks")
def test_without_the_extension_the_python_hooks_are_used() -> None:
    tracer = Tracer("ex", [], NullSink())
    assert not is_native(tracer)
    assert tracer.hook_expr.__code__.co_name == "hook_expr"


@pytest.mark.parametrize(("setting", "native"), [("python", False), (" Python ", False),
                                                 ("native", True), ("", True)])
def test_the_environment_variable_chooses_the_hooks(setting: str, native: bool) -> None:
    probe = ("from jarvis.runtime.trace import Tracer, _native, _reprs\n"
             "from jarvis.runtime.sinks import NullSink\n"
             "hook = Tracer('ex', [], NullSink()).hook_expr\n"
             "print(_native is not None, type(hook).__name__, type(_reprs).__name__)\n")
    env = {**os.environ, "JARVIS_TRACE_HOOKS": setting}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.split() == (
        ["True", "builtin_function_or_method", "builtin_function_or_method"] if native
        else ["False", "function", "function"])


# -- the same buffer, the same events ----------------------------------------------------

SITES = [Site("stmt", 1, 1, 1, 2, "s"), Site("expr", 1, 1, 1, 2, "x"),
         Site("expr", 1, 1, 1, 2, "d", summarize=True)]
VALUES: list[Any] = [
    0, -7, 10**30, 2**60_000, 1.5, float("nan"), True, False, None, "", "short", "x" * 199,
    "y" * 200, "z" * 201, "é\n\x00", [], [1], [1, 2, 3], list(range(100)), (), (1,), (1, "a"),
    {}, {"a": 1}, {"a": [1, {"b": (2, 3)}]}, {1, 2}, frozenset({"a"}), set(), range(3),
    range(0, 10, 2), len, print, ValueError("bad"), KeyError("k"), {}.keys(), {"a": 1}.items(),
    {"a": 1}.values(), int, b"bytes", bytearray(b"x"), 3j,
]


def drive(tracer: Tracer, values: list[Any]) -> list[Any]:
    """Call every hook with every value at a plain and a summarized site."""
    returned: list[Any] = []
    for value in values:
        for k in (1, 2):
            tracer.hook_stmt(0)
            returned.append(tracer.hook_expr(k, value))
            returned.append(tracer.hook_expr_checked(k, value))
            returned.append(tracer.hook_first(0, k, value))
    return returned


def test_the_c_hooks_fill_the_buffer_exactly_as_the_python_hooks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c_tracer = Tracer("ex", SITES, MemorySink(), batch_size=10_000)
    c_returned = drive(c_tracer, VALUES)
    monkeypatch.setattr(trace, "_native", None)
    python_tracer = Tracer("ex", SITES, MemorySink(), batch_size=10_000)
    python_returned = drive(python_tracer, VALUES)
    assert is_native(c_tracer) and not is_native(python_tracer)
    assert all(a is b for a, b in zip(c_returned, python_returned, strict=True))
    assert all(a is v for a, v in zip(c_returned, [v for v in VALUES for _ in range(6)],
                                      strict=True))
    assert c_tracer._marks == python_tracer._marks
    c_buffer, python_buffer = c_tracer._buffer, python_tracer._buffer
    assert len(c_buffer) == len(python_buffer)
    for c_entry, python_entry in zip(c_buffer, python_buffer, strict=True):
        if isinstance(c_entry, float) and c_entry != c_entry:  # nan
            assert python_entry is c_entry
        else:
            assert type(c_entry) is type(python_entry) and c_entry == python_entry
    c_tracer.flush()  # the batch texts by the C `reprs`
    monkeypatch.setattr(trace, "_reprs", trace._python_reprs)
    python_tracer.flush()
    c_events = c_tracer.sink.events  # type: ignore[attr-defined]
    python_events = python_tracer.sink.events  # type: ignore[attr-defined]
    assert [e.to_json() for e in c_events] == [e.to_json() for e in python_events]
    summarized = [e for e in c_events if e.expr == "d" and e.type == "list"]
    assert {e.value for e in summarized} >= {"[]", "[… (1 item)]", "[… (100 items)]"}


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_spec_programs_trace_the_same_under_both_hooks(path: Path) -> None:
    inputs_file = path.with_suffix(".inputs.json")
    inputs = json.loads(inputs_file.read_text()) if inputs_file.exists() else {}
    status, events = both(path.read_bytes(), inputs=inputs, batch_size=7)
    assert status == "completed"
    assert len(events) > 10


PROGRAM = """\
rows = []
for i in range(40):
    rows.append({"id": i, "name": "n" + str(i), "tags": [i, i * 2]})
groups = {}
for row in rows:
    key = row["id"] % 3
    if key not in groups:
        groups[key] = []
    groups[key].append(row["name"])
squares = [x * x for x in range(30) if x % 2]
pick = lambda r: r["tags"][1]
total = sum(map(pick, rows))
text = f"{total}:{len(groups)}" + "!" * 300
try:
    boom = rows[1000]
except IndexError as e:
    caught = e
output("total", total)
"""


@pytest.mark.parametrize("batch_size", [1, 2, 5, 4096])
def test_a_program_traces_the_same_under_both_hooks(batch_size: int) -> None:
    status, events = both(PROGRAM, batch_size=batch_size)
    assert status == "completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    values = {(e.expr, e.value) for e in events}
    assert ("rows", "[… (40 items)]") in values  # the receiver of rows.append
    assert ("squares", "[… (15 items)]") not in values  # an assignment target: not traced


@pytest.mark.parametrize("max_steps", [1, 2, 3, 50, 333])
def test_the_step_limit_stops_both_hooks_at_the_same_event(max_steps: int) -> None:
    status, events = both(PROGRAM, max_steps=max_steps, batch_size=16)
    assert status == "failed"
    assert events[-1].kind == "limit"
    # The hook that takes the count past the limit raises: a statement hook, or one
    # in a comprehension; the expression hooks before it do not check.
    assert len([e for e in events if e.kind in ("stmt", "expr")]) > max_steps


INTS = [0, 1, -1, -5, -6, 255, 256, 1023, 1024, 99_999, -99_999, 2**31, -2**31, 2**62,
        2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64, 10**30, -10**30, True, False]


def test_the_c_reprs_are_the_reprs() -> None:
    assert NATIVE_REPRS is not trace._python_reprs
    values = [*INTS, None, 1.5, -0.0, float("inf"), "", "a'b\"c\n", "é" * 50, [1], (2,)]
    values += [*range(-2000, 2000, 7), *(n * 7919 for n in range(-3000, 3000, 13))]
    assert NATIVE_REPRS(values) == [*map(repr, values)]
    assert NATIVE_REPRS([]) == []
    with pytest.raises(ValueError, match="4300"):
        NATIVE_REPRS([1, 10**5000])
    with pytest.raises(TypeError):
        NATIVE_REPRS((1, 2))  # type: ignore[arg-type]


@pytest.mark.usefixtures("python_hooks")
def test_the_python_reprs_are_the_reprs() -> None:
    assert trace._reprs([*INTS, None]) == [*map(repr, [*INTS, None])]


def test_a_batch_with_an_int_too_long_for_repr_renders_it_by_size() -> None:
    tracer = Tracer("ex", SITES, MemorySink())
    tracer.hook_expr(1, 7)
    tracer.hook_expr(1, 10**5000)
    tracer.flush()
    events = tracer.sink.events  # type: ignore[attr-defined]
    assert [e.value for e in events] == ["7", f"<int of {(10**5000).bit_length()} bits>"]


# -- errors ------------------------------------------------------------------------------


def native_class() -> type[NativeHooks]:
    assert NATIVE is not None, "the C hooks were not built"
    return NATIVE


def test_the_c_hooks_check_their_arguments() -> None:
    hooks = native_class()([], [], trace.render, frozenset(), {}, list, 10, 20)
    for call in (lambda: hooks.expr(1), lambda: hooks.expr_checked(1, 2, 3),  # type: ignore[call-arg]
                 lambda: hooks.stmt(), lambda: hooks.first(1, 2)):  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="takes exactly"):
            call()
    with pytest.raises(TypeError):
        native_class()((), [], repr, frozenset(), {}, list, 10, 20)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="set"):
        native_class()([], [], repr, [], {}, list, 10, 20)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        native_class()([], [], None, frozenset(), {}, list, 10, 20)  # type: ignore[arg-type]
    hooks.set_capacity(99)
    assert hooks.capacity == 99


def test_a_failing_capture_or_spill_propagates_and_leaves_whole_entries() -> None:
    buffer: list[Any] = []
    marks: list[int] = []

    def capture(value: Any) -> tuple[str, str]:
        raise RuntimeError("capture failed")

    def spill() -> None:
        raise LimitExceeded("steps", "too many")

    hooks = native_class()(buffer, marks, capture, frozenset(), {}, spill, 4, 200)
    with pytest.raises(RuntimeError, match="capture failed"):
        hooks.expr(1, [1])
    assert buffer == [] and marks == []
    assert hooks.expr(1, 5) == 5  # expr never spills, even at capacity
    assert hooks.expr(1, 6) == 6
    for call in (lambda: hooks.stmt(0), lambda: hooks.expr_checked(1, 7),
                 lambda: hooks.first(0, 1, 8)):
        with pytest.raises(LimitExceeded):
            call()
    assert buffer == [1, 5, 1, 6, 0, None, 1, 7, 0, None, 1, 8]


# -- reference counts and memory ---------------------------------------------------------


def test_the_c_hooks_hold_exactly_one_reference_per_buffered_entry() -> None:
    buffer: list[Any] = []
    marks: list[int] = []
    summaries: dict[type, tuple[str, str, str, str]] = {
        list: ("[… (%d items)]", "[… (1 item)]", "[]", "list")}
    deferred = 10**40  # kept as it is
    mutable = [1, 2, 3]  # captured, never kept
    summarized = list(range(50))  # shown by its size, never kept
    k = 10**20  # an int object that is not cached by the interpreter
    name = summaries[list][3]
    hooks = native_class()(buffer, marks, trace.Renderer().capture, frozenset({k + 1}), summaries,
                   list, 10**9, 200)
    k_summarized = k + 1
    objects = [deferred, mutable, summarized, k, k_summarized, name, hooks]
    gc.collect()
    before = [sys.getrefcount(obj) for obj in objects]
    for _ in range(1000):
        hooks.expr(k, deferred)
        hooks.expr_checked(k, mutable)
        hooks.first(k, k_summarized, summarized)
        hooks.stmt(k)
    during = [sys.getrefcount(obj) for obj in objects]
    assert during[0] == before[0] + 1000
    assert during[1] == before[1] and during[2] == before[2]
    assert during[3] == before[3] + 4000 and during[4] == before[4] + 1000
    assert during[5] == before[5] + 1000  # the type name of each summary
    assert len(marks) == 2000 and marks[:3] == [3, 7, 13]
    buffer.clear()
    marks.clear()
    gc.collect()
    assert [sys.getrefcount(obj) for obj in objects] == before


def test_a_tracer_and_its_c_hooks_are_collected() -> None:
    tracer = Tracer("ex", SITES, NullSink())
    assert is_native(tracer) == (NATIVE is not None)
    tracer.hook_expr(1, [1, 2])
    gone = weakref.ref(tracer)
    del tracer
    gc.collect()
    assert gone() is None


LOOP = """\
rows = []
for i in range(300):
    rows.append({"i": i, "s": str(i) * 3, "f": i / 7})
    key = rows[-1]["s"] + "x"
out = [r["i"] for r in rows if r["i"] in {1, 2, 3}]
output("n", len(rows))
"""


def test_memory_stays_flat_over_many_traced_runs() -> None:
    program = Compilation.of(LOOP, "<loop>").program("full")

    def once() -> None:
        sink = NullSink()
        tracer = Tracer("ex", program.trace_sites, sink, batch_size=256)
        assert is_native(tracer) == (NATIVE is not None)
        machine = Machine(program, execution_id="ex", inputs={}, books=BookRegistry(),
                          effects=MemoryEffects(), tracer=tracer)
        assert machine.run().status == "completed"

    for _ in range(10):
        once()
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(10):
            once()
        gc.collect()
        settled, _ = tracemalloc.get_traced_memory()
        for _ in range(50):
            once()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 50 runs of about 5,000 events in 20 batches each: a leak of one object per event
    # would be megabytes, one per batch tens of kilobytes.
    assert after - settled < 16 * 1024, (settled, after)

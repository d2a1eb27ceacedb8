"""Generator expressions alive across a suspension point survive a snapshot.

Each program keeps a generator (or an iterator over one) across Book calls, `sleep` or
`checkpoint()`. It runs under plain CPython (the reference) and under the Machine
stopped after every effect and resumed by a fresh Machine from the pickled state, at
each trace level: the outputs, prints, Book calls and uncaught error must be the same,
and no snapshot may have been skipped (the state always pickled). With a trace, the
events of the stopped-and-resumed run, put together, must be those of a run that was
never stopped.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spygen import spy_programs, write_book_registry
from test_lowering_differential import (
    SPEC_REGISTRY,
    BookCall,
    EventList,
    PrintingMachine,
    Run,
    SnapshotKeeper,
    StubTracer,
    assert_same,
    compile_program,
    error_of,
    recording_registry,
    run_on_reference,
)
from test_restrict import compile_program as compile_with_proofs
from test_restrict import run_program
from virtual_clock import VirtualClock

from jarvis.compiler import Compilation
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.lazy import LazyGenerator, make_generator
from jarvis.runtime.trace import TraceEvent, Tracer

Event = tuple[Any, ...]

PROGRAMS: dict[str, str] = {
    "held_in_a_variable": """
from books import echo
xs = [1, 2, 3, 4]
g = (a * 2 for a in xs)
echo.echo(1)
print(next(g))
for x in g:
    echo.echo(x)
    print(x)
print(next(g, "done"))
""",
    "iterated_by_a_loop_that_calls_books": """
from books import echo
items = [3, 1, 2]
def f(y):
    return y * 10
for x in (f(y) for y in items if y != 1):
    r = echo.echo(x)
    print(x, r["args"])
""",
    "several_clauses_conditions_and_tuple_targets": """
from books import echo
pairs = [(1, "a"), (2, "b"), (3, "c")]
g = (f"{n}{s}{m}" for n, s in pairs if n != 2 for m in range(n) if m % 2 == 0)
while True:
    item = next(g, None)
    if item is None:
        break
    echo.echo(item)
    print(item)
h = ((head, rest) for head, *rest in [[1, 2, 3], [4], [5, 6]])
checkpoint()
print(list(h))
""",
    "closures_over_function_variables": """
from books import echo
def make(xs):
    k = 2
    g = (x * k for x in xs)
    echo.echo("made")
    k = 10
    first = next(g)
    sleep(1)
    k = 100
    return [first, *g]
print(make([1, 2, 3]))
def late():
    k = 1
    g = (x + k for x in range(3))
    k = 5
    return g
h = late()
echo.echo("late")
print(list(h))
""",
    "wrapped_by_zip_map_enumerate_and_filter": """
from books import echo
xs = [5, 6, 7, 8]
z = zip((x + 1 for x in xs), "abcd")
e = enumerate(x for x in xs if x % 2 == 0)
m = map(lambda v: v * 3, (x for x in xs))
f = filter(None, (x - 6 for x in xs))
i = iter(x for x in "xyz")
echo.echo(next(z))
for pair in z:
    echo.echo(pair)
    print(pair, next(e, None), next(m), next(f, None), next(i, None))
""",
    "returned_by_a_function_that_cannot_suspend": """
from books import echo
def evens(xs):
    return (x for x in xs if x % 2 == 0)
def squares(xs):
    g = (x * x for x in xs)
    return g
g = evens(range(10))
s = squares([1, 2, 3])
echo.echo(next(g))
total = 0
for v in g:
    total += v
    echo.echo(total)
print(total, list(s))
""",
    "nested_generators": """
from books import echo
grid = ((x * y for y in range(3)) for x in range(1, 4))
rows = []
for row in grid:
    echo.echo(len(rows))
    rows.append(row)
checkpoint()
print([list(r) for r in rows])
inner = (y for x in [[1, 2], [3]] for y in (z * 10 for z in x))
sleep(2)
print(list(inner))
""",
    "chained_generators": """
from books import echo
g1 = (x * 2 for x in range(5))
g2 = (y + 1 for y in g1 if y > 2)
g3 = (str(z) for z in g2)
echo.echo(next(g3))
print(next(g1))
echo.echo("mid")
print(list(g3), list(g1), list(g2))
""",
    "over_dicts_and_sets_that_change": """
from books import echo
d = {"a": 1, "b": 2, "c": 3}
keys = (k.upper() for k in d)
vals = (v for v in d.values())
view = d.keys()
print(next(keys), next(vals))
echo.echo(1)
d["b"] = 20
print(list(vals), list(keys), list(view))
s = {1, 2, 3}
gs = (x for x in sorted(s))
echo.echo(2)
print(list(gs))
grow = {"x": 1}
g = (k for k in grow)
echo.echo(3)
grow["y"] = 2
try:
    print(list(g))
except RuntimeError as e:
    print("RuntimeError", e)
""",
    "stored_in_containers": """
from books import echo
gens = {"a": (x for x in "abc"), "b": (x * 2 for x in [1, 2])}
box = [(x for x in range(3))]
echo.echo(1)
print(next(gens["a"]), list(gens["b"]), list(box[0]), list(gens["a"]))
""",
    "lambdas_made_by_a_generator": """
from books import echo
fs = (lambda y: x + y for x in range(3))
f0 = next(fs)
echo.echo(1)
f1 = next(fs)
print(f0(10), f1(10))
rest = list(fs)
echo.echo(2)
print([f(100) for f in rest], f0(1))
""",
    "exhausted_stays_exhausted": """
from books import echo
g = (x for x in [1])
print(next(g))
echo.echo(1)
print(next(g, "end"), next(g, "end again"), list(g))
""",
    "an_error_finishes_the_generator": """
from books import echo
g = (10 // x for x in [1, 0, 2])
print(next(g))
echo.echo(1)
try:
    next(g)
except ZeroDivisionError as e:
    print("caught", e)
echo.echo(2)
print(list(g))
""",
    "stop_iteration_inside_becomes_runtime_error": """
from books import echo
it = iter([1])
g = (next(it) for x in range(3))
echo.echo(1)
print(next(g))
try:
    next(g)
except RuntimeError as e:
    print("RuntimeError:", e)
print(list(g))
source = iter([1, 2])
h = (x for x in source)
echo.echo(2)
print(list(h))
""",
    "a_variable_of_a_later_clause": """
from books import echo
xs = [1, -1, 2]
g = (x for x in xs if x < 0 or y for y in [0, 1])
echo.echo(1)
print(list(g))
h = (x for x in [1] if y for y in [1])
echo.echo(2)
print(list(h))
""",
    "already_executing": """
from books import echo
g = (next(g) for x in range(2))
echo.echo(1)
try:
    next(g)
except ValueError as e:
    print("ValueError:", e)
print(list(g))
""",
    "subscript_targets": """
from books import echo
d = {}
g = (d["k"] * 2 for d["k"] in [1, 2, 3])
echo.echo(1)
print(next(g), d)
echo.echo(2)
print(list(g), d)
""",
    "python_messages_name_the_generator_type": """
from books import echo
g = (x for x in [1, 2])
echo.echo(1)
print(iter(g) is g)
try:
    len(g)
except TypeError as e:
    print(e)
try:
    g[0]
except TypeError as e:
    print(e)
try:
    g + 1
except TypeError as e:
    print(e)
print(isinstance(g, list), sorted(g))
""",
    "first_iterable_is_evaluated_where_it_stands": """
from books import echo
def noisy(n):
    print("evaluating", n)
    return range(n)
g = (x for x in noisy(2) for y in noisy(x + 1))
print("created")
echo.echo(1)
print(list(g))
try:
    bad = (x for x in 5)
except TypeError as e:
    print("TypeError:", e)
""",
    "resumable_functions_and_recursion": """
from books import echo
def walk(n):
    if n == 0:
        return (c for c in "end")
    rest = walk(n - 1)
    echo.echo(n)
    return (f"{n}{c}" for c in rest)
g = walk(3)
echo.echo("go")
print(list(g))
""",
    "uncaught_error_inside_after_resume": """
from books import echo
g = (int(s) for s in ["1", "2", "x"])
print(next(g))
echo.echo(1)
total = 0
for v in g:
    total += v
    echo.echo(total)
print(total)
""",
    "loops_the_lowering_takes_apart": """
from books import echo
def first_big(xs):
    try:
        for x in (a * 2 for a in xs):
            if x > 2:
                return x
    finally:
        echo.echo("finally")
def failing(xs):
    try:
        for x in (10 // a for a in xs):
            print(x)
    finally:
        echo.echo("cleanup")
print(first_big([1, 2, 3]))
try:
    failing([5, 0])
except ZeroDivisionError as e:
    print("caught", e)
d = {}
for d[echo.echo("k")["args"][0]] in (a + 1 for a in range(2)):
    print(d)
for n in (a for a in range(3)):
    if n == 1:
        break
else:
    pass
print(n)
""",
    "consumed_in_place_stays_correct": """
from books import echo
xs = [3, 1, 2]
print(sum(x for x in xs), max(x * 2 for x in xs), ",".join(str(x) for x in xs))
print(sorted((x for x in xs), reverse=True), any(x > 2 for x in xs), [*(x for x in xs)])
for x in (y * 2 for y in xs):
    print(x)
for x in (y * 3 for y in xs):
    echo.echo(x)
print(2 in (x for x in xs), list(zip((x for x in xs), xs)))
r = echo.echo(sum(x for x in xs))
print(r, tuple(x for x in xs if x != r["args"][0]))
""",
}


# -- running: stopped and resumed at every effect, traced or not -------------------------


def run_restarted(source: str, trace: str,
                  registry: Path = SPEC_REGISTRY) -> tuple[Run, list[Event]]:
    """Run, stopping after every effect and resuming a fresh Machine from the pickled
    state; the trace events of all the runs, each seq once."""
    program = compile_program(source, trace)
    log: list[BookCall] = []
    books = recording_registry(registry, log)
    effects = MemoryEffects()
    clock = VirtualClock()
    printed: list[str] = []
    keeper = SnapshotKeeper()
    events: dict[int, Event] = {}
    payload: bytes | None = None
    for _ in range(1000):
        started = effects.count
        sink = EventList()
        machine = PrintingMachine(
            program, execution_id="restarted", inputs={}, books=books, effects=effects,
            tracer=_tracer(program.trace_sites, trace, sink), snapshots=keeper, clock=clock,
            wait=clock.wait, stop_requested=lambda started=started: effects.count > started,
        )
        machine.printed = printed
        if payload is not None:
            machine.restore(payload)
        outcome = machine.run()
        for event in sink.events:
            events.setdefault(event.seq, _comparable(event))
        assert machine.snapshots_skipped == 0, "a snapshot was skipped: the state did not pickle"
        if outcome.status != "suspended":
            return Run(outcome.outputs, "".join(printed), log, error_of(outcome.error)), [
                events[seq] for seq in sorted(events)]
        assert keeper.payloads, "the Machine stopped without a snapshot"
        payload = keeper.payloads[-1]
        keeper.payloads.clear()
    raise AssertionError("the program did not end")


def run_uninterrupted(source: str, trace: str,
                      registry: Path = SPEC_REGISTRY) -> tuple[Run, list[Event]]:
    program = compile_program(source, trace)
    log: list[BookCall] = []
    clock = VirtualClock()
    sink = EventList()
    machine = PrintingMachine(
        program, execution_id="once", inputs={}, books=recording_registry(registry, log),
        effects=MemoryEffects(), tracer=_tracer(program.trace_sites, trace, sink),
        clock=clock, wait=clock.wait,
    )
    machine.printed = []
    outcome = machine.run()
    run = Run(outcome.outputs, "".join(machine.printed), log, error_of(outcome.error))
    return run, [_comparable(event) for event in sink.events]


def _tracer(sites: Any, trace: str, sink: EventList) -> StubTracer | Tracer:
    return StubTracer() if trace == "off" else Tracer("x", sites, sink, batch_size=7)


def _comparable(event: TraceEvent) -> Event:
    return tuple(event._replace(execution_id="", duration_ms=None))


def lazy_calls(source: str) -> int:
    """How many generator expressions of the program got the picklable form."""
    compilation = Compilation.of(source)
    assert compilation.lowered is not None
    return sum(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id == "_jv_genexp"
        for node in ast.walk(compilation.lowered.module)
    )


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("trace", ["off", "statements", "full"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_generator_kept_across_suspensions_runs_as_cpython(name: str, trace: str) -> None:
    source = PROGRAMS[name]
    expected = run_on_reference(source, SPEC_REGISTRY)
    restarted, restarted_events = run_restarted(source, trace)
    assert_same(expected, restarted, source)
    once, events = run_uninterrupted(source, trace)
    assert_same(expected, once, source)
    assert restarted_events == events, "the resumed runs traced differently"
    assert (trace == "off") == (not events)


def test_every_program_keeps_a_generator_in_the_picklable_form() -> None:
    for name, source in PROGRAMS.items():
        if name != "consumed_in_place_stays_correct":
            assert lazy_calls(source), name


def test_full_trace_reports_the_expressions_inside_the_generator() -> None:
    source = """
from books import echo
xs = [1, 2, 3]
g = (x * 10 for x in xs if x != 2)
echo.echo(1)
print(list(g))
"""
    run, events = run_restarted(source, "full")
    assert run.printed == "[10, 30]\n"
    inside = [(e[7], e[8]) for e in events if e[2] == "expr" and e[7] in ("x * 10", "x != 2")]
    assert inside == [("x != 2", "True"), ("x * 10", "10"), ("x != 2", "False"),
                      ("x != 2", "True"), ("x * 10", "30")]
    assert [e[8] for e in events if e[2] == "expr" and e[7] == "x"] == ["1", "1", "2", "3", "3"]


def test_generators_consumed_where_they_stand_keep_the_native_form() -> None:
    source = PROGRAMS["consumed_in_place_stays_correct"]
    # `for x in (y * 3 for y in xs): echo.echo(x)` calls a Book while the generator
    # is alive: the one generator that needs the picklable form.
    assert lazy_calls(source) == 1
    native = """
def total(xs):
    return sum(x for x in xs) + len(list(x for x in xs if x))
print(total([1, 2]), "-".join(str(x) for x in range(3)), set(x for x in "ab") == {"a", "b"})
"""
    assert lazy_calls(native) == 0


def test_generators_that_may_be_kept_get_the_picklable_form_in_any_function() -> None:
    for source in [
        "g = (x for x in [1])\nprint(list(g))",
        "def f(xs):\n    return (x for x in xs)\nprint(list(f([1])))",
        "def f(g):\n    return list(g)\nprint(f(x for x in [1]))",
        "h = [(x for x in [1])]\nprint(list(h[0]))",
        "m = max((x for x in [1]), [5], key=lambda v: 0)\nprint(list(m))",
        "z = zip((x for x in [1]), [2])\nprint(list(z))",
    ]:
        assert lazy_calls(source) == 1, source


@pytest.mark.parametrize("trace", ["off", "full"])
def test_generators_behave_the_same_with_full_guards(trace: str) -> None:
    sources = [PROGRAMS[name] for name in (
        "several_clauses_conditions_and_tuple_targets", "subscript_targets",
        "closures_over_function_variables", "wrapped_by_zip_map_enumerate_and_filter")]
    for source in sources:
        proven, _ = compile_with_proofs(source, "<spy>", True, trace)
        guarded, _ = compile_with_proofs(source, "<spy>", False, trace)
        expected = run_program(proven)
        assert expected.status == "completed", expected.error
        assert run_program(guarded) == expected


def _double(env: dict[str, Any]) -> Any:
    return env["x"] * 2


def _odd(env: dict[str, Any]) -> bool:
    return bool(env["x"] % 2)


def test_a_generator_pickles_and_continues_where_it_was() -> None:
    generator = make_generator(range(7), ((None, "x", (_odd,)),), _double)
    assert next(generator) == 2
    copy = pickle.loads(pickle.dumps(generator))
    assert type(copy) is LazyGenerator and type(copy).__name__ == "generator"
    assert list(copy) == [6, 10]
    assert list(generator) == [6, 10]
    assert next(copy, "done") == "done"


def test_a_generator_reports_its_type_as_python_does() -> None:
    generator = make_generator([], ((None, "x", ()),), _identity)
    assert repr(type(generator)) == "<class 'generator'>"
    assert repr(generator).startswith("<generator object <genexpr> at 0x")
    with pytest.raises(TypeError, match="object of type 'generator' has no len"):
        len(generator)  # type: ignore[arg-type]


def _identity(env: dict[str, Any]) -> Any:
    return env["x"]


# -- generated programs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_book_registry(tmp_path_factory.mktemp("books"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=spy_programs(statements=12, generators=True),
       trace=st.sampled_from(["off", "statements", "full"]))
def test_generated_program_with_generators_stopped_at_every_effect_runs_as_cpython(
    registry: Path, source: str, trace: str
) -> None:
    expected = run_on_reference(source, registry)
    restarted, restarted_events = run_restarted(source, trace, registry)
    assert_same(expected, restarted, source)
    _, events = run_uninterrupted(source, trace, registry)
    # Exceptions a frame keeps across a snapshot (one a `finally` re-raises) keep
    # where they were raised, so even their events are placed alike.
    assert restarted_events == events, f"the resumed runs traced differently\n{source}"

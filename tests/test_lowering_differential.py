"""The lowered program under the Machine behaves exactly as CPython runs its source.

Each program runs twice: under the reference interpreter (plain CPython with the SPy
runtime builtins) and compiled into step functions under the Machine. The two runs
must record the same outputs, print the same text, make the same Book calls in the
same order with the same arguments, and end with the same uncaught error (type and
message), if any. The programs are drawn by `spygen.spy_programs()` and are the spec
programs of tests/spec.

A run may also be stopped at every effect: the Machine's state is pickled, a fresh
Machine restores it and continues; the result must be that of an uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spygen import spy_programs, write_book_registry
from virtual_clock import VirtualClock

from jarvis.compiler import Compilation
from jarvis.compiler.compiled import CompiledProgram
from jarvis.runtime.books import Book, BookRegistry, to_json_value
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.machine import Machine
from jarvis.runtime.reference import run_reference
from jarvis.runtime.trace import TraceEvent, Tracer

ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = ROOT / "tests" / "spec"
SPEC_REGISTRY = SPEC_DIR / "books.toml"
SPECS = sorted(SPEC_DIR.glob("*.spy"))

BookCall = tuple[str, str, Any, Any]


# -- the two ways to run a program ------------------------------------------------------


@dataclass
class Run:
    """What one run of a program did, in the terms both runners share."""

    outputs: dict[str, Any]
    printed: str
    book_calls: list[BookCall]
    error: tuple[str, str] | None

    @property
    def failed(self) -> bool:
        return self.error is not None


class RecordingBook:
    """A Book that logs each call (a JSON copy of its arguments, taken at call time)."""

    def __init__(self, book: Book, log: list[BookCall]) -> None:
        self.name = book.name
        self.book = book
        self.log = log

    def call(self, procedure: str, args: list[Any], kwargs: dict[str, Any],
             idempotency_key: str) -> Any:
        self.log.append((self.name, procedure, to_json_value(args), to_json_value(kwargs)))
        return self.book.call(procedure, args, kwargs, idempotency_key)


def recording_registry(path: Path, log: list[BookCall]) -> BookRegistry:
    """A fresh registry (in-process Books keep module state) whose calls go to `log`."""
    loaded = BookRegistry.load(path)
    return BookRegistry({name: RecordingBook(loaded.get(name), log) for name in loaded.names()})


def error_of(error: BaseException | None) -> tuple[str, str] | None:
    return None if error is None else (type(error).__name__, str(error))


def run_on_reference(source: str, registry: Path, inputs: dict[str, Any] | None = None,
                     path: str = "<spy>") -> Run:
    log: list[BookCall] = []
    # `check=False`: the Machine's run compiles (and so checks) the program already.
    result = run_reference(source, inputs=inputs or {}, books=recording_registry(registry, log),
                           path=path, check=False)
    return Run(result.outputs, result.printed, log, error_of(result.error))


class StubTracer:
    """Just enough of a tracer for the Machine running an untraced program (no hooks)."""

    def __init__(self) -> None:
        self.seq = 0
        self.steps = 0

    def event(self, kind: str, *args: Any, **kwargs: Any) -> None:
        self.seq += 1

    def engine_event(self, kind: str, *args: Any) -> None:
        self.seq += 1

    def hooks(self) -> dict[str, Callable[..., Any]]:
        return {}

    def flush(self) -> None:
        pass

    def resume_at(self, seq: int, steps: int) -> None:
        self.seq, self.steps = seq, steps

    def state(self) -> dict[str, int]:
        return {"seq": self.seq, "steps": self.steps}

    def restore(self, state: dict[str, int]) -> None:
        self.seq, self.steps = state["seq"], state["steps"]


class PrintingMachine(Machine):
    """A Machine that also keeps the exact text the program prints."""

    printed: list[str]

    def print(self, text: str) -> None:
        self.printed.append(text)
        super().print(text)


@dataclass
class SnapshotKeeper:
    """The Machine's snapshot sink: keeps the newest payload."""

    payloads: list[bytes] = field(default_factory=list)

    def save(self, payload: bytes, effect_count: int, counters: dict[str, int]) -> None:
        self.payloads.append(payload)


def compile_program(source: str, trace: str = "off", path: str = "<spy>") -> CompiledProgram:
    compilation = Compilation.of(source, path)
    assert compilation.ok, [d.message for d in compilation.diagnostics]
    return compilation.program(trace)  # type: ignore[arg-type]


@dataclass
class EventList:
    """A trace sink that keeps every event."""

    events: list[TraceEvent] = field(default_factory=list)

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        self.events.extend(events)


def run_on_machine(source: str, registry: Path, inputs: dict[str, Any] | None = None,
                   trace: str = "off", path: str = "<spy>") -> Run:
    """Run under the Machine; a traced program runs with the real Tracer."""
    program = compile_program(source, trace, path)
    log: list[BookCall] = []
    clock = VirtualClock()
    tracer: StubTracer | Tracer = (
        StubTracer() if trace == "off"
        else Tracer("differential", program.trace_sites, EventList())
    )
    machine = PrintingMachine(
        program, execution_id="differential", inputs=inputs or {},
        books=recording_registry(registry, log), effects=MemoryEffects(),
        tracer=tracer, clock=clock, wait=clock.wait,
    )
    machine.printed = []
    outcome = machine.run()
    assert outcome.status in ("completed", "failed"), outcome
    return Run(outcome.outputs, "".join(machine.printed), log, error_of(outcome.error))


def run_with_restarts(source: str, registry: Path,
                      inputs: dict[str, Any] | None = None) -> Run:
    """Run, stopping after every effect; each stop is resumed by a fresh Machine from the
    pickled state."""
    program = compile_program(source)
    log: list[BookCall] = []
    books = recording_registry(registry, log)
    effects = MemoryEffects()
    clock = VirtualClock()
    printed: list[str] = []
    keeper = SnapshotKeeper()
    payload: bytes | None = None
    restarts = 0

    def after_next_effect() -> Callable[[], bool]:
        started = effects.count
        return lambda: effects.count > started

    while True:
        machine = PrintingMachine(
            program, execution_id="restarted", inputs=inputs or {}, books=books,
            effects=effects, tracer=StubTracer(), snapshots=keeper, clock=clock,
            wait=clock.wait, stop_requested=after_next_effect(),
        )
        machine.printed = printed
        if payload is not None:
            machine.restore(payload)
        outcome = machine.run()
        if outcome.status != "suspended":
            assert_stopped_at_every_effect(restarts, effects)
            return Run(outcome.outputs, "".join(printed), log, error_of(outcome.error))
        assert machine.snapshots_skipped == 0, "the Machine could not pickle its state"
        assert keeper.payloads, "the Machine stopped without a snapshot"
        payload = keeper.payloads[-1]
        keeper.payloads.clear()
        restarts += 1
        assert restarts < 10_000


def assert_stopped_at_every_effect(restarts: int, effects: MemoryEffects) -> None:
    """Each effect the program suspended for stopped it once; `now()` is an effect that
    does not suspend, so the stop it asks for comes at the next suspension, if any."""
    kinds = [json.loads(record)["k"] for record in effects.records]
    suspensions = sum(kind in ("book", "sleep", "checkpoint") for kind in kinds)
    assert suspensions <= restarts <= len(kinds)


def assert_same(expected: Run, actual: Run, source: str) -> None:
    __tracebackhide__ = True
    where = f"\n--- program ---\n{source}"
    assert actual.error == expected.error, f"different errors{where}"
    assert actual.printed == expected.printed, f"different prints{where}"
    assert actual.book_calls == expected.book_calls, f"different Book calls{where}"
    assert actual.outputs == expected.outputs, f"different outputs{where}"


# -- generated programs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_book_registry(tmp_path_factory.mktemp("books"))


# Compiling a program costs more than running it twice, so programs are kept small
# and the example counts keep this file near half a minute.
DIFFERENTIAL = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)


@DIFFERENTIAL
@given(source=spy_programs(statements=20))
def test_generated_program_runs_as_cpython_runs_it(registry: Path, source: str) -> None:
    assert_same(run_on_reference(source, registry), run_on_machine(source, registry), source)


@settings(DIFFERENTIAL, max_examples=40)
@given(source=spy_programs(statements=20, books=False))
def test_generated_program_without_books_runs_as_cpython_runs_it(
    registry: Path, source: str
) -> None:
    assert_same(run_on_reference(source, registry), run_on_machine(source, registry), source)


@settings(DIFFERENTIAL, max_examples=30)
@given(source=spy_programs(statements=20), trace=st.sampled_from(["statements", "full"]))
def test_traced_program_runs_as_cpython_runs_it(registry: Path, source: str, trace: str) -> None:
    expected = run_on_reference(source, registry)
    assert_same(expected, run_on_machine(source, registry, trace=trace), source)


@settings(DIFFERENTIAL, max_examples=30)
@given(source=spy_programs(statements=15))
def test_program_stopped_and_restored_at_every_effect_runs_as_if_never_stopped(
    registry: Path, source: str
) -> None:
    expected = run_on_machine(source, registry)
    assert_same(expected, run_with_restarts(source, registry), source)


# -- the spec programs ------------------------------------------------------------------


def spec_inputs(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".inputs.json")
    if not sidecar.exists():
        return {}
    data: dict[str, Any] = json.loads(sidecar.read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_spec_program_runs_as_cpython_runs_it(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    inputs = spec_inputs(path)
    expected = run_on_reference(source, SPEC_REGISTRY, inputs, str(path))
    assert not expected.failed, expected.error
    assert_same(expected, run_on_machine(source, SPEC_REGISTRY, inputs, path=str(path)), source)


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_spec_program_stopped_at_every_effect_runs_as_if_never_stopped(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    inputs = spec_inputs(path)
    expected = run_on_reference(source, SPEC_REGISTRY, inputs, str(path))
    restarted = run_with_restarts(source, SPEC_REGISTRY, inputs)
    assert_same(expected, restarted, source)

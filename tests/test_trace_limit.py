"""`limits.max_trace_events`: an execution whose trace would pass the limit stops.

The trace keeps exactly the first `max_trace_events` events, then one `limit` event
naming `trace_events`; the run fails with `LimitExceeded`. Engine events (prints, Book
calls) count as hook events do, the count is the trace's `seq`, so it carries over a
stop and a resume, and `jarvis run` reports the limit with exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_lowering_differential import (
    SPEC_REGISTRY,
    EventList,
    SnapshotKeeper,
    compile_program,
)
from virtual_clock import VirtualClock

from jarvis.cli.main import main as jarvis_main
from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.errors import LimitExceeded
from jarvis.runtime.execution import Execution
from jarvis.runtime.machine import Machine, Outcome
from jarvis.runtime.sinks import MemorySink
from jarvis.runtime.trace import Tracer
from jarvis.settings import load_settings

LOOP = """
from books import echo
total = 0
for i in range(40):
    total = total + i * 2
    if i % 10 == 9:
        echo.echo(total)
print(total)
output("total", total)
"""
"""A program of a few hundred events at any level, with Book calls (and so
suspension points) along the way."""


def run(source: str, trace: str, max_events: int | None,
        stop_after_every_effect: bool = False) -> tuple[Outcome, list[Any]]:
    """Run (stopping after every effect and resuming a fresh Machine from the snapshot,
    if asked); the events of all the runs, each seq once."""
    program = compile_program(source, trace)
    effects = MemoryEffects()
    clock = VirtualClock()
    keeper = SnapshotKeeper()
    books = BookRegistry.load(SPEC_REGISTRY)
    events: dict[int, Any] = {}
    payload: bytes | None = None
    for _ in range(1000):
        started = effects.count
        sink = EventList()
        machine = Machine(
            program, execution_id="limited", inputs={}, books=books, effects=effects,
            tracer=Tracer("limited", program.trace_sites, sink, max_events=max_events,
                          batch_size=16),
            snapshots=keeper, clock=clock, wait=clock.wait,
            stop_requested=lambda started=started: (
                stop_after_every_effect and effects.count > started),
        )
        if payload is not None:
            machine.restore(payload)
        outcome = machine.run()
        for event in sink.events:
            events.setdefault(event.seq, event._replace(duration_ms=None))
        if outcome.status != "suspended":
            return outcome, [events[seq] for seq in sorted(events)]
        payload = keeper.payloads[-1]
    raise AssertionError("the program did not end")


def count_events(source: str, trace: str) -> int:
    outcome, events = run(source, trace, None)
    assert outcome.status == "completed", outcome.error
    return len(events)


def assert_stopped_at_the_limit(outcome: Outcome, events: list[Any], limit: int) -> None:
    __tracebackhide__ = True
    assert outcome.status == "failed"
    assert isinstance(outcome.error, LimitExceeded)
    assert outcome.error.limit == "trace_events"
    assert f"more than {limit:,} trace events" in str(outcome.error)
    assert [event.seq for event in events] == list(range(1, limit + 2))
    last = events[-1]
    assert (last.kind, last.expr) == ("limit", "trace_events")
    assert all(event.kind != "limit" for event in events[:-1])


@pytest.mark.parametrize("trace", ["full", "statements", "off"])
def test_the_trace_stops_at_the_limit(trace: str) -> None:
    total = count_events(LOOP, trace)
    for limit in (0, 1, 7, total // 2, total - 1):
        outcome, events = run(LOOP, trace, limit)
        assert_stopped_at_the_limit(outcome, events, limit)
        unlimited = run(LOOP, trace, None)[1]
        assert events[:-1] == unlimited[:limit], "the events kept are the run's first ones"


@pytest.mark.parametrize("trace", ["full", "statements", "off"])
def test_a_trace_that_fits_completes(trace: str) -> None:
    total = count_events(LOOP, trace)
    outcome, events = run(LOOP, trace, total)
    assert outcome.status == "completed", outcome.error
    assert len(events) == total
    assert outcome.outputs == {"total": 1560}


@pytest.mark.parametrize("trace", ["full", "statements"])
def test_the_limit_holds_across_stops_and_resumes(trace: str) -> None:
    total = count_events(LOOP, trace)
    for limit in (5, total // 3, total - 2):
        once, events = run(LOOP, trace, limit)
        assert_stopped_at_the_limit(once, events, limit)
        resumed, stitched = run(LOOP, trace, limit, stop_after_every_effect=True)
        assert_stopped_at_the_limit(resumed, stitched, limit)
        assert stitched == events


def test_the_last_statement_passing_the_limit_fails_the_run() -> None:
    # One statement with many expressions, the last of the program: its events are
    # recorded by the unchecked expression hook, and found at the final flush.
    source = "a = 1\nb = [a + 1, a + 2, a + 3, a + 4, a + 5, a + 6]\n"
    total = count_events(source, "full")
    outcome, events = run(source, "full", total - 3)
    assert_stopped_at_the_limit(outcome, events, total - 3)


def test_engine_events_count_and_report_past_the_limit() -> None:
    source = "for i in range(10):\n    print(i)\n"
    outcome, events = run(source, "off", 4)
    assert_stopped_at_the_limit(outcome, events, 4)
    assert [event.kind for event in events] == ["print"] * 4 + ["limit"]


def test_a_tracer_raises_at_the_limit_and_keeps_the_closing_event() -> None:
    sink = EventList()
    tracer = Tracer("t", [], sink, max_events=3)
    for _ in range(3):
        tracer.event("print", text="x")
    with pytest.raises(LimitExceeded, match="trace_events"):
        tracer.event("print", text="y")
    tracer.event("limit", expr="trace_events")
    tracer.flush()
    assert [(e.seq, e.kind) for e in sink.events] == [
        (1, "print"), (2, "print"), (3, "print"), (4, "limit")]


def test_jarvis_run_exits_1_naming_the_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JARVIS_JOURNAL_FSYNC", "false")
    monkeypatch.setenv("JARVIS_LIMITS__MAX_TRACE_EVENTS", "25")
    (tmp_path / "p.spy").write_text("n = 0\nfor i in range(100):\n    n += i\noutput('n', n)\n")
    status = jarvis_main(["run", "p.spy", "--quiet", "--trace", "full"])
    err = capsys.readouterr().err
    assert status == 1
    assert "limit 'trace_events' exceeded" in err
    assert "more than 25 trace events" in err


def test_an_execution_takes_the_limit_from_its_settings(tmp_path: Path) -> None:
    program = Compilation.of(LOOP, "loop.spy").program("full")
    settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False,
                             limits={"max_trace_events": 30})
    sink = MemorySink()
    outcome = Execution(program, execution_id="settings", inputs={},
                        books=BookRegistry.load(SPEC_REGISTRY), settings=settings,
                        sink=sink).run()
    assert_stopped_at_the_limit(outcome, list(sink.events), 30)

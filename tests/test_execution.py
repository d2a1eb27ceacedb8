"""Durable executions in-process: stop and resume, corrupted state, resume cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from virtual_clock import VirtualClock

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.execution import Execution, ExecutionMismatch, RecordedStatus
from jarvis.runtime.journal import JournalCorrupt
from jarvis.runtime.machine import Outcome
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import EngineSettings, load_settings

BOOK = """\
CALLS = []
def inc(n):
    CALLS.append(n)
    return n + 1
"""

LOOP = """\
from books import counter
n = 0
history = []
for i in range(inputs["count"]):
    n = counter.inc(n)
    if i % 7 == 0:
        history.append(n)
print("done", n)
output("n", n)
output("history", history)
"""


CONSTANT_STATE = """\
from books import counter
n = 0
for i in range(inputs["count"]):
    n = counter.inc(n)
output("n", n)
"""


@pytest.fixture
def books(tmp_path: Path) -> Path:
    (tmp_path / "counter.py").write_text(BOOK)
    (tmp_path / "books.toml").write_text('[books.counter]\npython = "counter.py"\n')
    return tmp_path / "books.toml"


def settings_for(tmp_path: Path, **overrides: Any) -> EngineSettings:
    values: dict[str, Any] = {"state_dir": tmp_path / "state", "journal_fsync": False,
                              "snapshot_every_effects": 10, "snapshot_every_seconds": 3600.0}
    values.update(overrides)
    return load_settings(**values)


def execute(
    tmp_path: Path, books: Path, *, count: int = 30, stop_after: int | None = None,
    execution_id: str = "e1", source: str = LOOP, trace: str = "statements",
    **overrides: Any,
) -> tuple[Outcome, Execution, BookRegistry, MemorySink]:
    program = Compilation.of(source, "loop.spy").program(trace)  # type: ignore[arg-type]
    registry = BookRegistry.load(books)
    sink = MemorySink()
    clock = VirtualClock()
    holder: dict[str, Execution] = {}

    def stop() -> bool:
        if stop_after is None:
            return False
        return holder["e"].report is not None and _effects(holder["e"]) >= stop_after

    execution = Execution(program, execution_id=execution_id, inputs={"count": count},
                          books=registry, settings=settings_for(tmp_path, **overrides),
                          sink=sink, stop_requested=stop, clock=clock, wait=clock.wait)
    holder["e"] = execution
    return execution.run(), execution, registry, sink


def _effects(execution: Execution) -> int:
    journal = execution.directory.journal
    return journal.stat().st_size if journal.exists() else 0


def book_calls(registry: BookRegistry) -> list[int]:
    book = registry.get("counter")
    module = book._procedures()  # type: ignore[attr-defined]
    calls: list[int] = module.CALLS
    return calls


def test_a_stopped_execution_resumes_where_it_stopped(tmp_path: Path, books: Path) -> None:
    first, _, registry, sink = execute(tmp_path, books, stop_after=2_000)
    assert first.status == "suspended"
    made_before = book_calls(registry)
    assert 0 < len(made_before) < 30
    second, resumed, registry2, sink2 = execute(tmp_path, books)
    assert second.status == "completed"
    assert second.outputs == {"n": 30, "history": [1, 8, 15, 22, 29]}
    assert resumed.report.resumed
    # Calls made before the stop are not made again.
    assert book_calls(registry2) == list(range(len(made_before), 30))
    seqs = [e.seq for e in sink.events] + [e.seq for e in sink2.events]
    assert seqs == list(range(1, len(seqs) + 1)), "events are numbered on across the resume"


def test_a_finished_execution_is_not_run_again(tmp_path: Path, books: Path) -> None:
    outcome, execution, _, _ = execute(tmp_path, books)
    assert outcome.status == "completed"
    assert execution.finished() is not None


def test_a_torn_journal_tail_is_dropped_and_the_calls_made_again(
    tmp_path: Path, books: Path
) -> None:
    first, execution, _, _ = execute(tmp_path, books, stop_after=1_500)
    assert first.status == "suspended"
    journal = execution.directory.journal
    data = journal.read_bytes()
    journal.write_bytes(data[:-7])  # a crash mid-append leaves half a record
    for snapshot in execution.directory.snapshots.iterdir():
        snapshot.unlink()  # force a replay of the journal from its start
    second, resumed, _, _ = execute(tmp_path, books)
    assert second.status == "completed"
    assert second.outputs["n"] == 30
    assert resumed.report.dropped_journal_bytes > 0


def test_a_flipped_bit_in_the_newest_snapshot_falls_back_to_the_previous(
    tmp_path: Path, books: Path
) -> None:
    first, execution, _, _ = execute(tmp_path, books, stop_after=2_500)
    assert first.status == "suspended"
    snapshots = sorted(execution.directory.snapshots.iterdir())
    assert len(snapshots) == 2
    newest = snapshots[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    second, resumed, _, _ = execute(tmp_path, books)
    assert second.status == "completed"
    assert second.outputs["n"] == 30
    assert resumed.report.snapshot is not None
    assert any("HMAC" in reason or "authentic" in reason for reason in resumed.report.skipped)


def test_another_program_cannot_resume_an_execution(tmp_path: Path, books: Path) -> None:
    first, _, _, _ = execute(tmp_path, books, stop_after=1_000)
    assert first.status == "suspended"
    with pytest.raises(ExecutionMismatch, match="another program"):
        execute(tmp_path, books, source=LOOP.replace('"done"', '"finished"'))


def test_a_wrong_hmac_key_is_a_clear_error_not_an_unpickle(tmp_path: Path, books: Path) -> None:
    first, _, _, _ = execute(tmp_path, books, stop_after=1_000,
                             hmac_keys=["first-key-of-sixteen-chars"])
    assert first.status == "suspended"
    with pytest.raises(JournalCorrupt):
        execute(tmp_path, books, hmac_keys=["other-key-of-sixteen-chars"])


def test_key_rotation_resumes_with_the_old_key_listed(tmp_path: Path, books: Path) -> None:
    first, _, _, _ = execute(tmp_path, books, stop_after=1_000,
                             hmac_keys=["first-key-of-sixteen-chars"])
    assert first.status == "suspended"
    second, resumed, _, _ = execute(
        tmp_path, books, hmac_keys=["newer-key-of-sixteen-chars", "first-key-of-sixteen-chars"])
    assert second.status == "completed"
    assert resumed.report.snapshot is not None


def test_snapshot_size_does_not_grow_with_the_number_of_calls(
    tmp_path: Path, books: Path
) -> None:
    """Resume cost is live state plus the journal tail, not the length of the run."""
    sizes = {}
    for count in (1_000, 20_000):
        base = tmp_path / str(count)
        base.mkdir()
        outcome, execution, _, _ = execute(base, books, count=count, trace="off",
                                           snapshot_every_effects=500, source=CONSTANT_STATE)
        assert outcome.status == "completed"
        snapshots = sorted(execution.directory.snapshots.iterdir())
        sizes[count] = snapshots[-1].stat().st_size
    assert sizes[20_000] <= sizes[1_000] * 1.1


def test_a_status_read_by_the_caller_is_used_not_read_again(
        tmp_path: Path, books: Path) -> None:
    """A worker reads status.json once, after taking the lease, and hands it over: what
    it read is what the resume goes on with (here, another program's start: refused)."""
    program = Compilation.of(LOOP, "loop.spy").program("statements")
    execution = Execution(program, execution_id="e1", inputs={"count": 3},
                          books=BookRegistry.load(books), settings=settings_for(tmp_path),
                          sink=MemorySink(),
                          status=RecordedStatus({"status": "running", "program": "other"}))
    with pytest.raises(ExecutionMismatch):
        execution.run()

    fresh = Execution(program, execution_id="e2", inputs={"count": 3},
                      books=BookRegistry.load(books), settings=settings_for(tmp_path),
                      sink=MemorySink(), status=RecordedStatus(None))
    fresh.directory.create()
    fresh.directory.write_status({"status": "running", "program": "other"})  # not read
    outcome = fresh.run()
    assert outcome.status == "completed" and outcome.outputs["n"] == 3
    assert (fresh.directory.read_status() or {})["program"] == program.digest

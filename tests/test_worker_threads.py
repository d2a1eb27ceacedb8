"""Run threads are reused: a run starts on an idle thread of an earlier one, if any."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import pytest

from jarvis.worker import runs
from jarvis.worker.runs import Position, Run, Runner


def bare_runner(record: list[tuple[str, int]],
                finished: Callable[[Run], None] = lambda run: None) -> Runner:
    """A Runner with only its thread hand-over, running fake runs."""
    runner = object.__new__(Runner)
    runner.threads_lock = threading.Lock()
    runner.idle_threads = 0
    runner.pending = queue.SimpleQueue()
    runner.finished = finished

    def fake(run: Run) -> None:
        record.append((run.execution_id, threading.get_ident()))

    runner._thread = fake  # type: ignore[method-assign]
    return runner


def make_run(name: str) -> Run:
    return Run(name, Position("spy_control", 0, 0), command=None)


def test_a_run_starts_on_the_idle_thread_of_an_earlier_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "IDLE_THREAD_SECONDS", 0.3)
    record: list[tuple[str, int]] = []
    runner = bare_runner(record)
    threads = threading.active_count()
    first = make_run("e1")
    runner.start(first)
    assert first.done is not None and first.done.wait(5)
    deadline = time.monotonic() + 5
    while runner.idle_threads != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    second = make_run("e2")
    runner.start(second)
    assert second.done is not None and second.done.wait(5)
    assert [name for name, _ in record] == ["e1", "e2"]
    assert record[0][1] == record[1][1]  # the same thread ran both
    deadline = time.monotonic() + 5
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == threads  # idle past its time: it ended
    assert runner.idle_threads == 0


def test_a_run_started_as_the_loop_hears_of_an_ending_takes_the_ending_runs_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop often starts the next run in answer to an ending: by then the thread
    that ran the ended one is idle, so no new thread is made for the next."""
    monkeypatch.setattr(runs, "IDLE_THREAD_SECONDS", 0.3)
    record: list[tuple[str, int]] = []
    idle_when_told: list[int] = []
    runner = bare_runner(record)
    following = make_run("e2")

    def finished(run: Run) -> None:
        idle_when_told.append(runner.idle_threads)
        if run.execution_id == "e1":
            runner.start(following)

    runner.finished = finished
    threads = threading.active_count()
    first = make_run("e1")
    runner.start(first)
    assert following.done is None or following.done.wait(5)
    assert first.done is not None and first.done.wait(5)
    assert following.done is not None and following.done.wait(5)
    assert [name for name, _ in record] == ["e1", "e2"]
    assert record[0][1] == record[1][1]  # no second thread
    assert idle_when_told[0] == 1
    deadline = time.monotonic() + 5
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() == threads

"""Time limits: one shared watchdog thread fires every Deadline of the process."""

from __future__ import annotations

import threading
import time

import pytest

from jarvis.runtime import interrupt
from jarvis.runtime.interrupt import Deadline


class Late(BaseException):
    pass


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_deadline_interrupts_the_block() -> None:
    with pytest.raises(Late), Deadline(0.05, Late):
        _spin(5.0)


def test_runs_share_one_watchdog_thread() -> None:
    with Deadline(60, Late):
        pass
    watchdog = interrupt._watchdog()
    threads = threading.active_count()
    for _ in range(200):
        with Deadline(60, Late):
            pass
    assert threading.active_count() == threads
    assert interrupt._watchdog() is watchdog
    assert watchdog.heap == []  # every deadline left was withdrawn


def test_a_deadline_left_in_time_never_fires() -> None:
    with Deadline(0.05, Late) as deadline:
        pass
    _spin(0.2)  # an exception sent now would surface here
    assert not deadline.fired


def test_no_limit_starts_nothing() -> None:
    with Deadline(None, Late) as deadline:
        assert not deadline.active
    with Deadline(0, Late) as deadline:
        assert not deadline.active


def test_deadlines_of_several_threads_fire_in_their_own_threads() -> None:
    results: dict[str, str] = {}

    def run(name: str, seconds: float, work: float) -> None:
        try:
            with Deadline(seconds, Late):
                _spin(work)
            results[name] = "done"
        except Late:
            results[name] = "late"

    threads = [threading.Thread(target=run, args=("slow", 0.1, 3.0)),
               threading.Thread(target=run, args=("quick", 2.0, 0.05)),
               threading.Thread(target=run, args=("soon", 0.05, 3.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {"slow": "late", "quick": "done", "soon": "late"}

"""The count of the user's tasks that a child's RLIMIT_NPROC starts from.

Counting reads /proc once per process on the machine; a zygote counts at most every
`TASK_COUNT_SECONDS` and its children inherit the count while it is that fresh. That
the limit is in force in a real child (and that a child cannot create a process) is
tests/test_confinement.py's; here, when the count is taken anew.
"""

from __future__ import annotations

import os

import pytest

from jarvis.runtime import confine


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts stand in for /proc: each count returns 100 more than the last."""
    counts: list[int] = []

    def count() -> int:
        counts.append(100 * (len(counts) + 1))
        return counts[-1]

    monkeypatch.setattr(confine, "_user_tasks", count)
    monkeypatch.setattr(confine, "_TASKS", [])
    return counts


def test_a_fresh_count_is_reused_and_a_stale_one_taken_anew(
        counter: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(confine.time, "monotonic", lambda: now[0])
    assert confine.user_tasks() == 100
    now[0] += confine.TASK_COUNT_SECONDS / 2
    assert confine.user_tasks() == 100  # fresh: not counted again
    now[0] += confine.TASK_COUNT_SECONDS
    assert confine.user_tasks() == 200  # stale: counted again
    assert confine.user_tasks(max_age=0.0) == 300  # who wants it now counts now
    assert counter == [100, 200, 300]


def test_a_count_from_the_future_is_not_trusted(
        counter: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(confine.time, "monotonic", lambda: now[0])
    confine.user_tasks()
    now[0] -= 1.0
    assert confine.user_tasks() == 200


def test_the_limit_starts_from_the_count_and_the_headroom(counter: list[int]) -> None:
    pid = os.fork()
    if pid == 0:  # the limits are lowered in a child of the test, never in the test
        code = 1
        try:
            applied = confine.set_rlimits(confine.ProcessLimits(
                memory_bytes=4 << 30, cpu_seconds=60, process_headroom=7))
            code = 0 if applied["RLIMIT_NPROC"] == (107, 107) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_child_uses_the_count_its_parent_took(counter: list[int]) -> None:
    confine.user_tasks()  # as the zygote does before it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.write(write, str(confine.user_tasks()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        inherited = int(answer.read())
    os.waitpid(pid, 0)
    assert inherited == 100
    assert counter == [100]  # the child did not count


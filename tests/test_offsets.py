"""OffsetTracker: commit only up to the lowest offset still in progress."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jarvis.worker.offsets import OffsetTracker


def test_out_of_order_completion_commits_only_the_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.begin("c", 0, offset)
    assert tracker.commit_position("c", 0) == 10
    tracker.committed("c", 0, 10)
    tracker.finish("c", 0, 12)
    assert tracker.commit_position("c", 0) is None  # 10 is still running
    tracker.finish("c", 0, 10)
    assert tracker.commit_position("c", 0) == 11
    tracker.committed("c", 0, 11)
    tracker.finish("c", 0, 11)
    assert tracker.commit_position("c", 0) == 13
    assert tracker.positions() == {("c", 0): 13}


def test_partitions_are_independent_and_forgotten_on_revoke() -> None:
    tracker = OffsetTracker()
    tracker.begin("c", 0, 5)
    tracker.begin("c", 1, 7)
    tracker.finish("c", 1, 7)
    assert tracker.positions() == {("c", 0): 5, ("c", 1): 8}
    tracker.forget("c", 1)
    assert tracker.positions() == {("c", 0): 5}


@given(st.lists(st.integers(0, 50), unique=True, min_size=1), st.data())
def test_the_commit_position_never_passes_an_unfinished_offset(
    offsets: list[int], data: st.DataObject
) -> None:
    tracker = OffsetTracker()
    for offset in sorted(offsets):
        tracker.begin("c", 0, offset)
    finished = data.draw(st.lists(st.sampled_from(offsets), unique=True))
    for offset in finished:
        tracker.finish("c", 0, offset)
    position = tracker.commit_position("c", 0)
    unfinished = set(offsets) - set(finished)
    assert position is not None
    if unfinished:
        assert position == min(unfinished)
    else:
        assert position == max(offsets) + 1

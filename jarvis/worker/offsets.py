"""Which offsets of `spy_control` may be committed.

A start command's offset may be committed only when its execution has reached a
terminal or suspended state; commands finish out of order, so per partition the
tracker keeps the offsets still in progress and commits up to the lowest of them.
Everything below the committed offset is done; a crash redelivers from there, and
redelivered starts of finished executions are recognised as duplicates.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class _Partition:
    in_progress: set[int] = field(default_factory=set)
    heap: list[int] = field(default_factory=list)
    highest_seen: int = -1
    committed: int = -1  # the next offset to read, as last committed (-1: none yet)

    def lowest_unfinished(self) -> int | None:
        while self.heap and self.heap[0] not in self.in_progress:
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else None


class OffsetTracker:
    """Offsets in progress per (topic, partition), and what is safe to commit."""

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], _Partition] = {}

    def _partition(self, topic: str, partition: int) -> _Partition:
        state = self._partitions.get((topic, partition))
        if state is None:  # (not `setdefault`, which would make one every call)
            state = self._partitions[(topic, partition)] = _Partition()
        return state

    def begin(self, topic: str, partition: int, offset: int) -> None:
        """A message was received; it is in progress until `finish`."""
        state = self._partition(topic, partition)
        state.in_progress.add(offset)
        heapq.heappush(state.heap, offset)
        state.highest_seen = max(state.highest_seen, offset)

    def finish(self, topic: str, partition: int, offset: int) -> None:
        """The message is done with (its execution ended, or it was rejected)."""
        self._partition(topic, partition).in_progress.discard(offset)

    def commit_position(self, topic: str, partition: int) -> int | None:
        """The offset to commit (the next one to read), if it moved since the last commit."""
        state = self._partitions.get((topic, partition))
        if state is None or state.highest_seen < 0:
            return None
        lowest = state.lowest_unfinished()
        position = lowest if lowest is not None else state.highest_seen + 1
        return position if position > state.committed else None

    def committed(self, topic: str, partition: int, position: int) -> None:
        """Record that `position` was committed."""
        state = self._partition(topic, partition)
        state.committed = max(state.committed, position)

    def positions(self) -> dict[tuple[str, int], int]:
        """Every partition whose commit position moved: what to commit now."""
        out: dict[tuple[str, int], int] = {}
        for topic, partition in self._partitions:
            position = self.commit_position(topic, partition)
            if position is not None:
                out[(topic, partition)] = position
        return out

    def in_progress(self, topic: str, partition: int) -> set[int]:
        state = self._partitions.get((topic, partition))
        return set(state.in_progress) if state else set()

    def forget(self, topic: str, partition: int) -> None:
        """The partition was revoked: another worker owns its offsets now."""
        self._partitions.pop((topic, partition), None)

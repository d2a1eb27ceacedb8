"""A clock for Machines under test: a sleep moves it forward at once, without waiting.

Every run starts it at the same time, so runs that are compared read the same `now()`;
a resumed sleep still ends when the journal says, since the Machine waits until the
`until` it recorded.
"""

from __future__ import annotations


class VirtualClock:
    """The Machine's `clock` (call it) and `wait` (its method)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds

"""A stand-in for confluent_kafka.Producer in unit tests of the Kafka sinks: it keeps
what was produced and runs the delivery reports at the next poll, as a broker that
acknowledges everything would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FakeProducer:
    def __init__(self, full_times: int = 0) -> None:
        self.pending: list[Callable[[Any, Any], None]] = []
        self.sent: list[tuple[str, bytes, bytes]] = []
        """(topic, value, key) of every message, in the order produced."""
        self.full_times = full_times
        """How many produce calls fail with a full queue before one is taken."""

    @property
    def values(self) -> list[bytes]:
        return [value for _, value, _ in self.sent]

    def produce(self, topic: str, value: bytes, key: bytes,
                on_delivery: Callable[[Any, Any], None]) -> None:
        if self.full_times:
            self.full_times -= 1
            raise BufferError("queue full")
        self.sent.append((topic, value, key))
        self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        done, self.pending = self.pending, []
        for callback in done:
            callback(None, None)
        return len(done)

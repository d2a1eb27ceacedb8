"""Trace events to Kafka: line protocol, many lines per message, one key per execution.

`KafkaLogSink` is a trace sink. Each batch of events becomes one or more Kafka messages
on `spy_logs` (measurement `spy_trace`, InfluxDB line protocol, compressed by the
producer), keyed by execution id so an execution's events stay in order on one
partition. Delivery reports advance `last_delivered`, which is what a resumed run uses
to skip what was already delivered.

Backpressure, not unbounded memory: the producer's queue is bounded; when it is full,
`deliver` waits for deliveries (slowing the program that produces the events) instead
of buffering more. Nothing is dropped.

Every line carries a timestamp in nanoseconds, strictly increasing within a sink: an
execution's events share one series (measurement and tags), and InfluxDB keeps one
point per series and timestamp, so events stamped alike would overwrite each other.
A `guard` (the lease's fence) is checked before each batch: a worker that lost the
execution sends nothing more for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from jarvis.runtime.sinks import line_protocol
from jarvis.runtime.trace import TraceEvent

MAX_MESSAGE_BYTES = 512 << 10


class Producer(Protocol):
    """The part of confluent_kafka.Producer this module uses."""

    def produce(self, topic: str, value: bytes, key: bytes,
                on_delivery: Callable[[Any, Any], None]) -> None: ...

    def poll(self, timeout: float) -> int: ...


class KafkaLogSink:
    """Delivers an execution's trace events to `spy_logs`."""

    def __init__(self, producer: Producer, topic: str, execution_id: str,
                 last_delivered: int = 0,
                 on_progress: Callable[[int], None] | None = None,
                 guard: Callable[[], None] | None = None,
                 on_events: Callable[[int], None] | None = None) -> None:
        self.producer = producer
        self.guard = guard
        self.on_events = on_events
        self.last_timestamp_ns = 0
        self.topic = topic
        self.execution_id = execution_id
        self.key = execution_id.encode("utf-8")
        self.last_delivered = last_delivered
        self.on_progress = on_progress
        self.lock = threading.Lock()
        self.pending = 0
        self.failed: str | None = None
        self.events_sent = 0

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        fresh = [e for e in events if e.seq > self.last_delivered]
        if not fresh:
            return
        if self.guard is not None:
            self.guard()
        lines: list[str] = []
        size = 0
        first = fresh[0].seq
        for event in fresh:
            self.last_timestamp_ns = max(time.time_ns(), self.last_timestamp_ns + 1)
            line = line_protocol(event, self.last_timestamp_ns)
            if lines and size + len(line) + 1 > MAX_MESSAGE_BYTES:
                self._send(lines, first, event.seq - 1)
                lines, size, first = [], 0, event.seq
            lines.append(line)
            size += len(line) + 1
        self._send(lines, first, fresh[-1].seq)
        self.events_sent += len(fresh)
        if self.on_events is not None:
            self.on_events(len(fresh))

    def _send(self, lines: list[str], first: int, last: int) -> None:
        value = ("\n".join(lines) + "\n").encode("utf-8")

        def delivered(error: Any, message: Any) -> None:
            with self.lock:
                self.pending -= 1
                if error is not None:
                    self.failed = str(error)
                elif last > self.last_delivered:
                    self.last_delivered = last
                    if self.on_progress is not None:
                        self.on_progress(last)

        while True:
            try:
                self.producer.produce(self.topic, value=value, key=self.key,
                                      on_delivery=delivered)
                break
            except BufferError:
                # The producer's queue is full: wait for deliveries (backpressure).
                self.producer.poll(0.05)
        with self.lock:
            self.pending += 1
        self.producer.poll(0)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every batch was acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.pending <= 0:
                    return True
            if time.monotonic() >= deadline:
                return False
            self.producer.poll(0.05)

    def close(self) -> None:
        self.flush()

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

A batch from an isolated run arrives as the child sent it (`tracebatch.EncodedBatch`):
the sink has it checked and rendered into messages in one pass, in C, with no event
objects; a sequence of TraceEvents (an in-process run) is rendered column by column.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from jarvis.runtime.sinks import render_lines as render_lines  # tests/test_log_lines.py
from jarvis.runtime.trace import TraceEvent
from jarvis.runtime.tracebatch import EncodedBatch, render_events

MAX_MESSAGE_BYTES = 900_000
"""Lines per Kafka message, at most (before compression; librdkafka refuses messages
over its `message.max.bytes`, 1,000,000 by default): big messages compress well and
cost the producer, the broker and the consumer one record each."""

FLUSH_POLL_SECONDS = 0.002
"""How long `flush` waits in one poll of the producer before it looks again."""


class Producer(Protocol):
    """The part of confluent_kafka.Producer this module uses."""

    def produce(self, topic: str, value: bytes, key: bytes, *,
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
        if isinstance(events, EncodedBatch):
            self._deliver_encoded(events)
            return
        if not events or events[-1].seq <= self.last_delivered:
            return
        fresh = events if events[0].seq > self.last_delivered else \
            [e for e in events if e.seq > self.last_delivered]
        if self.guard is not None:
            self.guard()
        first_ns = self._stamps(len(fresh))
        self._publish(*render_events(fresh, first_ns, MAX_MESSAGE_BYTES), len(fresh))

    def _deliver_encoded(self, batch: EncodedBatch) -> None:
        """A child's batch as it came over the channel: checked and rendered into
        messages in one pass (in C where the extension was built)."""
        fresh = batch.last_seq - max(batch.first_seq - 1, self.last_delivered)
        if fresh <= 0:
            batch.render(0, self.last_delivered, MAX_MESSAGE_BYTES)  # checked all the same
            return
        if self.guard is not None:
            self.guard()
        first_ns = self._stamps(fresh)
        self._publish(*batch.render(first_ns, self.last_delivered, MAX_MESSAGE_BYTES), fresh)

    def _stamps(self, count: int) -> int:
        """The first of `count` timestamps, one nanosecond apart, after the last ones."""
        first_ns = max(time.time_ns(), self.last_timestamp_ns + 1)
        self.last_timestamp_ns = first_ns + count - 1
        return first_ns

    def _publish(self, messages: list[bytes], last_seqs: list[int], count: int) -> None:
        """Send the messages of `count` events, each with the seq of its last event."""
        for value, last in zip(messages, last_seqs, strict=True):
            self._send(value, last)
        self.events_sent += count
        if self.on_events is not None:
            self.on_events(count)

    def _send(self, value: bytes, last: int) -> None:
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
            # Short: another thread's poll may serve this sink's delivery reports (the
            # producer is shared), and then this one is not woken by them.
            self.producer.poll(FLUSH_POLL_SECONDS)

    def close(self) -> None:
        self.flush()

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

import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from jarvis.runtime.sinks import (
    MEASUREMENT,
    escape_measurement,
    escape_string_field,
    escape_tag,
)
from jarvis.runtime.trace import TraceEvent

MAX_MESSAGE_BYTES = 900_000
"""Lines per Kafka message, at most (before compression; librdkafka refuses messages
over its `message.max.bytes`, 1,000,000 by default): big messages compress well and
cost the producer, the broker and the consumer one record each."""

FLUSH_POLL_SECONDS = 0.002
"""How long `flush` waits in one poll of the producer before it looks again."""

_LINE = ('%s seq=%di,line=%di,col=%di,end_line=%di,end_col=%di,expr="%s",value="%s",'
         'type="%s"%s %d')
_SEPARATOR = "\x00"
"""Joins a batch's string fields so that they are escaped by one `translate` (none of
the escapes touches it)."""


class Producer(Protocol):
    """The part of confluent_kafka.Producer this module uses."""

    def produce(self, topic: str, value: bytes, key: bytes,
                on_delivery: Callable[[Any, Any], None]) -> None: ...

    def poll(self, timeout: float) -> int: ...


def render_lines(events: Sequence[TraceEvent], first_timestamp_ns: int) -> list[str]:
    """The events as lines of line protocol (as `sinks.line_protocol` writes them),
    stamped `first_timestamp_ns`, +1, +2, ...: a whole batch at a time, column by column,
    so that the per-event work is C-level formatting."""
    (ids, seqs, kinds, lines, cols, end_lines, end_cols, exprs, values, types,
     durations) = zip(*events, strict=True)
    series = {key: _series(*key) for key in set(zip(ids, kinds, strict=True))}
    count = len(seqs)
    strings = exprs + values + types
    joined = _SEPARATOR.join(strings)
    escaped = escape_string_field(joined)
    if escaped is not joined:  # something to escape: split the escaped text again
        parts = escaped.split(_SEPARATOR)
        if len(parts) != len(strings):  # a field holds the separator itself
            parts = [escape_string_field(text) for text in strings]
        exprs, values, types = (tuple(parts[:count]), tuple(parts[count:2 * count]),
                                tuple(parts[2 * count:]))
    extra = [""] * count
    for index, duration in enumerate(durations):
        if duration is not None and math.isfinite(duration):
            extra[index] = f",duration_ms={duration!r}"
    prefixes = map(series.__getitem__, zip(ids, kinds, strict=True))
    return list(map(_LINE.__mod__, zip(
        prefixes, seqs, lines, cols, end_lines, end_cols, exprs, values, types, extra,
        range(first_timestamp_ns, first_timestamp_ns + count), strict=True)))


def _series(execution_id: str, kind: str) -> str:
    tags = f",kind={escape_tag(kind)}"
    if execution_id:
        tags = f",execution_id={escape_tag(execution_id)}" + tags
    return escape_measurement(MEASUREMENT) + tags


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
        if not events or events[-1].seq <= self.last_delivered:
            return
        fresh = events if events[0].seq > self.last_delivered else \
            [e for e in events if e.seq > self.last_delivered]
        if self.guard is not None:
            self.guard()
        # Strictly increasing timestamps, one nanosecond apart within a batch.
        first_ns = max(time.time_ns(), self.last_timestamp_ns + 1)
        lines = render_lines(fresh, first_ns)
        self.last_timestamp_ns = first_ns + len(lines) - 1
        ends = list(itertools.accumulate(len(line) + 1 for line in lines))
        start, taken = 0, 0
        while start < len(lines):
            # the most lines from `start` that fit in one message (at least one)
            stop = max(start + 1, bisect.bisect_right(ends, taken + MAX_MESSAGE_BYTES, start))
            self._send(lines[start:stop], fresh[start].seq, fresh[stop - 1].seq)
            taken, start = ends[stop - 1], stop
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
            # Short: another thread's poll may serve this sink's delivery reports (the
            # producer is shared), and then this one is not woken by them.
            self.producer.poll(FLUSH_POLL_SECONDS)

    def close(self) -> None:
        self.flush()

"""Worker metrics as events: every `metrics_seconds`, a few lines of line protocol.

There is no metrics endpoint (no network API at all): the worker publishes to the
metrics topic (`spy_metrics`), key = worker id, in InfluxDB line protocol, which the
same Telegraf that reads `spy_logs` forwards to InfluxDB. Two measurements:

    spy_worker,worker=W running=2i,capacity=4i,paused=false,queue_depth=3i,
        consumer_lag=12i,trace_events=5120i,trace_events_per_second=310.5,
        uptime_seconds=62.0 <ns>
    spy_executions,worker=W,outcome=completed count=17i,interval_count=3i,
        duration_seconds_sum=40.2,duration_seconds_max=3.1 <ns>

(one line each; `spy_executions` has a line per outcome seen so far). Counts and sums
are cumulative since the worker started; `interval_count` and `duration_seconds_max`
cover the last interval only. docs/operations.md lists every field.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jarvis.runtime.sinks import escape_tag

WORKER_MEASUREMENT = "spy_worker"
EXECUTIONS_MEASUREMENT = "spy_executions"


@dataclass
class _Outcome:
    count: int = 0
    seconds_sum: float = 0.0
    interval_count: int = 0
    interval_max: float = 0.0


@dataclass(frozen=True)
class Gauges:
    """What the loop knows at the moment of publishing."""

    running: int
    capacity: int
    paused: bool
    queue_depth: int
    consumer_lag: int


@dataclass
class WorkerMetrics:
    """Counters that runs update from their threads."""

    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    trace_events: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_ended(self, outcome: str, seconds: float) -> None:
        with self.lock:
            record = self.outcomes.setdefault(outcome, _Outcome())
            record.count += 1
            record.seconds_sum += seconds
            record.interval_count += 1
            record.interval_max = max(record.interval_max, seconds)

    def count_trace_events(self, count: int) -> None:
        with self.lock:
            self.trace_events += count


def _float(value: float) -> str:
    return repr(float(value))


def metric_lines(worker: str, metrics: WorkerMetrics, gauges: Gauges, *,
                 events_per_second: float, uptime: float, timestamp_ns: int) -> list[str]:
    """The lines of one publication; resets the per-interval figures."""
    tag = escape_tag(worker)
    with metrics.lock:
        lines = [
            f"{WORKER_MEASUREMENT},worker={tag} "
            f"running={gauges.running}i,capacity={gauges.capacity}i,"
            f"paused={'true' if gauges.paused else 'false'},"
            f"queue_depth={gauges.queue_depth}i,consumer_lag={gauges.consumer_lag}i,"
            f"trace_events={metrics.trace_events}i,"
            f"trace_events_per_second={_float(events_per_second)},"
            f"uptime_seconds={_float(uptime)} {timestamp_ns}"
        ]
        for outcome, record in sorted(metrics.outcomes.items()):
            lines.append(
                f"{EXECUTIONS_MEASUREMENT},worker={tag},outcome={escape_tag(outcome)} "
                f"count={record.count}i,interval_count={record.interval_count}i,"
                f"duration_seconds_sum={_float(record.seconds_sum)},"
                f"duration_seconds_max={_float(record.interval_max)} {timestamp_ns}")
            record.interval_count = 0
            record.interval_max = 0.0
    return lines


class MetricsPublisher:
    """Publishes the metrics when `interval` seconds have passed since the last time."""

    def __init__(self, producer: Any, topic: str, worker: str, interval: float,
                 metrics: WorkerMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.producer = producer
        self.topic = topic
        self.worker = worker
        self.interval = interval
        self.metrics = metrics
        self.clock = clock
        self.started = clock()
        self.last = self.started
        self.last_events = 0

    def due(self) -> bool:
        return self.clock() - self.last >= self.interval

    def publish(self, gauges: Gauges) -> None:
        now = self.clock()
        elapsed = max(now - self.last, 1e-9)
        events = self.metrics.trace_events
        lines = metric_lines(self.worker, self.metrics, gauges,
                             events_per_second=(events - self.last_events) / elapsed,
                             uptime=now - self.started, timestamp_ns=time.time_ns())
        self.last, self.last_events = now, events
        value = ("\n".join(lines) + "\n").encode("utf-8")
        # A full producer (Kafka away) skips this one; the next one counts everything.
        with contextlib.suppress(BufferError):
            self.producer.produce(self.topic, value=value, key=self.worker.encode("utf-8"))
        self.producer.poll(0)

"""Worker metrics: the line protocol the worker publishes, and when it publishes it."""

from __future__ import annotations

from typing import Any

from jarvis.worker.metrics import Gauges, MetricsPublisher, WorkerMetrics, metric_lines

GAUGES = Gauges(running=2, capacity=4, paused=True, queue_depth=3, consumer_lag=12)


def test_the_lines_carry_gauges_counts_and_durations() -> None:
    metrics = WorkerMetrics()
    metrics.run_ended("completed", 2.0)
    metrics.run_ended("completed", 3.5)
    metrics.run_ended("failed", 0.25)
    metrics.count_trace_events(40)

    lines = metric_lines("worker 1,a=b", metrics, GAUGES, events_per_second=12.5,
                         uptime=60.0, timestamp_ns=1000)

    assert lines == [
        r"spy_worker,worker=worker\ 1\,a\=b running=2i,capacity=4i,paused=true,"
        "queue_depth=3i,consumer_lag=12i,trace_events=40i,trace_events_per_second=12.5,"
        "uptime_seconds=60.0 1000",
        r"spy_executions,worker=worker\ 1\,a\=b,outcome=completed count=2i,"
        "interval_count=2i,duration_seconds_sum=5.5,duration_seconds_max=3.5 1000",
        r"spy_executions,worker=worker\ 1\,a\=b,outcome=failed count=1i,"
        "interval_count=1i,duration_seconds_sum=0.25,duration_seconds_max=0.25 1000",
    ]


def test_interval_figures_start_again_after_each_publication() -> None:
    metrics = WorkerMetrics()
    metrics.run_ended("completed", 2.0)
    metric_lines("w", metrics, GAUGES, events_per_second=0, uptime=1, timestamp_ns=1)

    [_, completed] = metric_lines("w", metrics, GAUGES, events_per_second=0, uptime=2,
                                  timestamp_ns=2)

    assert "count=1i,interval_count=0i" in completed
    assert "duration_seconds_sum=2.0,duration_seconds_max=0.0" in completed


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0


def test_the_publisher_is_due_every_interval_and_computes_the_event_rate() -> None:
    now = [100.0]
    metrics = WorkerMetrics()
    producer: Any = Producer()
    publisher = MetricsPublisher(producer, "spy_metrics", "w1", 15.0, metrics,
                                 clock=lambda: now[0])
    assert not publisher.due()

    now[0] += 10
    metrics.count_trace_events(300)
    assert not publisher.due()
    now[0] += 5
    assert publisher.due()
    publisher.publish(GAUGES)

    [(topic, value, key)] = producer.sent
    assert (topic, key) == ("spy_metrics", b"w1")
    assert "trace_events=300i,trace_events_per_second=20.0,uptime_seconds=15.0" in value.decode()
    assert not publisher.due()

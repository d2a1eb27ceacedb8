"""The trace sink of the worker: line protocol batches on Kafka, keyed by execution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from jarvis.runtime.trace import TraceEvent
from jarvis.worker import logs
from jarvis.worker.leases import FencedOff
from jarvis.worker.logs import KafkaLogSink


class Producer:
    def __init__(self, full_times: int = 0) -> None:
        self.pending: list[Callable[[Any, Any], None]] = []
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.full_times = full_times

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


def events(first: int, last: int) -> list[TraceEvent]:
    return [TraceEvent("ex-1", seq, "stmt", seq, 0, seq, 5, f"x = {seq}", "", "")
            for seq in range(first, last + 1)]


def test_batches_are_line_protocol_keyed_by_execution_with_rising_timestamps() -> None:
    producer = Producer()
    progress: list[int] = []
    counted: list[int] = []
    sink = KafkaLogSink(producer, "spy_logs", "ex-1", on_progress=progress.append,
                        on_events=counted.append)

    sink.deliver(events(1, 3))
    sink.deliver(events(2, 5))  # 2 and 3 again, as after a resume: dropped
    assert sink.flush(1)

    lines = [line for _, value, _ in producer.sent for line in value.decode().splitlines()]
    assert [line.split(" ")[0] for line in lines] == ["spy_trace,execution_id=ex-1,kind=stmt"] * 5
    assert [int(line.split("seq=")[1].split("i")[0]) for line in lines] == [1, 2, 3, 4, 5]
    stamps = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert stamps == sorted(set(stamps))
    assert {key for _, _, key in producer.sent} == {b"ex-1"}
    assert sink.last_delivered == 5 and progress[-1] == 5 and sum(counted) == 5


def test_large_batches_are_split_into_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "MAX_MESSAGE_BYTES", 300)
    producer = Producer()
    sink = KafkaLogSink(producer, "spy_logs", "ex-1")
    sink.deliver(events(1, 10))
    assert len(producer.sent) > 1
    assert all(len(value) <= 300 for _, value, _ in producer.sent)


def test_a_full_producer_is_waited_for() -> None:
    producer = Producer(full_times=3)
    sink = KafkaLogSink(producer, "spy_logs", "ex-1")
    sink.deliver(events(1, 2))
    assert len(producer.sent) == 1 and sink.flush(1)


def test_a_fenced_sink_sends_nothing() -> None:
    producer = Producer()

    def guard() -> None:
        raise FencedOff("taken over")

    sink = KafkaLogSink(producer, "spy_logs", "ex-1", guard=guard)
    with pytest.raises(FencedOff):
        sink.deliver(events(1, 2))
    assert producer.sent == []

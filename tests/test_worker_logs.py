"""The trace sink of the worker: line protocol batches on Kafka, keyed by execution."""

from __future__ import annotations

import pytest
from fake_producer import FakeProducer

from jarvis.runtime.trace import TraceEvent
from jarvis.worker import logs
from jarvis.worker.leases import FencedOff
from jarvis.worker.logs import KafkaLogSink


def events(first: int, last: int) -> list[TraceEvent]:
    return [TraceEvent("ex-1", seq, "stmt", seq, 0, seq, 5, f"x = {seq}", "", "")
            for seq in range(first, last + 1)]


def test_batches_are_line_protocol_keyed_by_execution_with_rising_timestamps() -> None:
    producer = FakeProducer()
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
    producer = FakeProducer()
    sink = KafkaLogSink(producer, "spy_logs", "ex-1")
    sink.deliver(events(1, 10))
    assert len(producer.sent) > 1
    assert all(len(value) <= 300 for _, value, _ in producer.sent)


def test_a_full_producer_is_waited_for() -> None:
    producer = FakeProducer(full_times=3)
    sink = KafkaLogSink(producer, "spy_logs", "ex-1")
    sink.deliver(events(1, 2))
    assert len(producer.sent) == 1 and sink.flush(1)


def test_a_fenced_sink_sends_nothing() -> None:
    producer = FakeProducer()

    def guard() -> None:
        raise FencedOff("taken over")

    sink = KafkaLogSink(producer, "spy_logs", "ex-1", guard=guard)
    with pytest.raises(FencedOff):
        sink.deliver(events(1, 2))
    assert producer.sent == []

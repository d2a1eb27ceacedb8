"""The worker loop's policies, with a fake consumer, producer, Redis and runner.

What the loop decides on its own: which messages are dead-lettered, when offsets are
committed, when the partitions are paused, what waits for Redis, and what a rebalance
does to running executions. The real services are in tests/integration/test_worker_*.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from jarvis.runtime.statedir import ExecutionDir
from jarvis.settings import WorkerSettings
from jarvis.worker.endings import status_key
from jarvis.worker.leases import lease_key
from jarvis.worker.loop import WorkerLoop
from jarvis.worker.runs import HANDOVER, Run
from jarvis.worker.stops import stop_key

TOPIC = "spy_control"


@dataclass
class Message:
    value_: bytes | None
    key_: bytes | None
    partition_: int
    offset_: int
    topic_: str = TOPIC

    def value(self) -> bytes | None:
        return self.value_

    def key(self) -> bytes | None:
        return self.key_

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def error(self) -> None:
        return None


@dataclass
class TP:
    topic: str
    partition: int
    offset: int = -1001
    error: Any = None


@dataclass
class FakeConsumer:
    partitions: int = 2
    queue: list[Message] = field(default_factory=list)
    paused: set[tuple[str, int]] = field(default_factory=set)
    commits: list[dict[tuple[str, int], int]] = field(default_factory=list)
    on_commit: Callable[[Any, list[Any]], None] | None = None
    offsets: dict[int, int] = field(default_factory=dict)

    def send(self, value: bytes | None, key: bytes | None = None, partition: int = 0) -> None:
        offset = self.offsets.get(partition, 0)
        self.offsets[partition] = offset + 1
        self.queue.append(Message(value, key, partition, offset))

    def poll(self, timeout: float) -> Message | None:
        for message in self.queue:
            if (message.topic(), message.partition()) not in self.paused:
                self.queue.remove(message)
                return message
        return None

    def assignment(self) -> list[TP]:
        return [TP(TOPIC, p) for p in range(self.partitions)]

    def pause(self, partitions: list[Any]) -> None:
        self.paused.update((p.topic, p.partition) for p in partitions)

    def resume(self, partitions: list[Any]) -> None:
        self.paused.difference_update((p.topic, p.partition) for p in partitions)

    def commit(self, offsets: list[Any], asynchronous: bool) -> Any:
        done = [TP(o.topic, o.partition, o.offset) for o in offsets]
        self.commits.append({(o.topic, o.partition): o.offset for o in offsets})
        if asynchronous:
            assert self.on_commit is not None
            self.on_commit(None, done)
            return None
        return done

    def position(self, partitions: list[Any]) -> list[Any]:
        return [TP(p.topic, p.partition, self.offsets.get(p.partition, 0)) for p in partitions]

    def get_watermark_offsets(self, partition: Any, cached: bool) -> tuple[int, int]:
        return 0, self.offsets.get(partition.partition, 0) + 3

    def committed_position(self, partition: int) -> int | None:
        for commit in reversed(self.commits):
            if (TOPIC, partition) in commit:
                return commit[(TOPIC, partition)]
        return None


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    def produce(self, topic: str, value: bytes, key: bytes, **_: Any) -> None:
        self.sent.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(value) for t, value, _ in self.sent if t == topic]


class FakeRedis:
    """The few commands the loop uses, on dicts; `down` makes every call fail."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.hashes: dict[str, dict[str, Any]] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise redis.exceptions.ConnectionError("Connection refused")

    def register_script(self, script: str) -> Callable[..., Any]:
        def run(keys: list[str], args: list[Any]) -> Any:
            if "HSET" not in script:
                raise AssertionError("the loop runs no lease scripts")
            self._check()  # Endings.record: the ending, then the stop request dropped
            self.hset(keys[0], mapping={"status": args[0], "worker": args[1], "ts": args[2]})
            if args[4] == 1:
                self.delete(keys[1])
            return 1
        return run

    def get(self, key: str) -> Any:
        self._check()
        return self.values.get(key)

    def set(self, key: str, value: Any, ex: int | None = None) -> None:
        self._check()
        self.values[key] = value.encode() if isinstance(value, str) else value

    def delete(self, key: str) -> None:
        self._check()
        self.values.pop(key, None)

    def hget(self, key: str, name: str) -> Any:
        self._check()
        return self.hashes.get(key, {}).get(name)

    def hset(self, key: str, mapping: dict[str, Any]) -> None:
        self._check()
        self.hashes.setdefault(key, {}).update(
            {k: str(v).encode() for k, v in mapping.items()})


class FakeRunner:
    def __init__(self, publish: Callable[..., None], finished: Callable[[Run], None],
                 metrics: Any) -> None:
        self.publish = publish
        self.finished = finished
        self.started: list[Run] = []

    def start(self, run: Run) -> None:
        self.started.append(run)

    def end(self, run: Run, status: str) -> None:
        run.outcome_status = status
        self.finished(run)


@dataclass
class Worker:
    loop: WorkerLoop
    consumer: FakeConsumer
    producer: FakeProducer
    redis: FakeRedis
    runner: FakeRunner
    settings: WorkerSettings

    def steps(self, count: int = 3) -> None:
        for _ in range(count):
            self.loop.step(timeout=0)

    def statuses(self) -> list[tuple[str, str]]:
        return [(e["execution_id"], e["status"])
                for e in self.producer.on(self.settings.kafka.status_topic)]

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.producer.on(self.settings.kafka.dlq_topic)


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    return make_worker(tmp_path)


def make_worker(tmp_path: Path, **settings: Any) -> Worker:
    config = WorkerSettings(state_dir=tmp_path / "state", **settings)
    consumer, producer, fake_redis = FakeConsumer(), FakeProducer(), FakeRedis()
    runners: list[FakeRunner] = []

    def factory(**hooks: Any) -> Any:
        runners.append(FakeRunner(**hooks))
        return runners[-1]

    loop = WorkerLoop(config, "w1", consumer, producer, fake_redis, factory)
    loop.commit_interval = 0.0  # a commit at every step (one is batched further below)
    loop.pause_after = 0.0  # a full worker pauses at once (the wait before is tested below)
    consumer.on_commit = loop.committed
    return Worker(loop, consumer, producer, fake_redis, runners[0], config)


def start(execution_id: str) -> bytes:
    return json.dumps({"v": 1, "type": "start", "execution_id": execution_id,
                       "program": {"source": "x = 1\n"}}).encode()


def stop(execution_id: str, mode: str) -> bytes:
    return json.dumps({"v": 1, "type": "stop", "execution_id": execution_id,
                       "mode": mode}).encode()


def test_a_bad_command_is_dead_lettered_and_its_offset_committed(worker: Worker) -> None:
    worker.consumer.send(b"{oops", b"e1")
    worker.consumer.send(json.dumps({"v": 1, "type": "start", "execution_id": "e2"}).encode(),
                         b"e2")
    worker.steps()

    letters = worker.dead_letters()
    assert [letter["reason"][:8] for letter in letters] == ["not JSON", "invalid "]
    assert letters[1]["execution_id"] == "e2"
    assert worker.statuses() == [("e2", "rejected")]  # e1 named no readable execution
    assert worker.consumer.committed_position(0) == 2
    assert worker.runner.started == []


def test_a_start_is_committed_only_when_its_run_ends(worker: Worker) -> None:
    worker.consumer.send(start("e1"), b"e1")
    worker.consumer.send(start("e2"), b"e2")
    worker.steps()
    first, second = worker.runner.started
    assert worker.consumer.committed_position(0) in (None, 0)

    worker.runner.end(second, "completed")
    worker.steps()
    assert worker.consumer.committed_position(0) in (None, 0)  # e1 still runs

    worker.runner.end(first, "suspended")  # a stop with suspend: done with the command
    worker.steps()
    assert worker.consumer.committed_position(0) == 2
    assert worker.loop.runs == {}


def test_a_full_worker_pauses_its_partitions_until_a_run_ends(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, max_concurrency=1)
    worker.consumer.send(start("e1"), b"e1", partition=0)
    worker.consumer.send(start("e2"), b"e2", partition=1)
    worker.steps()
    assert [r.execution_id for r in worker.runner.started] == ["e1"]
    assert worker.consumer.paused == {(TOPIC, 0), (TOPIC, 1)}

    worker.runner.end(worker.runner.started[0], "completed")
    worker.steps()
    assert [r.execution_id for r in worker.runner.started] == ["e1", "e2"]


def test_a_full_worker_waits_a_while_before_it_pauses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full, the loop first takes nothing more without pausing: the next commands stay
    fetched for a slot a run frees; full for longer than `pause_after`, it pauses."""
    clock = [1000.0]
    monkeypatch.setattr("jarvis.worker.loop.time.monotonic", lambda: clock[0])
    worker = make_worker(tmp_path, max_concurrency=1)
    worker.loop.pause_after = 0.5
    for name in ("e1", "e2", "e3", "e4"):
        worker.consumer.send(start(name), name.encode())
    worker.steps(5)
    assert [r.execution_id for r in worker.runner.started] == ["e1"]
    assert [m.key() for m in worker.loop.held] == [b"e2"]
    assert worker.consumer.paused == set()
    assert [m.key() for m in worker.consumer.queue] == [b"e3", b"e4"]  # not taken

    clock[0] += 0.3  # a run ends within the wait: the next one starts, no pause
    worker.runner.end(worker.runner.started[0], "completed")
    worker.steps(3)
    assert [r.execution_id for r in worker.runner.started] == ["e1", "e2"]
    assert [m.key() for m in worker.loop.held] == [b"e3"]
    assert worker.consumer.paused == set()

    clock[0] += 0.6  # full for longer than the wait: paused
    worker.steps(2)
    assert worker.consumer.paused == {(TOPIC, 0), (TOPIC, 1)}
    assert [m.key() for m in worker.consumer.queue] == [b"e4"]
    assert [m.key() for m in worker.loop.held] == [b"e3"]


def test_a_full_worker_keeps_a_backlog_that_starts_as_runs_end(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, max_concurrency=2)
    for name in ("e1", "e2", "e3", "e4", "e5"):
        worker.consumer.send(start(name), name.encode())
    worker.steps(6)
    assert [r.execution_id for r in worker.runner.started] == ["e1", "e2"]
    # Two commands wait at hand, in order; the fifth stays on the broker.
    assert [m.key() for m in worker.loop.held] == [b"e3", b"e4"]
    assert worker.consumer.paused == {(TOPIC, 0), (TOPIC, 1)}
    assert [m.key() for m in worker.consumer.queue] == [b"e5"]

    worker.runner.end(worker.runner.started[1], "completed")
    worker.loop.step(timeout=0)  # the freed slot is taken in the same step
    assert [r.execution_id for r in worker.runner.started] == ["e1", "e2", "e3"]
    # e1 still runs: nothing past it is committed, whatever waits behind it.
    assert worker.consumer.committed_position(0) in (None, 0)

    worker.steps(3)
    assert [m.key() for m in worker.loop.held] == [b"e4", b"e5"]
    for run in worker.runner.started[:1] + worker.runner.started[2:]:
        worker.runner.end(run, "completed")
    worker.steps(3)
    assert [r.execution_id for r in worker.runner.started] == ["e1", "e2", "e3", "e4", "e5"]
    for run in worker.runner.started[3:]:
        worker.runner.end(run, "completed")
    worker.steps(3)
    assert worker.consumer.committed_position(0) == 5
    assert worker.consumer.paused == set() and not worker.loop.held


def test_commands_wait_while_redis_is_away_and_nothing_is_dead_lettered(
        worker: Worker) -> None:
    """A stop for an execution not run here asks Redis who runs it: while Redis is
    away it waits, and the commands after it with it. A start asks Redis nothing in
    the loop (its run does, and waits for Redis)."""
    worker.redis.down = True
    worker.consumer.send(start("e1"), b"e1")
    worker.consumer.send(stop("e9", "cancel"), b"e9")
    worker.consumer.send(start("e2"), b"e2")
    worker.steps(5)

    assert [r.execution_id for r in worker.runner.started] == ["e1"]
    assert worker.dead_letters() == []
    assert worker.consumer.paused == {(TOPIC, 0), (TOPIC, 1)}
    assert [m.offset() for m in worker.loop.held] == [1]  # e2 was never polled

    worker.redis.down = False
    worker.loop.held_until = 0.0
    worker.steps(5)
    assert [r.execution_id for r in worker.runner.started] == ["e1", "e2"]
    assert worker.statuses() == [("e9", "cancelled")]  # nobody ran it: cancelled here
    assert worker.consumer.paused == set()


def test_commits_are_batched_and_never_pass_an_unfinished_start(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most one commit every `commit_interval`: runs that end in between are
    committed together by the next one, and never past a start still running."""
    clock = [1000.0]
    monkeypatch.setattr("jarvis.worker.loop.time.monotonic", lambda: clock[0])
    worker.loop.commit_interval = 0.02
    for name in ("e1", "e2", "e3"):
        worker.consumer.send(start(name), name.encode())
    worker.steps()
    e1, e2, e3 = worker.runner.started
    assert worker.consumer.commits == [{(TOPIC, 0): 0}]  # none has ended
    worker.runner.end(e1, "completed")
    worker.steps(1)
    assert worker.consumer.commits == [{(TOPIC, 0): 0}]  # within the interval: later
    clock[0] += 0.03
    worker.runner.end(e3, "completed")
    worker.steps(1)
    assert worker.consumer.commits[1:] == [{(TOPIC, 0): 1}]  # not past e2, running
    clock[0] += 0.01
    worker.runner.end(e2, "failed")
    worker.steps(1)
    assert len(worker.consumer.commits) == 2
    clock[0] += 0.011
    worker.steps(1)
    assert worker.consumer.commits[2:] == [{(TOPIC, 0): 3}]


def test_a_start_of_an_ended_execution_goes_to_its_run(worker: Worker) -> None:
    """Whether it ended is the run's question (tests/test_worker_duplicates.py): the loop
    asks Redis nothing and reads no state file for a start."""
    worker.redis.hset(status_key("done"), mapping={"status": "completed"})
    ExecutionDir(worker.settings.state_dir, "gone").write_status({"status": "failed"})
    worker.redis.down = True  # any question to Redis would fail
    worker.consumer.send(start("done"), b"done")
    worker.consumer.send(start("gone"), b"gone")
    worker.steps()

    assert [r.execution_id for r in worker.runner.started] == ["done", "gone"]
    assert worker.statuses() == []
    worker.runner.end(worker.runner.started[0], "duplicate")
    worker.runner.end(worker.runner.started[1], "duplicate")
    worker.redis.down = False
    worker.steps()
    assert worker.consumer.committed_position(0) == 2


def test_a_second_start_of_a_running_execution_is_a_duplicate(worker: Worker) -> None:
    worker.consumer.send(start("e1"), b"e1")
    worker.consumer.send(start("e1"), b"e1")
    worker.steps()
    assert len(worker.runner.started) == 1
    assert worker.statuses() == [("e1", "duplicate")]


def test_a_revoked_partition_hands_its_runs_over_without_committing(worker: Worker) -> None:
    worker.consumer.send(start("e1"), b"e1", partition=0)
    worker.consumer.send(start("e2"), b"e2", partition=1)
    worker.steps()
    on_0, on_1 = worker.runner.started

    worker.loop.revoked([TP(TOPIC, 0)])

    assert on_0.handover and on_0.stop_mode == "suspend"
    assert not on_1.handover
    worker.runner.end(on_0, "suspended")
    worker.steps()
    assert worker.consumer.committed_position(0) in (None, 0)


def test_a_start_redelivered_during_a_handover_waits_for_it(worker: Worker) -> None:
    worker.consumer.send(start("e1"), b"e1")
    worker.steps()
    [old] = worker.runner.started
    old.hand_over()  # say, the partition was lost and assigned back
    worker.consumer.send(start("e1"), b"e1")
    worker.steps()
    assert worker.runner.started == [old] and len(worker.loop.held) == 1

    worker.runner.end(old, HANDOVER)
    worker.loop.held_until = 0.0
    worker.steps()
    assert len(worker.runner.started) == 2
    assert worker.runner.started[1].position.offset == 1
    assert worker.statuses() == []


def test_stop_tells_the_local_run_directly(worker: Worker) -> None:
    worker.consumer.send(start("e1"), b"e1")
    worker.consumer.send(stop("e1", "cancel"), b"e1")
    worker.steps()
    [run] = worker.runner.started
    assert run.stop_mode == "cancel" and run.stop_event.is_set()
    assert worker.redis.get(stop_key("e1")) is None


def test_a_stop_that_comes_as_the_run_finishes_waits_for_its_end(worker: Worker) -> None:
    worker.consumer.send(start("e1"), b"e1")
    worker.steps()
    [run] = worker.runner.started
    assert run.finish() is None  # it decided: suspended, say, by an earlier stop
    worker.consumer.send(stop("e1", "cancel"), b"e1")
    worker.steps()
    assert run.stop_mode is None and len(worker.loop.held) == 1

    worker.runner.end(run, "suspended")
    worker.loop.held_until = 0.0
    worker.steps()
    assert worker.statuses() == [("e1", "cancelled")]  # nobody runs it now: cancelled here
    assert worker.loop.held == deque()


def test_a_stop_for_an_execution_run_elsewhere_goes_through_redis(worker: Worker) -> None:
    worker.redis.set(lease_key("e1"), "other-worker:3")
    worker.consumer.send(stop("e1", "suspend"), b"e1")
    worker.steps()
    assert worker.redis.get(stop_key("e1")) == b"suspend"
    assert worker.statuses() == []


def test_a_cancel_of_an_execution_nobody_runs_deletes_its_state(worker: Worker) -> None:
    directory = ExecutionDir(worker.settings.state_dir, "idle")
    directory.create()
    directory.journal.write_bytes(b"journal")
    worker.consumer.send(stop("idle", "suspend"), b"idle")  # nothing to suspend
    worker.consumer.send(stop("idle", "cancel"), b"idle")
    worker.steps()

    assert worker.statuses() == [("idle", "cancelled")]
    assert not directory.journal.exists()
    assert directory.read_status() == {"status": "cancelled"}
    assert worker.redis.hget(status_key("idle"), "status") == b"cancelled"
    assert worker.redis.get(stop_key("idle")) is None


def test_metrics_are_published_on_their_interval(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, metrics_seconds=5)
    worker.consumer.send(start("e1"), b"e1")
    worker.steps(2)
    assert worker.producer.on(worker.settings.kafka.metrics_topic) == []
    worker.loop.publisher.last -= 5  # five seconds later
    worker.steps(1)
    lines = [value.decode() for topic, value, _ in worker.producer.sent
             if topic == worker.settings.kafka.metrics_topic]
    assert lines and lines[-1].startswith("spy_worker,worker=w1 running=1i,capacity=4i,")
    assert "queue_depth=1i" in lines[-1] and "consumer_lag=6i" in lines[-1]  # 3 unread in each


def test_a_held_first_event_goes_with_the_next_event_of_its_execution(
        worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("jarvis.worker.loop.time.monotonic", lambda: clock[0])
    worker.loop.publish("e1", "started", hold=True, attempt=3)
    worker.loop.publish("e2", "started", hold=True, attempt=1)
    worker.steps(2)
    assert worker.statuses() == []  # held

    clock[0] += worker.loop.hold_first_event / 2
    worker.loop.publish("e1", "completed", attempt=3)
    assert worker.statuses() == [("e1", "started"), ("e1", "completed")]  # in order
    events = worker.producer.on(worker.settings.kafka.status_topic)
    assert events[0]["attempt"] == 3 and events[0]["ts"] <= events[1]["ts"]

    clock[0] += worker.loop.hold_first_event / 2  # e2's time is up: sent on its own
    worker.steps(1)
    assert worker.statuses()[2:] == [("e2", "started")]
    worker.steps(2)
    assert len(worker.statuses()) == 3  # each event once


def test_held_events_are_sent_before_the_worker_stops(worker: Worker) -> None:
    worker.loop.publish("e1", "started", hold=True)
    worker.loop.shutdown()
    assert worker.statuses() == [("e1", "started")]


def test_a_held_event_of_a_run_whose_lease_may_have_lapsed_is_dropped(
        worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker paused past its lease (SIGSTOP) must not emit, once it goes on, the
    `started` it held back: the execution may be another worker's by then."""
    from jarvis.worker.leases import Lease

    clock = [1000.0]
    monkeypatch.setattr("jarvis.worker.loop.time.monotonic", lambda: clock[0])
    lapsing = Lease("e1", "w1", 3, deadline=clock[0] + worker.loop.hold_first_event / 2)
    kept = Lease("e2", "w1", 1, deadline=clock[0] + 30)
    worker.loop.publish("e1", "started", hold=True, lease=lapsing, attempt=3)
    worker.loop.publish("e2", "started", hold=True, lease=kept, attempt=1)
    clock[0] += worker.loop.hold_first_event  # both are due; e1's lease may have lapsed
    worker.steps(1)
    assert worker.statuses() == [("e2", "started")]

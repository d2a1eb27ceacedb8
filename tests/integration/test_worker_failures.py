"""The worker when things break: a worker killed or frozen, Kafka or Redis restarted.

The programs call a real HTTP Book (tests/bookserver.py) that records every request
with its Idempotency-Key, so each test can count the calls each execution made.
Leases last 2 s and the consumer's session 6 s, so the group notices a dead worker fast.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bookserver import BookServer
from services import KafkaBroker, RedisServer
from test_worker_support import (
    SLOW_PROGRAM,
    WorkerCluster,
    clusters,
    slow_book,
    slow_value,
    unique,
    wait_until,
)

from jarvis.runtime.statedir import ExecutionDir

STEPS = 12


@pytest.fixture
def cluster_factory(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Any:
    yield from clusters(kafka, redis_server, tmp_path)


@pytest.fixture
def book() -> Iterator[BookServer]:
    with BookServer() as server:
        slow_book(server, delay=0.15)
        yield server


def expected_result(steps: int = STEPS) -> dict[str, Any]:
    seen = [slow_value(i) for i in range(steps)]
    return {"total": sum(seen), "seen": seen}


def calls_by_execution(book: BookServer) -> dict[str, Counter[str]]:
    calls: dict[str, Counter[str]] = {}
    for request in book.requests_for("step"):
        key = request.headers["idempotency-key"]
        calls.setdefault(key.rsplit(":", 1)[0], Counter())[key] += 1
    return calls


def start_all(cluster: WorkerCluster, count: int, prefix: str) -> list[str]:
    ids = [unique(prefix) for _ in range(count)]
    for execution_id in ids:
        cluster.send_start(execution_id, SLOW_PROGRAM, {"count": STEPS})
    return ids


def assert_each_call_made_once(book: BookServer, ids: list[str],
                               in_flight_allowed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    calls = calls_by_execution(book)
    for execution_id in ids:
        made = calls[execution_id]
        assert set(made) == {f"{execution_id}:{n}" for n in range(1, STEPS + 1)}
        again = [key for key, count in made.items() if count > 1]
        if execution_id in in_flight_allowed:
            # At most the one call in flight when its worker went away, and only twice.
            assert len(again) <= 1 and all(made[key] == 2 for key in again), made
        else:
            assert again == [], made


def started_on(cluster: WorkerCluster, worker: str) -> set[str]:
    """The executions `worker` has sent a `started` event for so far."""
    return {e["execution_id"] for e in cluster.status_log.all()
            if e["status"] == "started" and e["worker"] == worker}


def test_a_killed_workers_executions_finish_on_the_other(
        cluster_factory: Any, book: BookServer) -> None:
    cluster: WorkerCluster = cluster_factory(
        partitions=4, books={"slow": book.url},
        env={"JARVIS_SNAPSHOT_EVERY_EFFECTS": "1"})
    a = cluster.start_worker("a")
    cluster.start_worker("b")
    cluster.wait_for_members(2)
    ids = start_all(cluster, 6, "kill")

    def a_is_mid_run() -> bool:
        started = started_on(cluster, "a")
        calls = calls_by_execution(book)
        return any(2 <= sum(calls.get(x, Counter()).values()) < STEPS - 2 for x in started)

    wait_until(a_is_mid_run, 30, "worker a made Book calls for an execution")
    a.kill()
    on_a = started_on(cluster, "a")
    endings = cluster.wait_for_endings(ids, timeout=60)

    for execution_id in ids:
        assert endings[execution_id]["status"] == "completed", endings[execution_id]
        assert endings[execution_id]["result"] == expected_result()
    unfinished_on_a = {x for x in on_a if endings[x]["worker"] == "b"}
    assert unfinished_on_a, "worker a finished everything before it was killed"
    for execution_id in unfinished_on_a:
        resumed = [e for e in cluster.status_log.of(execution_id) if e["status"] == "resumed"]
        assert resumed and resumed[0]["worker"] == "b"
        assert resumed[0]["attempt"] > 1  # a newer lease than worker a's
    assert_each_call_made_once(book, ids, in_flight_allowed=unfinished_on_a)
    cluster.wait_all_committed()


def test_a_frozen_worker_is_fenced_off_when_it_wakes(
        cluster_factory: Any, book: BookServer) -> None:
    cluster: WorkerCluster = cluster_factory(
        partitions=4, books={"slow": book.url},
        env={"JARVIS_SNAPSHOT_EVERY_EFFECTS": "1"})
    a = cluster.start_worker("a")
    cluster.start_worker("b")
    cluster.wait_for_members(2)
    ids = start_all(cluster, 6, "freeze")

    def a_runs() -> set[str]:
        started = started_on(cluster, "a")
        calls = calls_by_execution(book)
        return {x for x in started if 2 <= sum(calls.get(x, Counter()).values()) < STEPS - 2}

    wait_until(a_runs, 30, "worker a made Book calls for an execution")
    a.signal(signal.SIGSTOP)
    frozen = a_runs()
    on_a = started_on(cluster, "a")
    try:
        endings = cluster.wait_for_endings(ids, timeout=60)
        for execution_id in ids:
            assert endings[execution_id]["status"] == "completed"
            assert endings[execution_id]["result"] == expected_result()
        taken = {x for x in frozen if endings[x]["worker"] == "b"}
        assert taken, "no execution of the frozen worker was taken over"
        # Worker b commits every 500 ms: until it has committed these starts, the
        # rebalance that worker a's return causes would deliver them again, and a
        # start of an ended execution is answered `duplicate` (by design, and not a
        # word from the fenced-off worker's runs).
        cluster.wait_all_committed()
        state = {x: _state_files(cluster, x) for x in taken}
        seen = len(cluster.status_log.all())
    finally:
        a.signal(signal.SIGCONT)

    # Awake again, worker a finds its leases gone: it writes and says nothing more.
    wait_until(lambda: all(f"execution {x}:" in a.log() for x in taken), 30,
               "worker a logged that it was fenced off", on_fail=a.log)
    time.sleep(3)
    late = [e for e in cluster.status_log.all()[seen:] if e["execution_id"] in taken]
    assert late == []
    for execution_id in taken:
        assert _state_files(cluster, execution_id) == state[execution_id]
        assert "nothing more" in a.log()
    # Any execution worker a had started may have had a call in flight when it froze.
    assert_each_call_made_once(book, ids, in_flight_allowed=on_a)


def _state_files(cluster: WorkerCluster, execution_id: str) -> dict[str, bytes]:
    root = ExecutionDir(cluster.state_dir, execution_id).root
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "trace.seq"}


def test_the_worker_rides_out_a_kafka_restart(
        cluster_factory: Any, book: BookServer, kafka: KafkaBroker) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=2, books={"slow": book.url})
    cluster.start_worker("a")
    cluster.wait_for_members(1)
    ids = start_all(cluster, 4, "kafka")
    wait_until(lambda: len(book.requests) >= 4, 30, "the executions are running")

    kafka.restart()

    endings = cluster.wait_for_endings(ids, timeout=60)
    for execution_id in ids:
        assert endings[execution_id]["status"] == "completed", endings[execution_id]
        assert endings[execution_id]["result"] == expected_result()
        assert cluster.status_log.statuses(execution_id).count("completed") == 1
    assert_each_call_made_once(book, ids)
    cluster.wait_all_committed()


def test_the_worker_rides_out_a_redis_restart(
        cluster_factory: Any, book: BookServer, redis_server: RedisServer) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=2, books={"slow": book.url})
    cluster.start_worker("a")
    cluster.wait_for_members(1)
    ids = start_all(cluster, 4, "redis")
    wait_until(lambda: len(book.requests) >= 4, 30, "the executions are running")

    redis_server.restart()  # without persistence: leases, tokens and endings are gone

    endings = cluster.wait_for_endings(ids, timeout=60)
    for execution_id in ids:
        assert endings[execution_id]["status"] == "completed", endings[execution_id]
        assert endings[execution_id]["result"] == expected_result()
        assert cluster.status_log.statuses(execution_id).count("completed") == 1
    assert_each_call_made_once(book, ids)
    cluster.wait_all_committed()
    # Redis forgot how they ended; the state directory did not.
    for execution_id in ids:
        cluster.send_start(execution_id, SLOW_PROGRAM, {"count": STEPS})
    for execution_id in ids:
        cluster.wait_for_status(execution_id, "duplicate")


def test_commands_wait_for_redis_while_it_is_down(
        cluster_factory: Any, book: BookServer, redis_server: RedisServer) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=2, books={"slow": book.url})
    cluster.start_worker("a")
    cluster.wait_for_members(1)
    running = start_all(cluster, 2, "before")
    wait_until(lambda: len(book.requests) >= 2, 30, "the executions are running")

    redis_server.stop()
    try:
        arriving = start_all(cluster, 2, "during")
        time.sleep(4)  # past the 2 s leases: writes wait for Redis to confirm them
    finally:
        redis_server.start()

    endings = cluster.wait_for_endings(running + arriving, timeout=60)
    for execution_id in running + arriving:
        assert endings[execution_id]["status"] == "completed", endings[execution_id]
        assert endings[execution_id]["result"] == expected_result()
    assert_each_call_made_once(book, running + arriving)
    dlq = cluster.read_topic(cluster.dlq, 1, timeout=2)
    assert dlq == []
    cluster.wait_all_committed()

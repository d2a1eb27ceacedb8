"""The worker against real Kafka and Redis: executions run, stop, resume and are reported.

Each test starts real `jarvis worker` processes (test_worker_support.py) on topics and
a consumer group of its own, sends commands to the control topic and reads what the
workers write: status events, trace events, metrics, committed offsets, heartbeats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from services import KafkaBroker, RedisServer
from test_worker_support import (
    REPO,
    SUM_PROGRAM,
    WorkerCluster,
    clusters,
    parse_line_protocol,
    trace_points,
    unique,
    wait_until,
)

from jarvis.runtime.statedir import ExecutionDir


@pytest.fixture
def cluster_factory(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Any:
    yield from clusters(kafka, redis_server, tmp_path)


LONG_PROGRAM = """\
from books import crm

total = 0
for i in range(inputs["count"]):
    total += crm.get(n=i)["n"]
    sleep(0.05)
output("total", total)
"""


def test_twenty_executions_on_two_workers_complete_with_events_and_offsets(
        cluster_factory: Any) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=4)
    cluster.start_worker("a")
    cluster.start_worker("b")
    cluster.wait_for_members(2)
    ids = [unique(f"sum{n}") for n in range(20)]
    for n, execution_id in enumerate(ids):
        cluster.send(json.dumps({
            "v": 1, "type": "start", "execution_id": execution_id,
            "program": {"source": SUM_PROGRAM}, "inputs": {"count": n + 1}}).encode(),
            execution_id.encode())
    cluster.flush()

    endings = cluster.wait_for_endings(ids, timeout=90)

    for n, execution_id in enumerate(ids):
        ending = endings[execution_id]
        assert ending["status"] == "completed", ending
        assert ending["result"] == {"total": sum(range(n + 1))}
        assert ending["counters"]["book_calls"] == n + 1
        statuses = cluster.status_log.statuses(execution_id)
        assert statuses[0] == "started", statuses
        assert statuses.count("completed") == 1, statuses
        assert not {"failed", "duplicate", "rejected"} & set(statuses), statuses
    assert {e["worker"] for e in endings.values()} == {"a", "b"}

    # Every trace event of every execution, once, in seq order per execution.
    expected = sum(e["counters"]["trace_seq"] for e in endings.values())
    points = trace_points(cluster.kafka, cluster.logs, expected)
    for execution_id in ids:
        seqs = [p.fields["seq"] for p in points[execution_id]]
        assert seqs == list(range(1, endings[execution_id]["counters"]["trace_seq"] + 1))
        prints = [p.fields["value"] for p in points[execution_id] if p.tags["kind"] == "print"]
        assert prints == [f"total {endings[execution_id]['result']['total']}\n"]
        stamps = [p.timestamp for p in points[execution_id]]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    cluster.wait_all_committed()


def test_a_duplicate_start_of_a_finished_execution_does_not_run_again(
        cluster_factory: Any) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=2)
    cluster.start_worker("a")
    execution_id = unique("dup")
    cluster.send_start(execution_id, SUM_PROGRAM, {"count": 3})
    cluster.wait_for_status(execution_id, "completed")

    cluster.send_start(execution_id, SUM_PROGRAM, {"count": 3})
    duplicate = cluster.wait_for_status(execution_id, "duplicate")

    assert duplicate["error"]["message"] == "the execution is completed"
    assert cluster.status_log.statuses(execution_id) == ["started", "completed", "duplicate"]
    cluster.wait_all_committed()


def test_suspend_then_start_resumes_and_cancel_removes_the_state(
        cluster_factory: Any) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=2)
    cluster.start_worker("a")
    paused, cancelled = unique("pause"), unique("cancel")
    cluster.send_start(paused, LONG_PROGRAM, {"count": 60})
    cluster.send_start(cancelled, LONG_PROGRAM, {"count": 60})
    cluster.wait_for_status(paused, "started")
    cluster.wait_for_status(cancelled, "started")
    time.sleep(0.5)

    cluster.send_stop(paused, "suspend")
    cluster.send_stop(cancelled, "cancel")
    suspended = cluster.wait_for_status(paused, "suspended")
    cluster.wait_for_status(cancelled, "cancelled")

    assert 0 < suspended["counters"]["book_calls"] < 60
    assert ExecutionDir(cluster.state_dir, paused).journal.exists()
    gone = ExecutionDir(cluster.state_dir, cancelled)
    assert not gone.journal.exists() and not gone.snapshots.exists()
    assert gone.read_status() == {"status": "cancelled"}

    cluster.send_start(paused, LONG_PROGRAM, {"count": 60})
    completed = cluster.wait_for_status(paused, "completed")
    assert completed["result"] == {"total": sum(range(60))}
    statuses = cluster.status_log.statuses(paused)
    assert statuses[0] == "started" and statuses[-1] == "completed"
    assert statuses.index("suspended") < statuses.index("resumed")
    # The snapshot that the suspension took was reported before the suspension.
    assert statuses[statuses.index("suspended") - 1] == "checkpointed"

    # A cancelled execution stays cancelled: a new start is a duplicate.
    cluster.send_start(cancelled, LONG_PROGRAM, {"count": 60})
    cluster.wait_for_status(cancelled, "duplicate")
    assert "completed" not in cluster.status_log.statuses(cancelled)
    cluster.wait_all_committed()


def test_a_cancel_of_a_suspended_execution_ends_it(cluster_factory: Any) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=1)
    cluster.start_worker("a")
    execution_id = unique("later")
    cluster.send_start(execution_id, LONG_PROGRAM, {"count": 60})
    cluster.wait_for_status(execution_id, "started")
    cluster.send_stop(execution_id, "suspend")
    cluster.wait_for_status(execution_id, "suspended")

    cluster.send_stop(execution_id, "cancel")

    cluster.wait_for_status(execution_id, "cancelled")
    assert not ExecutionDir(cluster.state_dir, execution_id).journal.exists()


def test_jarvis_control_start_wait_follows_the_execution_to_its_end(
        cluster_factory: Any, tmp_path: Path) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=2)
    cluster.start_worker("a")
    program = tmp_path / "sum.spy"
    program.write_text(SUM_PROGRAM)
    execution_id = unique("cli")

    done = subprocess.run(
        [sys.executable, "-m", "jarvis.cli.main", "control", "start", str(program),
         "--execution-id", execution_id, "--input", "count=4", "--wait", "--timeout", "60"],
        env=cluster.env("cli"), cwd=REPO, capture_output=True, text=True, timeout=90)

    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["status"] for e in events] == ["started", "completed"]
    assert events[-1]["result"] == {"total": 6}

    stopped = subprocess.run(
        [sys.executable, "-m", "jarvis.cli.main", "control", "stop", execution_id,
         "--mode", "cancel"],
        env=cluster.env("cli"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr


def test_jarvis_health_reads_the_heartbeat(cluster_factory: Any, tmp_path: Path) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=1)
    worker = cluster.start_worker("a")
    worker.wait_healthy()

    def health(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jarvis.cli.main", "health"],
                              env=cluster.env("a", **env), cwd=REPO, capture_output=True,
                              text=True, timeout=30)

    fresh = health()
    assert fresh.returncode == 0, fresh.stderr

    worker.kill()
    time.sleep(2.0)  # three heartbeats of 0.5 s and more
    stale = health()
    assert stale.returncode == 1
    assert "old" in stale.stderr

    missing = health(JARVIS_HEARTBEAT_FILE=str(tmp_path / "nowhere.json"))
    assert missing.returncode == 1
    assert "no readable heartbeat" in missing.stderr


def test_metrics_are_published_in_line_protocol(cluster_factory: Any) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=2)
    cluster.start_worker("a")
    ids = [unique("m") for _ in range(3)]
    for execution_id in ids:
        cluster.send_start(execution_id, SUM_PROGRAM, {"count": 5})
    cluster.wait_for_endings(ids)

    def completed_counted() -> list[Any]:
        points = [p for m in cluster.read_topic(cluster.metrics, 1000, timeout=3)
                  for p in parse_line_protocol(m.value().decode())]
        return [p for p in points if p.measurement == "spy_executions"
                and p.tags["outcome"] == "completed" and p.fields["count"] == 3] and points

    found: list[Any] = []
    wait_until(lambda: found.append(completed_counted()) or found[-1], 30,
               "a metrics line counted the three completed executions")
    points = found[-1]
    worker = [p for p in points if p.measurement == "spy_worker"]
    assert worker and all(p.tags == {"worker": "a"} for p in worker)
    assert set(worker[-1].fields) == {
        "running", "capacity", "paused", "queue_depth", "consumer_lag", "trace_events",
        "trace_events_per_second", "uptime_seconds"}
    assert worker[-1].fields["capacity"] == 4
    assert max(p.fields["trace_events"] for p in worker) >= 3 * 5
    assert any(p.fields["trace_events_per_second"] > 0 for p in worker)
    completed = [p for p in points if p.measurement == "spy_executions"
                 and p.tags["outcome"] == "completed"]
    assert completed[-1].fields["duration_seconds_sum"] > 0
    assert all(p.timestamp is not None for p in points)
    counts = Counter(p.measurement for p in points)
    assert counts["spy_worker"] >= 1


def test_worker_logs_say_what_it_does(cluster_factory: Any) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=1)
    worker = cluster.start_worker("a")
    worker.wait_healthy()
    assert worker.stop() == 0
    text = worker.log()
    assert f"consuming {cluster.control}" in text and "stopped" in text
    assert os.path.exists(worker.heartbeat_file)

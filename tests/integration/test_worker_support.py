"""What the worker's integration tests share: real `jarvis worker` processes on fresh topics.

    cluster = WorkerCluster(kafka, redis_server, tmp_path, partitions=4)
    a = cluster.start_worker("a")
    cluster.send_start("exec-1", PROGRAM, {"count": 3})
    cluster.wait_for_status("exec-1", "completed")

Every cluster has topics and a consumer group of its own (unique names), a state
directory in the test's tmp_path, and a thread that collects every status event.
Workers are started with `subprocess` as `python -m jarvis.cli.main worker`,
configured by `JARVIS_*` variables only, and ended by their PID. The module also has a
small parser of InfluxDB line protocol, to read `spy_logs` and `spy_metrics`; the tests
at the end check it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupState, Producer, TopicPartition
from services import KafkaBroker, RedisServer

REPO = Path(__file__).resolve().parents[2]

SUM_PROGRAM = """\
from books import crm

total = 0
for i in range(inputs["count"]):
    total += crm.get(n=i)["n"]
print("total", total)
output("total", total)
"""
"""A short program with one in-process Book call per step; outputs sum(range(count))."""

SLOW_PROGRAM = """\
from books import slow

total = 0
seen = []
for i in range(inputs["count"]):
    answer = slow.step(i=i)
    total += answer["value"]
    seen.append(answer["value"])
output("total", total)
output("seen", seen)
"""
"""Calls the HTTP Book `slow` once per step (see `slow_book`)."""

CRM_BOOK = "def get(n):\n    return {'n': n}\n"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def slow_value(i: int) -> int:
    return i * i + 7


def slow_book(server: Any, delay: float) -> None:
    """`slow.step(i)` answers {"value": i*i + 7} after `delay` seconds."""

    def step(i: int) -> dict[str, int]:
        time.sleep(delay)
        return {"value": slow_value(i)}

    server.procedure("step", step)


# -- worker processes -------------------------------------------------------------------


class WorkerProcess:
    """One `jarvis worker` started by a test; its output goes to a log file."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.heartbeat_file = Path(env["JARVIS_HEARTBEAT_FILE"])
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jarvis.cli.main", "worker"], env=env, cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a SIGSTOPped worker is continued first), then SIGKILL after `timeout`."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """The worker's resident memory now, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            try:
                beat = json.loads(self.heartbeat_file.read_text())
            except (OSError, ValueError):
                return False
            return bool(beat.get("kafka") and beat.get("redis"))

        wait_until(healthy, timeout, f"worker {self.name} wrote a healthy heartbeat",
                   on_fail=self.log)


# -- the cluster --------------------------------------------------------------------------


@dataclass
class StatusLog:
    """Every status event of a cluster's status topic, in the order read."""

    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)

    def of(self, execution_id: str) -> list[dict[str, Any]]:
        return [e for e in self.all() if e["execution_id"] == execution_id]

    def statuses(self, execution_id: str) -> list[str]:
        return [e["status"] for e in self.of(execution_id)]


class WorkerCluster:
    """Fresh topics and group on the test's broker, and the workers a test starts."""

    def __init__(self, kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path, *,
                 partitions: int = 4, books: dict[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.kafka = kafka
        self.redis_server = redis_server
        self.tmp_path = tmp_path
        self.partitions = partitions
        name = unique("w")
        self.control = f"{name}.control"
        self.status = f"{name}.status"
        self.logs = f"{name}.logs"
        self.metrics = f"{name}.metrics"
        self.dlq = f"{name}.control.dlq"
        self.group = f"{name}.group"
        kafka.create_topic(self.control, partitions=partitions)
        for topic in (self.status, self.logs, self.metrics, self.dlq):
            kafka.create_topic(topic, partitions=1)
        self.state_dir = tmp_path / "state"
        self.books_file = tmp_path / "books.toml"
        entries = {"crm": {"python": "crm.py"}, **(
            {n: {"url": u} for n, u in (books or {}).items()})}
        (tmp_path / "crm.py").write_text(CRM_BOOK)
        self.books_file.write_text("".join(
            f"[books.{book}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
            for book, entry in entries.items()))
        self.extra_env = dict(env or {})
        self.workers: list[WorkerProcess] = []
        self.producer = Producer(kafka.client_config())
        self.status_log = StatusLog()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read_status, daemon=True)
        self._reader.start()

    # -- workers --------------------------------------------------------------------

    def env(self, name: str, **overrides: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("JARVIS_")}
        env.update({
            "JARVIS_WORKER_ID": name,
            "JARVIS_STATE_DIR": str(self.state_dir),
            "JARVIS_BOOKS_FILE": str(self.books_file),
            "JARVIS_JOURNAL_FSYNC": "false",
            "JARVIS_HEARTBEAT_FILE": str(self.tmp_path / f"heartbeat-{name}.json"),
            "JARVIS_HEARTBEAT_SECONDS": "0.5",
            "JARVIS_SHUTDOWN_GRACE_SECONDS": "5",
            "JARVIS_METRICS_SECONDS": "1",
            "JARVIS_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "JARVIS_KAFKA__GROUP_ID": self.group,
            "JARVIS_KAFKA__CONTROL_TOPIC": self.control,
            "JARVIS_KAFKA__STATUS_TOPIC": self.status,
            "JARVIS_KAFKA__LOGS_TOPIC": self.logs,
            "JARVIS_KAFKA__METRICS_TOPIC": self.metrics,
            "JARVIS_KAFKA__DLQ_TOPIC": self.dlq,
            "JARVIS_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "JARVIS_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
            "JARVIS_REDIS__URL": self.redis_server.url,
            "JARVIS_REDIS__LEASE_SECONDS": "2",
            "JARVIS_REDIS__RECONNECT_SECONDS": "30",
        })
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def start_worker(self, name: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(name, self.env(name, **env),
                               self.tmp_path / f"worker-{name}.log")
        self.workers.append(worker)
        return worker

    def wait_for_members(self, count: int, timeout: float = 40.0) -> None:
        """Until the group is stable with `count` members (the workers joined)."""
        admin = self.kafka.admin()

        def joined() -> bool:
            group = admin.describe_consumer_groups([self.group])[self.group].result(timeout=5)
            return (group.state == ConsumerGroupState.STABLE
                    and len(group.members) == count
                    and all(m.assignment.topic_partitions for m in group.members))

        wait_until(joined, timeout, f"{count} workers joined group {self.group}",
                   on_fail=self.logs_of_workers)

    def logs_of_workers(self) -> str:
        return "\n".join(f"--- worker {w.name} ---\n{w.log()[-6000:]}" for w in self.workers)

    # -- commands -------------------------------------------------------------------

    def send(self, value: bytes | None, key: bytes | None) -> None:
        self.producer.produce(self.control, value=value, key=key)

    def send_start(self, execution_id: str, source: str, inputs: dict[str, Any] | None = None,
                   **extra: Any) -> None:
        command = {"v": 1, "type": "start", "execution_id": execution_id,
                   "program": {"source": source}, "inputs": inputs or {}, **extra}
        self.send(json.dumps(command).encode(), execution_id.encode())
        self.flush()

    def send_stop(self, execution_id: str, mode: str) -> None:
        command = {"v": 1, "type": "stop", "execution_id": execution_id, "mode": mode}
        self.send(json.dumps(command).encode(), execution_id.encode())
        self.flush()

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "commands still undelivered after 30 s"

    # -- status events -----------------------------------------------------------------

    def _read_status(self) -> None:
        consumer = Consumer(self.kafka.client_config(
            group_id=unique("status-reader"), auto_offset_reset="earliest",
            enable_auto_commit=False))
        consumer.subscribe([self.status])
        try:
            while not self._closing.is_set():
                message = consumer.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                self.status_log.add(json.loads(message.value()))
        finally:
            consumer.close()

    def wait_for_status(self, execution_id: str, *statuses: str,
                        timeout: float = 60.0) -> dict[str, Any]:
        """The first event of the execution with one of `statuses`."""
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            found[:] = [e for e in self.status_log.of(execution_id) if e["status"] in statuses]
            return bool(found)

        wait_until(arrived, timeout,
                   f"execution {execution_id} reached {' or '.join(statuses)} (so far: "
                   f"{self.status_log.statuses(execution_id)})", on_fail=self.logs_of_workers)
        return found[0]

    def wait_for_endings(self, execution_ids: Iterable[str], timeout: float = 60.0,
                         endings: tuple[str, ...] = ("completed", "failed", "cancelled"),
                         ) -> dict[str, dict[str, Any]]:
        """The ending event of each execution, once every one has ended."""
        wanted = list(execution_ids)

        def ended() -> dict[str, dict[str, Any]]:
            result = {}
            for event in self.status_log.all():
                if event["execution_id"] in wanted and event["status"] in endings:
                    result.setdefault(event["execution_id"], event)
            return result

        wait_until(lambda: len(ended()) == len(wanted), timeout,
                   lambda: f"every execution ended; missing: "
                   f"{ {e: self.status_log.statuses(e) for e in wanted if e not in ended()} }",
                   on_fail=self.logs_of_workers)
        return ended()

    # -- topics ---------------------------------------------------------------------

    def read_topic(self, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
        """The first `count` messages of a topic (all partitions), read from the start."""
        return read_topic(self.kafka, topic, count, timeout)

    def committed(self) -> dict[int, int]:
        """The group's committed offset of each control partition (-1001: none)."""
        consumer = Consumer(self.kafka.client_config(group_id=self.group,
                                                     enable_auto_commit=False))
        try:
            partitions = [TopicPartition(self.control, p) for p in range(self.partitions)]
            return {tp.partition: tp.offset for tp in consumer.committed(partitions, 10)}
        finally:
            consumer.close()

    def end_offsets(self) -> dict[int, int]:
        consumer = Consumer(self.kafka.client_config(group_id=unique("watermarks")))
        try:
            return {p: consumer.get_watermark_offsets(TopicPartition(self.control, p),
                                                      timeout=10)[1]
                    for p in range(self.partitions)}
        finally:
            consumer.close()

    def wait_all_committed(self, timeout: float = 30.0) -> None:
        """Until the group has committed every control message (empty partitions need
        no commit)."""
        ends = self.end_offsets()

        def done() -> bool:
            committed = self.committed()
            return all(committed[p] == end or (end == 0 and committed[p] < 0)
                       for p, end in ends.items())

        wait_until(done, timeout, lambda: f"committed {self.committed()} == end offsets {ends}",
                   on_fail=self.logs_of_workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self._closing.set()
        self._reader.join(10)


def read_topic(kafka: KafkaBroker, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    consumer = Consumer(kafka.client_config(group_id=unique("reader"),
                                            auto_offset_reset="earliest",
                                            enable_auto_commit=False))
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def wait_until(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str],
               on_fail: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # a service still starting, say: try again
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            extra = f"\n{on_fail()}" if on_fail is not None else ""
            raise AssertionError(f"not within {timeout:.0f}s: {described}{extra}")
        time.sleep(0.1)


def clusters(kafka: KafkaBroker, redis_server: RedisServer,
             tmp_path: Path) -> Iterator[Callable[..., WorkerCluster]]:
    """The body of a test module's `cluster_factory` fixture: makes clusters, closes them."""
    made: list[WorkerCluster] = []

    def make(**options: Any) -> WorkerCluster:
        cluster = WorkerCluster(kafka, redis_server, tmp_path, **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


# -- line protocol ----------------------------------------------------------------------


@dataclass
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, Any]
    timestamp: int | None


def parse_line_protocol(text: str) -> list[Point]:
    """Lines of InfluxDB line protocol (as Jarvis writes them) back into points."""
    return [_parse_line(line) for line in text.split("\n") if line and not line.startswith("#")]


_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t"}


def _read_key(line: str, at: int, stops: str) -> tuple[str, int]:
    out = []
    while at < len(line) and line[at] not in stops:
        if line[at] == "\\" and at + 1 < len(line):
            out.append(_UNESCAPE.get(line[at + 1], line[at + 1]))
            at += 2
        else:
            out.append(line[at])
            at += 1
    return "".join(out), at


def _parse_line(line: str) -> Point:
    measurement, at = _read_key(line, 0, ", ")
    tags: dict[str, str] = {}
    while line[at] == ",":
        key, at = _read_key(line, at + 1, "=")
        value, at = _read_key(line, at + 1, ", ")
        tags[key] = value
    fields: dict[str, Any] = {}
    at += 1
    while True:
        key, at = _read_key(line, at, "=")
        at += 1
        if line[at] == '"':
            out = []
            at += 1
            while line[at] != '"':
                if line[at] == "\\":
                    out.append(_UNESCAPE.get(line[at + 1], line[at + 1]))
                    at += 2
                else:
                    out.append(line[at])
                    at += 1
            fields[key] = "".join(out)
            at += 1
        else:
            raw, at = _read_key(line, at, ", ")
            if raw.endswith("i"):
                fields[key] = int(raw[:-1])
            elif raw in ("true", "false"):
                fields[key] = raw == "true"
            else:
                fields[key] = float(raw)
        if at >= len(line) or line[at] == " ":
            break
        at += 1
    rest = line[at:].strip()
    return Point(measurement, tags, fields, int(rest) if rest else None)


def trace_points(kafka: KafkaBroker, topic: str, expected: int,
                 timeout: float = 30.0) -> dict[str, list[Point]]:
    """The `spy_trace` points of a logs topic by execution id, once `expected` are read."""
    points: dict[str, list[Point]] = {}
    consumer = Consumer(kafka.client_config(group_id=unique("logs"),
                                            auto_offset_reset="earliest",
                                            enable_auto_commit=False))
    consumer.subscribe([topic])
    total = 0
    deadline = time.monotonic() + timeout
    try:
        while total < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            for point in parse_line_protocol(message.value().decode("utf-8")):
                points.setdefault(point.tags["execution_id"], []).append(point)
                total += 1
    finally:
        consumer.close()
    return points


def test_the_line_protocol_parser_reads_what_jarvis_writes() -> None:
    from jarvis.runtime.sinks import line_protocol
    from jarvis.runtime.trace import TraceEvent

    value = 'a "quoted" \\ back\\slash\nnew line, = space ✓ 日本'
    event = TraceEvent("ex,1 =", 7, "print", 3, 4, 3, 9, "x = y", value, "str", 1.5)

    [point] = parse_line_protocol(line_protocol(event, 1234))

    assert point == Point("spy_trace", {"execution_id": "ex,1 =", "kind": "print"}, {
        "seq": 7, "line": 3, "col": 4, "end_line": 3, "end_col": 9, "expr": "x = y",
        "value": value, "type": "str", "duration_ms": 1.5}, 1234)

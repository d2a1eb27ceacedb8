"""The worker section: one real `jarvis worker` against real Kafka and Redis on loopback.

Starts the services the integration tests use (tests/services: Kafka in KRaft mode,
Redis), one `jarvis worker` process, and measures through the topics, as a client sees
the worker:

- latency: trivial programs started one after the other; the time from producing the
  start command on `spy_control` to reading its `completed` event on `spy_status`;
- throughput: many trivial programs started at once; completed executions per second,
  from the first start produced to the last `completed` read (the median of several
  such rounds), the worker at its
  maximum concurrency (16: a trivial run spends most of its time waiting on Kafka and
  Redis round trips; with 8 at once the two cores idled part of the time, and the
  cell measured about a tenth less), read by a batched status reader (`StatusReader`);
- trace: a program emitting many trace events (trace=full); events per second from
  the start command to its `completed` event (the median of several runs), which the
  worker publishes only after the broker acknowledged every event on `spy_logs`; and
  the same for the worker's `KafkaLogSink` alone, in this process, fed the binary
  batches a child sends.

Before measuring, a warm-up runs a burst of trivial executions through (not counted):
the broker is a fresh JVM whose JIT compiles its request paths during the first few
hundred requests, and the worker's first runs load what the rest reuse; a broker or
worker in service has long done both.

Every process it starts (broker, Redis, worker) is ended before it returns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config import Config
from bench.environment import ROOT

if TYPE_CHECKING:
    from jarvis.runtime.trace import TraceEvent

TRIVIAL = 'output("ok", inputs["n"] + 1)\n'
TRACED = """\
total = 0
for i in range(inputs["n"]):
    total = total + i * 2
output("total", total)
"""
"""Five trace events an iteration at trace=full (statement, expressions)."""


class StatusReader:
    """Reads the status topic in a thread; `arrived[(execution_id, status)]` is when.

    Eager (the default), a fetch returns as soon as one event arrives: what the latency
    cell needs. `batched` is how a consumer of a busy topic reads: a fetch waits up to
    `BATCH_WAIT_MS` for `BATCH_BYTES`, so a burst of events costs the broker (on the
    same two cores as the worker) one fetch per batch rather than one per event or two;
    it reads from the topic's end as it was when the reader was made, without a group.
    """

    BATCH_WAIT_MS = 20
    BATCH_BYTES = 1 << 20

    def __init__(self, bootstrap: str, topic: str, batched: bool = False) -> None:
        from confluent_kafka import Consumer, TopicPartition

        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            # A fetch returns as soon as an event arrives; the wait only bounds how
            # often an idle reader asks again (each an empty fetch the broker serves on
            # the same two cores as the worker).
            "fetch.wait.max.ms": 100,
        }
        if batched:
            config.update({"fetch.wait.max.ms": self.BATCH_WAIT_MS,
                           "fetch.min.bytes": self.BATCH_BYTES})
        self.consumer = Consumer(config)
        if batched:
            partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
            starts = []
            for partition in partitions:
                _low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10)
                starts.append(TopicPartition(topic, partition, high))
            self.consumer.assign(starts)
        else:
            self.consumer.subscribe([topic])
        self.arrived: dict[tuple[str, str], float] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.lock = threading.Condition()
        self.closing = threading.Event()
        self.pausing = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        paused: list[Any] = []
        while not self.closing.is_set():
            if self.pausing.is_set() != bool(paused):
                if paused:
                    self.consumer.resume(paused)
                    paused = []
                else:
                    paused = self.consumer.assignment()
                    self.consumer.pause(paused)
            message = self.consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            now = time.perf_counter()
            value = message.value()
            if value is None:  # not a status event (the worker always sends a body)
                continue
            event = json.loads(value)
            with self.lock:
                self.arrived.setdefault((event["execution_id"], event["status"]), now)
                if event["status"] in ("completed", "failed"):
                    self.events[event["execution_id"]] = event
                self.lock.notify_all()

    def wait(self, ids: list[str], timeout: float) -> None:
        """Until every execution of `ids` has ended (RuntimeError otherwise)."""
        with self.lock:
            if not self.lock.wait_for(lambda: all(i in self.events for i in ids), timeout):
                missing = [i for i in ids if i not in self.events]
                raise RuntimeError(f"{len(missing)} executions did not end in {timeout} s")
        failed = [self.events[i] for i in ids if self.events[i]["status"] != "completed"]
        if failed:
            raise RuntimeError(f"{len(failed)} executions failed, first: {failed[0]}")

    def close(self) -> None:
        self.closing.set()
        self.thread.join(timeout=10)
        self.consumer.close()


class Bench:
    """The services, the topics, the worker and the status reader of one section run."""

    def __init__(self, config: Config, kafka: Any, redis_url: str, workdir: Path) -> None:
        from confluent_kafka import Producer

        self.config = config
        self.kafka = kafka
        name = f"bench-{uuid.uuid4().hex[:8]}"
        self.topics = {kind: f"{name}.{kind}" for kind in
                       ("control", "status", "logs", "metrics", "dlq")}
        kafka.create_topic(self.topics["control"], partitions=4)
        for kind in ("status", "logs", "metrics", "dlq"):
            kafka.create_topic(self.topics[kind], partitions=1)
        self.concurrency = 16  # JARVIS_MAX_CONCURRENCY (see the module's docstring)
        self.state_dir = state_dir = Path(tempfile.mkdtemp(prefix="jarvis-bench-state-",
                                                           dir=_memory_dir()))
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("JARVIS_")}
        env.update({
            "JARVIS_WORKER_ID": "bench", "JARVIS_STATE_DIR": str(state_dir),
            "JARVIS_JOURNAL_FSYNC": "false", "JARVIS_TRACE_LEVEL": "off",
            "JARVIS_MAX_CONCURRENCY": str(self.concurrency),
            "JARVIS_HEARTBEAT_FILE": str(workdir / "heartbeat.json"),
            "JARVIS_HEARTBEAT_SECONDS": "0.5", "JARVIS_METRICS_SECONDS": "5",
            "JARVIS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "JARVIS_KAFKA__GROUP_ID": f"{name}.group",
            "JARVIS_KAFKA__CONTROL_TOPIC": self.topics["control"],
            "JARVIS_KAFKA__STATUS_TOPIC": self.topics["status"],
            "JARVIS_KAFKA__LOGS_TOPIC": self.topics["logs"],
            "JARVIS_KAFKA__METRICS_TOPIC": self.topics["metrics"],
            "JARVIS_KAFKA__DLQ_TOPIC": self.topics["dlq"],
            "JARVIS_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "JARVIS_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
            "JARVIS_REDIS__URL": redis_url,
        })
        self.log = (workdir / "worker.log").open("wb")
        self.status = StatusReader(kafka.bootstrap_servers, self.topics["status"])
        self.producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                                  "linger.ms": 0})
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "jarvis.cli.main", "worker"], env=env, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.workdir = workdir

    def close(self) -> None:
        if self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(10)
        self.log.close()
        self.status.close()
        self.producer.flush(5)
        del self.producer  # its connections end before the broker does
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def start(self, execution_id: str, source: str, inputs: dict[str, Any],
              trace: str | None = None, flush: bool = True) -> float:
        command: dict[str, Any] = {"v": 1, "type": "start", "execution_id": execution_id,
                                   "program": {"source": source}, "inputs": inputs}
        if trace is not None:
            command["trace"] = trace
        sent = time.perf_counter()
        self.producer.produce(self.topics["control"], json.dumps(command).encode(),
                              execution_id.encode())
        if flush:
            self.producer.flush(30)
        else:
            self.producer.poll(0)
        return sent

    def warm_up(self, burst: int = 0) -> None:
        """A few executions through, so that the group has formed and the zygote is up;
        then `burst` more at once, as the throughput cell starts them (not counted)."""
        ids = [f"warm-{uuid.uuid4().hex[:8]}-{n}" for n in range(3)]
        for n, execution_id in enumerate(ids):
            self.start(execution_id, TRIVIAL, {"n": n})
        try:
            self.status.wait(ids, timeout=90)
            if burst:
                self.throughput_once(burst)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; worker log: {self.worker_log()[-3000:]}") from exc

    def worker_log(self) -> str:
        return (self.workdir / "worker.log").read_text(errors="replace")

    # -- the measurements -----------------------------------------------------------

    def latency(self, count: int) -> dict[str, Any]:
        taken = []
        for n in range(count):
            execution_id = f"lat-{uuid.uuid4().hex[:10]}"
            sent = self.start(execution_id, TRIVIAL, {"n": n})
            self.status.wait([execution_id], timeout=60)
            taken.append(self.status.arrived[(execution_id, "completed")] - sent)
        ordered = sorted(taken)
        return {"count": count,
                "p50_ms": round(statistics.median(ordered) * 1e3, 3),
                "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))]
                                * 1e3, 3),
                "min_ms": round(ordered[0] * 1e3, 3), "max_ms": round(ordered[-1] * 1e3, 3)}

    def throughput(self, count: int) -> dict[str, Any]:
        """The median of `config.repeats` rounds of `throughput_once` (as the trace
        cell: one round's rate moves by a quarter from minute to minute on a shared
        two-core machine); `runs` has every round's rate."""
        runs = [self.throughput_once(count) for _ in range(self.config.repeats)]
        median = sorted(runs, key=lambda run: run["per_second"])[len(runs) // 2]
        return {**median, "runs": [run["per_second"] for run in runs]}

    def throughput_once(self, count: int) -> dict[str, Any]:
        """Completed executions per second for `count` starts at once, read by a batched
        reader (the eager one pauses meanwhile, and reads the events afterwards)."""
        ids = [f"thr-{uuid.uuid4().hex[:10]}" for _ in range(count)]
        reader = StatusReader(self.kafka.bootstrap_servers, self.topics["status"],
                              batched=True)
        self.status.pausing.set()
        try:
            first = time.perf_counter()
            for n, execution_id in enumerate(ids):
                self.start(execution_id, TRIVIAL, {"n": n}, flush=False)
            self.producer.flush(30)
            reader.wait(ids, timeout=300)
        finally:
            self.status.pausing.clear()
            reader.close()
        self.status.wait(ids, timeout=60)  # the eager reader has caught up
        last = max(reader.arrived[(i, "completed")] for i in ids)
        seconds = last - first
        return {"count": count, "seconds": round(seconds, 3),
                "per_second": round(count / seconds, 1),
                "concurrency": self.concurrency}

    def trace(self, iterations: int) -> dict[str, Any]:
        """The median of `config.repeats` runs (after `config.warmup`): one execution of
        TRACED at trace=full each, events per second from its start command to its
        `completed` event; `runs` has every run's rate."""
        for _ in range(self.config.warmup):
            self.trace_once(iterations)
        runs = [self.trace_once(iterations) for _ in range(self.config.repeats)]
        median = sorted(runs, key=lambda run: run["per_second"])[len(runs) // 2]
        return {**median, "runs": [run["per_second"] for run in runs]}

    def trace_once(self, iterations: int) -> dict[str, Any]:
        execution_id = f"trace-{uuid.uuid4().hex[:10]}"
        sent = self.start(execution_id, TRACED, {"n": iterations}, trace="full")
        self.status.wait([execution_id], timeout=300)
        ended = self.status.arrived[(execution_id, "completed")]
        started = self.status.arrived.get((execution_id, "started"), sent)
        events = int(self.status.events[execution_id]["counters"]["trace_seq"])
        return {"events": events, "seconds": round(ended - sent, 3),
                "per_second": round(events / (ended - sent), 1),
                "from_started_per_second": round(events / (ended - started), 1)}

    def sink_alone(self, count: int) -> dict[str, Any]:
        """KafkaLogSink in this process, with the worker's producer settings, fed the
        batches a child sends for TRACED (encoded beforehand, so only the worker's part
        is timed: checking and rendering each batch, producing, the acknowledgements)."""
        from confluent_kafka import Producer

        from bench.engine import compiled, run_machine
        from jarvis.cli.worker import LOGS_PRODUCER
        from jarvis.runtime.tracebatch import EncodedBatch, SiteTable
        from jarvis.worker.logs import KafkaLogSink

        program = compiled(TRACED, "traced.spy", "full")
        encoded = EncodedBatches()
        run_machine(program, {"n": max(1, count // 5)}, encoded)
        execution_id = f"sink-{uuid.uuid4().hex[:10]}"
        table = SiteTable(execution_id, program.trace_sites)
        producer = Producer({"bootstrap.servers": self.kafka.bootstrap_servers,
                             **LOGS_PRODUCER})
        # The producer connects (and gets its idempotent producer id) before the clock
        # starts: one batch of another execution, delivered and acknowledged.
        warm_up = KafkaLogSink(producer, self.topics["logs"], f"{execution_id}-warm-up")
        warm_up.deliver(EncodedBatch(encoded.blobs[0], SiteTable(warm_up.execution_id,
                                                                 program.trace_sites)))
        if not warm_up.flush(60):
            raise RuntimeError(f"the sink did not deliver: {warm_up.failed}")
        sink = KafkaLogSink(producer, self.topics["logs"], execution_id)
        started = time.perf_counter()
        for blob in encoded.blobs:
            sink.deliver(EncodedBatch(blob, table))
        if not sink.flush(120) or sink.failed:
            raise RuntimeError(f"the sink did not deliver: {sink.failed}")
        seconds = time.perf_counter() - started
        events = sink.events_sent
        del sink, producer
        return {"events": events, "seconds": round(seconds, 3),
                "per_second": round(events / seconds, 1)}


class EncodedBatches:
    """A trace sink that keeps each batch as a child sends it on the channel."""

    def __init__(self) -> None:
        self.last_delivered = 0
        self.blobs: list[bytes] = []

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        from jarvis.runtime.tracebatch import encode

        encoded = encode(events, self.last_delivered)
        if encoded is not None:
            blob, self.last_delivered = encoded
            self.blobs.append(blob)

    def close(self) -> None:
        pass


def _memory_dir() -> str | None:
    """/dev/shm when there is one: the state directory's atomic writes fsync (status,
    fence), and on a small VM's disk each fsync costs about 10 ms, which would measure
    the disk rather than the worker (the report says so)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
        else None


def measure(config: Config) -> dict[str, Any]:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from services import KafkaBroker, RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="jarvis-bench-worker-"))
    try:
        config.say("worker: starting Kafka and Redis")
        with KafkaBroker() as kafka, RedisServer() as redis_server:
            bench = Bench(config, kafka, redis_server.url, workdir)
            try:
                config.say("worker: one jarvis worker, warming up")
                bench.warm_up(burst=max(100, config.size(600)))
                results: dict[str, Any] = {}
                config.say("worker: latency (sequential starts)")
                results["latency"] = bench.latency(max(20, config.size(300)))
                config.say("worker: throughput (concurrent starts)")
                results["throughput"] = bench.throughput(max(50, config.size(2000)))
                config.say("worker: trace events into Kafka")
                results["trace"] = bench.trace(max(2000, config.size(160_000)))
                results["sink"] = bench.sink_alone(max(20_000, config.size(1_000_000)))
                results["cores"] = os.cpu_count()
                results["state_dir_in_memory"] = _memory_dir() is not None
                results["concurrency"] = bench.concurrency
                return results
            finally:
                bench.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

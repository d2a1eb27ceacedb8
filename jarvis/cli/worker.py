"""`jarvis worker`: consume `spy_control` and run executions until SIGTERM.

Configured by `JARVIS_*` environment variables (docs/operations.md). SIGTERM or SIGINT
stops consuming, suspends running executions with a snapshot, releases their leases
and leaves their offsets uncommitted, so they resume on another worker.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from jarvis.runtime.books import BookRegistry
from jarvis.runtime.errors import RuntimeSetupError
from jarvis.runtime.isolation import ChildPool
from jarvis.settings import WorkerSettings, load_worker_settings
from jarvis.worker.health import HealthReporter
from jarvis.worker.leases import worker_identity
from jarvis.worker.loop import WorkerLoop
from jarvis.worker.programs import ProgramLoader
from jarvis.worker.runs import Runner

log = logging.getLogger("jarvis.worker")


def kafka_config(settings: WorkerSettings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **settings.kafka.extra}


class _Repeats(logging.Filter):
    """Lets one record per librdkafka facility and client through every `seconds`:
    while a broker is away, librdkafka reports every failed connection attempt."""

    def __init__(self, seconds: float = 30.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        words = record.getMessage().split(" ", 2)
        key = (words[0], words[1] if len(words) > 1 else "")
        now = time.monotonic()
        if now - self.last.get(key, -self.seconds) < self.seconds:
            return False
        self.last[key] = now
        return True


def _kafka_log() -> logging.Logger:
    # librdkafka's own log lines, through logging rather than straight to stderr.
    kafka_log = logging.getLogger("jarvis.worker.kafka")
    if not kafka_log.filters:
        kafka_log.setLevel(logging.WARNING)
        kafka_log.addFilter(_Repeats())
    return kafka_log


LOGS_PRODUCER: dict[str, Any] = {
    "compression.type": "lz4",
    # A run's end waits for its last events' acknowledgement: short. Messages are
    # large already (KafkaLogSink packs up to 900 kB of lines into each).
    "linger.ms": 2,
    "queue.buffering.max.kbytes": 262144,
    "enable.idempotence": True,
}
"""The settings of the producer of trace events (large messages, a batch of lines
each), beyond the connection's; the benchmark's KafkaLogSink cell uses them too."""


def build(settings: WorkerSettings) -> tuple[WorkerLoop, ChildPool, Any]:
    import redis
    from confluent_kafka import Consumer, Producer

    worker_id = settings.worker_id or worker_identity()
    books = BookRegistry.load(settings.books_file) if settings.books_file else BookRegistry()
    kafka = settings.kafka

    def on_commit(error: Any, partitions: list[Any]) -> None:
        loop.committed(error, partitions)

    producer = Producer({  # status events, dead letters, metrics: small and urgent
        **kafka_config(settings),
        "compression.type": "lz4",
        "linger.ms": 1,
        "queue.buffering.max.kbytes": 65536,
        "enable.idempotence": True,
        "logger": _kafka_log(),
    })
    logs_producer = Producer({**kafka_config(settings), **LOGS_PRODUCER,
                              "logger": _kafka_log()})
    consumer = Consumer({
        # A fetch that waits at the broker for new messages holds back the fetch of a
        # partition resumed meanwhile (flow control): wait 100 ms, not librdkafka's 500.
        "fetch.wait.max.ms": 100,
        **kafka_config(settings),
        "group.id": kafka.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "logger": _kafka_log(),
        "on_commit": on_commit,
    })
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=5,
                                  socket_connect_timeout=5, health_check_interval=10)
    # Children forked ahead: a start finds one waiting for it (the zygote forks them
    # one after the other, so a burst of starts would otherwise wait for forks).
    pool = ChildPool(size=min(settings.max_concurrency, 4))
    programs = ProgramLoader(settings)

    def runner_factory(**hooks: Any) -> Runner:
        return Runner(settings, worker_id, client, producer, books, pool,
                      load_program=programs.load, logs_producer=logs_producer, **hooks)

    loop = WorkerLoop(settings, worker_id, consumer, producer, client, runner_factory)

    def on_revoke(_consumer: Any, partitions: list[Any]) -> None:
        loop.revoked(partitions)

    consumer.subscribe([kafka.control_topic], on_revoke=on_revoke, on_lost=on_revoke)
    return loop, pool, client


def main(argv: Sequence[str] | None = None, prog: str = "jarvis worker") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Book call otherwise
    try:
        settings = load_worker_settings()
    except ValueError as exc:
        print(f"{prog}: invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        loop, pool, client = build(settings)
    except RuntimeSetupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    health = HealthReporter(settings, loop, client, Path(settings.heartbeat_file))
    health.start(stop)
    log.info("worker %s: consuming %s from %s", loop.worker_id, settings.kafka.control_topic,
             settings.kafka.bootstrap_servers)
    if settings.uses_development_key:
        log.warning("JARVIS_HMAC_KEYS is not set: state is signed with the public "
                    "development key")
    try:
        loop.run(stop)
    finally:
        loop.consumer.close()
        pool.close()
        loop.runner.logs_producer.flush(10)
    log.info("worker %s: stopped", loop.worker_id)
    return 0

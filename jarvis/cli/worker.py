"""`jarvis worker`: consume `spy_control` and run executions until SIGTERM.

Configured by `JARVIS_*` environment variables (docs/operations.md). SIGTERM or SIGINT
stops consuming, suspends running executions with a snapshot, releases their leases
and leaves their offsets uncommitted, so they resume on another worker.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
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


def kafka_config(settings: WorkerSettings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **settings.kafka.extra}


def build(settings: WorkerSettings) -> tuple[WorkerLoop, ChildPool, Any]:
    import redis
    from confluent_kafka import Consumer, Producer

    worker_id = settings.worker_id or worker_identity()
    books = BookRegistry.load(settings.books_file) if settings.books_file else BookRegistry()
    producer = Producer({
        **kafka_config(settings),
        "compression.type": "lz4",
        "linger.ms": 5,
        "queue.buffering.max.kbytes": 65536,
        "enable.idempotence": True,
    })
    consumer = Consumer({
        **kafka_config(settings),
        "group.id": settings.kafka.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "max.poll.interval.ms": 300000,
    })
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=5,
                                  socket_connect_timeout=5, health_check_interval=10)
    pool = ChildPool(size=min(settings.max_concurrency, 2))
    programs = ProgramLoader(settings)

    def runner_factory(**hooks: Any) -> Runner:
        return Runner(settings, worker_id, client, producer, books, pool,
                      load_program=programs.load, **hooks)

    loop = WorkerLoop(settings, worker_id, consumer, producer, client, runner_factory)

    def on_revoke(_consumer: Any, partitions: list[Any]) -> None:
        loop.revoked(partitions)

    consumer.subscribe([settings.kafka.control_topic], on_revoke=on_revoke)
    return loop, pool, client


def main(argv: Sequence[str] | None = None, prog: str = "jarvis worker") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.parse_args(argv)
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
    print(f"jarvis worker {loop.worker_id}: consuming {settings.kafka.control_topic} from "
          f"{settings.kafka.bootstrap_servers}", file=sys.stderr)
    try:
        loop.run(stop)
    finally:
        loop.consumer.close()
        pool.close()
    print(f"jarvis worker {loop.worker_id}: stopped", file=sys.stderr)
    return 0

"""The worker loop: consume control commands, start runs, commit what is done.

The loop is the only code that touches the consumer. It never waits on a run: runs
live in threads (their programs in child processes) and report back through a queue.
While the worker is full, its partitions are paused so the poll loop goes on (heartbeats,
rebalances) without taking more work. A start's offset is committed once its run has
ended (completed, failed, cancelled or suspended); see offsets.py.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jarvis.runtime.statedir import ExecutionDir
from jarvis.settings import WorkerSettings
from jarvis.worker import messages
from jarvis.worker.offsets import OffsetTracker
from jarvis.worker.runs import TERMINAL, Position, Run, Runner, status_key, stop_key


class WorkerLoop:
    """Consumes `spy_control` and drives runs until asked to stop."""

    def __init__(self, settings: WorkerSettings, worker_id: str, consumer: Any,
                 producer: Any, redis: Any, runner_factory: Callable[..., Runner]) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.consumer = consumer
        self.producer = producer
        self.redis = redis
        self.tracker = OffsetTracker()
        self.runs: dict[str, Run] = {}
        self.done: queue.Queue[Run] = queue.Queue()
        self.paused = False
        self.last_poll = 0.0
        self.counts: dict[str, int] = {}
        self.runner = runner_factory(publish=self.publish, finished=self.done.put)

    # -- events ---------------------------------------------------------------------

    def publish(self, execution_id: str, status: Any, **fields: Any) -> None:
        event = messages.status_event(execution_id, status, worker=self.worker_id, **fields)
        self.producer.produce(self.settings.kafka.status_topic, value=event,
                              key=execution_id.encode("utf-8"))
        self.producer.poll(0)
        self.counts[status] = self.counts.get(status, 0) + 1

    def dead_letter(self, message: Any, reason: str, execution_id: str | None) -> None:
        record = messages.dead_letter(message.value(), message.key(), message.topic(),
                                      message.partition(), message.offset(), reason,
                                      worker=self.worker_id, execution_id=execution_id)
        self.producer.produce(self.settings.kafka.dlq_topic, value=record,
                              key=message.key() or b"")
        if execution_id is not None:  # a message that names no execution has no status
            self.publish(execution_id, "rejected", error={
                "type": "InvalidCommand", "message": reason})

    # -- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.step(timeout=0.1)
        finally:
            self.shutdown()

    def step(self, timeout: float) -> None:
        self.collect_finished()
        self.flow_control()
        message = self.consumer.poll(timeout)
        self.last_poll = time.time()
        if message is not None and message.error() is None:
            self.tracker.begin(message.topic(), message.partition(), message.offset())
            try:
                self.handle(message)
            except Exception as exc:  # never crash on input
                self.finish_message(message)
                self.dead_letter(message, f"internal error handling the command: {exc}", None)
        self.commit()

    def handle(self, message: Any) -> None:
        command = messages.parse_command(message.value(), self.settings.kafka.max_command_bytes,
                                         key=message.key(), worker_limits=self.settings.limits)
        if isinstance(command, messages.Rejection):
            self.finish_message(message)
            self.dead_letter(message, command.reason, command.execution_id)
            return
        if command.type == "stop":
            self.stop(command)
            self.finish_message(message)
            return
        execution_id = command.execution_id
        known = self.redis.hget(status_key(execution_id), "status")
        known_status = known.decode() if isinstance(known, bytes) else known
        if known_status in TERMINAL or execution_id in self.runs:
            self.publish(execution_id, "duplicate",
                         error={"type": "Duplicate",
                                "message": f"the execution is {known_status or 'running'}"})
            self.finish_message(message)
            return
        run = Run(execution_id, Position(message.topic(), message.partition(),
                                         message.offset()), command)
        self.runs[execution_id] = run
        self.runner.start(run)

    def stop(self, command: Any) -> None:
        execution_id = command.execution_id
        local = self.runs.get(execution_id)
        # Whoever runs it sees the request in Redis; a local run is told at once.
        self.redis.set(stop_key(execution_id), command.mode, ex=24 * 3600)
        if local is not None:
            local.request_stop(command.mode)
            return
        lease = self.redis.get(f"jarvis:lease:{execution_id}")
        if lease is None and command.mode == "cancel":
            directory = ExecutionDir(self.settings.state_dir, execution_id)
            directory.remove()
            self.redis.hset(status_key(execution_id), mapping={
                "status": "cancelled", "worker": self.worker_id, "ts": time.time()})
            self.redis.delete(stop_key(execution_id))
            self.publish(execution_id, "cancelled")

    def finish_message(self, message: Any) -> None:
        self.tracker.finish(message.topic(), message.partition(), message.offset())

    def collect_finished(self) -> None:
        while True:
            try:
                run = self.done.get_nowait()
            except queue.Empty:
                return
            self.runs.pop(run.execution_id, None)
            if run.outcome_status == "fenced":
                continue  # another worker owns it, and its offset
            if run.handover and run.outcome_status == "suspended":
                continue  # resumed by whoever consumes the partition next
            self.tracker.finish(run.position.topic, run.position.partition,
                                run.position.offset)

    def flow_control(self) -> None:
        full = len(self.runs) >= self.settings.max_concurrency
        if full and not self.paused:
            self.consumer.pause(self.consumer.assignment())
            self.paused = True
        elif not full and self.paused:
            self.consumer.resume(self.consumer.assignment())
            self.paused = False

    def commit(self) -> None:
        positions = self.tracker.positions()
        if not positions:
            return
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(topic, partition, position)
                   for (topic, partition), position in positions.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except Exception:
            return  # retried on the next step (e.g. during a rebalance)
        for (topic, partition), position in positions.items():
            self.tracker.committed(topic, partition, position)

    def revoked(self, partitions: list[Any]) -> None:
        """Partitions taken away: suspend their runs so the new owner resumes them."""
        lost = {(p.topic, p.partition) for p in partitions}
        waiting = [run for run in self.runs.values()
                   if (run.position.topic, run.position.partition) in lost]
        for run in waiting:
            run.handover = True
            run.request_stop("suspend")
        for run in waiting:
            if run.thread is not None:
                run.thread.join(timeout=self.settings.shutdown_grace_seconds)
        for topic, partition in lost:
            self.tracker.forget(topic, partition)

    def shutdown(self) -> None:
        """SIGTERM: stop consuming, snapshot running executions, leave their offsets."""
        for run in list(self.runs.values()):
            run.handover = True
            run.request_stop("suspend")
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.collect_finished()
        # Suspended runs are not finished messages: their offsets stay uncommitted,
        # so the next owner of the partition resumes them.
        self.producer.flush(10)

    def heartbeat(self, path: Path, kafka_ok: bool, redis_ok: bool, state_ok: bool) -> None:
        record = {
            "ts": time.time(), "worker": self.worker_id, "last_poll": self.last_poll,
            "kafka": kafka_ok, "redis": redis_ok, "state_dir": state_ok,
            "running": len(self.runs), "paused": self.paused, "counts": self.counts,
        }
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(record))
        temp.replace(path)

"""The worker loop: consume control commands, start runs, commit what is done.

The loop is the only code that touches the consumer. It never waits on a run: runs
live in threads (their programs in child processes) and report back through a queue.
A start's offset is committed once its run has ended (completed, failed, cancelled or
suspended); see offsets.py.

Commands are handled in the order they arrive. One that finds the worker full waits in
`held`, a backlog of at most `max_concurrency` commands, and starts as soon as a run
ends: the next command is at hand then, rather than a fetch away (a paused partition's
fetched messages are dropped by the consumer and fetched again after the resume, which
costs a broker round trip). While the backlog is full, the loop takes nothing more:
for up to `PAUSE_AFTER_SECONDS` it does not poll (the next commands stay fetched, at
hand for the slot a run frees); past that, the partitions are paused so the poll loop
goes on (heartbeats, rebalances) without taking more work, and they are resumed once
half the backlog has started, so that one resume (and its fetches) brings in several
commands.

A command that cannot be handled yet (a stop while Redis is away, or a command for an
execution whose earlier run here is ending) waits at the head of `held`, with the
partitions paused, and is tried again; only a command that is itself wrong is
dead-lettered. A start asks Redis nothing here: its run does, in the round trip that
takes the lease (and waits for Redis if it is away), and answers `duplicate` for an
execution that already ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jarvis.settings import WorkerSettings
from jarvis.worker import messages
from jarvis.worker.endings import Endings
from jarvis.worker.leases import Lease, Leases
from jarvis.worker.metrics import Gauges, MetricsPublisher, WorkerMetrics
from jarvis.worker.offsets import OffsetTracker
from jarvis.worker.retry import Backoff, is_transient
from jarvis.worker.runs import FENCED, HANDOVER, Position, Run, Runner
from jarvis.worker.stops import StopRequests

log = logging.getLogger("jarvis.worker")

COMMIT_TIMEOUT = 10.0
"""Seconds after which an asynchronous commit that never reported back is sent again."""

COMMIT_INTERVAL = 0.5
"""Seconds at least between two asynchronous commits: while runs end by the hundred a
second, one commit covers the offsets of many (each a request the broker serves, and
a write to its offsets topic). A start whose run ended but whose offset was not
committed yet when the worker dies is read again by the next owner, and found ended:
a `duplicate` event, not a second run."""

ASSIGNMENT_RECHECK_SECONDS = 0.1
"""While paused, how often the loop looks for newly assigned partitions to pause."""

PAUSE_AFTER_SECONDS = 0.5
"""How long a full worker waits for a run to end, taking nothing more, before it
pauses its partitions: runs that end within this leave the partitions unpaused (a
resume costs fetching again what the pause dropped, which stalled a busy worker for
0.3-0.7 s with nothing to run)."""

HOLD_FIRST_EVENT_SECONDS = 0.25
"""How long a run's `started` (or `resumed`) event may wait for the run's next event,
to go to the broker with it: a run that ends within this (most do) costs the status
producer one produce request rather than two. Never longer: the loop sends a held
event once its time is up."""

HOLDING_WAIT_SECONDS = 0.05
"""The longest wait of a full worker for a run to end (it wakes as soon as one does);
held status events are sent at least this often meanwhile."""

BUSY_POLL_SECONDS = 0.005
"""The longest poll while commands wait for a slot: a run that ends frees its slot
within this, for the next command waiting."""

RUNNING_POLL_SECONDS = 0.05
"""The longest poll while runs are going and no command waits: a new command ends the
poll at once; a run's end has nothing urgent to hand the loop (its offset is
committed with the next commit, at most every `COMMIT_INTERVAL`)."""


class NotYet(Exception):
    """A command that must wait: its execution's run here is ending (it finishes, or
    hands the execution over) and has not said how yet."""


class WorkerLoop:
    """Consumes `spy_control` and drives runs until asked to stop."""

    def __init__(self, settings: WorkerSettings, worker_id: str, consumer: Any,
                 producer: Any, redis: Any, runner_factory: Callable[..., Runner],
                 metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.consumer = consumer
        self.producer = producer
        self.tracker = OffsetTracker()
        self.endings = Endings(redis, settings.state_dir)
        self.stops = StopRequests(redis)
        self.leases = Leases(redis, worker_id, settings.redis.lease_seconds)
        self.runs: dict[str, Run] = {}
        self.done: queue.SimpleQueue[Run] = queue.SimpleQueue()
        self.held: deque[Any] = deque()
        self.held_until = 0.0
        self.backoff = Backoff()
        self.paused: set[Any] = set()
        self.committing = False
        self.commit_deadline = 0.0
        self.next_commit = 0.0
        self.commit_interval = COMMIT_INTERVAL
        self.assignment_checked = 0.0
        self.last_poll = 0.0
        self.pause_after = PAUSE_AFTER_SECONDS
        self.full_since: float | None = None  # when the backlog last became full
        self.holding = False  # full, not paused yet: the loop takes nothing more
        self.counts: dict[str, int] = {}
        self.counts_lock = threading.Lock()
        # Status events held back (see HOLD_FIRST_EVENT_SECONDS): execution id -> when
        # they are due, the event. The lock also orders an execution's events.
        self.held_events: dict[str, tuple[float, bytes, Lease | None]] = {}
        self.held_events_lock = threading.Lock()
        self.hold_first_event = HOLD_FIRST_EVENT_SECONDS
        self.metrics = metrics or WorkerMetrics()
        self.publisher = MetricsPublisher(producer, settings.kafka.metrics_topic, worker_id,
                                          settings.metrics_seconds, self.metrics)
        self.runner = runner_factory(publish=self.publish, finished=self.done.put,
                                     metrics=self.metrics)

    # -- events ---------------------------------------------------------------------

    def publish(self, execution_id: str, status: Any, hold: bool = False,
                lease: Lease | None = None, **fields: Any) -> None:
        """Send a status event. With `hold`, it waits up to `hold_first_event` seconds
        for the execution's next event and goes with it (the run's first event); if
        the run's `lease` may have lapsed by the time it is due (a worker paused past
        its lease), it is dropped: the execution may be another worker's by then."""
        event = messages.status_event(execution_id, status, worker=self.worker_id, **fields)
        with self.held_events_lock:
            earlier = self.held_events.pop(execution_id, None)
            if earlier is not None:  # it goes first, in the same produce request
                self._produce(self.settings.kafka.status_topic, earlier[1],
                              execution_id.encode("utf-8"))
            if hold:
                self.held_events[execution_id] = (
                    time.monotonic() + self.hold_first_event, event, lease)
            else:
                self._produce(self.settings.kafka.status_topic, event,
                              execution_id.encode("utf-8"))
        with self.counts_lock:
            self.counts[status] = self.counts.get(status, 0) + 1

    def send_held_events(self, every: bool = False) -> None:
        """Send the held status events whose time is up (with `every`, all of them)."""
        if not self.held_events:
            return
        now = time.monotonic()
        with self.held_events_lock:
            due = [execution_id for execution_id, (until, _, _) in self.held_events.items()
                   if every or until <= now]
            for execution_id in due:
                _until, event, lease = self.held_events.pop(execution_id)
                if lease is not None and now > lease.deadline:
                    log.warning("execution %s: its lease may have lapsed; its held status "
                                "event is dropped", execution_id)
                    continue
                self._produce(self.settings.kafka.status_topic, event,
                              execution_id.encode("utf-8"))

    def dead_letter(self, message: Any, reason: str, execution_id: str | None) -> None:
        record = messages.dead_letter(message.value(), message.key(), message.topic(),
                                      message.partition(), message.offset(), reason,
                                      worker=self.worker_id, execution_id=execution_id)
        self._produce(self.settings.kafka.dlq_topic, record, message.key() or b"")
        if execution_id is not None:  # a message that names no execution has no status
            self.publish(execution_id, "rejected", error={
                "type": "InvalidCommand", "message": reason})

    def _produce(self, topic: str, value: bytes, key: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key)
                break
            except BufferError:  # the producer's queue is full: wait for deliveries
                self.producer.poll(0.1)

    # -- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.step(timeout=0.1)
        finally:
            self.shutdown()

    def step(self, timeout: float) -> None:
        self.collect_finished()
        self.retry_held()
        self.flow_control()
        # While commands wait for a slot, one that frees up is filled within a few ms.
        if self.held or self.full():
            longest = BUSY_POLL_SECONDS
        elif self.runs or self.held_events:
            longest = RUNNING_POLL_SECONDS
        else:
            longest = timeout
        if self.holding:  # full: wait for a run to end rather than take more
            with contextlib.suppress(queue.Empty):
                self.ended(self.done.get(timeout=min(timeout, HOLDING_WAIT_SECONDS)))
            message = None
        else:
            message = self.consumer.poll(min(timeout, longest))
        self.last_poll = time.time()
        if message is not None and message.error() is None:
            self.tracker.begin(message.topic(), message.partition(), message.offset())
            if self.held or self.full():
                self.held.append(message)  # in order, after those that wait already
            else:
                self.dispatch(message)
        self.collect_finished()
        self.retry_held()
        self.send_held_events()
        self.producer.poll(0)  # delivery reports of the status events sent meanwhile
        self.commit()
        if self.publisher.due():
            self.publisher.publish(self.gauges())

    def dispatch(self, message: Any) -> bool:
        """Handle one message; False when it has to wait (it is then held)."""
        try:
            self.handle(message)
        except Exception as exc:
            if isinstance(exc, NotYet) or is_transient(exc):
                if not self.held or self.held[0] is not message:
                    self.held.appendleft(message)
                self.held_until = time.monotonic() + self.backoff.next_delay()
                return False
            log.exception("a control message could not be handled")
            self.finish_message(message)
            self.dead_letter(message, f"internal error handling the command: {exc}", None)
        return True

    def full(self) -> bool:
        """Whether every run slot is taken."""
        return len(self.runs) >= self.settings.max_concurrency

    def retry_held(self) -> None:
        """Handle waiting commands, in order, while there is room and no backoff."""
        while self.held and not self.full() and time.monotonic() >= self.held_until:
            if not self.dispatch(self.held[0]):
                return
            self.held.popleft()
            self.backoff.reset()

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
        local = self.runs.get(execution_id)
        if local is not None and (local.handover or local.finishing):
            raise NotYet(execution_id)  # handled once the earlier run has ended
        if local is not None:
            self.publish(execution_id, "duplicate", error={
                "type": "Duplicate", "message": "the execution is running"})
            self.finish_message(message)
            return
        # Whether the execution already ended is the run's first question (in the round
        # trip that takes its lease, then its status file): it answers `duplicate`.
        run = Run(execution_id, Position(message.topic(), message.partition(),
                                         message.offset()), command)
        self.runs[execution_id] = run
        self.runner.start(run)

    def stop(self, command: Any) -> None:
        execution_id = command.execution_id
        local = self.runs.get(execution_id)
        if local is not None:
            if local.handover or not local.request_stop(command.mode):
                raise NotYet(execution_id)  # handled once the run has ended
            return
        if self.leases.holder(execution_id) is not None:
            self.stops.request(execution_id, command.mode)  # its lease keeper sees it
            return
        if command.mode == "cancel" and self.endings.ended(execution_id) is None:
            # Nobody runs it (it is suspended, or never started): cancel it here.
            self.endings.cancel(execution_id)
            self.endings.record(execution_id, "cancelled", self.worker_id, clear_stop=True)
            self.publish(execution_id, "cancelled")
        # A suspend of an execution that does not run has nothing to do.

    def finish_message(self, message: Any) -> None:
        self.tracker.finish(message.topic(), message.partition(), message.offset())

    def collect_finished(self) -> None:
        while True:
            try:
                run = self.done.get_nowait()
            except queue.Empty:
                return
            self.ended(run)

    def ended(self, run: Run) -> None:
        """A run has ended: its slot is free, and its start is done unless it was
        handed over."""
        if self.runs.get(run.execution_id) is run:
            del self.runs[run.execution_id]
        status = run.outcome_status
        if status in (HANDOVER, FENCED) or (run.handover and status == "suspended"):
            return  # the partition's next owner resumes it
        self.tracker.finish(run.position.topic, run.position.partition, run.position.offset)

    def flow_control(self) -> None:
        """Pause every assigned partition while the backlog is full (for longer than
        `pause_after`; until then the loop only takes nothing more) or a command waits
        for Redis (or for an earlier run of its execution); resume once half the backlog
        has started."""
        backing_off = bool(self.held) and time.monotonic() < self.held_until
        backlog = max(1, self.settings.max_concurrency)
        # Paused, the partitions stay so until half the backlog has started: each resume
        # costs fetches (the consumer drops what it had fetched of a paused partition),
        # so it should bring in several commands, not one.
        refill = len(self.held) <= backlog // 2 if self.paused else len(self.held) < backlog
        hold = backing_off or not refill
        self.holding = False
        if not hold:
            self.full_since = None
        elif not self.paused and not backing_off:
            # Full: for a while, take nothing more without pausing (see PAUSE_AFTER_SECONDS).
            now = time.monotonic()
            if self.full_since is None:
                self.full_since = now
            if now < self.full_since + self.pause_after:
                self.holding = True
                return
        if hold:
            # Once paused, the assignment is looked at again only now and then (for a
            # partition a rebalance added): it is a list built anew at every call.
            now = time.monotonic()
            if self.paused and now < self.assignment_checked + ASSIGNMENT_RECHECK_SECONDS:
                return
            self.assignment_checked = now
            fresh = [p for p in self.consumer.assignment() if _tp(p) not in self.paused]
            if fresh:
                self.consumer.pause(fresh)
                self.paused.update(_tp(p) for p in fresh)
        elif self.paused:
            from confluent_kafka import TopicPartition

            assigned = {_tp(p) for p in self.consumer.assignment()}
            again = [TopicPartition(t, p) for t, p in self.paused if (t, p) in assigned]
            if again:
                self.consumer.resume(again)
            self.paused.clear()

    def commit(self, wait: bool = False) -> None:
        """Commit what is done. Asynchronous (a commit waits for the group coordinator,
        seconds while Kafka is away), one at a time and at most every `commit_interval`
        seconds; `committed` records the outcome."""
        now = time.monotonic()
        if not wait and ((self.committing and now < self.commit_deadline)
                         or now < self.next_commit):
            return
        positions = self.tracker.positions()
        if not positions:
            return
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(topic, partition, position)
                   for (topic, partition), position in positions.items()]
        try:
            if wait:
                self.committed(None, self.consumer.commit(offsets=offsets, asynchronous=False))
            else:
                self.committing = True
                self.commit_deadline = now + COMMIT_TIMEOUT
                self.next_commit = now + self.commit_interval
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except Exception as exc:  # tried again on the next step
            self.committing = False
            log.info("commit of %s failed: %s", positions, exc)

    def committed(self, error: Any, partitions: list[Any] | None) -> None:
        """The consumer's `on_commit` callback (and the end of a synchronous commit)."""
        self.committing = False
        if error is not None:
            log.info("commit failed (tried again): %s", error)
            return
        for tp in partitions or []:
            if tp.error is None and tp.offset >= 0:
                self.tracker.committed(tp.topic, tp.partition, tp.offset)

    def revoked(self, partitions: list[Any]) -> None:
        """Partitions taken away: suspend their runs so the new owner resumes them."""
        lost = {_tp(p) for p in partitions}
        leaving = [run for run in self.runs.values()
                   if (run.position.topic, run.position.partition) in lost]
        for run in leaving:
            run.hand_over()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        for run in leaving:
            if run.done is not None:
                run.done.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.collect_finished()
        self.held = deque(m for m in self.held if (m.topic(), m.partition()) not in lost)
        self.paused -= lost
        for topic, partition in lost:
            self.tracker.forget(topic, partition)
        self.committing = False  # a commit of the old generation fails anyway: send anew

    def shutdown(self) -> None:
        """SIGTERM: stop consuming, snapshot running executions, leave their offsets."""
        for run in list(self.runs.values()):
            run.hand_over()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        for run in list(self.runs.values()):
            if run.done is not None:
                run.done.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.collect_finished()
        self.send_held_events(every=True)
        self.commit(wait=True)
        # Suspended runs are not finished messages: their offsets stay uncommitted,
        # so the next owner of the partition resumes them.
        self.producer.flush(10)

    # -- what the worker reports about itself ---------------------------------------

    def gauges(self) -> Gauges:
        in_progress = sum(len(self.tracker.in_progress(t, p))
                          for t, p in {_tp(q) for q in self._assignment()})
        return Gauges(running=len(self.runs), capacity=self.settings.max_concurrency,
                      paused=bool(self.paused), queue_depth=in_progress,
                      consumer_lag=self.consumer_lag())

    def consumer_lag(self) -> int:
        """Messages of this worker's partitions not read yet (high watermark - position)."""
        lag = 0
        try:
            assigned = self._assignment()
            if not assigned:
                return 0
            for position in self.consumer.position(assigned):
                _low, high = self.consumer.get_watermark_offsets(position, cached=True)
                if high >= 0 and position.offset >= 0:
                    lag += max(0, high - position.offset)
        except Exception:  # no figures while Kafka is away
            return lag
        return lag

    def _assignment(self) -> list[Any]:
        try:
            return list(self.consumer.assignment())
        except Exception:
            return []

    def heartbeat(self, path: Path, kafka_ok: bool, redis_ok: bool, state_ok: bool) -> None:
        with self.counts_lock:
            counts = dict(self.counts)
        record = {
            "ts": time.time(), "worker": self.worker_id, "last_poll": self.last_poll,
            "kafka": kafka_ok, "redis": redis_ok, "state_dir": state_ok,
            "running": len(self.runs), "paused": bool(self.paused), "counts": counts,
        }
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(record))
        temp.replace(path)


def _tp(partition: Any) -> tuple[str, int]:
    return (partition.topic, partition.partition)

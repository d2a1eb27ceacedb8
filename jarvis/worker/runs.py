"""One execution on a worker: lease, run in a child process, status, release.

A `Run` is started by the worker loop for a valid start command and runs in a thread
of its own (the program itself runs in a child process; this thread performs its
effects). It holds the execution's lease while it runs, renews it, watches Redis for
stop requests, and reports every step as a status event. When it ends it hands its
offset back to the loop, which alone talks to the consumer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.execution import Execution, error_record
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.machine import Outcome
from jarvis.runtime.statedir import ExecutionDir
from jarvis.settings import WorkerSettings
from jarvis.worker.leases import Fence, FencedOff, Leases
from jarvis.worker.logs import KafkaLogSink
from jarvis.worker.messages import effective_limits

TERMINAL = frozenset({"completed", "failed", "cancelled"})


def stop_key(execution_id: str) -> str:
    return f"jarvis:stop:{execution_id}"


def status_key(execution_id: str) -> str:
    return f"jarvis:status:{execution_id}"


@dataclass
class Position:
    """Where the start command of a run came from, to commit it when the run ends."""

    topic: str
    partition: int
    offset: int


@dataclass
class Run:
    """A running execution on this worker."""

    execution_id: str
    position: Position
    command: Any
    thread: threading.Thread | None = None
    stop_mode: str | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    outcome_status: str | None = None
    started: float = field(default_factory=time.monotonic)
    # Suspended to hand over to another worker (shutdown, rebalance): the start's offset
    # stays uncommitted so the partition's next owner resumes it.
    handover: bool = False

    def request_stop(self, mode: str) -> None:
        if self.stop_mode != "cancel":
            self.stop_mode = mode
        self.stop_event.set()


class Runner:
    """What every Run needs from its worker."""

    def __init__(
        self,
        settings: WorkerSettings,
        worker_id: str,
        redis: Any,
        producer: Any,
        books: BookRegistry,
        pool: ChildPool,
        publish: Callable[..., None],
        load_program: Callable[[Any], tuple[bytes, str]],
        finished: Callable[[Run], None],
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.redis = redis
        self.producer = producer
        self.books = books
        self.pool = pool
        self.publish = publish
        self.load_program = load_program
        self.finished = finished
        self.leases = Leases(redis, worker_id, settings.redis.lease_seconds)

    def start(self, run: Run) -> None:
        run.thread = threading.Thread(target=self._thread, args=(run,),
                                      name=f"run-{run.execution_id}", daemon=True)
        run.thread.start()

    def _thread(self, run: Run) -> None:
        try:
            run.outcome_status = self._run(run)
        except Exception as exc:  # the worker must go on whatever one run does
            run.outcome_status = "failed"
            self.publish(run.execution_id, "failed",
                         error={"type": type(exc).__name__, "message": str(exc)})
        finally:
            self.finished(run)

    def _run(self, run: Run) -> str:
        execution_id = run.execution_id
        lease = self.leases.acquire(execution_id)
        if lease is None:
            self.publish(execution_id, "duplicate",
                         error={"type": "Running", "message": "another worker runs it"})
            return "duplicate"
        keep_alive = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(run, lease, keep_alive),
                                   daemon=True)
        try:
            directory = ExecutionDir(self.settings.state_dir, execution_id)
            directory.create()
            fence = Fence(directory.root, lease)
            fence.claim()
            renewer.start()
            source, path = self.load_program(run.command)
            command = run.command
            trace = command.trace or self.settings.trace_level
            compilation = Compilation.of(source, path)
            if not compilation.ok:
                first = compilation.diagnostics[0]
                self.publish(execution_id, "failed", error={
                    "type": first.code, "message": first.message,
                    "line": first.line, "col": first.col})
                return "failed"
            program = compilation.program(trace)
            resumed = directory.journal.exists()
            self.publish(execution_id, "resumed" if resumed else "started",
                         attempt=lease.token)
            sink = KafkaLogSink(self.producer, self.settings.kafka.logs_topic, execution_id,
                                last_delivered=directory.read_trace_seq() or 0)
            limits = effective_limits(self.settings.limits, command.limits)
            settings = self.settings.model_copy(update={"limits": limits})
            execution = Execution(
                program, execution_id=execution_id, inputs=dict(command.inputs),
                books=self.books, settings=settings, sink=sink,
                stop_requested=run.stop_event.is_set, guard=fence.guard,
                isolation=self.pool,
            )
            outcome = execution.run()
            sink.flush()
            return self._report(run, outcome, directory, lease.token)
        except FencedOff as exc:
            # Another worker owns the execution now: say nothing more about it.
            run.stop_event.set()
            del exc
            return "fenced"
        finally:
            keep_alive.set()
            if renewer.is_alive():
                renewer.join(timeout=5)
            self.leases.release(lease)

    def _report(self, run: Run, outcome: Outcome, directory: ExecutionDir, token: int) -> str:
        execution_id = run.execution_id
        if outcome.status == "suspended" and run.stop_mode == "cancel":
            directory.remove()
            self.publish(execution_id, "cancelled", attempt=token, counters=outcome.counters)
            self._remember(execution_id, "cancelled")
            return "cancelled"
        if outcome.status == "failed" and isinstance(outcome.error, FencedOff):
            return "fenced"
        error = error_record(outcome) if outcome.error is not None else None
        self.publish(execution_id, outcome.status, attempt=token, result=outcome.outputs,
                     error=error, counters=outcome.counters)
        if outcome.status in TERMINAL:
            self._remember(execution_id, outcome.status)
        if outcome.status == "suspended" and run.stop_mode == "suspend":
            self.redis.delete(stop_key(execution_id))
        return outcome.status

    def _remember(self, execution_id: str, status: str) -> None:
        self.redis.hset(status_key(execution_id), mapping={
            "status": status, "worker": self.worker_id, "ts": time.time()})
        self.redis.delete(stop_key(execution_id))

    def _renew(self, run: Run, lease: Any, done: threading.Event) -> None:
        interval = max(self.settings.redis.lease_seconds / 3, 0.05)
        poll = min(interval, 0.2)
        next_renewal = time.monotonic() + interval
        while not done.wait(poll):
            try:
                mode = self.redis.get(stop_key(run.execution_id))
                if mode:
                    run.request_stop(mode.decode() if isinstance(mode, bytes) else str(mode))
                if time.monotonic() >= next_renewal:
                    next_renewal = time.monotonic() + interval
                    if not self.leases.renew(lease):
                        run.stop_event.set()  # lost: stop, and the fence refuses writes
                        return
            except Exception:  # Redis briefly away: the lease deadline protects the state
                continue

"""One execution on a worker: lease, run in a child process, status, release.

A `Run` is started by the worker loop for a valid start command and runs in a thread
of its own, an idle one of an earlier run or a new one (the program itself runs in a
child process; this thread performs its effects). It takes the execution's lease
(waiting while another worker hands it over; the same round trip says whether the
execution already ended and reads its stop request), leaves the lease's renewal and
the watch for stop requests to the worker's lease keeper (keeper.py), and reports
every step as a status event; its ending is recorded in Redis in one round trip with
the lease's release. When it ends it hands its offset back to the loop, which alone
talks to the consumer.

A run that loses its lease while this worker still holds the start command (Redis
lost the lease, or stayed away longer than `reconnect_seconds`) tries again, quietly:
if another worker finished the execution meanwhile, it ends without a word, and
otherwise it resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from jarvis.compiler import CompileError, compile_program
from jarvis.runtime.artifacts import offload_outputs
from jarvis.runtime.books import Book, BookRegistry
from jarvis.runtime.execution import Execution, RecordedStatus, error_record
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.machine import Outcome
from jarvis.runtime.statedir import ExecutionDir, StateError
from jarvis.settings import WorkerSettings
from jarvis.worker.artifacts import artifact_store
from jarvis.worker.endings import TERMINAL, Endings, status_key, terminal_status
from jarvis.worker.keeper import LeaseKeeper
from jarvis.worker.leases import Beginning, Fence, FencedOff, Lease, Leases, read_fence
from jarvis.worker.logs import KafkaLogSink
from jarvis.worker.messages import effective_limits
from jarvis.worker.metrics import WorkerMetrics
from jarvis.worker.retry import Backoff, is_transient
from jarvis.worker.stops import StopRequests, stop_key

log = logging.getLogger("jarvis.worker")

HANDOVER: Final = "handover"
"""The run gave the execution up (shutdown, rebalance): its offset stays uncommitted."""
FENCED: Final = "fenced"
"""Another worker owns the execution now; this one says nothing more about it."""
DUPLICATE: Final = "duplicate"
"""The execution had already ended: nothing was run."""

T = TypeVar("T")

IDLE_THREAD_SECONDS = 30.0
"""How long a run thread waits for the next run before it ends."""


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
    # Set once the run has ended and handed its offset back (None: not started by a
    # Runner, as in tests of the loop).
    done: threading.Event | None = None
    stop_mode: str | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    outcome_status: str | None = None
    started: float = field(default_factory=time.monotonic)
    # Given up to another worker (shutdown, rebalance): the start's offset stays
    # uncommitted so the partition's next owner resumes it.
    handover: bool = False
    # The run decided how it ends: a stop that comes later is not seen by it.
    finishing: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request_stop(self, mode: str) -> bool:
        """Ask the run to stop; False when it is already finishing (too late)."""
        with self.lock:
            if self.finishing:
                return False
            if self.stop_mode != "cancel":
                self.stop_mode = mode
            self.stop_event.set()
            return True

    def hand_over(self) -> None:
        self.handover = True
        self.request_stop("suspend")

    def finish(self) -> str | None:
        """Take no more stop requests; the stop asked for until now, if any."""
        with self.lock:
            self.finishing = True
            return self.stop_mode


class _HandedOver(Exception):
    """The run was handed over while it waited for Redis or for the lease."""


class _FencedBook:
    """A Book whose every call first checks that this worker still owns the execution."""

    def __init__(self, book: Book, guard: Callable[[], None]) -> None:
        self.book = book
        self.name = book.name
        self.guard = guard

    def call(self, procedure: str, args: list[Any], kwargs: dict[str, Any],
             idempotency_key: str) -> Any:
        self.guard()
        return self.book.call(procedure, args, kwargs, idempotency_key)


class _FencedBooks(BookRegistry):
    """The worker's Book registry as one run sees it: calls are fenced."""

    def __init__(self, books: BookRegistry, guard: Callable[[], None]) -> None:
        super().__init__()
        self.books = books
        self.guard = guard

    def __contains__(self, name: object) -> bool:
        return name in self.books

    def names(self) -> list[str]:
        return self.books.names()

    def get(self, name: str) -> Book:
        return _FencedBook(self.books.get(name), self.guard)

    def close(self) -> None:
        pass  # the worker's registry outlives the run


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
        metrics: WorkerMetrics | None = None,
        logs_producer: Any = None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.redis = redis
        self.producer = producer
        # Trace events may have a producer of their own, set for throughput.
        self.logs_producer = logs_producer if logs_producer is not None else producer
        self.books = books
        self.pool = pool
        self.publish = publish
        self.load_program = load_program
        self.finished = finished
        self.metrics = metrics or WorkerMetrics()
        self.leases = Leases(redis, worker_id, settings.redis.lease_seconds)
        self.endings = Endings(redis, settings.state_dir)
        self.stops = StopRequests(redis)
        self.keeper = LeaseKeeper(redis, self.leases, settings.redis.lease_seconds)
        # Run threads waiting for a run (`idle_threads` of them) and runs handed to them.
        self.threads_lock = threading.Lock()
        self.idle_threads = 0
        self.pending: queue.SimpleQueue[Run] = queue.SimpleQueue()
        # Where programs' artifacts and large outputs go: S3, or the state directory.
        self.artifacts = artifact_store(settings)

    def start(self, run: Run) -> None:
        """Run `run` in a thread: an idle one of an earlier run, else a new one."""
        run.done = threading.Event()
        with self.threads_lock:
            if self.idle_threads:
                self.idle_threads -= 1
                self.pending.put(run)
                return
        threading.Thread(target=self._serve, args=(run,), name="run", daemon=True).start()

    def _serve(self, run: Run) -> None:
        """A run thread: runs `run`, then the runs `start` hands it while it waits (a
        thread costs a clone and a few hand-overs of the GIL to start and to end); ends
        after `IDLE_THREAD_SECONDS` without one."""
        while True:
            self._thread(run)
            # Idle before the loop hears that the run ended: the loop's next start (often
            # in answer to it) goes to this thread rather than to a new one.
            with self.threads_lock:
                self.idle_threads += 1
            self._ended(run)
            try:
                run = self.pending.get(timeout=IDLE_THREAD_SECONDS)
            except queue.Empty:
                with self.threads_lock:
                    try:  # handed one just as the wait ended
                        run = self.pending.get_nowait()
                    except queue.Empty:
                        self.idle_threads -= 1
                        return

    # -- attempts -------------------------------------------------------------------

    def _thread(self, run: Run) -> None:
        try:
            run.outcome_status = self._attempts(run)
        except Exception as exc:  # the worker must go on whatever one run does
            log.exception("execution %s: the run failed", run.execution_id)
            run.outcome_status = "failed"
            self.publish(run.execution_id, "failed",
                         error={"type": type(exc).__name__, "message": str(exc)})
        finally:
            run.finish()
            self.metrics.run_ended(run.outcome_status or "failed",
                                   time.monotonic() - run.started)

    def _ended(self, run: Run) -> None:
        """Hand the run back to the loop (its offset), and let waiters know it ended."""
        self.finished(run)
        if run.done is not None:
            run.done.set()

    def _attempts(self, run: Run) -> str:
        backoff = Backoff(first=0.2, ceiling=max(self.settings.redis.lease_seconds, 1.0))
        quiet = False
        while True:
            try:
                status = self._attempt(run, quiet)
            except _HandedOver:
                return HANDOVER
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("execution %s: %s; trying again", run.execution_id, exc)
                status = FENCED
            if status != FENCED or run.handover:
                return status
            # The lease was lost, but the start command is still this worker's.
            quiet = True
            if not self._pause(run, backoff.next_delay()):
                return HANDOVER
            run.stop_event.clear()
            if run.stop_mode is not None:
                run.stop_event.set()

    def _attempt(self, run: Run, quiet: bool) -> str:
        execution_id = run.execution_id
        directory = ExecutionDir(self.settings.state_dir, execution_id)
        began = self._take_lease(run, directory)
        if began.lease is None:  # Redis records that the execution ended
            return self._duplicate(run, str(began.ended), quiet)
        lease = began.lease
        fence = Fence(directory.root, lease, self.leases, self.settings.redis.reconnect_seconds,
                      fsync=self.settings.journal_fsync)
        try:
            # status.json, read once: whether the execution ended (Redis may have
            # forgotten), and what the Execution resumes with.
            recorded = self._retrying(run, lambda: self._read_status(directory))
            ended = terminal_status(recorded.record if recorded is not None else None)
            if ended is not None:
                return self._duplicate(run, ended, quiet)
            directory.create()
            fence.claim()
            self._take_stop_request(run, began.stop)
            self.keeper.add(run, lease)
            return self._execute(run, directory, fence, lease, recorded)
        except FencedOff as exc:
            log.warning("execution %s: %s; this worker says nothing more about it",
                        execution_id, exc)
            run.stop_event.set()
            return FENCED
        finally:
            self.keeper.remove(lease)
            if not lease.released:
                try:
                    self.leases.release(lease)
                except Exception:  # Redis away: the lease lapses by itself
                    log.debug("execution %s: lease not released", execution_id,
                              exc_info=True)

    @staticmethod
    def _read_status(directory: ExecutionDir) -> RecordedStatus | None:
        """The execution's status.json; None when it cannot be read (the Execution
        reads it again, and fails saying why)."""
        try:
            return RecordedStatus(directory.read_status())
        except StateError:
            return None

    def _duplicate(self, run: Run, ended: str, quiet: bool) -> str:
        if not quiet:
            self.publish(run.execution_id, DUPLICATE, error={
                "type": "Duplicate", "message": f"the execution is {ended}"})
        return DUPLICATE

    def _execute(self, run: Run, directory: ExecutionDir, fence: Fence, lease: Lease,
                 recorded: RecordedStatus | None) -> str:
        execution_id = run.execution_id
        command = run.command
        source, path = self.load_program(command)
        trace = command.trace or self.settings.trace_level
        try:
            program = compile_program(source, path, trace)
        except CompileError as exc:
            first = exc.diagnostics[0]
            error = {"type": first.code, "message": first.message,
                     "line": first.line, "col": first.col}
            fence.guard()
            directory.write_status({"status": "failed", "error": error})
            self.publish(execution_id, "failed", attempt=lease.token, error=error)
            self._remember(run, "failed", lease)
            return "failed"
        # Started before: a status.json that does not say it ended (running, suspended),
        # written before the execution's first journal record or snapshot.
        resumed = recorded is not None and recorded.record is not None
        # Held for a moment: a short run's end goes to the broker with it (loop.py).
        self.publish(execution_id, "resumed" if resumed else "started", hold=True,
                     lease=lease, attempt=lease.token)
        # Where a resumed run's delivery stopped, the Execution reads (trace.seq).
        sink = KafkaLogSink(self.logs_producer, self.settings.kafka.logs_topic, execution_id,
                            guard=fence.guard, on_events=self.metrics.count_trace_events)
        limits = effective_limits(self.settings.limits, command.limits)
        # The worker's settings as they are, unless the start lowered a limit.
        settings = self.settings if limits is self.settings.limits \
            else self.settings.model_copy(update={"limits": limits})

        def checkpointed(counters: dict[str, int]) -> None:
            self.publish(execution_id, "checkpointed", attempt=lease.token, counters=counters)

        execution = Execution(
            program, execution_id=execution_id, inputs=dict(command.inputs),
            books=_FencedBooks(self.books, fence.guard),
            settings=settings, sink=sink,
            stop_requested=run.stop_event.is_set, guard=fence.guard,
            isolation=self.pool, on_snapshot=checkpointed, artifacts=self.artifacts,
            status=recorded, directory=directory,
        )
        outcome = execution.run()
        sink.flush()
        if not fence.holds():
            raise FencedOff(fence.refused or "the lease was lost")
        if outcome.status == "failed" and outcome.error is not None \
                and is_transient(outcome.error):
            raise outcome.error  # the state directory failed, not the program
        return self._report(run, outcome, fence, lease)

    def _report(self, run: Run, outcome: Outcome, fence: Fence, lease: Lease) -> str:
        execution_id = run.execution_id
        token = lease.token
        stop_mode = run.finish()
        if outcome.status == "suspended" and stop_mode == "cancel":
            fence.guard()
            self.endings.cancel(execution_id)
            self.publish(execution_id, "cancelled", attempt=token, counters=outcome.counters)
            self._remember(run, "cancelled", lease)
            return "cancelled"
        error = error_record(outcome) if outcome.error is not None else None
        self.publish(execution_id, outcome.status, attempt=token,
                     result=self._result(execution_id, outcome.outputs),
                     error=error, counters=outcome.counters)
        if outcome.status in TERMINAL:
            self._remember(run, outcome.status, lease)
        elif outcome.status == "suspended" and stop_mode == "suspend" and not run.handover:
            self._quietly(lambda: self.stops.clear(execution_id))
        return outcome.status

    def _result(self, execution_id: str, outputs: dict[str, Any]) -> dict[str, Any]:
        """The outputs as a status event carries them: those larger than
        `JARVIS_S3__INLINE_BYTES` replaced by references to copies in the store."""
        try:
            return offload_outputs(outputs, self.artifacts, execution_id,
                                   self.settings.s3.inline_bytes)
        except Exception:
            log.warning("execution %s: large outputs could not be stored; sending them "
                        "inline", execution_id, exc_info=True)
            return outputs

    # -- Redis ----------------------------------------------------------------------

    def _take_lease(self, run: Run, directory: ExecutionDir) -> Beginning:
        """The execution's lease (with its stop request), or how it ended when Redis
        says it did; waits while another worker holds it or Redis is away."""
        poll = min(max(self.settings.redis.lease_seconds / 4, 0.05), 1.0)
        backoff = Backoff()
        while True:
            if run.handover:
                raise _HandedOver()
            try:
                began = self.leases.begin(run.execution_id, read_fence(directory.root),
                                          status_key(run.execution_id),
                                          stop_key(run.execution_id), TERMINAL)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
            else:
                if began.lease is not None or began.ended is not None:
                    return began
                delay = poll  # held by a worker that is handing it over, or stale
            if not self._pause(run, delay):
                raise _HandedOver()

    def _retrying(self, run: Run, action: Callable[[], T]) -> T:
        """`action()`, tried again while Redis or the file system is away."""
        backoff = Backoff()
        while True:
            try:
                return action()
            except Exception as exc:
                if not is_transient(exc):
                    raise
            if not self._pause(run, backoff.next_delay()):
                raise _HandedOver()

    def _take_stop_request(self, run: Run, mode: str | None) -> None:
        """A cancel left in Redis (`mode`, read with the lease) still holds; a suspend
        was meant for an earlier run (stops of runs here reach them directly, in order
        with their starts)."""
        if mode == "cancel":
            run.request_stop(mode)
        elif mode is not None:
            self._retrying(run, lambda: self.stops.clear(run.execution_id))

    def _remember(self, run: Run, status: str, lease: Lease) -> None:
        """Record the ending in Redis, and release the lease in the same round trip;
        the state directory has the ending anyway, so a Redis that stays away past
        `reconnect_seconds` is not waited for (the lease then lapses by itself)."""
        self.keeper.remove(lease)  # no renewal after the release
        give_up = time.monotonic() + self.settings.redis.reconnect_seconds
        backoff = Backoff()
        while True:
            try:
                self.endings.record(run.execution_id, status, self.worker_id, clear_stop=True,
                                    lease=lease)
                return
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() >= give_up:
                    log.warning("execution %s: its ending was not recorded in Redis: %s",
                                run.execution_id, exc)
                    return
            time.sleep(backoff.next_delay())

    def _quietly(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:
            if not is_transient(exc):
                raise

    @staticmethod
    def _pause(run: Run, seconds: float) -> bool:
        """Sleep `seconds`; False as soon as the run is handed over."""
        deadline = time.monotonic() + seconds
        while not run.handover:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(remaining, 0.05))
        return False

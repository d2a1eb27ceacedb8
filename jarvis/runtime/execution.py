"""A durable execution: one program, its state directory, and a Machine to run it.

`Execution.run()` starts the program, or resumes it when its state directory already
holds a journal: from the newest snapshot that verifies (older ones are the fallback),
replaying the journal's tail without calling Books, then live. What the execution was
started with (program digest, inputs, trace level) is recorded on first start so a
resume runs the same thing; how it ended is recorded in `status.json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.phases import COMPILER_VERSION
from jarvis.runtime.artifacts import ArtifactStore, ExecutionArtifacts, LocalArtifactStore
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.channel import RemoteError
from jarvis.runtime.child import pack_records, sent_limits, start_message
from jarvis.runtime.isolation import ChildPool, HostServices, run_in_child
from jarvis.runtime.journal import Journal, JournalCorrupt
from jarvis.runtime.machine import Machine, MachineLimits, Outcome, SnapshotPolicy
from jarvis.runtime.program_bytes import encode_program
from jarvis.runtime.sinks import Sink
from jarvis.runtime.snapshots import (
    FORMAT_VERSION,
    LoadedSnapshot,
    SnapshotHeader,
    SnapshotRejected,
    SnapshotStore,
)
from jarvis.runtime.statedir import ExecutionDir, StateError, TraceSeqFile
from jarvis.runtime.trace import Tracer
from jarvis.settings import EngineSettings


class ExecutionMismatch(StateError):
    """A resume was asked for with another program than the one the execution started."""


@dataclass
class ResumeReport:
    """How an execution came back: from which snapshot, what was skipped, what replayed."""

    resumed: bool = False
    snapshot: int | None = None
    skipped: list[str] = field(default_factory=list)
    replayed_effects: int = 0
    dropped_journal_bytes: int = 0


@dataclass(frozen=True)
class RecordedStatus:
    """What the execution's `status.json` held (None: nothing) when the caller read it,
    after taking the execution's lease: `Execution.run` then does not read it again."""

    record: dict[str, Any] | None


class _Snapshots:
    """The Machine's snapshot sink: a SnapshotStore with this execution's header."""

    def __init__(self, store: SnapshotStore, program: CompiledProgram, execution_id: str,
                 journal: Journal,
                 on_snapshot: Callable[[dict[str, int]], None] | None = None) -> None:
        self.store = store
        self.program = program
        self.execution_id = execution_id
        self.journal = journal
        self.on_snapshot = on_snapshot

    def save(self, payload: bytes, effect_count: int, counters: dict[str, int]) -> None:
        # Where the journal's tail starts: a resume from this snapshot reads from there.
        counters = {**counters, "journal_offset": self.journal.end_offset}
        header = SnapshotHeader(
            format_version=FORMAT_VERSION,
            program_hash=self.program.digest,
            compiler_version=COMPILER_VERSION,
            execution_id=self.execution_id,
            journal_index=effect_count,
            created_at=time.time(),
            counters=dict(counters),
        )
        self.store.write(payload, header)
        if self.on_snapshot is not None:
            self.on_snapshot(dict(counters))


class Execution:
    """Run or resume one execution of `program` under `settings.state_dir`."""

    def __init__(
        self,
        program: CompiledProgram,
        *,
        execution_id: str,
        inputs: dict[str, Any],
        books: BookRegistry,
        settings: EngineSettings,
        sink: Sink,
        stop_requested: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        wait: Callable[[float], None] = time.sleep,
        guard: Callable[[], None] | None = None,
        isolation: ChildPool | None = None,
        on_snapshot: Callable[[dict[str, int]], None] | None = None,
        artifacts: ArtifactStore | None = None,
        status: RecordedStatus | None = None,
        directory: ExecutionDir | None = None,
    ) -> None:
        self.program = program
        self.recorded = status
        # Where artifact() stores files: by default `<state_dir>/artifacts/`.
        self.artifact_store = artifacts or LocalArtifactStore(
            Path(settings.state_dir) / "artifacts")
        self.on_snapshot = on_snapshot
        self.isolation = isolation
        self.execution_id = execution_id
        self.inputs = inputs
        self.books = books
        self.settings = settings
        self.sink = sink
        self.stop_requested = stop_requested
        self.clock = clock
        self.wait = wait
        self.guard = guard
        # The caller's, when it has one for this execution (its paths are made once).
        self.directory = directory if directory is not None \
            else ExecutionDir(settings.state_dir, execution_id)
        if self.directory.execution_id != execution_id:
            raise ValueError(f"the directory of {self.directory.execution_id}, not of "
                             f"{execution_id}")
        self.report = ResumeReport()
        self.machine: Machine | None = None

    def finished(self) -> dict[str, Any] | None:
        """The recorded status of an execution that already completed or failed."""
        status = self.directory.read_status()
        if status and status.get("status") in ("completed", "failed"):
            return status
        return None

    def run(self) -> Outcome:
        for book in self.program.books:
            self.books.get(book)  # a Book missing from the registry fails before any effect
        directory = self.directory
        directory.create()
        keys = self.settings.hmac_key_bytes
        recorded = self.recorded.record if self.recorded is not None \
            else directory.read_status()
        started = recorded or {}
        if started.get("program") and started["program"] != self.program.digest:
            raise ExecutionMismatch(
                f"execution {self.execution_id} was started with another program (or "
                "trace level, or compiler version); start a new execution id to run this one"
            )
        inputs = started.get("inputs", self.inputs) if started else self.inputs
        store = SnapshotStore(directory.snapshots, keys, keep=self.settings.snapshot_keep,
                              guard=self.guard,
                              max_bytes=self.settings.limits.max_snapshot_bytes,
                              fsync=self.settings.journal_fsync)
        # A first start has no snapshots and no delivered trace yet: both are written
        # only after the `running` status that records the start.
        loaded: LoadedSnapshot | None = None
        try:
            if started:
                loaded = store.load_newest(self.program.digest, COMPILER_VERSION,
                                           expect_execution_id=self.execution_id)
        except SnapshotRejected as exc:
            # No snapshot verifies: replaying the whole journal from the start is
            # slower but sound, since every effect of the run is in it.
            self.report.skipped = [str(s) for s in exc.skipped]
            loaded = None
        journal = self._open_journal(loaded)
        if journal is None:
            self.report.skipped.append(
                f"snapshot {loaded.sequence if loaded else '?'}: the journal does not reach "
                "the point it covers; replaying the journal from its start")
            loaded = None
            journal = self._open_journal(None)
            assert journal is not None
        self.report.dropped_journal_bytes = journal.dropped_tail_bytes
        limits = self.settings.limits
        last_delivered = (directory.read_trace_seq() or 0) if started else 0
        sink = _DeliveryRecorder(self.sink, directory, last_delivered)
        snapshots = _Snapshots(store, self.program, self.execution_id, journal,
                               self.on_snapshot)
        if not started:
            directory.write_status({
                "status": "running", "program": self.program.digest,
                "inputs": inputs, "trace": self.program.trace_level,
            }, fsync=self.settings.journal_fsync)
        if self.isolation is not None:
            try:
                outcome = self._run_in_child(self.isolation, loaded, journal, snapshots,
                                             sink, inputs)
            finally:
                journal.close()
                sink.release()
            return self._finish(outcome, inputs)
        tracer = Tracer(self.execution_id, self.program.trace_sites, sink,
                        max_steps=limits.max_steps, max_events=limits.max_trace_events)
        machine = Machine(
            self.program,
            execution_id=self.execution_id,
            inputs=inputs,
            books=self.books,
            effects=journal,
            tracer=tracer,
            snapshots=snapshots,
            policy=SnapshotPolicy(self.settings.snapshot_every_effects,
                                  self.settings.snapshot_every_seconds),
            limits=MachineLimits(
                max_recursion_depth=limits.max_recursion_depth,
                max_book_calls=limits.max_book_calls,
                max_output_bytes=limits.max_output_bytes,
                max_print_bytes=limits.max_output_bytes,
                max_snapshot_bytes=limits.max_snapshot_bytes,
                max_seconds=limits.max_seconds,
                max_artifact_bytes=limits.max_artifact_bytes,
            ),
            clock=self.clock,
            wait=self.wait,
            stop_requested=self.stop_requested,
            artifacts=self._uploads(),
        )
        self.machine = machine
        if loaded is not None:
            machine.restore(loaded.payload)
            self.report.resumed = True
            self.report.snapshot = loaded.sequence
            self.report.skipped += [str(s) for s in loaded.skipped]
        else:
            machine.start_fresh()
            self.report.resumed = journal.count > 0
        self.report.replayed_effects = journal.count - machine.effect_count
        try:
            outcome = machine.run()
        finally:
            journal.close()
            sink.release()
        return self._finish(outcome, inputs)

    def _finish(self, outcome: Outcome, inputs: dict[str, Any]) -> Outcome:
        directory = self.directory
        record: dict[str, Any] = {
            "status": outcome.status, "program": self.program.digest, "inputs": inputs,
            "trace": self.program.trace_level, "outputs": outcome.outputs,
            "counters": outcome.counters,
        }
        if outcome.error is not None:
            record["error"] = error_record(outcome)
        if self.guard is not None:
            self.guard()  # a worker that lost the execution leaves its status alone
        # Durable like the journal: fsynced unless `journal_fsync` is off. Values JSON
        # cannot hold are written as their str().
        directory.write_status(record, fsync=self.settings.journal_fsync, default=str)
        return outcome


    def _run_in_child(self, pool: ChildPool, loaded: LoadedSnapshot | None, journal: Journal,
                      snapshots: _Snapshots, sink: _DeliveryRecorder,
                      inputs: dict[str, Any]) -> Outcome:
        """Run the Machine in a child process; this process performs its effects."""
        first = loaded.header.journal_index if loaded is not None else 0
        tail = [journal.record(i) for i in range(first, journal.count)]
        snapshot = loaded.payload if loaded is not None else b""
        if loaded is not None:
            self.report.resumed = True
            self.report.snapshot = loaded.sequence
            self.report.skipped += [str(s) for s in loaded.skipped]
        else:
            self.report.resumed = journal.count > 0
        self.report.replayed_effects = len(tail)
        program = encode_program(self.program)  # the child compiles nothing
        start = start_message(
            self.execution_id, len(program), inputs, sent_limits(self.settings.limits),
            journal_first=first, snapshot_length=len(snapshot),
            last_delivered=sink.last_delivered,
            snapshot_every_effects=self.settings.snapshot_every_effects,
            snapshot_every_seconds=self.settings.snapshot_every_seconds)
        child = pool.take()
        try:
            return run_in_child(child, start, program + snapshot + pack_records(tail),
                                HostServices(journal, snapshots, sink, self.books,
                                             self._uploads(), self.execution_id,
                                             self.program.trace_sites),
                                self.stop_requested)
        finally:
            child.close()

    def _uploads(self) -> ExecutionArtifacts:
        return ExecutionArtifacts(self.artifact_store, self.execution_id,
                                  self.settings.limits.max_artifact_bytes)

    def _open_journal(self, loaded: LoadedSnapshot | None) -> Journal | None:
        """The journal, read from where `loaded` left off (None if it cannot be)."""
        start = None
        if loaded is not None:
            offset = loaded.header.counters.get("journal_offset")
            if isinstance(offset, int):
                start = (loaded.header.journal_index, offset)
        try:
            # A first start's journal is made by its first record: a run that journals
            # nothing (no Book call, no artifact) writes and fsyncs no file for it.
            return Journal.open(self.directory.journal, self.settings.hmac_key_bytes,
                                self.execution_id, fsync=self.settings.journal_fsync,
                                guard=self.guard, start=start, lazy=True)
        except JournalCorrupt:
            if start is None:
                raise
            return None


def error_record(outcome: Outcome) -> dict[str, Any]:
    """The error of a failed outcome as status events and files carry it."""
    error = outcome.error
    assert error is not None
    where = outcome.location
    return {
        "type": error_type_name(error),
        "message": str(error),
        "line": where.line if where else None,
        "col": where.col if where else None,
    }


def error_type_name(error: BaseException) -> str:
    """The name of the error's type, also for errors reported by a child process."""
    return error.type_name if isinstance(error, RemoteError) else type(error).__name__


class _DeliveryRecorder:
    """Passes trace batches on and remembers the last delivered seq in the state dir."""

    def __init__(self, sink: Sink, directory: ExecutionDir, last_delivered: int) -> None:
        self.sink = sink
        self.directory = directory
        self.seq_file: TraceSeqFile | None = None
        if last_delivered > sink.last_delivered:
            sink.last_delivered = last_delivered

    @property
    def last_delivered(self) -> int:
        return self.sink.last_delivered

    def deliver(self, events: Any) -> None:
        before = self.sink.last_delivered
        self.sink.deliver(events)
        if self.sink.last_delivered != before:
            if self.seq_file is None:
                self.seq_file = self.directory.open_trace_seq()
            self.seq_file.write(self.sink.last_delivered)

    def release(self) -> None:
        """Close `trace.seq` (the run is over; the sink stays open for its owner)."""
        if self.seq_file is not None:
            self.seq_file.close()
            self.seq_file = None

    def close(self) -> None:
        self.release()
        self.sink.close()

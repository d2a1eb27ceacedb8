"""One execution run by real processes: killed with SIGKILL at an effect, then resumed.

`Setup` is what stays the same across the processes of one execution: the compiled
program, its inputs and Books, the snapshot policy, and whether the program runs
isolated (in a child process of the driver, jarvis/runtime/isolation.py, as
production runs it) or in the driver itself.

`drive()` forks a driver process from the test process (the program is compiled
already, so a driver starts in milliseconds), which opens the execution's state
directory and runs `Execution.run()`; a `Kill` makes the driver SIGKILL itself:

- `IN_FLIGHT` at effect k (a Book call): the Book performs the call and logs it, then
  kills the driver before the answer reaches the program or the journal;
- `JOURNALED` at effect k (any kind): right after the journal append of effect k
  returns, before the program sees the result (and before any snapshot after it);
- `TORN` at effect k (any kind): halfway through writing record k, which leaves a
  torn record at the journal's end (for a Book call: performed, result not journaled);
- `SNAPSHOT` at effect k (one a snapshot follows): when the snapshot taken after
  effect k is about to be stored, its trace delivered already.

A driver that is not killed writes how the execution ended to `<id>.result.json`.
Prints are the `print` events of the JSONL trace file every driver of the execution
appends to; Book calls are in the `CallLog` its `LoggedBook`s share.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from logged_books import CallLog, LoggedCall, logged_registry
from virtual_clock import VirtualClock

from jarvis.compiler.compiled import CompiledProgram
from jarvis.runtime import child
from jarvis.runtime.children import Child
from jarvis.runtime.effects_log import decode
from jarvis.runtime.execution import Execution, error_type_name
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.journal import Journal, encode_header, encode_record
from jarvis.runtime.program_bytes import encode_program
from jarvis.runtime.sinks import JsonlSink
from jarvis.runtime.snapshots import SnapshotHeader, SnapshotStore
from jarvis.runtime.statedir import ExecutionDir
from jarvis.settings import EngineSettings, load_settings

IN_FLIGHT = "in_flight"
JOURNALED = "journaled"
TORN = "torn"
SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class Kill:
    """Where a driver dies: at effect `effect` (1-based), at `point` (see above)."""

    point: str
    effect: int


@dataclass(frozen=True)
class Setup:
    """What every process of an execution shares."""

    program: CompiledProgram
    registry: Path
    workdir: Path
    inputs: dict[str, Any]
    isolated: bool
    snapshot_every_effects: int

    def settings(self) -> EngineSettings:
        # Snapshots come from the effect count only (never from elapsed time), so where
        # they fall is the same in every run. fsync is off: a killed *process* loses
        # nothing the kernel already has; fsync matters for a machine that goes down.
        return load_settings(
            state_dir=self.workdir / "state",
            snapshot_every_effects=self.snapshot_every_effects,
            snapshot_every_seconds=86_400.0,
            journal_fsync=False,
            # The isolated children here are forks of the test process, which has the
            # address space of a whole test session (over 1 GiB of mappings late in a
            # run); the default memory limit is sized for a child forked from the small
            # zygote, so it would leave these no room at all.
            limits={"max_memory_bytes": 16 << 30},
        )


@dataclass(frozen=True)
class Ending:
    """How one execution ended, over all the processes that ran it."""

    status: str
    outputs: dict[str, Any]
    error: tuple[str, str] | None
    printed: str
    calls: list[LoggedCall]
    report: dict[str, Any]  # the ResumeReport of the driver that finished it
    snapshots: list[int]  # after which effect each snapshot was stored, by any driver


class DriverForkedChild(Child):
    """An isolated child forked from the driver, the way the zygote forks one
    (jarvis/runtime/zygote.py): the driver, a fork of the test process, has the runtime
    imported already, so the child starts in milliseconds instead of the fraction of a
    second a fresh interpreter takes. What runs in it is the real child
    (`jarvis.runtime.child.serve`), speaking the real channel to the real host side."""

    def __init__(self) -> None:
        super().__init__()
        host = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become_child(host)  # never returns
        self._pid = pid
        self._code: int | None = None
        self.child_end.close()

    def _become_child(self, host: int) -> None:
        code = 1
        try:
            child.become_child(host)
            log = self.log.fileno()
            os.dup2(log, 1)
            os.dup2(log, 2)
            if self.child_end.fileno() != 3:
                os.dup2(self.child_end.fileno(), 3)
            os.closerange(4, os.sysconf("SC_OPEN_MAX"))  # nothing of the driver's stays
            os.chdir(self.workdir)
            code = child.serve_fd(3)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    @property
    def pid(self) -> int:
        return self._pid

    def signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self._pid, signum)

    def poll(self) -> int | None:
        if self._code is None:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                self._code = os.waitstatus_to_exitcode(status)
        return self._code

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the execution's process {self._pid} did not end")
            time.sleep(0.002)
        return code


class _DriverPool(ChildPool):
    """Hands out children forked from the driver, and writes each pid down."""

    def __init__(self, pidfile: Path) -> None:
        super().__init__(size=0)
        self.pidfile = pidfile

    def take(self) -> Child:
        forked = DriverForkedChild()
        self.pidfile.write_text(str(forked.pid), encoding="ascii")
        return forked


def _kill_after_journaling(effect: int) -> None:
    """Make this (driver) process SIGKILL itself once record `effect` is journaled."""
    append = Journal.append

    def append_then_die(journal: Journal, payload: bytes) -> int:
        index = append(journal, payload)
        if index + 1 == effect:
            os.kill(os.getpid(), signal.SIGKILL)
        return index

    Journal.append = append_then_die  # type: ignore[method-assign,assignment]


def _kill_halfway_through_journaling(effect: int, key: bytes) -> None:
    """Make this (driver) process SIGKILL itself when half of record `effect` is written:
    a torn record at the journal's end, as a crash in the middle of a write leaves it."""
    append = Journal.append

    def append_half_then_die(journal: Journal, payload: bytes) -> int:
        if journal.count + 1 == effect:
            record = encode_record(key, journal.execution_id, journal.count, payload)
            with journal.path.open("ab") as file:
                if file.tell() == 0:  # a journal made by its first record: header first
                    file.write(encode_header(journal.execution_id))
                file.write(record[: len(record) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return append(journal, payload)

    Journal.append = append_half_then_die  # type: ignore[method-assign,assignment]


def _kill_before_snapshot(effect: int) -> None:
    """Make this (driver) process SIGKILL itself when it is about to store the snapshot
    taken after effect `effect`: the trace up to there is delivered, the snapshot is not
    stored, so a resume regenerates events that were delivered already."""
    write = SnapshotStore.write

    def die_then_write(store: SnapshotStore, payload: bytes, header: SnapshotHeader) -> Path:
        if header.journal_index == effect:
            os.kill(os.getpid(), signal.SIGKILL)
        return write(store, payload, header)

    SnapshotStore.write = die_then_write  # type: ignore[method-assign,assignment]


def _paths(setup: Setup, execution_id: str) -> dict[str, Path]:
    work = setup.workdir
    return {
        "result": work / f"{execution_id}.result.json",
        "trace": work / f"{execution_id}.trace.jsonl",
        "calls": work / f"{execution_id}.calls.jsonl",
        "child": work / f"{execution_id}.child.pid",
        "snapshots": work / f"{execution_id}.snapshots",
    }


def _driver(setup: Setup, execution_id: str, kill: Kill | None) -> None:
    """The body of a driver process."""
    paths = _paths(setup, execution_id)
    # An isolated child's scratch folder, which a killed host cannot remove, stays in
    # the test's own temporary folder.
    scratch = setup.workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    tempfile.tempdir = str(scratch)
    kill_key = None
    if kill is not None and kill.point == IN_FLIGHT:
        kill_key = f"{execution_id}:{kill.effect}"
    if kill is not None and kill.point == JOURNALED:
        _kill_after_journaling(kill.effect)
    if kill is not None and kill.point == TORN:
        _kill_halfway_through_journaling(kill.effect, setup.settings().hmac_key_bytes[0])
    if kill is not None and kill.point == SNAPSHOT:
        _kill_before_snapshot(kill.effect)
    books = logged_registry(setup.registry, CallLog(paths["calls"]), kill_key)
    sink = JsonlSink(paths["trace"])
    clock = VirtualClock()
    def stored(counters: dict[str, int]) -> None:
        with paths["snapshots"].open("a", encoding="ascii") as file:
            file.write(f"{counters['effects']}\n")

    execution = Execution(
        setup.program, execution_id=execution_id, inputs=setup.inputs, books=books,
        settings=setup.settings(), sink=sink, clock=clock, wait=clock.wait,
        isolation=_DriverPool(paths["child"]) if setup.isolated else None,
        on_snapshot=stored,
    )
    try:
        outcome = execution.run()
    finally:
        sink.close()
        books.close()
    error = outcome.error
    paths["result"].write_text(json.dumps({
        "status": outcome.status,
        "outputs": outcome.outputs,
        "error": None if error is None else [error_type_name(error), str(error)],
        "line": outcome.location.line if outcome.location else None,
        "report": asdict(execution.report),
    }), encoding="utf-8")


def drive(setup: Setup, execution_id: str, kill: Kill | None) -> int:
    """Run the execution in a forked driver process until it ends or is killed; the
    driver's wait status."""
    setup.workdir.mkdir(parents=True, exist_ok=True)
    if setup.isolated:
        # What a host sends its child, encoded once here (as a worker encodes a program
        # once for all its runs) rather than once in every driver.
        encode_program(setup.program)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the driver
        code = 70
        try:
            _driver(setup, execution_id, kill)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has exited


def assert_child_died_with_driver(setup: Setup, execution_id: str) -> None:
    """An isolated child must not outlive its killed host (it would run unobserved)."""
    pidfile = _paths(setup, execution_id)["child"]
    if not setup.isolated:
        return
    pid = int(pidfile.read_text(encoding="ascii"))
    deadline = time.monotonic() + 10
    while not _dead(pid):
        assert time.monotonic() < deadline, f"child {pid} outlived its killed host"
        time.sleep(0.01)


def printed_text(trace: Path) -> str:
    """The text printed, from the JSONL trace all drivers appended to; every event must
    have been delivered once, in order."""
    if not trace.exists():
        return ""
    events = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()]
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(1, len(seqs) + 1)), "a trace event was lost or delivered twice"
    return "".join(event["value"] for event in events if event["kind"] == "print")


def run_killed(setup: Setup, execution_id: str, kill: Kill | None) -> Ending:
    """Run the execution; when `kill` is given, the first driver must die by SIGKILL
    there, and a second one resumes it to its end."""
    paths = _paths(setup, execution_id)
    status = drive(setup, execution_id, kill)
    if kill is not None:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"the driver was to be killed at {kill}, but ended with wait status {status}")
        assert not paths["result"].exists()
        assert_child_died_with_driver(setup, execution_id)
        status = drive(setup, execution_id, None)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"the driver of {execution_id} failed (wait status {status}); see its stderr")
    result = json.loads(paths["result"].read_text(encoding="utf-8"))
    error = result["error"]
    return Ending(
        status=result["status"],
        outputs=result["outputs"],
        error=None if error is None else (error[0], error[1]),
        printed=printed_text(paths["trace"]),
        calls=CallLog(paths["calls"]).calls(),
        report=result["report"],
        snapshots=[int(line) for line in paths["snapshots"].read_text("ascii").split()]
        if paths["snapshots"].exists() else [],
    )


def effect_kinds(setup: Setup, execution_id: str) -> list[str]:
    """The kind of every effect the execution journaled, in order."""
    settings = setup.settings()
    directory = ExecutionDir(settings.state_dir, execution_id)
    with Journal.open(directory.journal, settings.hmac_key_bytes, execution_id,
                      fsync=False) as journal:
        return [str(decode(record)["k"]) for record in journal.records()]

"""Where one execution keeps its durable state, and how small state files are written.

    <state_dir>/executions/<execution_id>/
        journal         completed effects, append-only (journal.py)
        snapshots/      signed snapshots of the live state (snapshots.py)
        trace.seq       the last trace seq the sink delivered
        status.json     the last status reported for the execution
    <state_dir>/trash/  executions being removed

An execution id becomes a directory name, so it is checked here and nowhere else.
The module also holds what the journal and the snapshots share: the file primitives
(`write_file_atomically`, `fsync_directory`), the check of HMAC keys, and the root
of their exceptions (`StateError`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

MAX_EXECUTION_ID_LENGTH = 128

# ASCII only on purpose: `\w` would let in Unicode letters that file systems normalise.
_EXECUTION_ID = re.compile(r"[A-Za-z0-9._-]+")

# Private files: snapshots and journals hold program state and Book results.
FILE_MODE = 0o600
DIR_MODE = 0o700


class StateError(Exception):
    """Durable state could not be read or written as it should: the root of this layer's errors."""


class InvalidExecutionId(StateError, ValueError):
    """An execution id that cannot safely be a directory name."""


def validate_execution_id(execution_id: str) -> str:
    """Return `execution_id` when it is a safe file name, else raise `InvalidExecutionId`.

    Allowed: ASCII letters, digits, `-`, `_` and `.`, 1 to 128 characters, not `.` or `..`.
    """
    if not isinstance(execution_id, str):
        raise InvalidExecutionId(f"an execution id must be a string, not {type(execution_id)}")
    if not execution_id:
        raise InvalidExecutionId("an execution id must not be empty")
    if len(execution_id) > MAX_EXECUTION_ID_LENGTH:
        raise InvalidExecutionId(
            f"execution id is {len(execution_id)} characters long; "
            f"at most {MAX_EXECUTION_ID_LENGTH} are allowed"
        )
    if execution_id in (".", ".."):
        raise InvalidExecutionId(f"{execution_id!r} is not a valid execution id")
    if not _EXECUTION_ID.fullmatch(execution_id):
        raise InvalidExecutionId(
            f"execution id {execution_id!r} may hold only ASCII letters, digits, '-', '_' and '.'"
        )
    return execution_id


def check_hmac_keys(keys: Sequence[bytes]) -> tuple[bytes, ...]:
    """The HMAC keys as a tuple, signing key first; refuses an empty list or an empty key."""
    if isinstance(keys, bytes | str):
        # A lone key would otherwise be taken as a sequence of one-byte keys.
        raise TypeError("keys must be a sequence of bytes keys, not a single key")
    checked = tuple(keys)
    if not checked:
        raise ValueError("at least one HMAC key is needed")
    for position, key in enumerate(checked):
        if not isinstance(key, bytes):
            raise TypeError(f"HMAC key {position} is a {type(key).__name__}, not bytes")
        if not key:
            raise ValueError(f"HMAC key {position} is empty")
    return checked


def fsync_directory(path: Path | str) -> None:
    """Make the entries of a directory (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd`: os.write may write less than it was given."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _TempNames:
    """Unique temporary names without asking the OS for randomness each time: a random
    prefix per process (made again in a forked child) and a counter."""

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):x}"


_TEMP_NAMES = _TempNames()


def temp_name(final: Path) -> Path:
    """The name a file is written under before it is renamed to `final`: hidden, unique
    (among processes too, on every host sharing the directory)."""
    return Path(_temp_path(os.fspath(final)))


def _temp_path(final: str) -> str:
    """`temp_name` of a path as a string (a run writes a few small files: made without
    the `Path` objects, their parsing and their string forms)."""
    head, name = os.path.split(final)
    return os.path.join(head, f".{name}.{_TEMP_NAMES.next()}.tmp")


def write_file_atomically(
    path: Path | str,
    data: bytes,
    *,
    fsync: bool = True,
    before_publish: Callable[[], None] | None = None,
) -> None:
    """Replace `path` by a file holding `data`, so a reader sees the old or the new, never half.

    The data goes to a temporary file in the same directory, is fsynced, and is renamed
    over `path`; then the directory is fsynced so the rename survives a crash.
    `before_publish` runs just before the rename (a fencing check); if it raises, the
    temporary file is removed and `path` is untouched.
    """
    final = os.fspath(path)
    temp = _temp_path(final)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if before_publish is not None:
            before_publish()
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if fsync:
        fsync_directory(os.path.dirname(final) or ".")


@dataclass(frozen=True)
class ExecutionDir:
    """The directory of one execution under a state dir, and its small state files.

    Its paths are made once per instance (a run asks for them a few dozen times)."""

    state_dir: Path
    execution_id: str

    def __post_init__(self) -> None:
        validate_execution_id(self.execution_id)

    @cached_property
    def root(self) -> Path:
        """`<state_dir>/executions/<execution_id>`."""
        return self.state_dir / "executions" / self.execution_id

    @cached_property
    def journal(self) -> Path:
        """The journal file (see jarvis.runtime.journal)."""
        return self.root / "journal"

    @cached_property
    def snapshots(self) -> Path:
        """The snapshot directory (see jarvis.runtime.snapshots)."""
        return self.root / "snapshots"

    @cached_property
    def trace_seq(self) -> Path:
        """The file holding the last delivered trace seq, as decimal text."""
        return self.root / "trace.seq"

    @cached_property
    def status(self) -> Path:
        """The file holding the last reported status, as a JSON object."""
        return self.root / "status.json"

    def exists(self) -> bool:
        """Whether the execution has a directory (it ran, or is running, here)."""
        return self.root.is_dir()

    def create(self) -> None:
        """Create the directory and its snapshot directory; nothing happens when they exist.

        Once this object made sure of them it does not look again (a worker's run
        creates them, then hands the same object to its Execution, which makes sure)."""
        if self.__dict__.get("_created"):
            return
        try:  # most often a first start: two `mkdir`s
            os.mkdir(self.root)
        except FileExistsError:
            pass
        except FileNotFoundError:  # no executions/ (or state dir) yet
            self.root.mkdir(parents=True, exist_ok=True)
        self.snapshots.mkdir(mode=DIR_MODE, exist_ok=True)
        self.__dict__["_created"] = True

    def remove(self) -> bool:
        """Delete everything the execution stored here; False when there was nothing.

        The directory is first renamed into `<state_dir>/trash/`, which is atomic: a crash
        half-way through deleting can never leave snapshots without their journal where
        a resume would find them. What is left in the trash is deleted by the next remove.
        """
        trash = self.state_dir / "trash"
        trash.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        doomed = trash / f"{self.execution_id}.{secrets.token_hex(8)}"
        try:
            os.rename(self.root, doomed)
        except FileNotFoundError:
            removed = False
        else:
            removed = True
            # Both ends of a rename across directories must be durable.
            fsync_directory(self.root.parent)
            fsync_directory(trash)
        # Leftovers of earlier removes too; another worker may be deleting the same ones.
        for entry in trash.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
        return removed

    def read_trace_seq(self) -> int | None:
        """The last delivered trace seq, or None when none was recorded."""
        try:
            text = self.trace_seq.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"{self.trace_seq}: cannot read: {exc}") from exc
        try:
            seq = int(text.strip())
        except ValueError:
            raise StateError(f"{self.trace_seq}: not a trace seq: {text[:40]!r}") from None
        if seq < 0:
            raise StateError(f"{self.trace_seq}: negative trace seq {seq}")
        return seq

    def write_trace_seq(self, seq: int, *, fsync: bool = True) -> None:
        """Record `seq` as the last delivered trace seq (atomically)."""
        if seq < 0:
            raise ValueError(f"a trace seq is never negative, got {seq}")
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        write_file_atomically(self.trace_seq, f"{seq}\n".encode("ascii"), fsync=fsync)

    def open_trace_seq(self) -> TraceSeqFile:
        """`trace.seq` held open for a run that records many seqs (see `TraceSeqFile`)."""
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        return TraceSeqFile(self.trace_seq)

    def read_status(self) -> dict[str, Any] | None:
        """The last recorded status object, or None when none was recorded."""
        try:
            data = self.status.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{self.status}: cannot read: {exc}") from exc
        try:
            status = json.loads(data)
        except ValueError as exc:
            raise StateError(f"{self.status}: not valid JSON: {exc}") from exc
        if not isinstance(status, dict):
            raise StateError(f"{self.status}: holds a {type(status).__name__}, not an object")
        return status

    def write_status(self, status: Mapping[str, Any], *, fsync: bool = True,
                     default: Callable[[Any], Any] | None = None) -> None:
        """Record `status` (JSON-serialisable, or made so by `default`, as json.dumps
        takes it) as the execution's status (atomically).

        Key order is kept: the inputs a resume reads back from here must iterate in the
        order the execution started with, and outputs in the order they were recorded."""
        data = json.dumps(dict(status), allow_nan=False, default=default).encode("utf-8") \
            + b"\n"
        try:
            write_file_atomically(self.status, data, fsync=fsync)
        except FileNotFoundError:  # no directory (yet, or any more): made, then again
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            write_file_atomically(self.status, data, fsync=fsync)


TRACE_SEQ_DIGITS = 20
"""`TraceSeqFile` writes a seq zero-padded to this width (a seq is below 2**63)."""


class TraceSeqFile:
    """`trace.seq`, open for a run: each `write` overwrites the seq in place.

    A run records the last delivered seq after every batch of trace events. Replacing
    the file each time (a temporary file and a rename, `write_trace_seq`) costs a few
    system calls and a directory entry per batch; here a batch costs one `pwrite` of a
    fixed-width line at offset 0, so the file always holds one whole seq (a process
    that dies mid-run leaves the last one written). Like `write_trace_seq(fsync=False)`
    it is a hint that bounds how many events a resume delivers again, not a durable
    record: delivery is at least once. `read_trace_seq` reads both forms.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        self._sized = False

    def write(self, seq: int) -> None:
        if seq < 0:
            raise ValueError(f"a trace seq is never negative, got {seq}")
        if self._fd is None:
            raise StateError(f"{self.path}: closed")
        data = b"%0*d\n" % (TRACE_SEQ_DIGITS, seq)
        os.pwrite(self._fd, data, 0)
        if not self._sized:
            # A file written by `write_trace_seq` may be longer than one line here.
            os.ftruncate(self._fd, len(data))
            self._sized = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

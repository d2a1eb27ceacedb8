"""Signed snapshots of an execution's state, written atomically, newest first on load.

The Machine hands over the pickled state as bytes with a `SnapshotHeader`; this module
signs and stores them, keeps the newest few, and on resume gives back the newest one
that verifies and was made by the same program and compiler. It never unpickles
anything: a payload is only returned after its HMAC checked out.

File layout (docs/durability.md is the reference), integers big-endian:

    magic "JARVSNAP" | version u16 | key id (8 bytes) | header length u32 | header JSON
    | payload length u64 | payload | HMAC-SHA256 over everything before it (32 bytes)

Files are named `snapshot-<sequence, 12 digits>.jsnap`; the highest sequence is newest.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import math
import os
import re
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from jarvis.runtime.signing import PreparedHmac
from jarvis.runtime.statedir import (
    DIR_MODE,
    StateError,
    check_hmac_keys,
    fsync_directory,
    validate_execution_id,
    write_all,
    write_file_atomically,
)

MAGIC = b"JARVSNAP"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 << 10

_PREFIX = struct.Struct(">8sH8sI")  # magic, version, key id, header length
_PAYLOAD_LENGTH = struct.Struct(">Q")
_MAC_SIZE = 32
_NAME = re.compile(r"snapshot-(\d{12})\.jsnap")
# What statedir.temp_name makes of a snapshot's name: left behind by a crash mid-write.
_TEMP_NAME = re.compile(r"\.snapshot-\d{12}\.jsnap\.[0-9a-f]+\.tmp")
# Made once: `json.dumps` with options makes an encoder on every call.
_HEADER_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
_HEADER_FIELDS = frozenset(
    {
        "format_version",
        "program_hash",
        "compiler_version",
        "execution_id",
        "journal_index",
        "created_at",
        "counters",
        "sequence",
    }
)


def key_id(key: bytes) -> bytes:
    """The 8 bytes that name `key` in a snapshot, so the loader knows which key to check.

    A hash, so the file says which key signed it without saying anything about the key.
    """
    return sha256(b"jarvis snapshot key id\x00" + key).digest()[:8]


@functools.lru_cache(maxsize=8)
def _key_ring(keys: tuple[bytes, ...]) -> tuple[dict[bytes, bytes], bytes, PreparedHmac]:
    """The keys by id (the signing key wins a clash), the signing key's id, its signer.
    Shared by stores: none changes them (a `PreparedHmac` copies its states to sign)."""
    return ({key_id(key): key for key in reversed(keys)}, key_id(keys[0]),
            PreparedHmac(keys[0]))


class SnapshotRejected(StateError):
    """Snapshots exist but none can be used; `skipped` says why for each one."""

    def __init__(self, directory: Path, skipped: Sequence[SkippedSnapshot]) -> None:
        lines = "\n".join(f"  {entry}" for entry in skipped)
        super().__init__(f"{directory}: no usable snapshot among {len(skipped)}:\n{lines}")
        self.directory = directory
        self.skipped = tuple(skipped)


@dataclass(frozen=True, kw_only=True)
class SnapshotHeader:
    """What a snapshot says about itself, signed together with the payload."""

    #: The snapshot file format; the store refuses other versions.
    format_version: int = FORMAT_VERSION
    #: The program's identity (the SHA-256 of its source).
    program_hash: str
    #: The version of the compiler that lowered the program (frames depend on it).
    compiler_version: str
    execution_id: str
    #: How many journal records the snapshot covers: resume replays from this index.
    journal_index: int
    #: When the snapshot was taken, in seconds since the epoch.
    created_at: float = field(default_factory=time.time)
    #: Small numbers worth reporting (steps, effects, ...); not used by the store.
    counters: Mapping[str, int | float] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError when the header cannot be written as it is."""
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version}; this build writes {FORMAT_VERSION}"
            )
        validate_execution_id(self.execution_id)
        for name in ("program_hash", "compiler_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not _is_int(self.journal_index) or self.journal_index < 0:
            raise ValueError(f"journal_index must be an int >= 0, got {self.journal_index!r}")
        if not _is_number(self.created_at):
            raise ValueError(f"created_at must be a finite number, got {self.created_at!r}")
        for name, value in self.counters.items():
            if not isinstance(name, str) or not _is_number(value):
                raise ValueError(f"counter {name!r}: must be a str mapped to a number")

    def to_json(self, sequence: int) -> dict[str, Any]:
        """The header as written, with the store's sequence number."""
        return {
            "format_version": self.format_version,
            "program_hash": self.program_hash,
            "compiler_version": self.compiler_version,
            "execution_id": self.execution_id,
            "journal_index": self.journal_index,
            "created_at": self.created_at,
            "counters": dict(self.counters),
            "sequence": sequence,
        }

    @classmethod
    def from_json(cls, data: Any) -> tuple[SnapshotHeader, int]:
        """Read a header written by `to_json`: (header, sequence); ValueError if malformed."""
        if not isinstance(data, dict) or set(data) != _HEADER_FIELDS:
            raise ValueError("unexpected header fields")
        counters = data["counters"]
        if not isinstance(counters, dict):
            raise ValueError("counters is not an object")
        sequence = data["sequence"]
        if not _is_int(sequence):
            raise ValueError("sequence is not an int")
        header = cls(
            format_version=data["format_version"],
            program_hash=data["program_hash"],
            compiler_version=data["compiler_version"],
            execution_id=data["execution_id"],
            journal_index=data["journal_index"],
            created_at=data["created_at"],
            counters=counters,
        )
        header.check()
        return header, sequence


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


@dataclass(frozen=True)
class SkippedSnapshot:
    """A snapshot the loader passed over, and why."""

    path: Path
    sequence: int
    reason: str

    def __str__(self) -> str:
        return f"snapshot {self.sequence} ({self.path.name}): {self.reason}"


@dataclass(frozen=True)
class LoadedSnapshot:
    """The newest snapshot that verified, and those newer ones that did not."""

    path: Path
    sequence: int
    header: SnapshotHeader
    #: The bytes the Machine wrote; authenticated, not yet unpickled.
    payload: bytes
    #: Newer snapshots that were passed over, newest first ("fell back from ...").
    skipped: tuple[SkippedSnapshot, ...] = ()


class _Unusable(Exception):
    """Why one snapshot file cannot be used (becomes a SkippedSnapshot)."""


class SnapshotStore:
    """The snapshots of one execution, in one directory.

    `keys[0]` signs, every key verifies. `guard`, when given, is called before every
    change to the directory (it raises to refuse a stale worker's write). `max_bytes`
    bounds a payload on write, and the files the loader is willing to read. `fsync`
    (on by default) makes each snapshot durable before `write` returns; an execution
    whose journal is not fsynced (`journal_fsync = false`) turns it off too, since its
    snapshots can then outlive the journal records they cover anyway (a resume checks
    that, and replays the journal from its start instead).
    """

    def __init__(
        self,
        directory: Path | str,
        keys: Sequence[bytes],
        keep: int = 2,
        *,
        guard: Callable[[], None] | None = None,
        max_bytes: int | None = None,
        fsync: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self._dir = os.fspath(self.directory)
        self.keep = keep
        self._keys = check_hmac_keys(keys)
        # Made once per set of keys (a worker makes a store per run, with the same keys).
        self._keys_by_id, self._signing_key_id, self._signer = _key_ring(self._keys)
        self._guard = guard
        self._max_bytes = max_bytes
        self._fsync = fsync

    def sequences(self) -> list[int]:
        """The sequence numbers of the snapshot files present, oldest first."""
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        found = (_NAME.fullmatch(name) for name in names)
        return sorted(int(match.group(1)) for match in found if match)

    def path_of(self, sequence: int) -> Path:
        """The file name of snapshot `sequence`."""
        return self.directory / f"snapshot-{sequence:012d}.jsnap"

    # -- writing --------------------------------------------------------------------

    def write(self, payload: bytes, header: SnapshotHeader) -> Path:
        """Store a new snapshot durably, then delete all but the newest `keep`; its path.

        Once this returns, the snapshot survives a crash (with `fsync`; without, it
        survives the process). A crash before that leaves the newest `keep - 1`
        snapshots as they were (all of them when `keep` is 1), and perhaps a file that
        loading passes over and a later write reuses or deletes.
        """
        header.check()
        if self._max_bytes is not None and len(payload) > self._max_bytes:
            raise ValueError(
                f"snapshot payload is {len(payload)} bytes; the limit is {self._max_bytes}"
            )
        self._check_guard()
        existing = self._scan_for_write()
        sequence = existing[-1] + 1 if existing else 1
        path = self.path_of(sequence)
        data = self._encode(payload, header, sequence)
        # The snapshots that this one pushes out of the newest `keep`.
        doomed = existing[: max(len(existing) + 1 - self.keep, 0)]
        if self.keep > 1 and doomed and self._rewrite(self._file(doomed[-1]), path, data):
            doomed.pop()
        else:
            write_file_atomically(path, data, fsync=self._fsync,
                                  before_publish=self._check_guard)
        self._prune(doomed)
        return path

    def _file(self, sequence: int) -> str:
        """`path_of(sequence)` as a string, which system calls take without a `Path`."""
        return f"{self._dir}/snapshot-{sequence:012d}.jsnap"

    def _rewrite(self, old: str, path: Path, data: bytes) -> bool:
        """Turn the snapshot file `old`, which is about to be deleted, into `path`.

        Creating a file and deleting another costs a file system far more than
        overwriting one (on ext4, most of what a snapshot cost). So the data goes over
        the old file's bytes, under its old name, and the file is then renamed to its
        new name: a reader sees the new name appear with the whole snapshot, as with a
        temporary file. Meanwhile the old name holds a torn or renamed snapshot, which
        loading passes over (it is older than the newest `keep - 1`, which stay as they
        were). False when `old` cannot be opened or is gone before its rename (someone
        else's doing): the caller then writes a new file instead.
        """
        try:
            fd = os.open(old, os.O_WRONLY)
        except OSError:
            return False
        try:
            write_all(fd, data)
            # SEEK_END: the old file's size, cheaper to ask than to cut it to the same size.
            if os.lseek(fd, 0, os.SEEK_END) > len(data):
                os.ftruncate(fd, len(data))
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._check_guard()
        try:
            os.rename(old, path)
        except FileNotFoundError:
            return False
        if self._fsync:
            fsync_directory(self.directory)
        return True

    def _encode(self, payload: bytes, header: SnapshotHeader, sequence: int) -> bytes:
        header_json = _HEADER_JSON.encode(header.to_json(sequence)).encode("utf-8")
        if len(header_json) > MAX_HEADER_BYTES:
            raise ValueError(
                f"snapshot header is {len(header_json)} bytes; at most {MAX_HEADER_BYTES}"
            )
        body = b"".join(
            (
                _PREFIX.pack(MAGIC, FORMAT_VERSION, self._signing_key_id, len(header_json)),
                header_json,
                _PAYLOAD_LENGTH.pack(len(payload)),
                payload,
            )
        )
        return body + self._signer.digest(body)

    def _prune(self, doomed: list[int]) -> None:
        if not doomed:
            return
        self._check_guard()
        for sequence in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file(sequence))
        if self._fsync:
            fsync_directory(self.directory)

    def _scan_for_write(self) -> list[int]:
        """The sequences present, oldest first, with the temporary files a crash
        mid-write left behind removed (one listing of the directory for both); the
        directory is created when missing."""
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            names = []
        sequences: list[int] = []
        for name in names:
            match = _NAME.fullmatch(name)
            if match:
                sequences.append(int(match.group(1)))
            elif _TEMP_NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self._dir}/{name}")
        sequences.sort()
        return sequences

    def _check_guard(self) -> None:
        if self._guard is not None:
            self._guard()

    # -- loading --------------------------------------------------------------------

    def load_newest(
        self,
        expect_program_hash: str,
        expect_compiler_version: str,
        *,
        expect_execution_id: str | None = None,
    ) -> LoadedSnapshot | None:
        """The newest snapshot that verifies and matches; None when there is none at all.

        A snapshot is passed over, with the reason recorded in `LoadedSnapshot.skipped`,
        when it is damaged or truncated, of another format version, signed by no
        configured key, fails its HMAC, or was made for another program, compiler or
        execution. If every snapshot is passed over, `SnapshotRejected` lists them all.
        """
        skipped: list[SkippedSnapshot] = []
        for sequence in reversed(self.sequences()):
            path = self.path_of(sequence)
            try:
                header, payload = self._read(path, sequence)
                _check_expected(
                    header, expect_program_hash, expect_compiler_version, expect_execution_id
                )
            except _Unusable as exc:
                skipped.append(SkippedSnapshot(path, sequence, str(exc)))
                continue
            return LoadedSnapshot(path, sequence, header, payload, tuple(skipped))
        if skipped:
            raise SnapshotRejected(self.directory, skipped)
        return None

    def _read(self, path: Path, sequence: int) -> tuple[SnapshotHeader, bytes]:
        """The verified header and payload of one file, or `_Unusable` saying what is wrong."""
        try:
            size = os.stat(path).st_size
            if self._max_bytes is not None:
                largest = _PREFIX.size + MAX_HEADER_BYTES + 8 + self._max_bytes + _MAC_SIZE
                if size > largest:
                    raise _Unusable(f"file of {size} bytes is larger than the limit allows")
            data = path.read_bytes()
        except OSError as exc:
            raise _Unusable(f"cannot read: {exc}") from exc
        body = self._authenticate(data)
        header_end = _PREFIX.size + _PREFIX.unpack_from(body)[3]
        try:
            header, written_sequence = SnapshotHeader.from_json(
                json.loads(body[_PREFIX.size : header_end])
            )
        except ValueError as exc:
            # Signed yet unreadable: written by a build that disagrees about the format.
            raise _Unusable(f"unreadable header: {exc}") from exc
        if written_sequence != sequence:
            raise _Unusable(
                f"header says sequence {written_sequence}; the file was renamed"
            )
        return header, body[header_end + _PAYLOAD_LENGTH.size :]

    def _authenticate(self, data: bytes) -> bytes:
        """Check framing and HMAC: the signed part of the file, or `_Unusable`."""
        if len(data) < _PREFIX.size:
            raise _Unusable(f"truncated: {len(data)} bytes")
        magic, version, signer, header_length = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise _Unusable("not a Jarvis snapshot (bad magic)")
        if version != FORMAT_VERSION:
            raise _Unusable(f"format version {version}; this build reads {FORMAT_VERSION}")
        if header_length > MAX_HEADER_BYTES:
            raise _Unusable(f"header length {header_length} exceeds {MAX_HEADER_BYTES}")
        header_end = _PREFIX.size + header_length
        if len(data) < header_end + _PAYLOAD_LENGTH.size:
            raise _Unusable(f"truncated: {len(data)} bytes")
        (payload_length,) = _PAYLOAD_LENGTH.unpack_from(data, header_end)
        expected_size = header_end + _PAYLOAD_LENGTH.size + payload_length + _MAC_SIZE
        if len(data) < expected_size:
            raise _Unusable(f"truncated: {len(data)} bytes of {expected_size}")
        if len(data) > expected_size:
            raise _Unusable(f"{len(data) - expected_size} unexpected bytes after the signature")
        key = self._keys_by_id.get(signer)
        if key is None:
            raise _Unusable(
                f"signed with key id {signer.hex()}, which is none of the configured keys"
            )
        body, mac = data[:-_MAC_SIZE], data[-_MAC_SIZE:]
        if not hmac.compare_digest(hmac.new(key, body, sha256).digest(), mac):
            raise _Unusable("bad HMAC: damaged or tampered with")
        return body


def _check_expected(
    header: SnapshotHeader,
    program_hash: str,
    compiler_version: str,
    execution_id: str | None,
) -> None:
    if execution_id is not None and header.execution_id != execution_id:
        raise _Unusable(f"made for execution {header.execution_id!r}, not {execution_id!r}")
    if header.program_hash != program_hash:
        raise _Unusable(f"made for program {header.program_hash}, not {program_hash}")
    if header.compiler_version != compiler_version:
        raise _Unusable(
            f"made by compiler version {header.compiler_version}, not {compiler_version}"
        )

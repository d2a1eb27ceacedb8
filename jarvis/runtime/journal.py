"""The journal of an execution: one signed, checksummed record per completed effect.

The Machine appends a record for every effect before the program goes on, so a resume
can feed the program the results it already had instead of calling Books again. This
module only moves bytes: it never looks inside a payload.

File layout (docs/durability.md is the reference):

    header  magic "JARVJRNL" | version u16 | id length u16 | execution id | crc32 u32
    record  length u32 | crc32 u32 | HMAC-SHA256 (32 bytes) | payload

All integers are big-endian. A record's crc32 covers its length, HMAC and payload; its
HMAC covers the execution id, the record's index and the payload, so records cannot be
moved between journals or reordered. On open, a damaged end (a crash mid-append) is cut
off and counted in `dropped_tail_bytes`; damage followed by intact records, or a record
no key verifies, raises `JournalCorrupt`.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import mmap
import os
import struct
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from zlib import crc32

from jarvis.runtime.signing import PreparedHmac
from jarvis.runtime.statedir import (
    FILE_MODE,
    StateError,
    check_hmac_keys,
    fsync_directory,
    validate_execution_id,
    write_all,
)

MAGIC = b"JARVJRNL"
FORMAT_VERSION = 1
#: Larger payloads are refused on append and taken as a damaged length on open.
MAX_PAYLOAD_BYTES = 256 << 20

_HEADER_FIXED = struct.Struct(">8sHH")  # magic, version, execution id length
_CRC = struct.Struct(">I")
_PREFIX = struct.Struct(">II32s")  # payload length, crc32, HMAC
_LENGTH_CRC = struct.Struct(">II")  # the start of _PREFIX
_MAC_DOMAIN = b"jarvis journal record\x00"
_INDEX = struct.Struct(">Q")
_ID_LENGTH = struct.Struct(">H")
# The whole file while it is scanned on open (an mmap), or one record read later.
_Buffer = bytes | mmap.mmap


class JournalError(StateError):
    """The journal cannot be used: closed, or left unusable by a failed write."""


class JournalFormatError(JournalError):
    """The file is not a journal this build reads, or belongs to another execution."""


class JournalCorrupt(JournalError):
    """The journal was damaged or tampered with somewhere that cannot be cut off safely."""

    def __init__(self, path: Path, offset: int, index: int | None, reason: str) -> None:
        where = f"byte offset {offset}"
        if index is not None:
            where = f"record {index} at {where}"
        super().__init__(f"{path}: {where}: {reason}")
        self.path = path
        self.offset = offset
        self.index = index
        self.reason = reason


def encode_header(execution_id: str) -> bytes:
    """The header a journal of `execution_id` starts with."""
    ident = execution_id.encode("ascii")
    fixed = _HEADER_FIXED.pack(MAGIC, FORMAT_VERSION, len(ident)) + ident
    return fixed + _CRC.pack(zlib.crc32(fixed))


def _mac_prefix(execution_id: bytes) -> bytes:
    """What a record's HMAC covers before its index: the same for every record."""
    # The id's length goes first so that (id, index) pairs cannot run into each other.
    return _MAC_DOMAIN + _ID_LENGTH.pack(len(execution_id)) + execution_id


def encode_record(key: bytes, execution_id: str, index: int, payload: bytes) -> bytes:
    """Record number `index` of `execution_id`'s journal, signed with `key`."""
    return _Signer(key, _mac_prefix(execution_id.encode("ascii"))).record(index, payload)


class _Signer(PreparedHmac):
    """HMAC-SHA256 of one journal's records under one key: the key's pads and the
    journal's fixed message prefix are hashed once (see `PreparedHmac`)."""

    __slots__ = ()

    def sign(self, index: int, payload: bytes | memoryview) -> bytes:
        inner = self._inner.copy()
        inner.update(_INDEX.pack(index))
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def record(self, index: int, payload: bytes) -> bytes:
        """Record number `index` holding `payload`, signed: `sign` and the framing in
        one call (an append's only Python call besides the file's)."""
        inner = self._inner.copy()
        inner.update(_INDEX.pack(index))
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        signed = outer.digest() + payload
        length = len(payload)
        # The crc32 covers the length field, then the HMAC and the payload.
        return _LENGTH_CRC.pack(length, crc32(signed, crc32(_CRC.pack(length)))) + signed


def _framing_problem(buf: _Buffer, offset: int) -> tuple[int, str | None]:
    """Check the framing of the record at `offset`: (its end, None) or (-1, what is wrong)."""
    if len(buf) - offset < _PREFIX.size:
        return -1, "partial record header"
    length, crc, _ = _PREFIX.unpack_from(buf, offset)
    if length > MAX_PAYLOAD_BYTES:
        return -1, f"record length {length} exceeds the maximum {MAX_PAYLOAD_BYTES}"
    end = offset + _PREFIX.size + length
    if end > len(buf):
        return -1, f"record of {length} bytes runs past the end of the file"
    # The crc32 field sits between the length and the rest it covers.
    actual = zlib.crc32(buf[offset + 8 : end], zlib.crc32(buf[offset : offset + 4]))
    if actual != crc:
        return -1, "checksum mismatch"
    return end, None


def _verifies(signers: Sequence[_Signer], index: int, mac: bytes,
              payload: bytes | memoryview) -> bool:
    return any(hmac.compare_digest(signer.sign(index, payload), mac) for signer in signers)


def _signers(keys: Sequence[bytes], execution_id: bytes) -> tuple[_Signer, ...]:
    prefix = _mac_prefix(execution_id)
    return tuple(_Signer(key, prefix) for key in keys)


class Journal:
    """An open journal file. Not thread-safe: one writer (the Machine) at a time.

    Create or open one with `Journal.open`. `guard`, when given, is called before every
    change to the file (creation, cutting a damaged end, each append); it raises to
    refuse the write, which is how a worker whose lease was taken over is fenced off.
    """

    def __init__(
        self,
        *,
        path: Path,
        fd: int | None,
        keys: tuple[bytes, ...],
        execution_id: str,
        fsync: bool,
        guard: Callable[[], None] | None,
        offsets: array[int],
        end: int,
        dropped_tail_bytes: int,
        base: int = 0,
    ) -> None:
        self.path = path
        self.execution_id = execution_id
        #: Bytes of a damaged end cut off when the journal was opened (0 when intact).
        self.dropped_tail_bytes = dropped_tail_bytes
        # None: a journal opened `lazy` that has no record yet, and so no file.
        self._fd = fd
        self._id = execution_id.encode("ascii")
        self._keys = keys
        self._fsync = fsync
        self._guard = guard
        self._offsets = offsets
        # Records before `base` were not read on open (a resume from a snapshot that
        # covers them never needs them); `_offsets[i]` is record `base + i`.
        self._base = base
        self._end = end
        self._closed = False
        self._broken: str | None = None

    @functools.cached_property
    def _signers(self) -> tuple[_Signer, ...]:
        """One per key: keys[0] signs new records; any of them verifies a record. Made
        when first needed (a run that journals nothing never needs them)."""
        return _signers(self._keys, self._id)

    # -- opening --------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path | str,
        keys: Sequence[bytes],
        execution_id: str,
        fsync: bool = True,
        *,
        guard: Callable[[], None] | None = None,
        start: tuple[int, int] | None = None,
        lazy: bool = False,
    ) -> Journal:
        """Open the journal at `path`, creating it when missing, and check its records.

        With `lazy`, a missing journal is created by its first append instead (with its
        guard, header and fsyncs as here): a run that journals nothing writes no file.

        `keys` verify records, and `keys[0]` signs new ones. Raises `JournalFormatError`
        for a file that is not a journal of `execution_id` in this format, and
        `JournalCorrupt` for damage that is not a torn end.

        `start` = (record index, byte offset) skips the records before that point: a
        resume from a snapshot that covers them reads, and checks, only the tail, so
        opening costs what the tail costs, not what the whole run wrote. A `start` that
        is not a record boundary of this file raises `JournalCorrupt`.
        """
        path = Path(path)
        checked_keys = check_hmac_keys(keys)
        validate_execution_id(execution_id)
        header = encode_header(execution_id)
        base = start[0] if start is not None else 0
        missing = not path.exists()
        if missing and lazy and start is None:
            return cls(path=path, fd=None, keys=checked_keys, execution_id=execution_id,
                       fsync=fsync, guard=guard, offsets=array("Q"), end=len(header),
                       dropped_tail_bytes=0, base=base)
        created = cls._create(path, header, fsync, guard) if missing else None
        if created is not None and start is None:  # just written: nothing to check
            return cls(path=path, fd=created, keys=checked_keys, execution_id=execution_id,
                       fsync=fsync, guard=guard, offsets=array("Q"), end=len(header),
                       dropped_tail_bytes=0, base=base)
        if created is not None:
            os.close(created)
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            offsets, end, dropped = cls._recover(
                path, fd, header, checked_keys, execution_id, fsync, guard, start
            )
        except BaseException:
            os.close(fd)
            raise
        return cls(
            path=path,
            fd=fd,
            keys=checked_keys,
            execution_id=execution_id,
            fsync=fsync,
            guard=guard,
            offsets=offsets,
            end=end,
            dropped_tail_bytes=dropped,
            base=base,
        )

    @staticmethod
    def _create(
        path: Path, header: bytes, fsync: bool, guard: Callable[[], None] | None
    ) -> int | None:
        """Create the journal with its header; its descriptor, open for appending (None
        when another process created it first)."""
        if guard is not None:
            guard()
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return None  # created meanwhile; it is checked like any existing journal
        try:
            write_all(fd, header)
            if fsync:
                os.fsync(fd)
                fsync_directory(path.parent)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @classmethod
    def _recover(
        cls,
        path: Path,
        fd: int,
        header: bytes,
        keys: tuple[bytes, ...],
        execution_id: str,
        fsync: bool,
        guard: Callable[[], None] | None,
        start: tuple[int, int] | None = None,
    ) -> tuple[array[int], int, int]:
        """Check the file; cut a torn end off. Returns (record offsets, end, bytes dropped)."""
        size = os.fstat(fd).st_size
        if start is not None and not len(header) <= start[1] <= size:
            raise JournalCorrupt(path, start[1], start[0],
                                 "the journal is shorter than the snapshot says")
        if size < len(header):
            existing = os.pread(fd, size, 0)
            if existing != header[:size]:
                cls._check_header(path, existing, execution_id)
                raise JournalCorrupt(path, 0, None, "damaged journal header")
            # A crash while the file was being created: only part of our header is there.
            cls._cut(fd, 0, guard, fsync)
            write_all(fd, header)
            if fsync:
                os.fsync(fd)
            return array("Q"), len(header), 0
        # Slicing an mmap copies, so no view outlives the mapping (closing it would fail).
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
            longest_header = _HEADER_FIXED.size + 0xFFFF + _CRC.size
            cls._check_header(path, mapped[:longest_header], execution_id)
            first_index, first_offset = start if start is not None else (0, len(header))
            offsets, end = _scan(path, mapped, first_offset, keys,
                                 execution_id.encode("ascii"), first_index)
        if end < size:
            cls._cut(fd, end, guard, fsync)
        return offsets, end, size - end

    @staticmethod
    def _check_header(path: Path, data: bytes, execution_id: str) -> None:
        if len(data) < _HEADER_FIXED.size or data[: len(MAGIC)] != MAGIC:
            raise JournalFormatError(f"{path}: not a Jarvis journal (no journal header)")
        _, version, id_length = _HEADER_FIXED.unpack_from(data)
        if version != FORMAT_VERSION:
            raise JournalFormatError(
                f"{path}: journal format version {version}; this build reads {FORMAT_VERSION}"
            )
        expected = encode_header(execution_id)
        end = _HEADER_FIXED.size + id_length
        if data[: end + _CRC.size] == expected:
            return
        if len(data) >= end + _CRC.size:
            (crc,) = _CRC.unpack_from(data, end)
            if zlib.crc32(data[:end]) == crc:
                owner = data[_HEADER_FIXED.size : end].decode("ascii", "replace")
                raise JournalFormatError(
                    f"{path}: journal of execution {owner!r}, not {execution_id!r}"
                )
        raise JournalCorrupt(path, 0, None, "damaged journal header")

    @staticmethod
    def _cut(fd: int, end: int, guard: Callable[[], None] | None, fsync: bool) -> None:
        if guard is not None:
            guard()
        os.ftruncate(fd, end)
        if fsync:
            os.fsync(fd)

    # -- using ----------------------------------------------------------------------

    @property
    def count(self) -> int:
        """How many records the journal holds."""
        return self._base + len(self._offsets)

    @property
    def end_offset(self) -> int:
        """The byte offset just past the last record: where the next one will start."""
        return self._end

    def __len__(self) -> int:
        return self.count

    def append(self, payload: bytes) -> int:
        """Add a record and return its index, once it is written (and fsynced when enabled).

        If writing fails, the journal refuses further appends: reopen it, which cuts off
        whatever part of the record reached the file.
        """
        if self._closed or self._broken is not None:
            self._check_usable()
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"a journal record holds at most {MAX_PAYLOAD_BYTES} bytes, got {len(payload)}"
            )
        if self._guard is not None:
            self._guard()
        index = self._base + len(self._offsets)
        record = self._signers[0].record(index, bytes(payload))
        fd = self._fd if self._fd is not None else self._create_lazily()
        try:
            written = os.write(fd, record)
            if written != len(record):
                write_all(fd, record[written:])
            # With O_APPEND, the file offset is now just past where our record went.
            at = os.lseek(fd, 0, os.SEEK_CUR)
            if self._fsync:
                os.fsync(fd)
        except BaseException as exc:
            self._abandon_write(f"appending record {index} failed: {exc!r}")
            raise
        end = self._end
        new_end = end + len(record)
        if at != new_end:
            # O_APPEND put our record at the end of whatever else was written there.
            self._broken = (f"the record ends at byte {at}, expected {new_end}: "
                            "another writer?")
            raise JournalError(f"{self.path}: {self._broken}")
        self._offsets.append(end)
        self._end = new_end
        return index

    def _create_lazily(self) -> int:
        """The file of a journal opened `lazy`, created now, at its first record."""
        header = encode_header(self.execution_id)
        fd = self._create(self.path, header, self._fsync, None)  # guarded: append
        if fd is None:
            self._broken = "the journal was created by another writer meanwhile"
            raise JournalError(f"{self.path}: {self._broken}")
        self._fd = fd
        return fd

    def _abandon_write(self, reason: str) -> None:
        self._broken = reason
        # Best effort: reopening cuts off a partial record anyway.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)

    def record(self, index: int) -> bytes:
        """The payload of record `index`, verified again as it is read."""
        if not self._base <= index < self.count:
            raise IndexError(f"record {index} out of range (the journal holds {self.count}"
                             f", opened from record {self._base})")
        self._check_open()
        local = index - self._base
        offset = self._offsets[local]
        end = self._offsets[local + 1] if local + 1 < len(self._offsets) else self._end
        assert self._fd is not None  # a record was written, so the file was made
        data = os.pread(self._fd, end - offset, offset)
        # A file changed behind our back is caught here rather than fed to the program.
        record_end, problem = _framing_problem(data, 0)
        if problem is None and record_end != len(data):
            problem = "record length changed since the journal was opened"
        if problem is not None:
            raise JournalCorrupt(self.path, offset, index, problem)
        _, _, mac = _PREFIX.unpack_from(data)
        payload = data[_PREFIX.size :]
        if not _verifies(self._signers, index, mac, payload):
            raise JournalCorrupt(self.path, offset, index, _HMAC_FAILURE)
        return payload

    def records(self, start: int = 0) -> Iterator[bytes]:
        """The payloads from record `start` on, as far as the journal went when called."""
        if start < 0:
            raise ValueError(f"start must not be negative, got {start}")
        self._check_open()
        return (self.record(index) for index in range(max(start, self._base), self.count))

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"{self.path}: journal is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._broken is not None:
            raise JournalError(f"{self.path}: journal unusable ({self._broken}); reopen it")

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        if not self._closed:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_HMAC_FAILURE = "fails HMAC verification with every configured key (wrong key or tampering)"


def _scan(
    path: Path, buf: _Buffer, start: int, keys: Sequence[bytes], execution_id: bytes,
    first_index: int = 0,
) -> tuple[array[int], int]:
    """Walk the records from `start`: (their offsets, where the intact part ends).

    Raises `JournalCorrupt` for a record no key verifies, and for damage followed by a
    record with intact framing (damage in the middle must not be cut off as a torn end).
    """
    offsets: array[int] = array("Q")
    offset = start
    signers = _signers(keys, execution_id)
    while offset < len(buf):
        end, problem = _framing_problem(buf, offset)
        index = first_index + len(offsets)
        if problem is not None:
            follower = _next_intact(buf, offset + 1)
            if follower is None:
                return offsets, offset  # a torn end
            raise JournalCorrupt(
                path, offset, index, f"{problem}, but an intact record follows at {follower}"
            )
        _, _, mac = _PREFIX.unpack_from(buf, offset)
        payload = buf[offset + _PREFIX.size : end]
        if not _verifies(signers, index, mac, payload):
            raise JournalCorrupt(path, offset, index, _HMAC_FAILURE)
        offsets.append(offset)
        offset = end
    return offsets, offset


def _next_intact(buf: _Buffer, start: int) -> int | None:
    """The first offset from `start` on where a record with intact framing begins."""
    for offset in range(start, len(buf) - _PREFIX.size + 1):
        if _framing_problem(buf, offset)[1] is None:
            return offset
    return None

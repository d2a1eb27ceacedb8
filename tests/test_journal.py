"""The journal: round trips, torn ends, corruption, tampering, key rotation, fencing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fsync_counter import count_fsyncs
from hypothesis import given, settings
from hypothesis import strategies as st

from jarvis.runtime import journal as journal_module
from jarvis.runtime.journal import (
    Journal,
    JournalCorrupt,
    JournalError,
    JournalFormatError,
    encode_header,
    encode_record,
)
from jarvis.runtime.statedir import InvalidExecutionId

KEY_A = b"key-a-0123456789abcdef"
KEY_B = b"key-b-0123456789abcdef"
EXECUTION = "exec-1"
PAYLOADS = [b"first", b"", b"third record", bytes(range(256)), b"x" * 1000]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal"


def write(path: Path, payloads: list[bytes], keys: list[bytes] | None = None) -> list[int]:
    """Write a journal; the byte offset of each record."""
    offsets = []
    with Journal.open(path, keys or [KEY_A], EXECUTION, fsync=False) as journal:
        for payload in payloads:
            offsets.append(path.stat().st_size)
            journal.append(payload)
    return offsets


def read(path: Path, keys: list[bytes] | None = None) -> list[bytes]:
    with Journal.open(path, keys or [KEY_A], EXECUTION, fsync=False) as journal:
        return list(journal.records())


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# -- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("fsync", [True, False])
def test_records_survive_reopening(path: Path, fsync: bool) -> None:
    with Journal.open(path, [KEY_A], EXECUTION, fsync=fsync) as journal:
        assert journal.count == 0
        assert [journal.append(p) for p in PAYLOADS] == list(range(len(PAYLOADS)))
        assert list(journal.records()) == PAYLOADS
    with Journal.open(path, [KEY_A], EXECUTION, fsync=fsync) as journal:
        assert journal.dropped_tail_bytes == 0
        assert len(journal) == len(PAYLOADS)
        assert list(journal.records(2)) == PAYLOADS[2:]
        assert journal.record(3) == PAYLOADS[3]
        assert journal.append(b"more") == len(PAYLOADS)
    assert read(path) == [*PAYLOADS, b"more"]


def test_records_from_past_the_end_is_empty(path: Path) -> None:
    write(path, PAYLOADS)
    with Journal.open(path, [KEY_A], EXECUTION) as journal:
        assert list(journal.records(len(PAYLOADS))) == []
        assert list(journal.records(99)) == []
        with pytest.raises(IndexError):
            journal.record(len(PAYLOADS))
        with pytest.raises(ValueError):
            journal.records(-1)


@pytest.mark.parametrize("fsync", [True, False])
def test_fsync_after_every_append_only_when_enabled(
    path: Path, fsync: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(path, [KEY_A], EXECUTION, fsync=fsync)
    calls = count_fsyncs(monkeypatch)
    for payload in PAYLOADS:
        journal.append(payload)
    journal.close()
    assert len(calls) == (len(PAYLOADS) if fsync else 0)


def test_new_journal_is_private_and_starts_with_the_header(path: Path) -> None:
    write(path, [])
    assert path.read_bytes() == encode_header(EXECUTION)
    assert path.stat().st_mode & 0o777 == 0o600


def test_closed_journal_refuses_use(path: Path) -> None:
    journal = Journal.open(path, [KEY_A], EXECUTION)
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.append(b"late")
    with pytest.raises(JournalError, match="closed"):
        journal.records()


def test_oversized_payload_is_refused(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "MAX_PAYLOAD_BYTES", 8)
    with Journal.open(path, [KEY_A], EXECUTION) as journal:
        journal.append(b"12345678")
        with pytest.raises(ValueError, match="at most 8 bytes"):
            journal.append(b"123456789")
        assert journal.count == 1


# -- torn ends ----------------------------------------------------------------------


def test_every_torn_end_is_cut_off_exactly(path: Path, tmp_path: Path) -> None:
    offsets = write(path, PAYLOADS)
    whole = path.read_bytes()
    last = offsets[-1]
    for cut in range(last, len(whole)):
        torn = tmp_path / f"torn-{cut}"
        torn.write_bytes(whole[:cut])
        with Journal.open(torn, [KEY_A], EXECUTION, fsync=False) as journal:
            assert journal.count == len(PAYLOADS) - 1, cut
            assert journal.dropped_tail_bytes == cut - last
            assert torn.stat().st_size == last
            assert journal.append(b"after the crash") == len(PAYLOADS) - 1
        assert read(torn) == [*PAYLOADS[:-1], b"after the crash"]


def test_zeroes_at_the_end_are_a_torn_end(path: Path) -> None:
    # Some file systems extend a file before its data reaches the disk.
    write(path, PAYLOADS)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(bytes(300))
    with Journal.open(path, [KEY_A], EXECUTION) as journal:
        assert journal.dropped_tail_bytes == 300
        assert list(journal.records()) == PAYLOADS
    assert path.stat().st_size == size


def test_damage_in_the_last_record_is_cut_off(path: Path) -> None:
    offsets = write(path, PAYLOADS)
    # A crash cannot cause this, but nothing acknowledged after it is lost either.
    flip_bit(path, offsets[-1] + 45)
    size = path.stat().st_size
    with Journal.open(path, [KEY_A], EXECUTION) as journal:
        assert journal.count == len(PAYLOADS) - 1
        assert journal.dropped_tail_bytes == size - offsets[-1]


def test_a_journal_torn_while_being_created_is_completed(path: Path) -> None:
    header = encode_header(EXECUTION)
    for size in range(len(header)):
        path.write_bytes(header[:size])
        with Journal.open(path, [KEY_A], EXECUTION) as journal:
            assert journal.count == 0
            journal.append(b"one")
        assert read(path) == [b"one"]


# -- corruption and tampering -------------------------------------------------------


def test_any_flipped_bit_in_a_middle_record_is_reported(path: Path) -> None:
    offsets = write(path, PAYLOADS)
    whole = path.read_bytes()
    middle, following = offsets[2], offsets[3]
    for position in range(middle, following):
        for bit in (0, 7):
            path.write_bytes(whole)
            flip_bit(path, position, bit)
            with pytest.raises(JournalCorrupt) as caught:
                Journal.open(path, [KEY_A], EXECUTION)
            assert caught.value.offset == middle, (position, bit)
            assert caught.value.index == 2
            assert str(middle) in str(caught.value)
    # Nothing was cut off on the way.
    assert path.stat().st_size == len(whole)


def test_a_wrong_key_is_refused(path: Path) -> None:
    write(path, PAYLOADS)
    with pytest.raises(JournalCorrupt, match="HMAC") as caught:
        Journal.open(path, [KEY_B], EXECUTION)
    assert caught.value.index == 0


def test_a_record_from_another_journal_is_refused(path: Path, tmp_path: Path) -> None:
    # Same key, same index, other execution: the HMAC binds records to their journal.
    write(path, [b"mine"])
    forged = encode_record(KEY_A, "other", 1, b"theirs")
    with path.open("ab") as file:
        file.write(forged)
        file.write(encode_record(KEY_A, EXECUTION, 2, b"after"))
    with pytest.raises(JournalCorrupt, match="HMAC") as caught:
        Journal.open(path, [KEY_A], EXECUTION)
    assert caught.value.index == 1


def test_reordered_records_are_refused(path: Path) -> None:
    offsets = write(path, [b"aaaa", b"bbbb", b"cccc"])
    data = path.read_bytes()
    first = data[offsets[0] : offsets[1]]
    second = data[offsets[1] : offsets[2]]
    path.write_bytes(data[: offsets[0]] + second + first + data[offsets[2] :])
    with pytest.raises(JournalCorrupt, match="HMAC"):
        Journal.open(path, [KEY_A], EXECUTION)


def test_a_record_changed_after_opening_is_refused_when_read(path: Path) -> None:
    offsets = write(path, PAYLOADS)
    with Journal.open(path, [KEY_A], EXECUTION) as journal:
        flip_bit(path, offsets[2] + 41)
        assert journal.record(1) == PAYLOADS[1]
        with pytest.raises(JournalCorrupt) as caught:
            journal.record(2)
        assert caught.value.offset == offsets[2]


def test_a_damaged_header_is_reported(path: Path) -> None:
    write(path, PAYLOADS)
    flip_bit(path, 14)  # inside the execution id
    with pytest.raises(JournalCorrupt, match="header"):
        Journal.open(path, [KEY_A], EXECUTION)


# -- keys ---------------------------------------------------------------------------


def test_rotated_keys_verify_old_records_and_sign_new_ones(path: Path) -> None:
    write(path, [b"old"], keys=[KEY_A])
    with Journal.open(path, [KEY_B, KEY_A], EXECUTION) as journal:
        assert list(journal.records()) == [b"old"]
        journal.append(b"new")
    assert read(path, keys=[KEY_A, KEY_B]) == [b"old", b"new"]
    # Once A is retired, A's records no longer verify.
    with pytest.raises(JournalCorrupt) as caught:
        Journal.open(path, [KEY_B], EXECUTION)
    assert caught.value.index == 0


@pytest.mark.parametrize(
    ("keys", "error"),
    [([], ValueError), ([b""], ValueError), (KEY_A, TypeError), (["text"], TypeError)],
)
def test_bad_key_lists_are_refused(path: Path, keys: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Journal.open(path, keys, EXECUTION)  # type: ignore[arg-type]
    assert not path.exists()


# -- foreign files ------------------------------------------------------------------


def test_a_foreign_file_is_refused(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 this is a zip file, not a journal" * 4)
    with pytest.raises(JournalFormatError, match="not a Jarvis journal"):
        Journal.open(path, [KEY_A], EXECUTION)
    path.write_bytes(b"hi")
    with pytest.raises(JournalFormatError, match="not a Jarvis journal"):
        Journal.open(path, [KEY_A], EXECUTION)


def test_another_executions_journal_is_refused(path: Path) -> None:
    with Journal.open(path, [KEY_A], "someone-else-entirely") as journal:
        journal.append(b"theirs")
    with pytest.raises(JournalFormatError, match="someone-else-entirely"):
        Journal.open(path, [KEY_A], EXECUTION)


def test_a_newer_format_version_is_refused(path: Path) -> None:
    write(path, PAYLOADS)
    data = bytearray(path.read_bytes())
    data[9] = 2
    path.write_bytes(bytes(data))
    with pytest.raises(JournalFormatError, match="version 2"):
        Journal.open(path, [KEY_A], EXECUTION)


@pytest.mark.parametrize("execution_id", ["", ".", "..", "a/b", "x" * 129, "é"])
def test_execution_ids_must_be_safe_file_names(path: Path, execution_id: str) -> None:
    with pytest.raises(InvalidExecutionId):
        Journal.open(path, [KEY_A], execution_id)


# -- fencing and failed writes ------------------------------------------------------


class Fence:
    """A guard that counts its calls and can be told to refuse."""

    def __init__(self) -> None:
        self.calls = 0
        self.refuse = False

    def __call__(self) -> None:
        self.calls += 1
        if self.refuse:
            raise PermissionError("stale lease")


def test_the_guard_is_asked_before_every_write(path: Path) -> None:
    fence = Fence()
    with Journal.open(path, [KEY_A], EXECUTION, guard=fence) as journal:
        assert fence.calls == 1  # creating the file
        journal.append(b"one")
        journal.append(b"two")
        assert fence.calls == 3
        fence.refuse = True
        size = path.stat().st_size
        with pytest.raises(PermissionError):
            journal.append(b"three")
        assert path.stat().st_size == size
        assert journal.count == 2
        # A refused write leaves the journal usable once the lease is back.
        fence.refuse = False
        assert journal.append(b"three") == 2


def test_the_guard_is_asked_before_cutting_a_torn_end(path: Path) -> None:
    write(path, PAYLOADS)
    with path.open("ab") as file:
        file.write(b"\x00\x00")
    size = path.stat().st_size
    fence = Fence()
    fence.refuse = True
    with pytest.raises(PermissionError):
        Journal.open(path, [KEY_A], EXECUTION, guard=fence)
    assert path.stat().st_size == size
    # Reading an intact journal writes nothing, so a refusing guard does not matter.
    Journal.open(path.parent / "fresh", [KEY_A], EXECUTION).close()
    Journal.open(path.parent / "fresh", [KEY_A], EXECUTION, guard=fence).close()


def test_a_failed_write_makes_the_journal_refuse_until_reopened(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(path, [KEY_A], EXECUTION, fsync=True)
    journal.append(b"one")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(OSError):
            journal.append(b"two")
    with pytest.raises(JournalError, match="reopen"):
        journal.append(b"three")
    journal.close()
    with Journal.open(path, [KEY_A], EXECUTION) as reopened:
        assert list(reopened.records()) == [b"one"]
        assert reopened.append(b"two") == 1


def test_a_second_writer_is_detected(path: Path) -> None:
    first = Journal.open(path, [KEY_A], EXECUTION, fsync=False)
    second = Journal.open(path, [KEY_A], EXECUTION, fsync=False)
    first.append(b"from the first")
    with pytest.raises(JournalError, match="another writer"):
        second.append(b"from the second")
    first.close()
    second.close()


# -- properties ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


payload_lists = st.lists(st.binary(max_size=300), max_size=12)


@settings(max_examples=60, deadline=None)
@given(payloads=payload_lists)
def test_any_payloads_round_trip(scratch: Path, payloads: list[bytes]) -> None:
    path = scratch / "round-trip"
    path.unlink(missing_ok=True)
    write(path, payloads)
    assert read(path) == payloads


@settings(max_examples=150, deadline=None)
@given(payloads=payload_lists, data=st.data())
def test_any_truncation_leaves_a_prefix_of_the_records(
    scratch: Path, payloads: list[bytes], data: st.DataObject
) -> None:
    path = scratch / "truncated"
    path.unlink(missing_ok=True)
    offsets = write(path, payloads)
    whole = path.read_bytes()
    header = len(encode_header(EXECUTION))
    cut = data.draw(st.integers(min_value=header, max_value=len(whole)), label="cut")
    path.write_bytes(whole[:cut])
    complete = sum(1 for end in [*offsets[1:], len(whole)] if end <= cut)
    assert read(path) == payloads[:complete]


def test_a_lazy_journal_writes_no_file_until_its_first_record(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guarded: list[bool] = []

    def guard() -> None:
        guarded.append(path.exists())

    calls = count_fsyncs(monkeypatch)
    journal = Journal.open(path, [KEY_A], EXECUTION, fsync=True, guard=guard, lazy=True)
    assert not path.exists() and guarded == [] and calls == []
    assert journal.count == 0 and journal.end_offset == len(encode_header(EXECUTION))
    assert journal.append(b"first") == 0
    assert guarded == [False]  # checked before the file was made
    assert len(calls) == 3  # the new file, its directory, the record
    assert journal.append(b"second") == 1 and len(calls) == 4
    journal.close()
    assert path.read_bytes().startswith(encode_header(EXECUTION))
    with Journal.open(path, [KEY_A], EXECUTION, fsync=False) as again:
        assert list(again.records()) == [b"first", b"second"]


def test_a_lazy_journal_without_records_leaves_nothing(path: Path) -> None:
    journal = Journal.open(path, [KEY_A], EXECUTION, fsync=False, lazy=True)
    assert list(journal.records()) == []
    journal.close()
    assert not path.exists()


def test_a_lazy_journal_refuses_a_file_another_writer_made(path: Path) -> None:
    journal = Journal.open(path, [KEY_A], EXECUTION, fsync=False, lazy=True)
    write(path, [b"theirs"])
    with pytest.raises(JournalError, match="another writer"):
        journal.append(b"ours")
    with pytest.raises(JournalError):
        journal.append(b"ours again")  # unusable: reopen it
    journal.close()
    with Journal.open(path, [KEY_A], EXECUTION, fsync=False) as again:
        assert list(again.records()) == [b"theirs"]


def test_lazy_opens_an_existing_journal_as_ever(path: Path) -> None:
    write(path, [b"kept"])
    with Journal.open(path, [KEY_A], EXECUTION, fsync=False, lazy=True) as journal:
        assert list(journal.records()) == [b"kept"]
        assert journal.append(b"more") == 1

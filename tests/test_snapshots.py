"""Snapshots (signing, retention, fallback, atomic writes) and the execution directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from jarvis.runtime.snapshots import (
    FORMAT_VERSION,
    LoadedSnapshot,
    SnapshotHeader,
    SnapshotRejected,
    SnapshotStore,
)
from jarvis.runtime.statedir import (
    ExecutionDir,
    InvalidExecutionId,
    StateError,
    validate_execution_id,
    write_file_atomically,
)

KEY_A = b"key-a-0123456789abcdef"
KEY_B = b"key-b-0123456789abcdef"
PROGRAM = "a" * 64
COMPILER = "0.1.0"


def header(journal_index: int = 0, **changes: Any) -> SnapshotHeader:
    fields: dict[str, Any] = {
        "program_hash": PROGRAM,
        "compiler_version": COMPILER,
        "execution_id": "exec-1",
        "journal_index": journal_index,
        "created_at": 1_700_000_000.5,
        "counters": {"steps": 12, "effects": journal_index, "elapsed": 0.25},
    }
    fields.update(changes)
    return SnapshotHeader(**fields)


def load(store: SnapshotStore) -> LoadedSnapshot:
    loaded = store.load_newest(PROGRAM, COMPILER)
    assert loaded is not None
    return loaded


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots", [KEY_A])


# -- round trip and retention -------------------------------------------------------


def test_a_snapshot_round_trips(store: SnapshotStore) -> None:
    written = header(journal_index=7)
    path = store.write(b"\x80\x05pickled state", written)
    assert path == store.path_of(1)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load(store)
    assert loaded.header == written
    assert loaded.header.format_version == FORMAT_VERSION
    assert loaded.payload == b"\x80\x05pickled state"
    assert (loaded.sequence, loaded.path, loaded.skipped) == (1, path, ())


def test_no_snapshots_is_none(store: SnapshotStore) -> None:
    assert store.load_newest(PROGRAM, COMPILER) is None
    store.directory.mkdir()
    assert store.load_newest(PROGRAM, COMPILER) is None


def test_the_newest_is_loaded_and_only_keep_are_kept(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, [KEY_A], keep=2)
    for index in range(5):
        store.write(f"state {index}".encode(), header(journal_index=index))
    assert store.sequences() == [4, 5]
    assert sorted(os.listdir(tmp_path)) == [store.path_of(4).name, store.path_of(5).name]
    loaded = load(store)
    assert (loaded.sequence, loaded.payload, loaded.header.journal_index) == (5, b"state 4", 4)


def test_keep_three(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, [KEY_A], keep=3)
    for index in range(4):
        store.write(b"s", header(journal_index=index))
    assert store.sequences() == [2, 3, 4]
    with pytest.raises(ValueError):
        SnapshotStore(tmp_path, [KEY_A], keep=0)


def test_sequence_continues_after_older_files_are_gone(store: SnapshotStore) -> None:
    for _ in range(3):
        store.write(b"s", header())
    for sequence in store.sequences():
        store.path_of(sequence).unlink()
    store.write(b"s", header())
    store.write(b"s", header())
    assert store.sequences() == [1, 2]  # nothing was left to continue from
    assert load(store).sequence == 2


# -- fallback -----------------------------------------------------------------------


def test_a_flipped_bit_in_the_newest_falls_back_to_the_previous(store: SnapshotStore) -> None:
    store.write(b"older state", header(journal_index=3))
    newest = store.write(b"newer state", header(journal_index=9))
    flip_bit(newest, newest.stat().st_size - 40)  # inside the payload
    loaded = load(store)
    assert (loaded.sequence, loaded.payload, loaded.header.journal_index) == (1, b"older state", 3)
    [skipped] = loaded.skipped
    assert (skipped.sequence, skipped.path) == (2, newest)
    assert "bad HMAC" in skipped.reason
    assert str(skipped).startswith("snapshot 2 (snapshot-000000000002.jsnap): bad HMAC")


@pytest.mark.parametrize("offset", [0, 9, 12, 20, 30, -1])
def test_damage_anywhere_is_detected(store: SnapshotStore, offset: int) -> None:
    store.write(b"older", header())
    newest = store.write(b"newer" * 20, header())
    flip_bit(newest, offset if offset >= 0 else newest.stat().st_size - 1)
    loaded = load(store)
    assert loaded.payload == b"older"
    assert len(loaded.skipped) == 1


def test_a_truncated_newest_falls_back(store: SnapshotStore) -> None:
    store.write(b"older", header())
    newest = store.write(b"newer" * 20, header())
    data = newest.read_bytes()
    for size in (0, 5, 30, len(data) - 1):
        newest.write_bytes(data[:size])
        loaded = load(store)
        assert loaded.payload == b"older"
        assert "truncated" in loaded.skipped[0].reason
    newest.write_bytes(data + b"extra")
    assert "unexpected bytes" in load(store).skipped[0].reason


@pytest.mark.parametrize(
    ("expectation", "reason"),
    [
        ({"expect_program_hash": "b" * 64}, "made for program"),
        ({"expect_compiler_version": "0.2.0"}, "compiler version 0.1.0, not 0.2.0"),
    ],
)
def test_snapshots_of_another_program_or_compiler_are_skipped(
    store: SnapshotStore, expectation: dict[str, str], reason: str
) -> None:
    store.write(b"one", header())
    store.write(b"two", header())
    expected = {"expect_program_hash": PROGRAM, "expect_compiler_version": COMPILER}
    expected.update(expectation)
    with pytest.raises(SnapshotRejected) as caught:
        store.load_newest(**expected)
    assert [entry.sequence for entry in caught.value.skipped] == [2, 1]
    assert all(reason in entry.reason for entry in caught.value.skipped)
    assert reason in str(caught.value)


def test_an_older_snapshot_of_the_right_program_is_found(store: SnapshotStore) -> None:
    store.write(b"right", header())
    store.write(b"wrong", header(program_hash="c" * 64))
    loaded = load(store)
    assert loaded.payload == b"right"
    assert "made for program" in loaded.skipped[0].reason


def test_a_snapshot_of_another_execution_is_skipped_when_asked(store: SnapshotStore) -> None:
    store.write(b"theirs", header(execution_id="exec-2"))
    assert load(store).payload == b"theirs"
    with pytest.raises(SnapshotRejected, match="made for execution 'exec-2'"):
        store.load_newest(PROGRAM, COMPILER, expect_execution_id="exec-1")


def test_a_renamed_snapshot_is_refused(store: SnapshotStore) -> None:
    store.write(b"old", header())
    store.path_of(1).rename(store.path_of(9))
    with pytest.raises(SnapshotRejected, match="header says sequence 1"):
        store.load_newest(PROGRAM, COMPILER)


def test_a_foreign_file_is_skipped(store: SnapshotStore) -> None:
    store.write(b"real", header())
    store.path_of(2).write_bytes(b"GIF89a, not a snapshot at all" * 3)
    loaded = load(store)
    assert loaded.payload == b"real"
    assert "bad magic" in loaded.skipped[0].reason


def test_another_format_version_is_skipped(store: SnapshotStore) -> None:
    path = store.write(b"real", header())
    data = bytearray(path.read_bytes())
    data[9] = FORMAT_VERSION + 1
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotRejected, match=f"format version {FORMAT_VERSION + 1}"):
        store.load_newest(PROGRAM, COMPILER)


# -- keys ---------------------------------------------------------------------------


def test_a_wrong_key_rejects_every_snapshot(tmp_path: Path) -> None:
    writer = SnapshotStore(tmp_path, [KEY_A])
    writer.write(b"one", header())
    writer.write(b"two", header())
    reader = SnapshotStore(tmp_path, [KEY_B])
    with pytest.raises(SnapshotRejected) as caught:
        reader.load_newest(PROGRAM, COMPILER)
    assert len(caught.value.skipped) == 2
    assert all("none of the configured keys" in entry.reason for entry in caught.value.skipped)


def test_a_forged_key_id_does_not_help(tmp_path: Path) -> None:
    # Signed with another key but claiming A's id: the HMAC check still fails.
    SnapshotStore(tmp_path, [KEY_B]).write(b"forged", header())
    path = SnapshotStore(tmp_path, [KEY_B]).path_of(1)
    real = SnapshotStore(tmp_path / "real", [KEY_A])
    real.write(b"real", header())
    data = bytearray(path.read_bytes())
    data[10:18] = real.path_of(1).read_bytes()[10:18]
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotRejected, match="bad HMAC"):
        SnapshotStore(tmp_path, [KEY_A]).load_newest(PROGRAM, COMPILER)


def test_rotated_keys(tmp_path: Path) -> None:
    SnapshotStore(tmp_path, [KEY_A], keep=5).write(b"under A", header())
    rotated = SnapshotStore(tmp_path, [KEY_B, KEY_A], keep=5)
    assert load(rotated).payload == b"under A"
    rotated.write(b"under B", header())
    assert load(SnapshotStore(tmp_path, [KEY_B])).payload == b"under B"
    only_a = SnapshotStore(tmp_path, [KEY_A])
    loaded = load(only_a)
    assert loaded.payload == b"under A"
    assert "none of the configured keys" in loaded.skipped[0].reason


# -- atomicity, fencing, limits -----------------------------------------------------


def test_a_temp_file_left_by_a_crash_is_ignored_and_cleaned(store: SnapshotStore) -> None:
    store.write(b"good", header())
    leftover = store.directory / ".snapshot-000000000002.jsnap.0123456789abcdef.tmp"
    leftover.write_bytes(b"half a snapsh")
    other = store.directory / "notes.txt"
    other.write_text("not ours")
    loaded = load(store)
    assert (loaded.payload, loaded.skipped) == (b"good", ())
    assert leftover.exists()
    store.write(b"better", header())
    assert not leftover.exists()
    assert other.exists()
    assert load(store).payload == b"better"


def test_a_refusing_guard_writes_nothing(store: SnapshotStore, tmp_path: Path) -> None:
    store.write(b"good", header())
    before = sorted(os.listdir(store.directory))

    def refuse() -> None:
        raise PermissionError("stale lease")

    fenced = SnapshotStore(store.directory, [KEY_A], guard=refuse)
    with pytest.raises(PermissionError):
        fenced.write(b"late", header())
    assert sorted(os.listdir(store.directory)) == before
    assert load(fenced).payload == b"good"


def test_a_lease_lost_mid_write_publishes_nothing(store: SnapshotStore) -> None:
    store.write(b"good", header())
    before = sorted(os.listdir(store.directory))
    calls = []

    def lose_lease_on_second_check() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise PermissionError("stale lease")

    fenced = SnapshotStore(store.directory, [KEY_A], guard=lose_lease_on_second_check)
    with pytest.raises(PermissionError):
        fenced.write(b"late", header())
    assert sorted(os.listdir(store.directory)) == before


def test_payload_limit(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, [KEY_A], max_bytes=10)
    store.write(b"0123456789", header())
    with pytest.raises(ValueError, match="limit is 10"):
        store.write(b"0123456789!", header())
    SnapshotStore(tmp_path, [KEY_A], keep=5).write(b"x" * 70_000, header())
    loaded = load(store)
    assert loaded.sequence == 1
    assert "larger than the limit" in loaded.skipped[0].reason


@pytest.mark.parametrize(
    "changes",
    [
        {"format_version": FORMAT_VERSION + 1},
        {"execution_id": "../escape"},
        {"program_hash": ""},
        {"journal_index": -1},
        {"journal_index": True},
        {"created_at": float("nan")},
        {"counters": {"steps": "many"}},
    ],
)
def test_bad_headers_are_not_written(store: SnapshotStore, changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        store.write(b"s", header(**changes))
    assert store.sequences() == []


def test_the_header_is_readable_json_on_disk(store: SnapshotStore) -> None:
    path = store.write(b"payload", header(journal_index=4))
    data = path.read_bytes()
    length = int.from_bytes(data[18:22], "big")
    on_disk = json.loads(data[22 : 22 + length])
    assert on_disk["journal_index"] == 4
    assert on_disk["sequence"] == 1
    assert on_disk["counters"] == {"steps": 12, "effects": 4, "elapsed": 0.25}


# -- the execution directory --------------------------------------------------------


def test_execution_layout(tmp_path: Path) -> None:
    execution = ExecutionDir(tmp_path, "exec-1")
    assert execution.root == tmp_path / "executions" / "exec-1"
    assert execution.journal == execution.root / "journal"
    assert execution.snapshots == execution.root / "snapshots"
    assert execution.trace_seq == execution.root / "trace.seq"
    assert execution.status == execution.root / "status.json"
    assert not execution.exists()
    execution.create()
    execution.create()
    assert execution.exists() and execution.snapshots.is_dir()


@pytest.mark.parametrize("execution_id", ["a", "A-b_c.9", "x" * 128, ".hidden", "..."])
def test_valid_execution_ids(execution_id: str) -> None:
    assert validate_execution_id(execution_id) == execution_id


@pytest.mark.parametrize(
    "execution_id", ["", ".", "..", "a/b", "a\\b", "a b", "x" * 129, "naïve", "a\x00", "a\n"]
)
def test_invalid_execution_ids(tmp_path: Path, execution_id: str) -> None:
    with pytest.raises(InvalidExecutionId):
        validate_execution_id(execution_id)
    with pytest.raises(ValueError):
        ExecutionDir(tmp_path, execution_id)


def test_trace_seq_and_status(tmp_path: Path) -> None:
    execution = ExecutionDir(tmp_path, "exec-1")
    assert execution.read_trace_seq() is None
    assert execution.read_status() is None
    execution.write_trace_seq(41)
    execution.write_trace_seq(42)
    assert execution.read_trace_seq() == 42
    execution.write_status({"state": "suspended", "counters": {"steps": 3}})
    assert execution.read_status() == {"state": "suspended", "counters": {"steps": 3}}
    assert sorted(os.listdir(execution.root)) == ["status.json", "trace.seq"]
    with pytest.raises(ValueError):
        execution.write_trace_seq(-1)
    execution.trace_seq.write_text("garbage")
    with pytest.raises(StateError):
        execution.read_trace_seq()
    execution.status.write_text("[1, 2]")
    with pytest.raises(StateError):
        execution.read_status()


def test_remove_deletes_everything(tmp_path: Path) -> None:
    execution = ExecutionDir(tmp_path, "exec-1")
    neighbour = ExecutionDir(tmp_path, "exec-2")
    neighbour.create()
    execution.create()
    SnapshotStore(execution.snapshots, [KEY_A]).write(b"s", header())
    execution.write_status({"state": "cancelled"})
    assert execution.remove() is True
    assert not execution.exists()
    assert neighbour.exists()
    assert os.listdir(tmp_path / "trash") == []
    assert execution.remove() is False


def test_atomic_write_keeps_the_old_file_when_publishing_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_file_atomically(target, b"old")

    def refuse() -> None:
        raise PermissionError("stale lease")

    with pytest.raises(PermissionError):
        write_file_atomically(target, b"new", before_publish=refuse)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["status.json"]

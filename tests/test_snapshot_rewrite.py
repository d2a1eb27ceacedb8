"""A snapshot pushed out of the newest `keep` is rewritten in place as the next one.

Creating a file and deleting another cost ext4 far more than overwriting one, so the
store writes a new snapshot over the bytes of the one it would delete next, then
renames it. These tests hold it to the guarantees of docs/durability.md: a new name
appears only with a whole, signed snapshot; the newest `keep - 1` are never touched
while it is written; a crash half-way loses nothing a resume needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jarvis.runtime import snapshots as snapshots_module
from jarvis.runtime.snapshots import LoadedSnapshot, SnapshotHeader, SnapshotStore

KEY = b"key-rewrite-0123456789"
PROGRAM = "b" * 64
COMPILER = "0.1.0"


def header(journal_index: int) -> SnapshotHeader:
    return SnapshotHeader(program_hash=PROGRAM, compiler_version=COMPILER,
                          execution_id="exec-r", journal_index=journal_index,
                          created_at=1_700_000_000.25)


def load(store: SnapshotStore) -> LoadedSnapshot:
    loaded = store.load_newest(PROGRAM, COMPILER)
    assert loaded is not None
    return loaded


class Crash(BaseException):
    """Stands for the process dying at this point."""


def test_the_snapshot_pushed_out_becomes_the_new_one(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, [KEY], keep=2, fsync=False)
    store.write(b"one", header(1))
    store.write(b"two", header(2))
    inode = store.path_of(1).stat().st_ino
    path = store.write(b"three", header(3))
    assert path == store.path_of(3)
    assert path.stat().st_ino == inode  # the same file, renamed: nothing created
    assert sorted(os.listdir(tmp_path)) == [store.path_of(2).name, store.path_of(3).name]
    loaded = load(store)
    assert (loaded.sequence, loaded.payload, loaded.skipped) == (3, b"three", ())
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_shorter_snapshot_over_a_longer_one_is_cut_to_its_size(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, [KEY], keep=2, fsync=False)
    store.write(b"x" * 10_000, header(1))
    store.write(b"y", header(2))
    path = store.write(b"z", header(3))
    assert path.stat().st_size == store.path_of(2).stat().st_size  # same lengths
    loaded = load(store)
    assert (loaded.payload, loaded.skipped) == (b"z", ())
    # And a longer one over a shorter one.
    store.write(b"w" * 5_000, header(4))
    assert load(store).payload == b"w" * 5_000


@pytest.mark.parametrize("written", [0, 1, 30, 61])
def test_a_crash_while_rewriting_leaves_the_newest_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: int) -> None:
    store = SnapshotStore(tmp_path, [KEY], keep=2, fsync=False)
    store.write(b"one", header(1))
    newest = store.write(b"two", header(2))
    before = newest.read_bytes()

    def torn(fd: int, data: bytes) -> None:
        os.write(fd, data[:written])
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(snapshots_module, "write_all", torn)
        with pytest.raises(Crash):
            store.write(b"three", header(3))
    assert newest.read_bytes() == before
    assert store.sequences() == [1, 2]  # no name appeared for snapshot 3
    loaded = load(store)
    assert (loaded.sequence, loaded.payload, loaded.skipped) == (2, b"two", ())
    # The torn file is the oldest: the next write takes it over again.
    store.write(b"three", header(3))
    assert store.sequences() == [2, 3]
    assert load(store).payload == b"three"
    assert load(store).skipped == ()


def test_a_crash_before_the_rename_publishes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SnapshotStore(tmp_path, [KEY], keep=2, fsync=False)
    store.write(b"one", header(1))
    store.write(b"two", header(2))

    def crash(source: object, target: object) -> None:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", crash)
        with pytest.raises(Crash):
            store.write(b"three", header(3))
    # Snapshot 3 sits under snapshot 1's name: passed over, and older than 2 anyway.
    assert store.sequences() == [1, 2]
    assert load(store).payload == b"two"
    only_the_old_name = SnapshotStore(tmp_path, [KEY], keep=2)
    store.path_of(2).unlink()
    with pytest.raises(snapshots_module.SnapshotRejected, match="file was renamed"):
        only_the_old_name.load_newest(PROGRAM, COMPILER)


def test_a_lease_lost_before_the_rename_publishes_nothing(tmp_path: Path) -> None:
    SnapshotStore(tmp_path, [KEY], keep=2).write(b"one", header(1))
    SnapshotStore(tmp_path, [KEY], keep=2).write(b"two", header(2))
    checks = []

    def lose_lease_on_second_check() -> None:
        checks.append(1)
        if len(checks) == 2:
            raise PermissionError("stale lease")

    fenced = SnapshotStore(tmp_path, [KEY], keep=2, guard=lose_lease_on_second_check)
    with pytest.raises(PermissionError):
        fenced.write(b"late", header(3))
    assert fenced.sequences() == [1, 2]
    assert load(fenced).payload == b"two"


def test_keep_one_never_writes_over_its_only_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SnapshotStore(tmp_path, [KEY], keep=1, fsync=False)
    first = store.write(b"one", header(1))
    inode = first.stat().st_ino
    second = store.write(b"two", header(2))
    assert not first.exists() and second.stat().st_ino != inode
    assert store.sequences() == [2]

    def crash(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr("jarvis.runtime.statedir.write_all", crash)
        with pytest.raises(Crash):
            store.write(b"three", header(3))
    assert load(store).payload == b"two"


def test_a_snapshot_gone_before_its_rewrite_is_replaced_by_a_new_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SnapshotStore(tmp_path, [KEY], keep=2, fsync=False)
    store.write(b"one", header(1))
    store.write(b"two", header(2))
    listed = store._scan_for_write()
    store.path_of(1).unlink()  # deleted by someone else after the listing
    monkeypatch.setattr(store, "_scan_for_write", lambda: listed)
    store.write(b"three", header(3))
    assert store.sequences() == [2, 3]
    assert load(store).payload == b"three"


def test_a_rewrite_is_durable_with_fsync(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = SnapshotStore(tmp_path, [KEY], keep=2, fsync=True)
    store.write(b"one", header(1))
    store.write(b"two", header(2))
    synced: list[bool] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.write(b"three", header(3))
    # The file before its rename, then the directory holding the new name.
    assert synced == [False, True]


def test_a_snapshot_gone_before_its_rename_is_replaced_by_a_new_file(
        tmp_path: Path) -> None:
    SnapshotStore(tmp_path, [KEY], keep=2).write(b"one", header(1))
    SnapshotStore(tmp_path, [KEY], keep=2).write(b"two", header(2))
    checks = []

    def someone_deletes_the_old_file_meanwhile() -> None:
        checks.append(1)
        if len(checks) == 2:  # the check just before the rename
            (tmp_path / "snapshot-000000000001.jsnap").unlink()

    store = SnapshotStore(tmp_path, [KEY], keep=2, guard=someone_deletes_the_old_file_meanwhile)
    store.write(b"three", header(3))
    assert store.sequences() == [2, 3]
    loaded = load(store)
    assert (loaded.payload, loaded.skipped) == (b"three", ())
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

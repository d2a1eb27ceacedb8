"""The fence file's token as the guard reads it before every write of a run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fsync_counter import count_fsyncs

from jarvis.runtime.statedir import StateError, write_file_atomically
from jarvis.worker.leases import Fence, Lease, Leases, read_fence


def test_no_fence_file_is_token_zero(tmp_path: Path) -> None:
    assert read_fence(tmp_path) == 0


@pytest.mark.parametrize(("text", "token"), [
    (b"7\n", 7), (b"123456789012345678\n", 123456789012345678), (b"", 0), (b"  42  ", 42),
])
def test_the_token_is_read(tmp_path: Path, text: bytes, token: int) -> None:
    write_file_atomically(tmp_path / "fence", text, fsync=False)
    assert read_fence(tmp_path) == token


def test_a_file_longer_than_one_read_is_read_whole(tmp_path: Path) -> None:
    # Longer than one read (4096 bytes): a token after the first read is still seen.
    write_file_atomically(tmp_path / "fence", b" " * 9000 + b"31\n", fsync=False)
    assert read_fence(tmp_path) == 31


@pytest.mark.parametrize("text", [b"seven\n", b"\xff\xfe1\n", b"1 2\n"])
def test_anything_else_is_a_state_error(tmp_path: Path, text: bytes) -> None:
    write_file_atomically(tmp_path / "fence", text, fsync=False)
    with pytest.raises(StateError, match="not a fencing token"):
        read_fence(tmp_path)


@pytest.mark.parametrize("fsync", [True, False])
def test_a_claim_is_fsynced_as_the_journal_is(tmp_path: Path, fsync: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    synced = count_fsyncs(monkeypatch)
    lease = Lease("e-1", "w", 7, time.monotonic() + 60)
    Fence(tmp_path, lease, Leases(_NoRedis(), "w", 60), fsync=fsync).claim()
    assert read_fence(tmp_path) == 7
    assert bool(synced) == fsync  # the file and its directory, or neither


class _NoRedis:
    def register_script(self, script: str) -> object:
        return object()

"""The per-run state writes: `trace.seq` overwritten in place, snapshots fsynced only
when the journal is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fsync_counter import count_fsyncs

from jarvis.compiler import Compilation
from jarvis.runtime import snapshots as snapshots_module
from jarvis.runtime import statedir
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.execution import Execution
from jarvis.runtime.sinks import MemorySink
from jarvis.runtime.snapshots import SnapshotHeader, SnapshotStore
from jarvis.runtime.statedir import ExecutionDir, TraceSeqFile
from jarvis.settings import load_settings

KEY = b"k" * 32

PROGRAM = """\
from books import counter
n = 0
for i in range(inputs["count"]):
    n = counter.inc(n)
    print(n)
output("n", n)
"""


def test_trace_seq_is_overwritten_in_place_and_read_back(tmp_path: Path) -> None:
    directory = ExecutionDir(tmp_path, "e1")
    directory.write_trace_seq(123456789)  # an older, longer line: cut on first write
    seq_file = directory.open_trace_seq()
    inode = os.stat(directory.trace_seq).st_ino
    for seq in (7, 8, 1000):
        seq_file.write(seq)
        assert directory.read_trace_seq() == seq
    assert os.stat(directory.trace_seq).st_ino == inode  # no new file per write
    assert directory.trace_seq.read_bytes() == b"%020d\n" % 1000
    with pytest.raises(ValueError):
        seq_file.write(-1)
    seq_file.close()
    seq_file.close()
    assert sorted(os.listdir(directory.root)) == ["trace.seq"]  # no temporary files


def test_a_closed_trace_seq_file_refuses_writes(tmp_path: Path) -> None:
    seq_file = TraceSeqFile(tmp_path / "trace.seq")
    seq_file.close()
    with pytest.raises(statedir.StateError):
        seq_file.write(1)


def _header(index: int) -> SnapshotHeader:
    return SnapshotHeader(program_hash="p", compiler_version="c", execution_id="e1",
                          journal_index=index)


@pytest.mark.parametrize("fsync", [True, False])
def test_snapshot_fsync_follows_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          fsync: bool) -> None:
    store = SnapshotStore(tmp_path / "snaps", [KEY], keep=1, fsync=fsync)
    calls = count_fsyncs(monkeypatch)
    for index in range(3):
        store.write(b"payload %d" % index, _header(index))
    assert bool(calls) is fsync
    loaded = store.load_newest("p", "c")
    assert loaded is not None and loaded.payload == b"payload 2"
    assert store.sequences() == [3]


def test_a_write_clears_temporary_files_left_by_a_crash(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, [KEY], keep=2, fsync=False)
    store.write(b"one", _header(1))
    leftover = tmp_path / ".snapshot-000000000002.jsnap.0123abcd.tmp"
    leftover.write_bytes(b"half a snapshot")
    store.write(b"two", _header(2))
    assert not leftover.exists()
    assert store.sequences() == [1, 2]
    assert snapshots_module.SnapshotStore(tmp_path, [KEY]).load_newest("p", "c") is not None


def _run(tmp_path: Path, journal_fsync: bool, count: int = 25) -> tuple[Any, Execution]:
    (tmp_path / "counter.py").write_text("def inc(n):\n    return n + 1\n")
    (tmp_path / "books.toml").write_text('[books.counter]\npython = "counter.py"\n')
    settings = load_settings(state_dir=tmp_path / "state", journal_fsync=journal_fsync,
                             snapshot_every_effects=5, snapshot_every_seconds=3600.0)
    program = Compilation.of(PROGRAM, "seq.spy").program("statements")
    execution = Execution(program, execution_id="e1", inputs={"count": count},
                          books=BookRegistry.load(tmp_path / "books.toml"),
                          settings=settings, sink=MemorySink())
    return execution.run(), execution


def test_an_execution_without_journal_fsync_fsyncs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_fsyncs(monkeypatch)
    outcome, execution = _run(tmp_path, journal_fsync=False)
    assert outcome.status == "completed"
    assert outcome.counters["snapshots"] == 5
    assert calls == []  # neither the journal, nor the snapshots, nor status.json
    assert execution.directory.read_status()["status"] == "completed"
    # trace.seq holds the last delivered seq after the run.
    assert execution.directory.read_trace_seq() == outcome.counters["trace_seq"]


def test_an_execution_with_journal_fsync_fsyncs_its_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_fsyncs(monkeypatch)
    outcome, _ = _run(tmp_path, journal_fsync=True)
    assert outcome.status == "completed"
    # status.json twice (file and directory), 25 journal records, and at least a file
    # and a directory fsync per snapshot.
    assert len(calls) >= 4 + 25 + 2 * 5

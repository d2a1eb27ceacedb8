"""`status.json` is written whether or not the execution's directory exists yet; the
temporary names state files are written under are unique."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from jarvis.runtime.statedir import DIR_MODE, ExecutionDir, temp_name


def test_a_status_is_written_where_there_was_no_directory(tmp_path: Path) -> None:
    execution = ExecutionDir(tmp_path / "state", "e-1")
    execution.write_status({"status": "cancelled"}, fsync=False)
    assert execution.read_status() == {"status": "cancelled"}
    assert stat.S_IMODE(execution.root.stat().st_mode) == DIR_MODE
    assert os.listdir(execution.root) == ["status.json"]  # no temporary file left


def test_a_status_replaces_the_last_one_in_an_existing_directory(tmp_path: Path) -> None:
    execution = ExecutionDir(tmp_path, "e-2")
    execution.create()
    execution.write_status({"status": "running"}, fsync=False)
    execution.write_status({"status": "completed", "outputs": {"a": 1}}, fsync=False)
    assert execution.read_status() == {"status": "completed", "outputs": {"a": 1}}
    assert sorted(os.listdir(execution.root)) == ["snapshots", "status.json"]


def test_a_removed_execution_gets_its_directory_back_for_its_status(tmp_path: Path) -> None:
    # As a cancel does: the state is deleted, then `cancelled` is recorded.
    execution = ExecutionDir(tmp_path, "e-3")
    execution.create()
    execution.write_status({"status": "running"}, fsync=False)
    assert execution.remove()
    execution.write_status({"status": "cancelled"})
    assert execution.read_status() == {"status": "cancelled"}


def test_temporary_names_are_unique_also_in_a_forked_child(tmp_path: Path) -> None:
    final = tmp_path / "status.json"
    names = {temp_name(final) for _ in range(1000)}
    assert len(names) == 1000
    assert all(n.parent == tmp_path and n.name.startswith(".status.json.") for n in names)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's names must not repeat the parent's (its counter is a copy)
        os.write(write, temp_name(final).name.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    assert child and child not in {n.name for n in names} | {temp_name(final).name}
    prefix = child.split(".")[3][:16]  # .status.json.<prefix><counter>.tmp
    assert not any(n.name.split(".")[3].startswith(prefix) for n in names)

"""A child's working directory is removed once the child has ended, whatever it holds."""

from __future__ import annotations

from pathlib import Path

from jarvis.runtime.children import remove_workdir


def test_an_empty_directory_is_removed(tmp_path: Path) -> None:
    workdir = tmp_path / "child"
    workdir.mkdir()
    remove_workdir(str(workdir))
    assert not workdir.exists()


def test_what_a_child_left_there_is_removed_with_it(tmp_path: Path) -> None:
    workdir = tmp_path / "child"
    (workdir / "deep" / "er").mkdir(parents=True)
    (workdir / "deep" / "er" / "file").write_bytes(b"left behind")
    (workdir / "top").write_bytes(b"too")
    remove_workdir(str(workdir))
    assert not workdir.exists()


def test_a_directory_already_gone_is_no_error(tmp_path: Path) -> None:
    remove_workdir(str(tmp_path / "never-made"))
    assert list(tmp_path.iterdir()) == []

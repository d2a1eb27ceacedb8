"""Inputs on the command line, shared by `jarvis run` and `jarvis control start`."""

from __future__ import annotations

from pathlib import Path

import pytest

from jarvis.cli.control import main as control_main
from jarvis.cli.inputs import InputError, parse_inputs


def test_items_override_the_file_and_non_json_is_a_string(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text('{"a": 1, "b": [1, 2]}', encoding="utf-8")
    assert parse_inputs(str(path), ["b={\"x\": null}", "name=Ada", "empty="]) == {
        "a": 1, "b": {"x": None}, "name": "Ada", "empty": "",
    }


def test_no_inputs_is_an_empty_object() -> None:
    assert parse_inputs(None, []) == {}


@pytest.mark.parametrize(("content", "reason"), [
    ("[1, 2]", "must hold a JSON object"),
    ("{not json", "Expecting property name"),
])
def test_a_bad_inputs_file_names_the_file_and_the_reason(
        tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "in.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=f"--inputs {path}: .*{reason}"):
        parse_inputs(str(path), [])


def test_a_missing_inputs_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        parse_inputs(str(tmp_path / "absent.json"), [])


@pytest.mark.parametrize("item", ["novalue", "=1"])
def test_an_item_without_name_or_equals_is_refused(item: str) -> None:
    with pytest.raises(InputError, match="expected NAME=JSON"):
        parse_inputs(None, [item])


def test_control_start_refuses_bad_inputs_before_sending(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program = tmp_path / "p.spy"
    program.write_text("output('x', 1)\n", encoding="utf-8")
    assert control_main(["start", str(program), "--input", "oops"]) == 2
    assert "expected NAME=JSON" in capsys.readouterr().err

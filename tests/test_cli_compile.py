"""`jarvis-compile`: inputs, exit codes and the three formats, run as users run it."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from jarvis.cli.compile import main
from jarvis.cli.main import main as jarvis_main

SPEC_DIR = Path(__file__).parent / "spec"

THREE_PROBLEMS = b"import os\nx = [1]\ny = x.__class__\nclass A:\n    pass\n"
THREE_EXPECTED = [("SPY102", 1, 1), ("SPY202", 3, 7), ("SPY101", 4, 1)]
SYNTAX_ERROR = b"x = 1\nif x\n    pass\n"
CLEAN = b"from books import crm, erp\nx = crm.get(1)\nerp.post(x)\ncrm.get(2)\nprint(x)\n"
NON_ASCII = 'naïve = "ünïcödé 日本"; y = naïve.__len__\n'

HEADER = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): (?P<code>SPY\d{3}) ", re.M)

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Call `main` in-process; return (exit status, stdout, stderr)."""

    def call(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return call


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return tmp_path


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def _positions(fmt: str, out: str) -> list[tuple[str, int, int]]:
    """(code, line, col) of each diagnostic, read back from a report in `fmt`."""
    if fmt == "text":
        return [(m["code"], int(m["line"]), int(m["col"])) for m in HEADER.finditer(out)]
    if fmt == "json":
        return [
            (d["code"], d["line"], d["col"])
            for file in json.loads(out)["files"]
            for d in file["diagnostics"]
        ]
    results = json.loads(out)["runs"][0]["results"]
    return [
        (
            r["ruleId"],
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
            r["locations"][0]["physicalLocation"]["region"]["startColumn"],
        )
        for r in results
    ]


FORMATS = ["text", "json", "sarif"]


# -- the diagnostics, in every format ------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_class_import_and_dunder_give_three_diagnostics(run: Run, workdir: Path, fmt: str) -> None:
    (workdir / "bad.spy").write_bytes(THREE_PROBLEMS)
    status, out, _ = run("--format", fmt, "bad.spy")
    assert status == 1
    assert _positions(fmt, out) == THREE_EXPECTED


def test_three_diagnostics_spans_agree_across_formats(run: Run, workdir: Path) -> None:
    (workdir / "bad.spy").write_bytes(THREE_PROBLEMS)
    _, text, err = run("bad.spy")
    _, as_json, _ = run("--format", "json", "bad.spy")
    _, as_sarif, _ = run("--format", "sarif", "bad.spy")
    spans = [
        (d["line"], d["col"], d["end_line"], d["end_col"])
        for d in json.loads(as_json)["files"][0]["diagnostics"]
    ]
    assert spans == [(1, 1, 1, 10), (3, 7, 3, 16), (4, 1, 5, 9)]
    regions = [
        r["locations"][0]["physicalLocation"]["region"]
        for r in json.loads(as_sarif)["runs"][0]["results"]
    ]
    assert [(g["startLine"], g["startColumn"], g["endLine"], g["endColumn"]) for g in regions] == (
        spans
    )
    assert "    y = x.__class__\n          ^~~~~~~~~\n" in text
    assert "    class A:\n    ^~~~~~~~\n" in text
    assert err.strip().endswith("3 diagnostics in 1 file (1 file checked)")


@pytest.mark.parametrize("fmt", FORMATS)
def test_syntax_error_gives_one_diagnostic_where_python_puts_it(
    run: Run, workdir: Path, fmt: str
) -> None:
    with pytest.raises(SyntaxError) as python:
        compile(SYNTAX_ERROR, "syntax.spy", "exec")
    (workdir / "syntax.spy").write_bytes(SYNTAX_ERROR)
    status, out, _ = run("--format", fmt, "syntax.spy")
    assert status == 1
    assert _positions(fmt, out) == [("SPY001", python.value.lineno, python.value.offset)]
    assert _positions(fmt, out) == [("SPY001", 2, 5)]


def test_syntax_error_caret_points_past_the_end_of_the_line(run: Run, workdir: Path) -> None:
    (workdir / "syntax.spy").write_bytes(SYNTAX_ERROR)
    _, out, _ = run("syntax.spy")
    assert out.splitlines()[:3] == [
        "syntax.spy:2:5: SPY001 expected ':'",
        "    if x",
        "        ^",
    ]


def test_caret_under_a_non_ascii_line(run: Run, workdir: Path) -> None:
    (workdir / "accents.spy").write_text(NON_ASCII, encoding="utf-8")
    status, out, _ = run("accents.spy")
    assert status == 1
    header, source, marker = out.splitlines()[:3]
    col = NON_ASCII.index("__len__") + 1
    assert header.startswith(f"accents.spy:1:{col}: SPY202 ")
    assert source == "    " + NON_ASCII.rstrip("\n")
    # Every character before the span is one cell, except the two wide ideographs.
    assert marker.index("^") == source.index("__len__") + 2
    assert marker.endswith("^~~~~~~")


# -- inputs -------------------------------------------------------------------------


def test_directories_recurse_in_sorted_order_with_paths_as_given(run: Run, workdir: Path) -> None:
    for name in ["src/b.spy", "src/a.spy", "src/sub/c.spy", "src/sub/deeper/d.spy",
                 "src/a/e.spy", "src/notes.txt", "src/sub/x.py"]:
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_bytes(THREE_PROBLEMS)
    status, out, _ = run("--format", "json", "src")
    assert status == 1
    assert [f["path"] for f in json.loads(out)["files"]] == [
        os.path.join("src", "a", "e.spy"),
        os.path.join("src", "a.spy"),
        os.path.join("src", "b.spy"),
        os.path.join("src", "sub", "c.spy"),
        os.path.join("src", "sub", "deeper", "d.spy"),
    ]
    _, text, _ = run("src/sub")
    assert {m["path"] for m in HEADER.finditer(text)} == {
        os.path.join("src/sub", "c.spy"), os.path.join("src/sub", "deeper", "d.spy"),
    }


def test_a_path_given_twice_is_checked_once(run: Run, workdir: Path) -> None:
    (workdir / "src").mkdir()
    (workdir / "src" / "ok.spy").write_bytes(CLEAN)
    status, _, err = run("src/ok.spy", "src", "./src/ok.spy")
    assert status == 0
    assert "1 file checked, no problems" in err


def test_stdin_is_reported_as_stdin(
    run: Run, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, THREE_PROBLEMS)
    status, out, _ = run("-")
    assert status == 1
    assert {m["path"] for m in HEADER.finditer(out)} == {"<stdin>"}
    _stdin(monkeypatch, THREE_PROBLEMS)
    _, out, _ = run("--format", "sarif", "-")
    run_log = json.loads(out)["runs"][0]
    assert run_log["artifacts"] == [{"location": {"uri": "stdin"}}]
    _stdin(monkeypatch, CLEAN)
    assert run("-")[0] == 0


def test_stdin_bytes_are_passed_through_undecoded(
    run: Run, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, b"x = '\xff'\n")
    status, out, _ = run("--format", "json", "-")
    assert status == 1
    (diagnostic,) = json.loads(out)["files"][0]["diagnostics"]
    assert diagnostic["code"] == "SPY002"


def test_an_empty_directory_is_clean_with_a_note(run: Run, workdir: Path) -> None:
    (workdir / "empty").mkdir()
    status, out, err = run("empty")
    assert status == 0
    assert out == ""
    assert err == (
        "jarvis-compile: note: no SPy files (*.spy) in empty\n0 files checked, no problems\n"
    )
    status, out, err = run("--format", "json", "empty")
    assert status == 0
    assert json.loads(out)["summary"] == {"files": 0, "diagnostics": 0}
    assert "no SPy files" in err


def test_the_spec_programs_are_clean(run: Run) -> None:
    status, out, err = run(str(SPEC_DIR))
    assert status == 0, out
    assert out == ""
    assert err.endswith("no problems\n")


# -- exit codes ---------------------------------------------------------------------


def test_exit_codes(run: Run, workdir: Path) -> None:
    (workdir / "ok.spy").write_bytes(CLEAN)
    (workdir / "bad.spy").write_bytes(THREE_PROBLEMS)
    assert run("ok.spy")[0] == 0
    assert run("bad.spy")[0] == 1
    assert run("ok.spy", "bad.spy")[0] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no paths given"),
        (("missing.spy",), "no such file or directory: missing.spy"),
        (("ok.spy", "missing.spy"), "no such file or directory: missing.spy"),
        (("--format", "xml", "ok.spy"), "invalid choice: 'xml'"),
        (("--color", "sometimes", "ok.spy"), "invalid choice"),
        (("--bogus", "ok.spy"), "unrecognized arguments: --bogus"),
        (("--emit", "python", "ok.spy", "ok2.spy"), "exactly one program; got 2"),
        (("--emit", "bytecode", "ok.spy"), "invalid choice"),
        (("--emit", "python", "--list-books", "ok.spy"), "not allowed with"),
        (("--list-books", "--format", "sarif", "ok.spy"), "--list-books works with"),
        (("-", "-"), "only once"),
        (("dangling.spy",), "cannot read dangling.spy"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    run: Run, workdir: Path, args: tuple[str, ...], message: str
) -> None:
    (workdir / "ok.spy").write_bytes(CLEAN)
    (workdir / "ok2.spy").write_bytes(CLEAN)
    (workdir / "dangling.spy").symlink_to(workdir / "nowhere.spy")
    status, out, err = run(*args)
    assert status == 2
    assert out == ""
    assert message in err


def test_help_and_version_exit_0(run: Run) -> None:
    status, out, _ = run("--help")
    assert status == 0
    assert "--format" in out and "--emit" in out
    status, out, _ = run("--version")
    assert status == 0
    assert out.startswith("jarvis-compile ")


def test_jarvis_compile_subcommand_is_the_same_command(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "bad.spy").write_bytes(THREE_PROBLEMS)
    assert jarvis_main(["compile", "bad.spy"]) == 1
    assert len(HEADER.findall(capsys.readouterr().out)) == 3
    assert jarvis_main(["compile"]) == 2
    assert capsys.readouterr().err.startswith("jarvis compile: error: ")


# -- --emit python ------------------------------------------------------------------


def test_emit_python_prints_code_that_compiles(run: Run, workdir: Path) -> None:
    (workdir / "ok.spy").write_bytes(CLEAN)
    status, out, err = run("--emit", "python", "ok.spy")
    assert status == 0
    assert err == ""
    compile(out, "emitted.py", "exec")
    # The Book call is a suspension point of the step function: an effect it returns.
    assert "def _jv_step_0(" in out
    assert "('crm', 'get'), (1,)" in out


def test_emit_python_from_stdin(run: Run, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, b"print(1 + 2)\n")
    status, out, _ = run("--emit", "python", "-")
    assert status == 0
    compile(out, "emitted.py", "exec")


@pytest.mark.parametrize("fmt", FORMATS)
def test_emit_python_of_a_bad_program_reports_instead(run: Run, workdir: Path, fmt: str) -> None:
    (workdir / "bad.spy").write_bytes(THREE_PROBLEMS)
    status, out, _ = run("--emit", "python", "--format", fmt, "bad.spy")
    assert status == 1
    assert _positions(fmt, out) == THREE_EXPECTED


# -- --list-books -------------------------------------------------------------------


def test_list_books_lists_each_distinct_call(run: Run, workdir: Path) -> None:
    (workdir / "ok.spy").write_bytes(CLEAN)
    (workdir / "none.spy").write_bytes(b"print(1)\n")
    status, out, err = run("--list-books", "ok.spy", "none.spy")
    assert status == 0
    assert out == "ok.spy: crm.get\nok.spy: erp.post\n"
    assert "2 files checked, no problems" in err


def test_list_books_still_reports_diagnostics_and_fails(run: Run, workdir: Path) -> None:
    (workdir / "mixed.spy").write_bytes(CLEAN + b"y = x.__class__\n")
    status, out, err = run("--list-books", "mixed.spy")
    assert status == 1
    assert out == "mixed.spy: crm.get\nmixed.spy: erp.post\n"
    assert "mixed.spy:6:7: SPY202 " in err


def test_list_books_in_json_is_the_json_report(run: Run, workdir: Path) -> None:
    (workdir / "ok.spy").write_bytes(CLEAN)
    _, listed, _ = run("--list-books", "--format", "json", "ok.spy")
    _, plain, _ = run("--format", "json", "ok.spy")
    assert listed == plain
    assert json.loads(listed)["files"][0]["books"] == {"crm": ["get"], "erp": ["post"]}


# -- colour -------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "no_color", "option", "coloured"),
    [
        (False, None, None, False),
        (True, None, None, True),
        (True, "1", None, False),
        (True, "", None, True),
        (False, None, "always", True),
        (False, "1", "always", True),
        (True, None, "never", False),
        (True, None, "auto", True),
    ],
)
def test_colour_only_on_a_terminal_or_when_forced(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tty: bool,
    no_color: str | None,
    option: str | None,
    coloured: bool,
) -> None:
    (workdir / "bad.spy").write_bytes(THREE_PROBLEMS)
    stdout = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    monkeypatch.delenv("TERM", raising=False)
    args = ["bad.spy"] if option is None else ["--color", option, "bad.spy"]
    assert main(args) == 1
    assert ("\x1b[" in stdout.getvalue()) is coloured


def test_json_and_sarif_are_never_coloured(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "bad.spy").write_bytes(THREE_PROBLEMS)
    for fmt in ["json", "sarif"]:
        stdout = _Terminal()
        monkeypatch.setattr(sys, "stdout", stdout)
        main(["--color", "always", "--format", fmt, "bad.spy"])
        assert "\x1b[" not in stdout.getvalue()
        json.loads(stdout.getvalue())


# -- the installed script -----------------------------------------------------------


def _script() -> Path:
    script = Path(sys.executable).parent / "jarvis-compile"
    assert script.exists(), (
        f"{script} is missing: install the package (`make test` does) to get the script"
    )
    return script


def test_installed_script_reports_and_exits_1(workdir: Path) -> None:
    (workdir / "bad.spy").write_bytes(THREE_PROBLEMS)
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    done = subprocess.run(
        [str(_script()), "--format", "json", "bad.spy"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert done.returncode == 1, done.stderr
    assert _positions("json", done.stdout) == THREE_EXPECTED
    done = subprocess.run(
        [str(_script()), "bad.spy"], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "\x1b[" not in done.stdout  # a pipe is not a terminal
    assert done.stderr == "3 diagnostics in 1 file (1 file checked)\n"


def test_installed_script_reads_stdin_and_exits_0_and_2(workdir: Path) -> None:
    done = subprocess.run(
        [str(_script()), "-"], input=CLEAN, capture_output=True, timeout=60, check=False,
    )
    assert (done.returncode, done.stdout) == (0, b"")
    assert done.stderr == b"1 file checked, no problems\n"
    done = subprocess.run(
        [str(_script()), "missing.spy"], capture_output=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert b"no such file or directory" in done.stderr

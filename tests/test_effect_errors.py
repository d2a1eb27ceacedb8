"""An effect that fails (a Book error, a bad `sleep` argument) is reported where the
program made the call, not at the entry of the function that suspended."""

from __future__ import annotations

from pathlib import Path

import pytest

from jarvis.cli.main import main as jarvis_main

SPEC_BOOKS = Path(__file__).resolve().parent / "spec" / "books"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JARVIS_JOURNAL_FSYNC", "false")
    (tmp_path / "books.toml").write_text(
        f'[books.echo]\npython = "{SPEC_BOOKS / "echo.py"}"\n', encoding="utf-8")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], source: str) -> tuple[int, str]:
    Path("p.spy").write_text(source, encoding="utf-8")
    status = jarvis_main(["run", "p.spy", "--books", "books.toml", "--quiet"])
    return status, capsys.readouterr().err


def test_a_book_error_names_the_call(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(capsys, "from books import echo\n\nx = 1\ny = echo.nope(a=1)\n")
    assert status == 1
    assert "p.spy:4:5: BookError: echo.nope: UnknownProcedure" in err
    assert "  y = echo.nope(a=1)\n      ^~~~~~~~~~~~~~\n" in err


def test_a_book_error_reraised_in_a_function_keeps_the_call_position(
        capsys: pytest.CaptureFixture[str]) -> None:
    source = (
        "from books import echo\n"
        "\n"
        "def f():\n"
        "    try:\n"
        "        return echo.nope(a=1)\n"
        "    except BookError as e:\n"
        "        print('retrying')\n"
        "        raise e\n"
        "\n"
        "f()\n"
    )
    status, err = run(capsys, source)
    assert status == 1
    assert "p.spy:5:16: BookError" in err


@pytest.mark.parametrize(("argument", "message"), [
    ('float("inf")', "ValueError: sleep(): seconds must be a finite number"),
    ('float("nan")', "ValueError: sleep(): seconds must be zero or more"),
    ("-1", "ValueError: sleep(): seconds must be zero or more"),
    ('"soon"', "TypeError: sleep(): seconds must be a number"),
])
def test_a_bad_sleep_is_a_clear_error_at_the_call(
        capsys: pytest.CaptureFixture[str], argument: str, message: str) -> None:
    status, err = run(capsys, f"x = 1\nsleep({argument})\n")
    assert status == 1
    assert f"p.spy:2:1: {message}" in err


def test_a_book_the_host_cannot_load_fails_the_run_and_cannot_be_caught(
        capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    (in_tmp / "broken.py").write_text("raise ImportError('the Book file is broken')\n",
                                      encoding="utf-8")
    with (in_tmp / "books.toml").open("a", encoding="utf-8") as registry:
        registry.write(f'[books.broken]\npython = "{in_tmp / "broken.py"}"\n')
    source = (
        "from books import broken\n"
        "try:\n"
        "    broken.go()\n"
        "except Exception as e:\n"
        "    output('caught', str(e))\n"
    )
    status, err = run(capsys, source)
    assert status == 1
    assert "caught" not in capsys.readouterr().out
    assert "p.spy:3:5: RuntimeSetupError: Book 'broken'" in err

"""`jarvis run`: outputs, exit codes, errors with positions, logs, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jarvis.cli.main import main as jarvis_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = jarvis_main(["run", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JARVIS_JOURNAL_FSYNC", "false")
    return tmp_path


def test_the_example_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, str(EXAMPLES / "invoice_approval.spy"),
                           "--books", str(EXAMPLES / "books.toml"),
                           "--inputs", str(EXAMPLES / "invoice_approval.inputs.json"))
    assert status == 0, err
    assert json.loads(out) == {"approved": ["INV-1", "INV-3"], "held": ["INV-2"]}
    assert "book_start erp.list_open_invoices" in err
    assert "completed" in err


def test_inputs_from_the_command_line(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    (in_tmp / "p.spy").write_text("output('x', inputs['a'] + 1)\noutput('w', inputs['w'])\n")
    status, out, _ = run(capsys, "p.spy", "--input", "a=41", "--input", "w=word", "--quiet")
    assert status == 0
    assert json.loads(out) == {"x": 42, "w": "word"}


def test_a_program_error_names_the_line_and_column(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    (in_tmp / "p.spy").write_text("x = 1\ny = {'a': 1}\nz = x + y['b']\n")
    status, out, err = run(capsys, "p.spy", "--quiet")
    assert status == 1
    assert json.loads(out) == {}
    assert "p.spy:3:9: KeyError: 'b'" in err
    assert "z = x + y['b']" in err
    # The same marker as jarvis-compile's diagnostics, under `y['b']`.
    assert "  z = x + y['b']\n          ^~~~~~\n" in err


def test_a_compile_error_exits_2_with_diagnostics(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    (in_tmp / "p.spy").write_text("import os\n")
    status, out, err = run(capsys, "p.spy")
    assert (status, out) == (2, "")
    assert "SPY102" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    assert run(capsys, "missing.spy")[0] == 2
    (in_tmp / "p.spy").write_text("x = 1\n")
    assert run(capsys, "p.spy", "--input", "novalue")[0] == 2
    assert run(capsys, "p.spy", "--inputs", "nowhere.json")[0] == 2
    status, _, err = run(capsys, "p.spy", "--execution-id", "../escape")
    assert status == 2 and "execution id" in err.lower()


def test_a_missing_book_is_a_setup_error(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    (in_tmp / "p.spy").write_text("from books import crm\ncrm.get()\n")
    status, _, err = run(capsys, "p.spy", "--quiet")
    assert status == 2
    assert "crm" in err


def test_log_file_holds_every_event_once(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    (in_tmp / "p.spy").write_text("total = 0\nfor i in range(3):\n    total += i\nprint(total)\n")
    status, _, _ = run(capsys, "p.spy", "--quiet", "--trace", "full", "--log", "events.jsonl")
    assert status == 0
    events = [json.loads(line) for line in (in_tmp / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = {e["kind"] for e in events}
    assert {"stmt", "expr", "print"} <= kinds
    assert any(e["kind"] == "print" and e["value"] == "3\n" for e in events)


def test_a_finished_execution_reports_its_outputs_again(
    capsys: pytest.CaptureFixture[str], in_tmp: Path
) -> None:
    (in_tmp / "p.spy").write_text("output('n', 7)\n")
    assert run(capsys, "p.spy", "--execution-id", "same", "--quiet")[0] == 0
    status, out, err = run(capsys, "p.spy", "--execution-id", "same")
    assert status == 0
    assert json.loads(out) == {"n": 7}
    assert "already completed" in err


def test_limits_fail_the_run_with_exit_1(capsys: pytest.CaptureFixture[str], in_tmp: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (in_tmp / "p.spy").write_text("s = 'a' * 10 ** 10\n")
    status, _, err = run(capsys, "p.spy", "--quiet")
    assert status == 1
    assert "limit 'memory' exceeded" in err
    (in_tmp / "q.spy").write_text("n = 0\nwhile True:\n    n += 1\n")
    monkeypatch.setenv("JARVIS_LIMITS__MAX_SECONDS", "0.5")
    status, _, err = run(capsys, "q.spy", "--quiet", "--trace", "off")
    assert status == 1
    assert "limit 'seconds' exceeded" in err


def test_sigterm_suspends_with_exit_3_and_the_same_id_resumes(in_tmp: Path) -> None:
    program = in_tmp / "slow.spy"
    program.write_text(
        "total = 0\nfor i in range(4):\n    total += i\n    sleep(0.5)\noutput('total', total)\n"
    )
    command = [sys.executable, "-m", "jarvis.cli.main", "run", str(program),
               "--execution-id", "slow", "--state-dir", str(in_tmp / "state"), "--quiet"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ))
    # Stop once the program is under way (its first sleep is journaled): a fixed delay
    # is too short on a loaded machine, where the interpreter alone takes seconds.
    journal = in_tmp / "state" / "executions" / "slow" / "journal"
    deadline = time.monotonic() + 30
    while not (journal.exists() and journal.stat().st_size > 0):
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline, "the program did not start within 30 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 3, err
    assert "--execution-id slow" in err
    assert list((in_tmp / "state" / "executions" / "slow" / "snapshots").iterdir())
    done = subprocess.run(command[:-1], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"total": 6}
    assert "jarvis: resuming" in done.stderr  # not "running": the run goes on

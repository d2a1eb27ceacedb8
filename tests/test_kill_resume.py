"""Kill and resume: a real `jarvis run` child process SIGKILLed in the middle of a Book
call, for every Book call of the program, then resumed until done.

The Book is a real HTTP server on loopback; it kills the child while the k-th request is
in flight. The resumed run must reach the same outputs and prints as an uninterrupted
one, make every Book call once, except the one in flight at the kill, which is sent
again with the same Idempotency-Key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bookserver import BookServer

PROGRAM = """\
from books import svc

def settle(i, total):
    receipt = svc.charge(item=i, amount=(i + 1) * 10)
    return total + receipt["amount"]

total = 0
seen = []
for i in range(4):
    total = settle(i, total)
    print("charged", i, "total", total)
    seen.append(svc.note(text=f"item {i}"))
    if i == 1:
        checkpoint()
    sleep(0)
output("total", total)
output("seen", seen)
"""


class Child:
    """The `jarvis run` process of one execution."""

    def __init__(self, tmp: Path, execution_id: str) -> None:
        self.tmp = tmp
        self.execution_id = execution_id
        self.process: subprocess.Popen[str] | None = None

    def run(self) -> tuple[int, str, str]:
        env = dict(os.environ, JARVIS_SNAPSHOT_EVERY_EFFECTS="2", JARVIS_JOURNAL_FSYNC="true")
        command = [
            sys.executable, "-m", "jarvis.cli.main", "run", str(self.tmp / "prog.spy"),
            "--books", str(self.tmp / "books.toml"), "--execution-id", self.execution_id,
            "--state-dir", str(self.tmp / "state"),
            "--log", str(self.tmp / f"{self.execution_id}.jsonl"),
            "--quiet", "--trace", "statements",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out, err

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def prints(log: Path) -> str:
    events = [json.loads(line) for line in log.read_text().splitlines()]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), "a trace event was delivered twice or out of order"
    return "".join(e["value"] for e in events if e["kind"] == "print")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "prog.spy").write_text(PROGRAM)
    return tmp_path


def serve(server: BookServer, child: Child, kill_at: int | None) -> None:
    calls = {"n": 0}

    def counted(result: Any) -> Any:
        calls["n"] += 1
        if kill_at is not None and calls["n"] == kill_at:
            child.kill()  # the request is in flight: its answer never arrives
        return result

    server.procedure("charge", lambda item, amount: counted({"item": item, "amount": amount}))
    server.procedure("note", lambda text: counted(len(text)))


def run_once(
    workdir: Path, execution_id: str, kill_at: int | None
) -> tuple[dict[str, Any], str, list[str]]:
    child = Child(workdir, execution_id)
    with BookServer() as server:
        serve(server, child, kill_at)
        (workdir / "books.toml").write_text(f'[books.svc]\nurl = "{server.url}"\ntimeout_s = 5\n')
        status, out, err = child.run()
        if kill_at is not None:
            assert status == -signal.SIGKILL, (status, err)
            status, out, err = child.run()
        assert status == 0, err
        keys = [r.headers["idempotency-key"] for r in server.requests]
    return json.loads(out), prints(workdir / f"{execution_id}.jsonl"), keys


def test_kill_in_flight_at_every_book_call_then_resume(workdir: Path) -> None:
    outputs, printed, keys = run_once(workdir, "baseline", None)
    assert outputs == {"total": 100, "seen": [6, 6, 6, 6]}
    assert printed.count("charged") == 4
    assert len(keys) == len(set(keys)) == 8
    expected_keys = [key.split(":", 1)[1] for key in keys]
    for k in range(1, len(keys) + 1):
        execution_id = f"killed-at-{k}"
        got_outputs, got_prints, got_keys = run_once(workdir, execution_id, k)
        assert got_outputs == outputs, k
        assert got_prints == printed, k
        counts = Counter(got_keys)
        resent = [key for key, n in counts.items() if n > 1]
        # Only the call in flight at the kill is sent again, with its original key.
        assert resent == [got_keys[k - 1]], (k, got_keys)
        assert counts[got_keys[k - 1]] == 2
        assert [key.split(":", 1)[1] for key in dict.fromkeys(got_keys)] == expected_keys
        assert all(key.startswith(f"{execution_id}:") for key in got_keys)

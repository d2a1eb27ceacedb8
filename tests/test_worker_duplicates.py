"""A start of an execution that already ended is answered by its run: `duplicate`.

The run asks Redis (in the round trip that takes the lease) and then the execution's
status.json, which outlives Redis; either way nothing runs. The real services are in
tests/integration/test_worker_runs.py and test_worker_failures.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jarvis.runtime.books import BookRegistry
from jarvis.runtime.statedir import ExecutionDir
from jarvis.settings import WorkerSettings
from jarvis.worker import messages
from jarvis.worker.endings import status_key
from jarvis.worker.runs import DUPLICATE, Position, Run, Runner


class ScriptedRedis:
    """The lease scripts a run's beginning uses, on dicts."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.values: dict[str, str] = {}
        self.begun: list[str] = []

    def register_script(self, script: str) -> Callable[..., Any]:
        def run(keys: list[str], args: list[Any]) -> Any:
            if "HGET" in script:  # the beginning: ended? else take the lease
                self.begun.append(keys[0])
                ended = self.hashes.get(keys[2], {}).get("status", "")
                if ended in args[3:]:
                    return [0, "", ended, ""]
                token = int(self.values.get(keys[1], "0")) + 1
                self.values[keys[1]] = str(token)
                self.values[keys[0]] = f"{args[0]}:{token}"
                return [token, "", "", ""]
            if "DEL" in script:  # the release
                return 1 if self.values.pop(keys[0], None) is not None else 0
            raise AssertionError(f"unexpected script {script[:40]!r}")
        return run


def runner_for(tmp_path: Path, redis: ScriptedRedis,
               events: list[tuple[str, str, dict[str, Any]]],
               program: bytes | None = None) -> Runner:
    settings = WorkerSettings(state_dir=tmp_path / "state")

    def publish(execution_id: str, status: str, **fields: Any) -> None:
        events.append((execution_id, status, fields))

    def load_program(command: Any) -> tuple[bytes, str]:
        if program is None:
            raise AssertionError("a duplicate loads no program")
        return program, "program.spy"

    return Runner(settings, "w1", redis, None, BookRegistry(), pool=None,  # type: ignore[arg-type]
                  publish=publish, load_program=load_program, finished=lambda run: None)


def start_run(execution_id: str) -> Run:
    raw = json.dumps({"v": 1, "type": "start", "execution_id": execution_id,
                      "program": {"source": "x = 1\n"}}).encode()
    command = messages.parse_command(raw, 1 << 20)
    return Run(execution_id, Position("spy_control", 0, 0), command)


def test_a_start_of_an_execution_redis_records_as_ended_is_a_duplicate(
        tmp_path: Path) -> None:
    redis = ScriptedRedis()
    events: list[tuple[str, str, dict[str, Any]]] = []
    redis.hashes[status_key("done")] = {"status": "completed"}
    runner = runner_for(tmp_path, redis, events)

    assert runner._attempts(start_run("done")) == DUPLICATE
    assert events == [("done", "duplicate", {"error": {
        "type": "Duplicate", "message": "the execution is completed"}})]
    assert not ExecutionDir(tmp_path / "state", "done").exists()  # nothing was made


def test_a_start_of_an_execution_only_its_state_records_as_ended_is_a_duplicate(
        tmp_path: Path) -> None:
    redis = ScriptedRedis()
    events: list[tuple[str, str, dict[str, Any]]] = []
    ExecutionDir(tmp_path / "state", "gone").write_status({"status": "failed"})
    runner = runner_for(tmp_path, redis, events)  # Redis forgot how it ended

    assert runner._attempts(start_run("gone")) == DUPLICATE
    assert events == [("gone", "duplicate", {"error": {
        "type": "Duplicate", "message": "the execution is failed"}})]
    assert redis.begun == ["jarvis:lease:gone"]
    assert "jarvis:lease:gone" not in redis.values  # the lease it took is released
    assert not (tmp_path / "state" / "executions" / "gone" / "fence").exists()


def test_a_start_whose_program_does_not_compile_fails_with_its_first_diagnostic(
        tmp_path: Path) -> None:
    """(Not a duplicate: the other way a start ends before any child runs.)"""
    redis = ScriptedRedis()
    events: list[tuple[str, str, dict[str, Any]]] = []
    runner = runner_for(tmp_path, redis, events, program=b"x = (\n")

    assert runner._attempts(start_run("bad")) == "failed"
    [(execution_id, status, fields)] = events
    error = fields["error"]
    assert (execution_id, status) == ("bad", "failed")
    assert error["type"].startswith("SPY") and error["line"] == 1 and error["message"]
    recorded = ExecutionDir(tmp_path / "state", "bad").read_status()
    assert recorded["status"] == "failed" and recorded["error"] == error

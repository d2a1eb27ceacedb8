"""`jarvis health`: the heartbeat check the Kubernetes exec probes run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jarvis.cli.health import main
from jarvis.worker.health import check


def beat(path: Path, age: float = 0.0, **fields: object) -> Path:
    record = {"ts": time.time() - age, "kafka": True, "redis": True, "state_dir": True,
              **fields}
    path.write_text(json.dumps(record))
    return path


def test_a_fresh_healthy_heartbeat_passes(tmp_path: Path) -> None:
    healthy, why = check(beat(tmp_path / "hb.json"), max_age=15)
    assert healthy, why


def test_a_stale_heartbeat_fails(tmp_path: Path) -> None:
    healthy, why = check(beat(tmp_path / "hb.json", age=60), max_age=15)
    assert not healthy and "60s old" in why


def test_a_missing_or_torn_heartbeat_fails(tmp_path: Path) -> None:
    assert not check(tmp_path / "none.json", 15)[0]
    (tmp_path / "torn.json").write_text('{"ts": 12')
    assert not check(tmp_path / "torn.json", 15)[0]


def test_a_failing_dependency_fails(tmp_path: Path) -> None:
    healthy, why = check(beat(tmp_path / "hb.json", redis=False, kafka=False), 15)
    assert not healthy and why == "unhealthy: kafka, redis"


def test_the_command_exits_0_or_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JARVIS_HEARTBEAT_FILE", str(beat(tmp_path / "hb.json")))
    monkeypatch.setenv("JARVIS_HEARTBEAT_SECONDS", "5")
    assert main([]) == 0
    assert main(["--file", str(beat(tmp_path / "old.json", age=16))]) == 1
    assert main(["--file", str(tmp_path / "old.json"), "--max-age", "30"]) == 0
    assert "16s old" in capsys.readouterr().err

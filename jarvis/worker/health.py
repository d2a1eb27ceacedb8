"""Health without an API: a heartbeat file the worker rewrites, read by `jarvis health`.

Kubernetes runs `jarvis health` as an exec probe; it exits 0 when the heartbeat is
fresh and every dependency (Kafka, Redis, the state directory) was fine at that time.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from jarvis.settings import WorkerSettings


class HealthReporter:
    """Writes the heartbeat every `heartbeat_seconds` from a thread of its own."""

    def __init__(self, settings: WorkerSettings, loop: Any, redis: Any, path: Path) -> None:
        self.settings = settings
        self.loop = loop
        self.redis = redis
        self.path = path

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self._beat, args=(stop,), daemon=True,
                                  name="heartbeat")
        thread.start()
        return thread

    def _beat(self, stop: threading.Event) -> None:
        while True:
            self.write()
            if stop.wait(self.settings.heartbeat_seconds):
                return

    def write(self) -> None:
        redis_ok = _quietly(lambda: bool(self.redis.ping()))
        state_ok = _quietly(lambda: _writable(Path(self.settings.state_dir)))
        poll_age = time.time() - self.loop.last_poll if self.loop.last_poll else None
        kafka_ok = poll_age is not None and poll_age < 3 * self.settings.heartbeat_seconds + 30
        self.loop.heartbeat(self.path, kafka_ok, redis_ok, state_ok)


def _quietly(check: Any) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


def _writable(directory: Path) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".health-"):
        return True


def check(path: Path, max_age: float) -> tuple[bool, str]:
    """Whether the heartbeat at `path` says healthy, and why not."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return False, f"no readable heartbeat at {path}: {exc}"
    age = time.time() - float(record.get("ts", 0))
    if age > max_age:
        return False, f"the heartbeat is {age:.0f}s old (limit {max_age:.0f}s)"
    failing = [name for name in ("kafka", "redis", "state_dir") if not record.get(name)]
    if failing:
        return False, "unhealthy: " + ", ".join(failing)
    return True, f"healthy (pid {os.getpid()} checked {path})"

"""How executions ended, so that a start of an ended execution is a duplicate.

Two records: a Redis hash per execution (`jarvis:status:{id}`, quick to read, kept
for `KEEP_SECONDS`) and the execution's `status.json` on the shared state directory,
which outlives Redis. A cancelled execution's state is deleted; what is left is a
`status.json` that says `cancelled` and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from jarvis.runtime.statedir import ExecutionDir, StateError
from jarvis.worker.stops import stop_key

TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
"""Statuses after which an execution never runs again."""

KEEP_SECONDS: Final = 30 * 24 * 3600
"""How long Redis remembers how an execution ended (the state directory keeps it)."""


def status_key(execution_id: str) -> str:
    return f"jarvis:status:{execution_id}"


class Endings:
    """Reads and records how executions ended."""

    def __init__(self, redis: Any, state_dir: Path) -> None:
        self.redis = redis
        self.state_dir = Path(state_dir)

    def ended(self, execution_id: str) -> str | None:
        """The terminal status of the execution, or None while it may still run."""
        known = self.redis.hget(status_key(execution_id), "status")
        status = known.decode() if isinstance(known, bytes) else known
        if status in TERMINAL:
            return str(status)
        return self.ended_on_disk(execution_id)

    def ended_on_disk(self, execution_id: str) -> str | None:
        """The terminal status the execution's `status.json` records (Redis may have
        forgotten it), or None."""
        try:
            recorded = ExecutionDir(self.state_dir, execution_id).read_status() or {}
        except StateError:
            return None
        status = recorded.get("status")
        return str(status) if status in TERMINAL else None

    def record(self, execution_id: str, status: str, worker: str,
               clear_stop: bool = False, then: Callable[[Any], None] | None = None) -> None:
        """Remember in Redis that the execution ended with `status` (and, with
        `clear_stop`, drop its stop request; `then` adds more to the same round trip,
        such as the lease's release)."""
        key = status_key(execution_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"status": status, "worker": worker, "ts": time.time()})
            pipe.expire(key, KEEP_SECONDS)
            if clear_stop:
                pipe.delete(stop_key(execution_id))
            if then is not None:
                then(pipe)
            pipe.execute()

    def cancel(self, execution_id: str) -> None:
        """Delete the execution's state, leaving only a record that it was cancelled."""
        directory = ExecutionDir(self.state_dir, execution_id)
        directory.remove()
        directory.write_status({"status": "cancelled"})

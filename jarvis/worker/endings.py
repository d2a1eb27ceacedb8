"""How executions ended, so that a start of an ended execution is a duplicate.

Two records: a Redis hash per execution (`jarvis:status:{id}`, quick to read, kept
for `KEEP_SECONDS`) and the execution's `status.json` on the shared state directory,
which outlives Redis. A cancelled execution's state is deleted; what is left is a
`status.json` that says `cancelled` and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from jarvis.runtime.statedir import ExecutionDir, StateError
from jarvis.worker.connections import ThreadConnections
from jarvis.worker.leases import Lease, lease_key
from jarvis.worker.stops import stop_key

TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
"""Statuses after which an execution never runs again."""

KEEP_SECONDS: Final = 30 * 24 * 3600
"""How long Redis remembers how an execution ended (the state directory keeps it)."""


def status_key(execution_id: str) -> str:
    return f"jarvis:status:{execution_id}"


def terminal_status(recorded: Mapping[str, Any] | None) -> str | None:
    """The terminal status a `status.json` record holds, or None."""
    status = (recorded or {}).get("status")
    return str(status) if status in TERMINAL else None


_RECORD = """
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'worker', ARGV[2], 'ts', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2])
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) == ARGV[6] then
  redis.call('DEL', KEYS[3])
end
return 1
"""
"""Records an ending in the hash KEYS[1] (status ARGV[1], worker ARGV[2], time ARGV[3],
kept ARGV[4] seconds); with ARGV[5] = 1 deletes the stop request KEYS[2]; releases the
lease KEYS[3] if it still holds ARGV[6] (`worker:token`)."""


class Endings:
    """Reads and records how executions ended."""

    def __init__(self, redis: Any, state_dir: Path) -> None:
        self.redis = redis
        self.state_dir = Path(state_dir)
        self._record = redis.register_script(_RECORD)
        self.connections = ThreadConnections(redis)

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
            recorded = ExecutionDir(self.state_dir, execution_id).read_status()
        except StateError:
            return None
        return terminal_status(recorded)

    def record(self, execution_id: str, status: str, worker: str,
               clear_stop: bool = False, lease: Lease | None = None) -> None:
        """Remember in Redis that the execution ended with `status` (and, with
        `clear_stop`, drop its stop request; with `lease`, release it): one script, one
        round trip."""
        self.connections.run(
            self._record,
            keys=[status_key(execution_id), stop_key(execution_id), lease_key(execution_id)],
            args=[status, worker, time.time(), KEEP_SECONDS, int(clear_stop),
                  lease.value if lease is not None else ""])
        if lease is not None:
            lease.given_up()

    def cancel(self, execution_id: str) -> None:
        """Delete the execution's state, leaving only a record that it was cancelled."""
        directory = ExecutionDir(self.state_dir, execution_id)
        directory.remove()
        directory.write_status({"status": "cancelled"})

"""One thread keeps the leases of every run on this worker and looks for their stops.

Every `poll` seconds (at most 0.2) it asks Redis, in one round trip for all the runs
here, for each one's stop request (a `stop` read by another worker leaves one) and
renews the leases that are due (every third of the lease time). A run whose lease was
lost is told to stop, and its fence refuses its writes from then on. A run leaves the
keeper before it releases its lease: a release is never followed by a renewal.

The thread runs while there are runs to keep and ends when there were none for
`IDLE_SECONDS`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from jarvis.worker.leases import Lease, Leases
from jarvis.worker.stops import stop_key


@dataclass
class _Kept:
    run: Any  # the Run (runs.py): execution_id, request_stop, stop_event
    lease: Lease
    next_renewal: float


class LeaseKeeper:
    """The leases and stop requests of this worker's runs, kept by one thread."""

    IDLE_SECONDS = 5.0
    """How long the thread stays with nothing to keep before it ends (a busy worker
    often has no run holding a lease for a moment: a thread ended each time would be
    started again many times a second)."""

    def __init__(self, redis: Any, leases: Leases, lease_seconds: float) -> None:
        self.redis = redis
        self.leases = leases
        self.interval = max(lease_seconds / 3, 0.05)
        self.poll = min(self.interval, 0.2)
        # Held for a whole round trip: `remove` returns only once none is in flight.
        self.lock = threading.Lock()
        self.kept: dict[int, _Kept] = {}
        self.thread: threading.Thread | None = None
        self.last_kept = 0.0

    def add(self, run: Any, lease: Lease) -> None:
        with self.lock:
            self.kept[id(lease)] = _Kept(run, lease, time.monotonic() + self.interval)
            if self.thread is None:
                self.thread = threading.Thread(target=self._keep, name="lease-keeper",
                                               daemon=True)
                self.thread.start()

    def remove(self, lease: Lease) -> None:
        """Stop keeping `lease` (no renewal of it starts or is in flight afterwards)."""
        with self.lock:
            self.kept.pop(id(lease), None)
            self.last_kept = time.monotonic()

    def _keep(self) -> None:
        while True:
            time.sleep(self.poll)
            with self.lock:
                if not self.kept:
                    if time.monotonic() - self.last_kept > self.IDLE_SECONDS:
                        self.thread = None
                        return
                    continue
                self.tick()

    def tick(self) -> None:
        """One round trip for every run kept (called with `lock` held)."""
        entries = list(self.kept.values())
        now = time.monotonic()
        due = [entry for entry in entries if now >= entry.next_renewal]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for entry in entries:
                pipe.get(stop_key(entry.run.execution_id))
            for entry in due:
                self.leases.renew_in(pipe, entry.lease)
            results = pipe.execute(raise_on_error=False)
        except Exception:  # Redis briefly away: the guard waits for it before writing
            return
        for entry, mode in zip(entries, results[:len(entries)], strict=True):
            if isinstance(mode, Exception) or not mode:
                continue
            entry.run.request_stop(mode.decode() if isinstance(mode, bytes) else str(mode))
        for entry, renewed in zip(due, results[len(entries):], strict=True):
            if isinstance(renewed, Exception):
                continue
            entry.next_renewal = now + self.interval
            if not self.leases.renewed(entry.lease, renewed, now):
                entry.run.stop_event.set()  # lost: stop, and the fence refuses writes
                self.kept.pop(id(entry.lease), None)

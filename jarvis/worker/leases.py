"""Leases: exactly one worker drives an execution, and a stale one cannot write.

A lease is a Redis key `jarvis:lease:{id}` holding `{worker}:{token}` with a TTL that
its owner renews. The token comes from `INCR jarvis:fence:{id}`, so every new owner has
a larger one. The owner writes its token into the execution's state directory
(`fence`); before every journal or snapshot write the guard checks that the lease has
not lapsed on the local monotonic clock and that the directory still carries this
token. A worker paused past its lease (SIGSTOP, a long GC, a network partition) wakes to
find either check failing, and its late writes are refused.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jarvis.runtime.statedir import StateError, write_file_atomically

_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  return {0, held}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return {token, ''}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class FencedOff(StateError):
    """This worker no longer owns the execution: its write is refused."""


@dataclass
class Lease:
    """This worker's hold on one execution."""

    execution_id: str
    worker: str
    token: int
    deadline: float  # time.monotonic() after which the lease may have lapsed

    @property
    def value(self) -> str:
        return f"{self.worker}:{self.token}"


def lease_key(execution_id: str) -> str:
    return f"jarvis:lease:{execution_id}"


def fence_key(execution_id: str) -> str:
    return f"jarvis:fence:{execution_id}"


class Leases:
    """Acquire, renew and release leases in Redis."""

    def __init__(self, redis: Any, worker: str, ttl_seconds: float) -> None:
        self.redis = redis
        self.worker = worker
        self.ttl_ms = int(ttl_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def acquire(self, execution_id: str) -> Lease | None:
        """The lease, or None while another worker holds it."""
        started = time.monotonic()
        token, _held = self._acquire(
            keys=[lease_key(execution_id), fence_key(execution_id)],
            args=[self.worker, self.ttl_ms],
        )
        if not int(token):
            return None
        return Lease(execution_id, self.worker, int(token), started + self.ttl_ms / 1000)

    def renew(self, lease: Lease) -> bool:
        """Extend the lease; False if it was lost (expired and taken, or released)."""
        started = time.monotonic()
        renewed = bool(self._renew(keys=[lease_key(lease.execution_id)],
                                   args=[lease.value, self.ttl_ms]))
        if renewed:
            lease.deadline = started + self.ttl_ms / 1000
        else:
            lease.deadline = 0.0
        return renewed

    def release(self, lease: Lease) -> None:
        self._release(keys=[lease_key(lease.execution_id)], args=[lease.value])
        lease.deadline = 0.0


class Fence:
    """The token file in an execution's state directory, and the write guard on it."""

    def __init__(self, directory: Path, lease: Lease) -> None:
        self.path = directory / "fence"
        self.lease = lease

    def read(self) -> int:
        try:
            return int(self.path.read_text(encoding="ascii").strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise StateError(f"{self.path}: not a fencing token") from exc

    def claim(self) -> None:
        """Write this lease's token; refuse if a newer owner already wrote a larger one."""
        current = self.read()
        if current > self.lease.token:
            raise FencedOff(
                f"execution {self.lease.execution_id} has a newer owner (token {current} > "
                f"{self.lease.token})")
        write_file_atomically(self.path, f"{self.lease.token}\n".encode("ascii"))

    def guard(self) -> None:
        """Called before every journal and snapshot write."""
        if time.monotonic() >= self.lease.deadline:
            raise FencedOff(
                f"the lease on execution {self.lease.execution_id} lapsed; refusing to write")
        current = self.read()
        if current != self.lease.token:
            raise FencedOff(
                f"execution {self.lease.execution_id} was taken over (token {current}, "
                f"ours {self.lease.token}); refusing to write")


def worker_identity() -> str:
    """A worker id unique among live workers: host name and process id."""
    return f"{os.uname().nodename}-{os.getpid()}"

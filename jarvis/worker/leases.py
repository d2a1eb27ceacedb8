"""Leases: exactly one worker drives an execution, and a stale one cannot write.

A lease is a Redis key `jarvis:lease:{id}` holding `{worker}:{token}` with a TTL that
its owner renews. The token comes from `INCR jarvis:fence:{id}`, so every new owner has
a larger one. The owner writes its token into the execution's state directory
(`fence`); before every journal or snapshot write, Book call and trace batch, the guard
checks that the lease has not lapsed on the local monotonic clock and that the
directory still carries this token. A worker paused past its lease (SIGSTOP, a long
GC, a network partition) wakes to find either check failing, and its late writes are
refused.

Redis may lose its data (a restart without persistence, a failover to an empty
replica). Two rules keep tokens growing anyway: a new owner's token is larger than
the one in the fence file (the file outlives Redis), and an owner whose lease key
vanished takes it back with its own token, unless a larger token was handed out since.
While Redis is unreachable the guard waits for it (`reconnect_seconds`) instead of
refusing at once, so a short outage pauses runs rather than failing them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jarvis.runtime.statedir import StateError, write_file_atomically
from jarvis.worker.connections import ThreadConnections
from jarvis.worker.retry import is_transient

_TAKE = """
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[2], token)
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
"""
"""Takes the lease (KEYS[1]) for ARGV[1] for ARGV[2] ms with a new fencing token from the
counter KEYS[2], above the floor ARGV[3]; leaves the token in `token`."""

_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  return {0, held}
end
""" + _TAKE + """
return {token, ''}
"""

_BEGIN = """
local ended = redis.call('HGET', KEYS[3], 'status')
local stop = redis.call('GET', KEYS[4]) or ''
if ended then
  for i = 4, #ARGV do
    if ended == ARGV[i] then
      return {0, '', ended, stop}
    end
  end
end
local held = redis.call('GET', KEYS[1])
if held then
  return {0, held, '', stop}
end
""" + _TAKE + """
return {token, '', '', stop}
"""
"""`_ACQUIRE`, and in the same round trip what a run needs to know before it starts:
whether the execution has ended (then no lease is taken) and its stop request."""

_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if held then
  return 0
end
local issued = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = tonumber(ARGV[3])
if issued > token then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if issued < token then
  redis.call('SET', KEYS[2], token)
end
return 1
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
    released: bool = False

    @property
    def value(self) -> str:
        return f"{self.worker}:{self.token}"

    def given_up(self) -> None:
        """This worker let the lease go (its key deleted, if it still held it)."""
        self.deadline = 0.0
        self.released = True


@dataclass
class Beginning:
    """What `Leases.begin` found: the lease (None if not taken), the execution's
    recorded ending among `terminal` (then no lease was taken) and its stop request."""

    lease: Lease | None
    ended: str | None
    stop: str | None


def lease_key(execution_id: str) -> str:
    return f"jarvis:lease:{execution_id}"


def fence_key(execution_id: str) -> str:
    return f"jarvis:fence:{execution_id}"


class Leases:
    """Acquire, renew and release leases in Redis."""

    def __init__(self, redis: Any, worker: str, ttl_seconds: float) -> None:
        self.redis = redis
        self.worker = worker
        self.ttl_ms = max(int(ttl_seconds * 1000), 1)
        self._acquire = redis.register_script(_ACQUIRE)
        self._begin = redis.register_script(_BEGIN)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.connections = ThreadConnections(redis)

    def acquire(self, execution_id: str, floor: int = 0) -> Lease | None:
        """The lease, or None while another worker holds it.

        `floor` is the token in the execution's fence file: the new token is larger
        even when Redis has forgotten the tokens it handed out.
        """
        started = time.monotonic()
        token, _held = self._acquire(
            keys=[lease_key(execution_id), fence_key(execution_id)],
            args=[self.worker, self.ttl_ms, floor],
        )
        if not int(token):
            return None
        return Lease(execution_id, self.worker, int(token), started + self.ttl_ms / 1000)

    def begin(self, execution_id: str, floor: int, status_key: str, stop_key: str,
              terminal: frozenset[str]) -> Beginning:
        """`acquire`, unless the hash at `status_key` records an ending in `terminal`;
        and the stop request at `stop_key`. One round trip."""
        started = time.monotonic()
        token, _held, ended, stop = self.connections.run(
            self._begin,
            keys=[lease_key(execution_id), fence_key(execution_id), status_key, stop_key],
            args=[self.worker, self.ttl_ms, floor, *sorted(terminal)],
        )
        lease = (Lease(execution_id, self.worker, int(token), started + self.ttl_ms / 1000)
                 if int(token) else None)
        return Beginning(lease, _text(ended) or None, _text(stop) or None)

    def renew(self, lease: Lease) -> bool:
        """Extend the lease; False if it was lost (taken by another, or a newer token
        was handed out). A lease whose key vanished is taken back."""
        started = time.monotonic()
        return self.renewed(lease, self.connections.run(
            self._renew, keys=[lease_key(lease.execution_id), fence_key(lease.execution_id)],
            args=[lease.value, self.ttl_ms, lease.token]), started)

    def renew_in(self, pipe: Any, lease: Lease) -> None:
        """Add `renew`'s script to a pipeline; `renewed` takes its answer."""
        pipe.eval(_RENEW, 2, lease_key(lease.execution_id), fence_key(lease.execution_id),
                  lease.value, self.ttl_ms, lease.token)

    def renewed(self, lease: Lease, answer: Any, started: float) -> bool:
        """Record the answer of a renewal sent at `started` (monotonic); whether the
        lease was renewed."""
        if int(answer or 0):
            lease.deadline = started + self.ttl_ms / 1000
            return True
        lease.deadline = 0.0
        return False

    def release(self, lease: Lease) -> None:
        """Give the lease up (`Endings.record` does it too, with an ending)."""
        lease.deadline = 0.0
        self.connections.run(self._release, keys=[lease_key(lease.execution_id)],
                             args=[lease.value])
        lease.given_up()

    def holder(self, execution_id: str) -> str | None:
        """Who holds the lease now (`worker:token`), or None."""
        held = self.redis.get(lease_key(execution_id))
        if held is None:
            return None
        return held.decode() if isinstance(held, bytes) else str(held)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


_FENCE_READ = 4096
"""Bytes read at a time from a fence file (which holds one token and a newline)."""


def read_fence(directory: Path) -> int:
    """The token in an execution's fence file (0 when there is none).

    Read with one `read` of the raw file (it is read before every write of a run, so
    without the buffered text layer's own system calls: a fence file is replaced by a
    rename, never written in place, so one read sees all of one version)."""
    return _read_token(directory / "fence")


def _read_token(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        data = chunk = os.read(fd, _FENCE_READ)
        while len(chunk) == _FENCE_READ:
            chunk = os.read(fd, _FENCE_READ)
            data += chunk
    finally:
        os.close(fd)
    try:
        return int(data.decode("ascii").strip() or 0)
    except ValueError as exc:  # UnicodeDecodeError included
        raise StateError(f"{path}: not a fencing token") from exc


class Fence:
    """The token file in an execution's state directory, and the write guard on it."""

    def __init__(self, directory: Path, lease: Lease, leases: Leases,
                 reconnect_seconds: float = 0.0, fsync: bool = True) -> None:
        self.directory = directory
        self.path = directory / "fence"
        self.lease = lease
        self.leases = leases
        self.reconnect_seconds = reconnect_seconds
        # Whether `claim` makes the token durable (off with `journal_fsync`: after a
        # crash of this machine, this worker writes nothing more, and the next owner's
        # token is larger than any Redis handed out or a fence file kept).
        self.fsync = fsync
        self.refused: str | None = None  # why the last refusal happened

    def read(self) -> int:
        return _read_token(self.path)

    def claim(self) -> None:
        """Write this lease's token; refuse if a newer owner already wrote a larger one."""
        current = self.read()
        if current > self.lease.token:
            self._refuse(f"execution {self.lease.execution_id} has a newer owner (token "
                         f"{current} > {self.lease.token})")
        write_file_atomically(self.path, f"{self.lease.token}\n".encode("ascii"),
                              fsync=self.fsync)

    def guard(self) -> None:
        """Called before every write: journal, snapshot, Book call, trace batch."""
        if time.monotonic() >= self.lease.deadline:
            self._confirm()
        current = self.read()
        if current != self.lease.token:
            self._refuse(f"execution {self.lease.execution_id} was taken over (token "
                         f"{current}, ours {self.lease.token}); refusing to write")

    def holds(self) -> bool:
        """Whether this worker still owns the execution (the guard passes)."""
        try:
            self.guard()
        except FencedOff:
            return False
        return True

    def _confirm(self) -> None:
        """The lease keeper did not renew in time: ask Redis now, waiting while it is away."""
        give_up = time.monotonic() + self.reconnect_seconds
        while True:
            try:
                if self.leases.renew(self.lease):
                    return
                self._refuse(f"the lease on execution {self.lease.execution_id} lapsed and "
                             "another worker took it; refusing to write")
            except FencedOff:
                raise
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() >= give_up:
                    self._refuse(f"the lease on execution {self.lease.execution_id} lapsed "
                                 f"and cannot be confirmed ({exc}); refusing to write")
                time.sleep(0.2)

    def _refuse(self, reason: str) -> None:
        self.refused = reason
        raise FencedOff(reason)


def worker_identity() -> str:
    """A worker id unique among live workers: host name and process id."""
    return f"{os.uname().nodename}-{os.getpid()}"

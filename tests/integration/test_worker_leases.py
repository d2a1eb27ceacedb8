"""Leases and fences against a real Redis: one owner at a time, stale writers refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from services import RedisServer
from test_worker_support import unique

from jarvis.worker.endings import TERMINAL, status_key
from jarvis.worker.keeper import LeaseKeeper
from jarvis.worker.leases import Fence, FencedOff, Leases, fence_key, lease_key, read_fence
from jarvis.worker.stops import stop_key


@pytest.fixture
def execution_id() -> str:
    return unique("lease")


def test_one_owner_at_a_time_with_growing_tokens(redis_server: RedisServer,
                                                  execution_id: str) -> None:
    a = Leases(redis_server.client(), "a", ttl_seconds=5)
    b = Leases(redis_server.client(), "b", ttl_seconds=5)

    first = a.acquire(execution_id)
    assert first is not None and b.acquire(execution_id) is None
    assert b.holder(execution_id) == f"a:{first.token}"
    assert a.renew(first)
    a.release(first)
    second = b.acquire(execution_id)

    assert second is not None and second.token == first.token + 1
    assert not a.renew(first)  # b holds it now


def test_a_lapsed_lease_goes_to_the_next_worker(redis_server: RedisServer,
                                                execution_id: str) -> None:
    a = Leases(redis_server.client(), "a", ttl_seconds=0.3)
    b = Leases(redis_server.client(), "b", ttl_seconds=5)
    stale = a.acquire(execution_id)
    assert stale is not None
    time.sleep(0.5)

    fresh = b.acquire(execution_id)
    assert fresh is not None and fresh.token > stale.token
    assert not a.renew(stale)


def test_tokens_keep_growing_when_redis_forgot_them(redis_server: RedisServer,
                                                    execution_id: str,
                                                    tmp_path: Path) -> None:
    client = redis_server.client()
    leases = Leases(client, "a", ttl_seconds=5)
    owner = leases.acquire(execution_id)
    assert owner is not None
    Fence(tmp_path, owner, leases).claim()
    client.delete(lease_key(execution_id), fence_key(execution_id))  # as after a restart

    assert leases.renew(owner)  # taken back by its owner, same token
    assert int(client.get(fence_key(execution_id))) == owner.token
    leases.release(owner)
    client.delete(fence_key(execution_id))
    successor = leases.acquire(execution_id, floor=read_fence(tmp_path))
    assert successor is not None and successor.token == owner.token + 1


def test_the_fence_refuses_a_stale_owner(redis_server: RedisServer, execution_id: str,
                                         tmp_path: Path) -> None:
    a = Leases(redis_server.client(), "a", ttl_seconds=0.3)
    b = Leases(redis_server.client(), "b", ttl_seconds=5)
    stale = a.acquire(execution_id)
    assert stale is not None
    stale_fence = Fence(tmp_path, stale, a)
    stale_fence.claim()
    stale_fence.guard()
    time.sleep(0.5)
    fresh = b.acquire(execution_id, floor=read_fence(tmp_path))
    assert fresh is not None
    Fence(tmp_path, fresh, b).claim()

    with pytest.raises(FencedOff, match="took it"):
        stale_fence.guard()
    assert not stale_fence.holds()
    with pytest.raises(FencedOff, match="newer owner"):
        Fence(tmp_path, stale, a).claim()


def test_the_guard_renews_a_lapsed_lease_nobody_took(redis_server: RedisServer,
                                                     execution_id: str,
                                                     tmp_path: Path) -> None:
    leases = Leases(redis_server.client(), "a", ttl_seconds=0.3)
    lease = leases.acquire(execution_id)
    assert lease is not None
    fence = Fence(tmp_path, lease, leases)
    fence.claim()
    time.sleep(0.5)  # paused past the lease, but nobody wanted it

    fence.guard()
    assert lease.deadline > time.monotonic()


def test_the_guard_waits_for_redis_then_gives_up(tmp_path: Path) -> None:
    import redis

    server = RedisServer().start()
    try:
        leases = Leases(redis.Redis(host=server.host, port=server.port, socket_timeout=1,
                                    socket_connect_timeout=1), "a", ttl_seconds=0.2)
        lease = leases.acquire("e1")
        assert lease is not None
        fence = Fence(tmp_path, lease, leases, reconnect_seconds=1.0)
        fence.claim()
        server.stop()
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(FencedOff, match="cannot be confirmed"):
            fence.guard()
        assert 0.9 < time.monotonic() - started < 5
    finally:
        server.close()


def test_begin_takes_the_lease_and_reads_the_ending_and_the_stop_at_once(
        redis_server: RedisServer, execution_id: str) -> None:
    client = redis_server.client()
    a = Leases(client, "a", ttl_seconds=5)
    b = Leases(client, "b", ttl_seconds=5)
    status, stop = status_key(execution_id), stop_key(execution_id)
    client.set(stop, "cancel")

    began = a.begin(execution_id, 7, status, stop, TERMINAL)
    assert began.lease is not None and began.lease.token == 8  # above the fence file's
    assert (began.ended, began.stop) == (None, "cancel")
    assert a.holder(execution_id) == f"a:{began.lease.token}"
    held = b.begin(execution_id, 0, status, stop, TERMINAL)
    assert (held.lease, held.ended, held.stop) == (None, None, "cancel")

    a.release(began.lease)
    client.hset(status, mapping={"status": "completed"})
    ended = b.begin(execution_id, 0, status, stop, TERMINAL)
    assert (ended.lease, ended.ended) == (None, "completed")
    assert a.holder(execution_id) is None  # an ended execution's lease is not taken
    assert client.get(fence_key(execution_id)) == b"8"  # and no token is spent on it


class KeptRun:
    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        self.stop_event = threading.Event()
        self.stops: list[str] = []

    def request_stop(self, mode: str) -> bool:
        self.stops.append(mode)
        self.stop_event.set()
        return True


def test_the_keeper_renews_leases_and_brings_stop_requests(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LeaseKeeper, "IDLE_SECONDS", 0.2)
    client = redis_server.client()
    leases = Leases(client, "a", ttl_seconds=0.3)
    keeper = LeaseKeeper(client, leases, lease_seconds=0.3)  # renews every 0.1 s
    quiet, stopped = KeptRun(unique("kept")), KeptRun(unique("kept"))
    kept = {}
    for run in (quiet, stopped):
        lease = leases.acquire(run.execution_id)
        assert lease is not None
        kept[run.execution_id] = lease
        keeper.add(run, lease)
    client.set(stop_key(stopped.execution_id), "suspend")

    time.sleep(1.0)  # three lease times: only renewals keep them
    for run in (quiet, stopped):
        lease = kept[run.execution_id]
        assert leases.holder(run.execution_id) == lease.value
        assert lease.deadline > time.monotonic()
    assert quiet.stops == [] and not quiet.stop_event.is_set()
    assert stopped.stops and set(stopped.stops) == {"suspend"}

    for run in (quiet, stopped):
        keeper.remove(kept[run.execution_id])
        leases.release(kept[run.execution_id])
    time.sleep(0.5)  # nothing renews (so takes back) a lease that was let go
    assert leases.holder(quiet.execution_id) is None
    assert leases.holder(stopped.execution_id) is None
    assert keeper.thread is None  # it ends when it has had nothing to keep for a while


def test_the_keeper_stops_a_run_whose_lease_was_taken(redis_server: RedisServer) -> None:
    client = redis_server.client()
    a = Leases(client, "a", ttl_seconds=0.3)
    b = Leases(client, "b", ttl_seconds=5)
    keeper = LeaseKeeper(client, a, lease_seconds=0.3)
    run = KeptRun(unique("kept"))
    lease = a.acquire(run.execution_id)
    assert lease is not None
    keeper.add(run, lease)
    client.delete(lease_key(run.execution_id))
    taken = b.acquire(run.execution_id)  # a newer token: a's renewal must not win
    assert taken is not None

    assert run.stop_event.wait(2.0)
    assert run.stops == [] and lease.deadline == 0.0
    assert b.holder(run.execution_id) == taken.value


def test_each_run_thread_asks_redis_on_a_connection_of_its_own(
        redis_server: RedisServer, execution_id: str) -> None:
    """Leases and endings talk to Redis on their thread's own connection (no check-out
    from the pool per command), and a thread's connection goes back when it ends."""
    import gc

    from jarvis.worker.endings import Endings

    client = redis_server.client()
    leases = Leases(client, "a", ttl_seconds=5)
    endings = Endings(client, Path("/nonexistent-state-dir"))
    pool = client.connection_pool
    seen: dict[str, object] = {}

    def run(name: str, suffix: str) -> None:
        began = leases.begin(f"{execution_id}-{suffix}", 0, status_key(execution_id),
                             stop_key(execution_id), TERMINAL)
        assert began.lease is not None
        endings.record(f"{execution_id}-{suffix}", "completed", "a", lease=began.lease)
        assert began.lease.released
        mine = leases.connections.client()
        assert mine is leases.connections.client() and mine is not client
        seen[name] = mine.connection

    threads = [threading.Thread(target=run, args=(f"t{n}", str(n))) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen["t0"] is not None and seen["t0"] is not seen["t1"]
    assert client.hget(status_key(f"{execution_id}-0"), "status") == b"completed"
    assert client.get(lease_key(f"{execution_id}-1")) is None  # released with the ending
    del threads
    gc.collect()
    assert seen["t0"] in pool._available_connections  # back in the pool


def test_a_script_redis_forgot_is_loaded_again(redis_server: RedisServer,
                                               execution_id: str) -> None:
    """A run's scripts go straight to its connection; after a SCRIPT FLUSH (a restarted
    Redis has no scripts) the client loads the script and runs it."""
    client = redis_server.client()
    leases = Leases(client, "a", ttl_seconds=5)
    terminal = frozenset(TERMINAL)
    first = leases.begin(execution_id, 0, status_key(execution_id), stop_key(execution_id),
                         terminal)
    assert first.lease is not None
    leases.release(first.lease)
    client.script_flush()
    second = leases.begin(execution_id, 0, status_key(execution_id), stop_key(execution_id),
                          terminal)
    assert second.lease is not None and second.lease.token == first.lease.token + 1
    assert leases.holder(execution_id) == f"a:{second.lease.token}"
    leases.release(second.lease)
    assert leases.holder(execution_id) is None

"""What the host makes for each child: its log in memory, its working directory (shared
by a zygote's children, made and removed for a spawned one), and the replacement a pool
forks as a child is taken."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import IO

import pytest

from jarvis.runtime import children, forks
from jarvis.runtime.children import ChildProcess, new_log
from jarvis.runtime.isolation import ChildPool

QUIET_ZYGOTE = """
import socket, sys
control = socket.socket(fileno=int(sys.argv[1]))
control.recv(1 << 16)  # the warm-up
while True:
    data, fds, _, _ = socket.recv_fds(control, 1 << 16, 4)
    if not data:
        break
    op, request_id, rest = data.decode().split(" ", 2)
    if op == "fork":
        control.send(f"forked {request_id} 4242".encode())
"""
"""A stand-in zygote that reports every fork done and never ends a child."""


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def spawn(module: str, fd: int, log: IO[bytes], cwd: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", QUIET_ZYGOTE, str(fd)],
                                pass_fds=(fd,), stdout=log, stderr=log, cwd=cwd)

    monkeypatch.setattr(forks, "spawn_python", spawn)
    yield


def test_a_log_is_an_anonymous_file_in_memory_the_host_reads_back() -> None:
    log = new_log()
    try:
        assert os.readlink(f"/proc/self/fd/{log.fileno()}").startswith("/memfd:")
        assert not os.get_inheritable(log.fileno())  # passed on purpose, never by accident
        log.write(b"Traceback ...\nValueError: the end\n")
        assert children.read_tail(log, 10) == ": the end\n"
    finally:
        log.close()


def test_without_memfd_the_log_is_a_temporary_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str, flags: int = 0) -> int:
        raise OSError("memfd_create: not supported")

    monkeypatch.setattr(os, "memfd_create", missing)
    log = new_log()
    try:
        log.write(b"written")
        assert children.read_tail(log) == "written"
    finally:
        log.close()


def test_a_zygotes_children_share_its_directory_which_outlives_them(stand_in: None) -> None:
    server = forks.ForkServer()
    try:
        first, second = server.fork(), server.fork()
        assert first.workdir == second.workdir == server.workdir
        assert not first.own_workdir
        first.close()
        second.close()
        assert os.path.isdir(server.workdir) and os.listdir(server.workdir) == []
    finally:
        server.close()
    assert not os.path.exists(server.workdir)


def test_a_spawned_child_has_a_directory_of_its_own_removed_with_it() -> None:
    child = ChildProcess()
    workdir = child.workdir
    try:
        assert child.own_workdir and os.path.isdir(workdir)
    finally:
        child.close()
    assert not os.path.exists(workdir)


def test_a_forked_childs_replacement_is_asked_for_as_it_is_taken(stand_in: None) -> None:
    """By the thread that takes it (no hand-over to the pool's thread): the pool is full
    again the moment `take` returns."""
    pool = ChildPool(size=2)
    try:
        pool.next_ready()
        while len(pool.ready) < 2:
            pool.next_ready()
            with pool.lock:
                pool.lock.wait(0.01)
        taken = pool.take()
        assert len(pool.ready) == 2 and taken not in pool.ready
        taken.close()
    finally:
        pool.close()


def test_the_stop_forwarder_outlives_a_moment_without_children(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its thread waits a while for the next child rather than ending (and being
    started again) whenever no run is in its child; then it ends."""
    import time

    from jarvis.runtime.isolation import _StopForwarder

    monkeypatch.setattr(_StopForwarder, "POLL", 0.01)
    monkeypatch.setattr(_StopForwarder, "IDLE_SECONDS", 0.3)
    forwarder = _StopForwarder()
    signals: list[int] = []

    class Child:
        def signal(self, signum: int) -> None:
            signals.append(signum)

    key = forwarder.watch(Child(), lambda: False)  # type: ignore[arg-type]
    thread = forwarder.thread
    forwarder.forget(key)
    time.sleep(0.1)  # ten polls without a child
    assert forwarder.thread is thread and thread is not None and thread.is_alive()
    forwarder.watch(Child(), lambda: True)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while not signals and time.monotonic() < deadline:
        time.sleep(0.01)
    assert forwarder.thread is thread and signals  # the same thread stopped it
    deadline = time.monotonic() + 5
    while forwarder.thread is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert forwarder.thread is None and not thread.is_alive()

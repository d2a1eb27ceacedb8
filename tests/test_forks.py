"""The host's side of the zygote protocol (forks.py), against a stand-in zygote."""

from __future__ import annotations

import subprocess
import sys
from typing import IO

import pytest

from jarvis.runtime import forks
from jarvis.runtime.children import ChildDied

STAND_IN = """
import json, socket, sys
control = socket.socket(fileno=int(sys.argv[1]))
line, _, blobs = control.recv(1 << 16).partition(b"\\n")
first = json.loads(line)
assert first["op"] == "warm-up" and len(first["programs"]) == 2, first
assert first["filter"]["no_new_privs"] and first["filter"]["slots"], first
assert len(blobs) == sum(first["programs"]) + first["filter"]["length"], first
n = 0
while True:
    data, fds, _, _ = socket.recv_fds(control, 1 << 16, 4)
    if not data:
        break
    op, request_id, rest = data.decode().split(" ", 2)
    if op != "fork":
        continue
    n += 1
    if n == 1:
        control.send(f"failed {request_id} fork failed: no more processes".encode())
    else:
        control.send(f"forked {request_id} 4242".encode())
        control.send(f"exited {request_id} -9".encode())
"""


def test_the_host_reads_what_its_zygote_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork the zygote could not make fails the child with the zygote's reason; a
    child forked and reaped has its pid and exit code."""

    def spawn(module: str, fd: int, log: IO[bytes], cwd: str) -> subprocess.Popen[bytes]:
        assert module == "jarvis.runtime.zygote"
        return subprocess.Popen([sys.executable, "-c", STAND_IN, str(fd)], pass_fds=(fd,),
                                stdout=log, stderr=log, cwd=cwd)

    monkeypatch.setattr(forks, "spawn_python", spawn)
    server = forks.ForkServer()
    try:
        failed = server.fork()
        with pytest.raises(ChildDied, match="fork failed: no more processes"):
            _ = failed.pid
        assert "did not start: fork failed: no more processes" in failed.cause_of_death()
        failed.close()
        forked = server.fork()
        assert forked.pid == 4242
        assert forked.wait(10) == -9
        forked.close()
        assert "Traceback" not in server.log_tail(), server.log_tail()
    finally:
        server.close()

"""The host's side of the zygote (zygote.py): children forked on request, in milliseconds.

`ForkServer` starts the zygote process and keeps it running: one long-lived thread of
its own starts it (Linux ties a child's parent-death signal to the thread that started
it, so the zygote must not be started by a short-lived thread), reads what it reports
(forked pids, exit codes) and starts a new one if it dies. `fork()` may be called from
any thread: it makes the child's channel, log and directory, hands them to the zygote
and returns at once; the child is forked while the caller goes on.

A zygote that dies takes its children with it (they die with their parent); their
executions fail with that cause, and the next `fork()` goes to a new zygote.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import IO

from jarvis.runtime import confine
from jarvis.runtime.children import (
    Child,
    ChildDied,
    read_tail,
    spawn_python,
)
from jarvis.runtime.zygote import warm_up_message, warm_up_programs

log = logging.getLogger("jarvis.runtime.forks")

MAX_MESSAGE = 1 << 16


class ForkedChild(Child):
    """A child the zygote forks (or failed to fork) for this host."""

    def __init__(self, server: ForkServer, request_id: int) -> None:
        super().__init__(workdir=server.workdir)  # the zygote's: empty, shared
        self.server = server
        self.request_id = request_id
        self._pid: int | None = None
        self._code: int | None = None
        self.failure: str | None = None
        self.known = threading.Event()  # the zygote said which pid (or that it failed)
        self.ended = threading.Event()

    @property
    def pid(self) -> int:
        if not self.known.wait(30) or self._pid is None:
            raise ChildDied(self.failure or "the zygote did not fork the child")
        return self._pid

    def signal(self, signum: int) -> None:
        if not self.ended.is_set():
            self.server.signal(self.request_id, signum)

    def poll(self) -> int | None:
        return self._code if self.ended.is_set() else None

    def wait(self, timeout: float) -> int:
        if not self.ended.wait(timeout):
            raise TimeoutError(f"the execution's process {self._pid} did not end")
        assert self._code is not None
        return self._code

    def cause_of_death(self) -> str:
        self.ended.wait(30)
        if self.failure is not None:
            return self.failure
        return super().cause_of_death()

    def close(self) -> None:
        """Kill the child if it still runs, without waiting: the zygote reaps it, and
        after its outcome nothing it does matters (the host has closed the channel)."""
        if not self.ended.is_set():
            self.signal(signal.SIGKILL)
        self.channel.close()
        self.log.close()
        self.release_workdir()

    def forked(self, pid: int) -> None:
        self._pid = pid
        self.known.set()

    def exited(self, code: int, failure: str | None = None) -> None:
        if self.ended.is_set():
            return
        self.failure = failure
        self._code = code
        self.known.set()
        self.ended.set()


class ForkServer:
    """A zygote process of this host's and the children it forked."""

    def __init__(self, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout
        self.lock = threading.Condition()
        self.send_lock = threading.Lock()
        self.ids = itertools.count(1)
        self.children: dict[int, ForkedChild] = {}
        self.sock: socket.socket | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.problem: str | None = None
        self.closed = False
        self.warm_up: bytes | None = None
        self.workdir = tempfile.mkdtemp(prefix="jarvis-zygote-")
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.supervisor = threading.Thread(target=self._supervise, name="zygote",
                                           daemon=True)
        self.supervisor.start()

    @property
    def pid(self) -> int | None:
        """The zygote's pid (None while none runs)."""
        with self.lock:
            return self.process.pid if self.process is not None else None

    def fork(self) -> ForkedChild:
        """A child forked for one execution (it waits for its start message)."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.sock is not None or self.closed,
                                      self.start_timeout):
                raise ChildDied(f"no zygote is running: {self.problem or 'it did not start'}")
            if self.closed:
                raise ChildDied("the zygote was closed")
            sock = self.sock
            assert sock is not None
            child = ForkedChild(self, next(self.ids))
            self.children[child.request_id] = child
        request = f"fork {child.request_id} {child.workdir}"
        try:
            self._send(sock, request, [child.child_end.fileno(), child.log.fileno()])
        except OSError as exc:
            self._ended(child.request_id, -signal.SIGKILL,
                        f"the execution's process did not start: the zygote is gone ({exc})")
        finally:
            child.child_end.close()
        return child

    def signal(self, request_id: int, signum: int) -> None:
        with self.lock:
            sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # the zygote died, and the child with it
                self._send(sock, f"signal {request_id} {int(signum)}")

    def close(self) -> None:
        with self.lock:
            self.closed = True
            sock = self.sock
            self.lock.notify_all()
        if sock is not None:
            with contextlib.suppress(OSError):  # the zygote ends on EOF, its children too
                sock.shutdown(socket.SHUT_RDWR)
        self.supervisor.join(timeout=30)
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, limit: int = 4000) -> str:
        return read_tail(self.log, limit)

    # -- the supervisor thread ------------------------------------------------------

    def _send(self, sock: socket.socket, message: str,
              fds: list[int] | None = None) -> None:
        """One request to the zygote (words, see zygote.py's protocol)."""
        data = message.encode("utf-8")
        with self.send_lock:
            if fds:
                socket.send_fds(sock, [data], fds)
            else:
                sock.send(data)

    def _supervise(self) -> None:
        failures = 0
        while True:
            with self.lock:
                if self.closed:
                    return
            started = time.monotonic()
            code = self._run_one()
            with self.lock:
                if self.closed:
                    return
                self.problem = (f"the zygote exited with status {code}: "
                                f"{self.log_tail(400).strip()}")
            log.warning("%s; starting another", self.problem)
            failures = failures + 1 if time.monotonic() - started < 5 else 0
            time.sleep(min(0.1 * 2 ** failures, 5.0))

    def _warm_up_message(self) -> bytes:
        """The zygote's first message, made once: the programs it warms up on, compiled
        here (the zygote imports no compiler; none if they cannot be compiled), and the
        children's seccomp filter as a template, built here (the zygote loads no
        libseccomp; none where it cannot be built: the zygote then tries itself)."""
        if self.warm_up is None:
            try:
                programs = warm_up_programs()
            except Exception:  # an optimization: the zygote serves without it
                log.exception("the zygote's warm-up program did not compile")
                programs = []
            try:
                template = confine.filter_template()
            except Exception:  # the zygote builds it, or its children build their own
                log.exception("the children's seccomp filter template was not built")
                template = None
            self.warm_up = warm_up_message(programs, template)
        return self.warm_up

    def _run_one(self) -> int:
        warm_up = self._warm_up_message()
        host_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = zygote_end.fileno()
        try:
            process = spawn_python("jarvis.runtime.zygote", fd, self.log, self.workdir)
        finally:
            zygote_end.close()
        with contextlib.suppress(OSError):  # a zygote gone already is seen by _read
            host_end.send(warm_up)  # first, before any request
        with self.lock:
            self.process = process
            self.sock = host_end
            self.lock.notify_all()
        try:
            self._read(host_end)
        finally:
            with self.lock:
                self.sock = None
                orphans = list(self.children)
            if process.poll() is None:
                process.kill()
            code = process.wait()
            host_end.close()
            last = self.log_tail(400).strip().splitlines()[-1:]
            for request_id in orphans:  # they die with the zygote (parent-death signal)
                self._ended(request_id, -signal.SIGKILL,
                            f"the execution's process died with the zygote (status {code}"
                            + (f": {last[0]})" if last else ")"))
        return code

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except OSError:
                return
            if not data:
                return
            op, word, argument = data.decode("utf-8").split(" ", 2)
            request_id = int(word)
            if op == "forked":
                with self.lock:
                    child = self.children.get(request_id)
                if child is not None:
                    child.forked(int(argument))
            elif op == "exited":
                self._ended(request_id, int(argument), None)
            elif op == "failed":
                self._ended(request_id, -signal.SIGKILL,
                            f"the execution's process did not start: {argument}")

    def _ended(self, request_id: int, code: int, failure: str | None) -> None:
        with self.lock:
            child = self.children.pop(request_id, None)
        if child is not None:
            child.exited(code, failure)

"""The host's handle on one child process: its channel, log, private directory and end.

A child runs one execution and exits. It is either forked by the zygote (forks.py,
the fast way a worker uses) or spawned as a fresh interpreter (`ChildProcess`, for a
single `jarvis run`). Either way the host made its channel (a socket pair) and its log
(the child's stdout and stderr: an anonymous in-memory file, see `new_log`), and the
child starts in an empty working directory with `CHILD_ENVIRONMENT` only, stdin on
/dev/null, and dies with its parent.

The working directory is the child's own (made and removed with it) unless the host
hands it one to share: the zygote's children share their zygote's, an empty directory
nobody writes to (a child opens and creates no files: its seccomp filter refuses them),
since a directory made and removed per child cost the host a few file system
operations per execution (`Child(workdir=...)`).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import IO

from jarvis.runtime.channel import Channel

CHILD_ENVIRONMENT = {
    "PATH": os.defpath,
    "LANG": "C.UTF-8",
    # Set and string iteration orders must be the same in every process that runs (or
    # resumes) an execution: a replay depends on it.
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
}


def remove_workdir(path: str) -> None:
    """Remove a child's working directory once it has ended: one `rmdir`, as it is
    empty (its seccomp filter keeps a child from creating files), or the whole tree
    when a child left something there (one that ran without the filter)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def new_log() -> IO[bytes]:
    """A child's log: an anonymous file in memory (`memfd_create`), read back by the host
    when the child dies (its tail names the cause) and gone when both ends close it; a
    temporary file where there is no memfd. The child's file size limit bounds it
    (confine.py, `LOG_BYTES`). Made without the buffered layer `open` adds (and its
    terminal check): the host only passes its descriptor and reads its tail."""
    try:
        fd = os.memfd_create("jarvis-child-log", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or a kernel without memfd
        return tempfile.TemporaryFile()
    return io.FileIO(fd, "r+")


def read_tail(log: IO[bytes], limit: int = 4000) -> str:
    """The last `limit` characters of a process's log file."""
    log.seek(0)
    return log.read().decode("utf-8", "replace")[-limit:]


def spawn_python(module: str, fd: int, log: IO[bytes], cwd: str) -> subprocess.Popen[bytes]:
    """`python -m MODULE FD PID` (PID: ours), started as a child must be: only
    `CHILD_ENVIRONMENT`, stdin on /dev/null, stdout and stderr to `log`, `fd` passed
    and every other descriptor closed, in a session of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", module, str(fd), str(os.getpid())],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        cwd=cwd,
        env=dict(CHILD_ENVIRONMENT),
        start_new_session=True,  # a terminal's Ctrl-C goes to the host, not here
        close_fds=True,
    )


class ChildDied(Exception):
    """The child process running an execution exited without reporting an outcome."""


class Child:
    """What the host holds of a child: `channel`, `log`, `workdir`; how it ended.

    `workdir`: an empty directory the child shares with others (its owner removes it),
    or None for one of its own, made here and removed by `release_workdir`."""

    def __init__(self, workdir: str | None = None) -> None:
        host_end, self.child_end = socket.socketpair()
        self.own_workdir = workdir is None
        self.workdir = workdir if workdir is not None \
            else tempfile.mkdtemp(prefix="jarvis-child-")
        self.log: IO[bytes] = new_log()
        self.channel = Channel(host_end)

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def signal(self, signum: int) -> None:
        """Send `signum` to the child, unless it has already ended."""
        raise NotImplementedError

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while it runs."""
        raise NotImplementedError

    def wait(self, timeout: float) -> int:
        """The exit code, once the child has ended (TimeoutError after `timeout`)."""
        raise NotImplementedError

    def log_tail(self, limit: int = 4000) -> str:
        return read_tail(self.log, limit)

    def release_workdir(self) -> None:
        """Remove the child's working directory once it has ended, if it is its own."""
        if self.own_workdir:
            remove_workdir(self.workdir)

    def cause_of_death(self) -> str:
        code = self.wait(timeout=30)
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return f"the execution's process was killed by {name}{hint}"
        tail = self.log_tail().strip().splitlines()
        last = tail[-1] if tail else "no output"
        return f"the execution's process exited with status {code}: {last}"

    def close(self) -> None:
        if self.poll() is None:
            self.signal(signal.SIGKILL)
        try:
            self.wait(timeout=30)
        finally:
            self.channel.close()
            self.log.close()
            self.release_workdir()


class ChildProcess(Child):
    """A child spawned as a fresh interpreter: `python -m jarvis.runtime.child FD PID`.

    Slow to start (the interpreter imports the runtime: about 0.3 s of CPU), so a host
    that starts many executions forks them from a zygote instead (forks.py).
    """

    def __init__(self) -> None:
        super().__init__()
        fd = self.child_end.fileno()
        # Started with SIGTERM blocked (the mask survives fork and exec): a stop sent
        # before the child has set its handler waits for it instead of killing it.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            self.process = spawn_python("jarvis.runtime.child", fd, self.log, self.workdir)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.child_end.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(str(exc)) from exc

"""One server program run by the test harness: started, watched and stopped by its PID.

`ServiceProcess` starts a program with its stdout and stderr in a log file (one file
across restarts), waits for it to become ready while checking that it is still alive,
and ends it with SIGTERM, then SIGKILL, sent to its own PID only. Every error it
raises carries the end of that log, so a failing start shows why.

`installed(name)` returns what `scripts/services.py` installed for a service, and
installs it first when the cache lacks it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

REPO = Path(__file__).resolve().parents[2]
INSTALLER_PATH = REPO / "scripts" / "services.py"


class ServiceError(Exception):
    """A test service could not be installed, started or stopped; the message says how."""


# -- the installer ---------------------------------------------------------------------


def installer() -> ModuleType:
    """scripts/services.py, imported once under a name of its own."""
    name = "jarvis_test_services_installer"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, INSTALLER_PATH)
        if spec is None or spec.loader is None:
            raise ServiceError(f"cannot import the service installer {INSTALLER_PATH}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return module


def installed(service: str) -> Any:
    """The install of `service` (a JavaService or an Executable), installing it if needed."""
    tool = installer()
    try:
        return tool.INSTALLERS[service]()
    except tool.InstallError as exc:
        raise ServiceError(
            f"{service} is not installed and installing it failed:\n{exc}\n"
            f"Install it by hand with `python scripts/services.py install {service}` "
            "(docs/testing.md)."
        ) from exc


# -- child processes -------------------------------------------------------------------

_live: dict[int, ServiceProcess] = {}


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when the test run dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


class ServiceProcess:
    """A server program started by the harness, with its output in `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self._popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {shlex.join(self.argv)}\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=self.env, cwd=self.cwd,
                    # Its own session: a Ctrl-C meant for pytest does not reach it; the
                    # harness ends it in order instead.
                    start_new_session=True, preexec_fn=_die_with_parent(),
                )
            except OSError as exc:
                raise ServiceError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        _live[self._popen.pid] = self

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Polls `ready()` until it is true; fails at once if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise self.failure(f"exited with code {self.returncode} before {what}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise self.failure(f"was not ready after {timeout:.0f}s: {what}")
            time.sleep(0.1)

    def wait_for_exit(self, *, timeout: float) -> int:
        """Waits for a short-lived program to finish; kills it after `timeout`."""
        if self._popen is None:
            raise ServiceError(f"{self.name} was never started")
        try:
            code = self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self.failure(f"did not finish within {timeout:.0f}s") from None
        _live.pop(self._popen.pid, None)
        return code

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def stop(self) -> None:
        """SIGTERM to its PID, then SIGKILL if it has not exited after `stop_timeout`."""
        self._end(signal.SIGTERM, self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL to its PID: a crash, as far as its clients can tell."""
        self._end(signal.SIGKILL, self.stop_timeout)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        popen = self._popen
        if popen is None or popen.pid not in _live:
            return  # never started, already ended, or a short-lived program that finished
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, sig)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
        _live.pop(popen.pid, None)
        with contextlib.suppress(OSError), self.log_path.open("ab") as log:
            log.write(f"--- {self.name} ended with code {popen.returncode}\n".encode())

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of its log; empty once the log is gone."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])

    def failure(self, problem: str) -> ServiceError:
        return ServiceError(
            f"{self.name} (pid {self.pid}) {problem}.\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )


@atexit.register

class Service:
    """The lifecycle every test service shares: a subclass sets `workdir`,
    `_own_workdir` and `_process` and defines `start()` (returning itself)."""

    workdir: Path
    _own_workdir: bool
    _process: ServiceProcess | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Ends the server gracefully; its working directory stays for `start()`."""
        if self._process is not None:
            self._process.stop()

    def kill(self) -> None:
        """Ends the server with SIGKILL; its working directory stays for `start()`."""
        if self._process is not None:
            self._process.kill()

    def restart(self, *, hard: bool = False) -> None:
        """Stops (or with `hard`, kills) the server and starts it on the same ports."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stops the server and deletes its working directory if this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_tail(self, lines: int = 60) -> str:
        return self._process.log_tail(lines) if self._process is not None else ""

def _stop_leftovers() -> None:
    """Ends what a crashed fixture left running, by the PIDs this process started."""
    for process in list(_live.values()):
        with contextlib.suppress(Exception):
            process.kill()

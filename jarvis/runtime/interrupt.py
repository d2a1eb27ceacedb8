"""Interrupting the program thread from outside: stop requests and time limits.

A SPy program's hot loops run no engine code (that is what keeps `trace=off` fast),
so a host that must stop it raises an exception inside the running thread instead:
CPython delivers it at the next bytecode boundary. The exception class must take no
arguments, since only the class can be passed.
"""

from __future__ import annotations

import ctypes
import threading

_MAIN = threading.main_thread()


class Stopped(BaseException):
    """Raised inside a running program when its host asks it to stop (not catchable)."""


def interrupt_thread(thread_id: int, exception: type[BaseException]) -> bool:
    """Raise `exception` in the thread `thread_id` at its next bytecode; True if sent."""
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception)
    )
    if changed > 1:  # never expected: undo rather than disturb other threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return bool(changed == 1)


def interrupt_main(exception: type[BaseException]) -> bool:
    """Raise `exception` in the main thread (where `jarvis run` drives the program)."""
    ident = _MAIN.ident
    return ident is not None and interrupt_thread(ident, exception)


def clear_pending(thread_id: int) -> None:
    """Withdraw an exception sent to `thread_id` that it has not raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class Deadline:
    """Raise `exception` in the current thread once `seconds` have passed, unless the
    guarded block ends first. Costs nothing while the program runs."""

    def __init__(self, seconds: float | None, exception: type[BaseException]) -> None:
        self.seconds = seconds
        self.exception = exception
        self.lock = threading.Lock()
        self.active = False
        self.fired = False
        self.thread_id = threading.get_ident()
        self.timer: threading.Timer | None = None

    def _fire(self) -> None:
        with self.lock:
            if self.active:
                self.fired = interrupt_thread(self.thread_id, self.exception)

    def __enter__(self) -> Deadline:
        if self.seconds is not None and self.seconds > 0:
            self.active = True
            self.timer = threading.Timer(self.seconds, self._fire)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self.lock:
            self.active = False
            if self.timer is not None:
                self.timer.cancel()
            if self.fired:
                clear_pending(self.thread_id)

"""Interrupting the program thread from outside: stop requests and time limits.

A SPy program's hot loops run no engine code (that is what keeps `trace=off` fast),
so a host that must stop it raises an exception inside the running thread instead:
CPython delivers it at the next bytecode boundary. The exception class must take no
arguments, since only the class can be passed.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import threading
import time

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
    guarded block ends first. Costs nothing while the program runs.

    Every Deadline of the process is watched by one shared daemon thread (`_Watchdog`),
    started the first time one is needed: entering and leaving a Deadline only files
    and withdraws an entry, so a run does not pay for starting a thread.
    """

    def __init__(self, seconds: float | None, exception: type[BaseException]) -> None:
        self.seconds = seconds
        self.exception = exception
        self.lock = threading.Lock()
        self.active = False
        self.fired = False
        self.thread_id = threading.get_ident()

    def _fire(self) -> None:
        with self.lock:
            if self.active:
                self.fired = interrupt_thread(self.thread_id, self.exception)

    def __enter__(self) -> Deadline:
        if self.seconds is not None and self.seconds > 0:
            self.active = True
            _watchdog().watch(time.monotonic() + self.seconds, self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.active and not self.fired:
            return  # no time limit was set (only the watchdog sets `fired`, while active)
        with self.lock:
            was_active, self.active = self.active, False
            if self.fired:
                clear_pending(self.thread_id)
        if was_active:
            _watchdog().forget(self)


class _Watchdog:
    """One daemon thread that fires the Deadlines that expire before they are left."""

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.heap: list[tuple[float, int, Deadline]] = []
        self.order = itertools.count()
        self.thread = threading.Thread(target=self.run, name="jarvis-deadlines", daemon=True)
        self.thread.start()

    def watch(self, when: float, deadline: Deadline) -> None:
        with self.condition:
            heapq.heappush(self.heap, (when, next(self.order), deadline))
            if self.heap[0][2] is deadline:
                self.condition.notify()  # it expires before what the thread waits for

    def forget(self, deadline: Deadline) -> None:
        with self.condition:
            if self.heap and self.heap[0][2] is deadline:
                heapq.heappop(self.heap)  # the common case: the run that just ended
            else:
                self.heap = [entry for entry in self.heap if entry[2] is not deadline]
                heapq.heapify(self.heap)

    def run(self) -> None:
        while True:
            with self.condition:
                while not self.heap or self.heap[0][0] > time.monotonic():
                    timeout = self.heap[0][0] - time.monotonic() if self.heap else None
                    self.condition.wait(timeout)
                _, _, due = heapq.heappop(self.heap)
            due._fire()


_WATCHDOG: _Watchdog | None = None
_WATCHDOG_LOCK = threading.Lock()


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    if _WATCHDOG is None or not _WATCHDOG.thread.is_alive():
        with _WATCHDOG_LOCK:
            if _WATCHDOG is None or not _WATCHDOG.thread.is_alive():
                # A child made by fork() has no threads: it starts its own watchdog.
                _WATCHDOG = _Watchdog()
    return _WATCHDOG


def start_watchdog() -> None:
    """Start this process's watchdog thread now, if it is not running.

    A confined child calls it before it confines itself: once its address space is
    limited, starting a thread may fail, and the program must never wait on that.
    """
    _watchdog()


def interrupt_main_later(seconds: float, exception: type[BaseException]) -> None:
    """Raise `exception` in the main thread after `seconds`, from the watchdog thread
    (no thread is started here: this runs in signal handlers of confined children)."""
    deadline = Deadline(seconds, exception)
    deadline.thread_id = _MAIN.ident or deadline.thread_id
    deadline.__enter__()  # never left: it fires, or the process ends first

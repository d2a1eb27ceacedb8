"""Interrupting the program thread from outside: stop requests and time limits.

A SPy program's hot loops run no engine code (that is what keeps `trace=off` fast),
so a host that must stop it raises an exception inside the running thread instead:
CPython delivers it at the next bytecode boundary. The exception class must take no
arguments, since only the class can be passed.

Two clocks fire Deadlines. By default one shared daemon thread watches them all
(`_Watchdog`). A child process that runs one execution uses the main thread's
`_AlarmClock` instead (`use_alarm_clock`): a timer signal (SIGALRM from `setitimer`),
whose handler CPython runs in the main thread between two bytecodes, so the child
starts no thread at all. Signal handlers and the main thread share the alarm clock's
state without locks: what the main thread changes it changes while it *holds* the
clock (a counter), and a handler that finds the clock held leaves its work for the
moment the main thread lets go. The child also holds the clock around each message it
reads or writes on its channel, so that a time limit never cuts a message in two: it
fires once the message is through, as it did from the watchdog thread.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C functions: no enums
import heapq
import itertools
import signal
import threading
import time
from collections.abc import Callable
from types import ModuleType

_MAIN = threading.main_thread()


def _async_exc_setter() -> Callable[[int, type[BaseException] | None], int]:
    """`PyThreadState_SetAsyncExc` from the C extension `_process`, or through ctypes
    where it is not built. Chosen on import, before a child confines itself (after
    that, no module can be imported); a zygote with the extension never loads ctypes
    (its library and objects would be in every fork)."""
    try:
        from jarvis.runtime import _process
    except ImportError:
        pass
    else:
        return _process.set_async_exc
    import ctypes

    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc

    def through_ctypes(thread_id: int, exception: type[BaseException] | None) -> int:
        return int(set_async_exc(ctypes.c_ulong(thread_id),
                                 None if exception is None else ctypes.py_object(exception)))

    return through_ctypes


_SET_ASYNC_EXC: Callable[[int, type[BaseException] | None], int] = _async_exc_setter()


class Stopped(BaseException):
    """Raised inside a running program when its host asks it to stop (not catchable)."""


def interrupt_thread(thread_id: int, exception: type[BaseException]) -> bool:
    """Raise `exception` in the thread `thread_id` at its next bytecode; True if sent."""
    changed = _SET_ASYNC_EXC(thread_id, exception)
    if changed > 1:  # never expected: undo rather than disturb other threads
        _SET_ASYNC_EXC(thread_id, None)
        return False
    return bool(changed == 1)


def interrupt_main(exception: type[BaseException]) -> bool:
    """Raise `exception` in the main thread (where `jarvis run` drives the program)."""
    ident = _MAIN.ident
    return ident is not None and interrupt_thread(ident, exception)


def clear_pending(thread_id: int) -> None:
    """Withdraw an exception sent to `thread_id` that it has not raised yet."""
    _SET_ASYNC_EXC(thread_id, None)


class Deadline:
    """Raise `exception` in the current thread once `seconds` have passed, unless the
    guarded block ends first. Costs nothing while the program runs.

    Every Deadline of the process is watched by one shared daemon thread (`_Watchdog`),
    started the first time one is needed: entering and leaving a Deadline only files
    and withdraws an entry, so a run does not pay for starting a thread. In a process
    that uses the alarm clock (`use_alarm_clock`), the main thread's Deadlines are
    watched by it instead, and no thread is started for them.
    """

    def __init__(self, seconds: float | None, exception: type[BaseException]) -> None:
        self.seconds = seconds
        self.exception = exception
        self.lock = threading.Lock()
        self.active = False
        self.fired = False
        self.thread_id = threading.get_ident()
        self.alarm = False  # watched by the alarm clock (else by the watchdog thread)

    def _fire(self) -> None:
        with self.lock:
            if self.active:
                self.fired = interrupt_thread(self.thread_id, self.exception)

    def __enter__(self) -> Deadline:
        if self.seconds is not None and self.seconds > 0:
            self.active = True
            self.alarm = bool(_ALARM) and self.thread_id == _MAIN.ident
            if self.alarm:
                _ALARM[0].watch(time.monotonic() + self.seconds, self)
            else:
                _watchdog().watch(time.monotonic() + self.seconds, self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.active and not self.fired:
            return  # no time limit was set (only the watchdog sets `fired`, while active)
        if self.alarm:
            _ALARM[0].forget(self)
            return
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
    """Raise `exception` in the main thread after `seconds`: from the alarm clock where
    the process uses one, else from the watchdog thread (no thread is started here:
    this runs in signal handlers of confined children)."""
    deadline = Deadline(seconds, exception)
    deadline.thread_id = _MAIN.ident or deadline.thread_id
    deadline.__enter__()  # never left: it fires, or the process ends first


class _AlarmClock:
    """The Deadlines of the main thread, fired by SIGALRM rather than by a thread.

    One real-time interval timer (`setitimer(ITIMER_REAL)`) is armed for the earliest
    Deadline. Its handler runs in the main thread, between two bytecodes or from
    inside a C call that checks for signals (a system call interrupted, a long integer
    operation); so does any other signal handler. Hence no lock, which the main thread
    could hold when a handler runs: the main thread, and a handler that finds the clock
    free, *hold* the clock (`holds`) while they change `heap`; a handler that finds it
    held records what it came for (`due`, `incoming`), and whoever lets go of the clock
    last does it. An expired Deadline is fired once the clock is let go, so that its
    exception never leaves the clock half changed. The handler itself is C
    (`_process.signal_handler`): it sends the exception to the main thread after
    `on_alarm` named it, and returns, so that the exception is raised at the next
    bytecode boundary, after the C call the alarm came in has completed, exactly as
    when the watchdog thread sends it.
    """

    def __init__(self, native: ModuleType) -> None:
        self.heap: list[tuple[float, int, Deadline]] = []
        self.order = itertools.count()
        self.holds = 0
        self.due = False  # the timer expired while the clock was held
        self.incoming: list[tuple[float, int, Deadline]] = []  # filed while held
        self.armed_for: float | None = None  # when the timer expires, if it is armed
        self.handler = native.signal_handler(self.on_alarm)

    def on_alarm(self) -> tuple[int, type[BaseException]] | None:
        """SIGALRM (from the C handler): the thread and exception to fire, if any."""
        self.armed_for = None
        if self.holds:
            self.due = True
            return None
        self.holds += 1
        expired = self.let_go()
        return None if expired is None else (expired.thread_id, expired.exception)

    def watch(self, when: float, deadline: Deadline) -> None:
        entry = (when, next(self.order), deadline)
        if self.holds:  # a signal handler, while the main thread holds the clock
            self.incoming.append(entry)
            return
        self.holds += 1
        heapq.heappush(self.heap, entry)
        # Filed, not fired here: this may run in a signal handler, inside a C call.
        self.let_go(fire=False)

    def forget(self, deadline: Deadline) -> None:
        self.holds += 1
        deadline.active = False
        if deadline.fired:
            clear_pending(deadline.thread_id)
        # Left in the heap, where an inactive entry is dropped when it comes first.
        _send(self.let_go())

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        _send(self.let_go())

    def let_go(self, fire: bool = True) -> Deadline | None:
        """Let go of the clock: file what handlers left, re-arm the timer; the Deadline
        that expired, marked fired, for the caller to send (if `fire`)."""
        expired = None
        while True:
            if self.holds == 1:  # the last to let go does what was left
                while self.incoming:
                    heapq.heappush(self.heap, self.incoming.pop())
                self.due = False
                if fire and expired is None:
                    expired = self._expired()
                self._arm()
            self.holds -= 1
            if self.holds or not (self.due or self.incoming):
                break
            self.holds += 1  # a handler came just before the let-go: do its part too
        if expired is not None:
            expired.fired = True
        return expired

    def _expired(self) -> Deadline | None:
        """The first active Deadline if it expired, taken off the heap (one at a time:
        the next one, if also expired, fires on the next alarm, right after)."""
        heap = self.heap
        now = time.monotonic()
        while heap and (not heap[0][2].active or heap[0][0] <= now):
            _, _, deadline = heapq.heappop(heap)
            if deadline.active:
                return deadline
        return None

    def _arm(self) -> None:
        heap = self.heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        if not heap:
            if self.armed_for is not None:  # nothing left to fire: no stray alarm
                self.armed_for = None
                signal.setitimer(signal.ITIMER_REAL, 0)
            return
        when = heap[0][0]
        if self.armed_for is not None and self.armed_for <= when:
            return  # it expires first: the handler re-arms it for this one then
        self.armed_for = when
        # Never 0, which would disarm the timer; what expired meanwhile fires soon.
        signal.setitimer(signal.ITIMER_REAL, max(when - time.monotonic(), 1e-4))


def _send(expired: Deadline | None) -> None:
    """Fire `expired` from the main thread's own code (not a signal handler): its
    exception is raised at the next bytecode boundary, here."""
    if expired is not None:
        interrupt_thread(expired.thread_id, expired.exception)


_ALARM: list[_AlarmClock] = []
"""The process's alarm clock, once `use_alarm_clock` installed it (a forked child
inherits its zygote's)."""


def use_alarm_clock() -> bool:
    """Fire the main thread's Deadlines from SIGALRM in this process, not from a thread;
    False where the C extension `jarvis.runtime._process` (its handler) is not built,
    and the watchdog thread goes on firing them.

    For a process that runs one execution in its main thread (a child): no thread is
    started for its time limits, and none is left to end. Call it from the main
    thread; the process must not use SIGALRM otherwise.
    """
    if not _ALARM:
        try:
            from jarvis.runtime import _process
        except ImportError:
            return False
        _ALARM.append(_AlarmClock(_process))
    elif _signal.getsignal(signal.SIGALRM) is _ALARM[0].handler:
        return True  # a forked child: its zygote installed it
    _signal.signal(signal.SIGALRM, _ALARM[0].handler)  # (no enum made, see child.py)
    return True


def hold_alarms() -> None:
    """Keep the alarm clock from firing (in the main thread) until `release_alarms`:
    around a message on the channel, which a time limit must not cut in two."""
    if _ALARM:
        _ALARM[0].hold()


def release_alarms() -> None:
    """Let go of what `hold_alarms` held: what expired meanwhile fires now."""
    if _ALARM:
        _ALARM[0].release()

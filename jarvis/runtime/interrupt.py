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

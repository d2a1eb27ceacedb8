"""Time limits in a child come from SIGALRM (interrupt.py's alarm clock), not a thread.

Each scenario runs in a fresh interpreter (`in_child`): the alarm clock is a
process-wide mode (a SIGALRM handler), which the test process itself must not take.
What must hold is what the watchdog thread gave: a Deadline interrupts the block
between two bytecodes, never inside a C call; a Deadline left in time never fires;
the stop grace armed from a signal handler fires; a message on the child's channel is
never cut in two; and no thread is started.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

from jarvis.runtime.channel import Channel

PRELUDE = """
import os, signal, sys, threading, time
from jarvis.runtime import interrupt
from jarvis.runtime.interrupt import Deadline

class Late(BaseException):
    pass

def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

def tasks():
    return len(os.listdir("/proc/self/task"))

interrupt.use_alarm_clock()
"""


def in_child(body: str, timeout: float = 30.0) -> list[str]:
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_deadline_interrupts_a_loop_without_a_thread() -> None:
    out = in_child("""
        started = time.monotonic()
        try:
            with Deadline(0.1, Late):
                spin(10.0)
            print("not-interrupted")
        except Late:
            print("late", 0.1 <= time.monotonic() - started < 1.0)
        print("threads", threading.active_count(), tasks())
    """)
    assert out == ["late", "True", "threads", "1", "1"]


def test_a_deadline_left_in_time_never_fires_and_others_still_do() -> None:
    out = in_child("""
        with Deadline(0.05, Late) as first:
            pass
        spin(0.2)  # an exception sent now would surface here
        print("quiet", first.fired)
        try:
            with Deadline(5.0, Late) as outer:
                with Deadline(0.05, KeyError) as inner:
                    spin(10.0)
        except KeyError:
            print("inner", inner.fired, outer.fired)
        spin(0.1)
        print("done")
    """)
    assert out == ["quiet", "False", "inner", "True", "False", "done"]


def test_a_long_c_call_is_not_cut_short() -> None:
    # pow() checks for signals while it runs: the alarm comes inside it, and the
    # exception waits for the next bytecode boundary (the call completes), as the
    # watchdog thread's exception did. (A handler in Python would cut it short.)
    out = in_child("""
        e = 2 ** 6000
        m = 3 ** 4000
        started = time.monotonic()
        pow(5, e, m)
        alone = time.monotonic() - started
        started = time.monotonic()
        try:
            with Deadline(0.02, Late):
                pow(5, e, m)
                spin(10.0)
        except Late:
            elapsed = time.monotonic() - started
            print("late", alone > 0.1, elapsed > alone / 2, elapsed < alone * 5 + 1)
    """, timeout=120)
    assert out == ["late", "True", "True", "True"]


def test_a_held_clock_fires_when_let_go() -> None:
    out = in_child("""
        try:
            with Deadline(0.05, Late):
                interrupt.hold_alarms()
                spin(0.2)  # expired meanwhile, held: nothing raised
                print("held")
                interrupt.release_alarms()
                spin(10.0)
        except Late:
            print("late")
    """)
    assert out == ["held", "late"]


def test_the_grace_armed_from_a_signal_handler_fires_in_the_main_thread() -> None:
    out = in_child("""
        def on_usr1(signum, frame):
            interrupt.interrupt_main_later(0.1, Late)

        signal.signal(signal.SIGUSR1, on_usr1)
        started = time.monotonic()
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            while True:
                time.sleep(0.01)
        except Late:
            elapsed = time.monotonic() - started
            print("late", 0.1 <= elapsed < 1.0, threading.active_count(), tasks())
    """)
    assert out == ["late", "True", "1", "1"]


def test_a_message_on_the_childs_channel_is_read_whole() -> None:
    """The deadline expires while the child waits for the second half of a frame: the
    exception comes once that frame is read whole, so the next frame reads intact."""
    host, child = socket.socketpair()
    script = PRELUDE + textwrap.dedent(f"""
        import socket
        from jarvis.runtime.child import ChildChannel
        channel = ChildChannel({child.fileno()})
        try:
            with Deadline(0.1, Late):
                channel.receive()
                print("not-interrupted")
        except Late:
            header, blob = channel.receive()
            print("late", header["op"], len(blob))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], pass_fds=(child.fileno(),),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.close()
    frames = bytearray()

    class Capture:
        def sendall(self, data: bytes) -> None:
            frames.extend(data)

    spare = socket.socketpair()
    sender = Channel(spare[0])  # only to make the frames
    sender.sock = Capture()  # type: ignore[assignment]
    sender.send_behind({"op": "first"}, b"x" * 1000)
    first = len(frames)
    sender.send_behind({"op": "second"}, b"y" * 10)
    time.sleep(0.5)  # the child is up and waiting
    host.sendall(bytes(frames[:20]))
    time.sleep(0.4)  # past the child's deadline, the first frame half sent
    host.sendall(bytes(frames[20:first]))
    time.sleep(0.1)
    host.sendall(bytes(frames[first:]))
    out, err = process.communicate(timeout=30)
    for end in (host, *spare):
        end.close()
    assert process.returncode == 0, err
    assert out.split() == ["late", "second", "10"]

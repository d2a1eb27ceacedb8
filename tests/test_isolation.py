"""Executions in a child process: same results, a clean environment, deaths contained."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

import pytest

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.channel import ChannelClosed
from jarvis.runtime.children import CHILD_ENVIRONMENT, ChildDied, ChildProcess
from jarvis.runtime.execution import Execution, error_type_name
from jarvis.runtime.isolation import ChildPool, HostServices, run_in_child
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import load_settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def execute(tmp_path: Path, source: str, books: BookRegistry, pool: ChildPool,
            inputs: dict[str, Any] | None = None, execution_id: str = "iso",
            trace: str = "statements") -> tuple[Any, MemorySink]:
    program = Compilation.of(source, "prog.spy").program(trace)  # type: ignore[arg-type]
    sink = MemorySink()
    settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False)
    execution = Execution(program, execution_id=execution_id, inputs=inputs or {},
                          books=books, settings=settings, sink=sink, isolation=pool)
    return execution.run(), sink


@pytest.fixture
def pool() -> Any:
    children = ChildPool(size=1)
    yield children
    children.close()


def test_an_example_gives_the_same_outputs_in_a_child(tmp_path: Path, pool: ChildPool) -> None:
    source = (EXAMPLES / "invoice_approval.spy").read_text()
    inputs = json.loads((EXAMPLES / "invoice_approval.inputs.json").read_text())
    outcome, sink = execute(tmp_path, source, BookRegistry.load(EXAMPLES / "books.toml"),
                            pool, inputs)
    assert outcome.status == "completed"
    assert outcome.outputs == {"approved": ["INV-1", "INV-3"], "held": ["INV-2"]}
    kinds = [event.kind for event in sink.events]
    assert kinds.count("book_start") == kinds.count("book_end") > 0
    assert [e.seq for e in sink.events] == list(range(1, len(sink.events) + 1))


def test_program_errors_keep_their_type_and_position(tmp_path: Path, pool: ChildPool) -> None:
    outcome, _ = execute(tmp_path, "x = 1\ny = [1][x + 1]\n", BookRegistry(), pool)
    assert outcome.status == "failed"
    assert error_type_name(outcome.error) == "IndexError"
    assert (outcome.location.line, outcome.location.col) == (2, 5)


def test_a_killed_child_fails_its_execution_and_the_host_goes_on(
    tmp_path: Path, pool: ChildPool
) -> None:
    (tmp_path / "killer.py").write_text(
        "import os, signal\n"
        "def die(pid):\n"
        "    os.kill(pid, signal.SIGKILL)\n"
        "    return 'unreachable'\n"
    )
    (tmp_path / "books.toml").write_text('[books.killer]\npython = "killer.py"\n')
    books = BookRegistry.load(tmp_path / "books.toml")
    child_pid = pool.next_ready().pid
    source = "from books import killer\nkiller.die(pid=inputs['pid'])\noutput('after', 1)\n"
    outcome, _ = execute(tmp_path, source, books, pool, {"pid": child_pid}, "dies")
    assert outcome.status == "failed"
    assert "killed by SIGKILL" in str(outcome.error)
    outcome, _ = execute(tmp_path, "output('fine', True)\n", books, pool, execution_id="next")
    assert outcome.status == "completed"
    assert outcome.outputs == {"fine": True}


def test_the_child_has_a_scrubbed_environment_and_a_private_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JARVIS_HMAC_KEYS", "a-secret-the-child-must-not-see")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another-secret")
    child = ChildProcess()
    try:
        environ: list[bytes] = []
        for _ in range(100):  # the kernel shows the environment once exec has set it up
            environ = [i for i in Path(f"/proc/{child.pid}/environ").read_bytes().split(b"\0") if i]
            if environ:
                break
            time.sleep(0.05)
        names = {item.split(b"=", 1)[0].decode() for item in environ if item}
        assert names == set(CHILD_ENVIRONMENT)
        assert os.readlink(f"/proc/{child.pid}/cwd") == child.workdir
        assert os.listdir(child.workdir) == []
        fds = os.listdir(f"/proc/{child.pid}/fd")
        assert len(fds) <= 5, fds  # stdin, stdout, stderr, the channel (and no inherited files)
    finally:
        child.close()


def test_a_child_dies_with_its_host() -> None:
    """The child asks the kernel to kill it when its parent dies (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys

    script = (
        "import time\n"
        "from jarvis.runtime.isolation import ChildProcess\n"
        "child = ChildProcess()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    child_pid = int(host.stdout.readline())
    time.sleep(1.0)  # let the child boot and make its request
    host.send_signal(signal.SIGKILL)
    host.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("the child outlived its host")


class _ClosedChannel:
    """A channel whose child is gone: the host finds out when it writes."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        self.sent += 1
        raise ChannelClosed("[Errno 32] Broken pipe")

    def receive(self) -> tuple[dict[str, Any], bytes]:
        raise AssertionError("nothing is read from a channel that failed at a write")


class _DeadChild:
    def __init__(self) -> None:
        self.channel = _ClosedChannel()

    def cause_of_death(self) -> str:
        return "the execution's process was killed by SIGKILL"

    def wait(self, timeout: float) -> int:
        return -signal.SIGKILL

    def log_tail(self, limit: int = 4000) -> str:
        return ""

    def signal(self, number: int) -> None:
        raise AssertionError("a dead child is not signalled")


def test_a_child_found_dead_at_a_write_fails_its_execution() -> None:
    # The host may learn of the death when it writes (EPIPE), not only when it reads.
    child = _DeadChild()
    services = HostServices(journal=cast(Any, None), snapshots=cast(Any, None),
                            sink=cast(Any, None), books=cast(Any, None))
    outcome = run_in_child(cast(Any, child), {"op": "start"}, b"", services, lambda: False)
    assert child.channel.sent == 1
    assert outcome.status == "failed"
    assert isinstance(outcome.error, ChildDied)
    assert "killed by SIGKILL" in str(outcome.error)


def test_the_childs_channel_reads_frames_however_they_arrive() -> None:
    """The child's channel reads the socket itself (no buffered file): frames that
    arrive together, a frame in many pieces, a blob larger than its reads, and a close
    in the middle of a frame all read as through the host's `Channel`."""
    import socket
    import threading

    from jarvis.runtime.channel import Channel
    from jarvis.runtime.child import ChildChannel

    host, child_end = socket.socketpair()
    sender, reader = Channel(host), ChildChannel(child_end.detach())
    big = os.urandom(3 << 20)  # many receives, more than the socket buffer holds
    frames = [({"op": "a", "n": 1}, b""), ({"op": "b", "text": "é"}, b"xyz"),
              ({"op": "c"}, big), ({"op": "d"}, b"")]

    def send_all() -> None:
        for header, blob in frames[:2]:  # likely together in one receive
            sender.send_behind(header, blob)
        sender.send_behind(*frames[2])
        sender.send_behind(*frames[3])

    writer = threading.Thread(target=send_all)
    writer.start()
    got = [reader.receive() for _ in frames]
    writer.join(10)
    assert got == frames
    partial = bytearray()

    class Capture:
        def sendall(self, data: bytes) -> None:
            partial.extend(data)

    spare = socket.socketpair()
    capture = Channel(spare[0])
    capture.sock = cast(Any, Capture())
    capture.send_behind({"op": "e"}, b"0123456789")
    for end in spare:
        end.close()
    for index in range(len(partial) - 3):  # all but the last bytes, one at a time
        host.sendall(bytes(partial[index:index + 1]))
    sender.close()  # the host's end, its buffered reader with it
    with pytest.raises(ChannelClosed, match="mid-frame"):
        reader.receive()
    with pytest.raises(ChannelClosed) as closed:
        reader.receive()
    assert str(closed.value) == "the channel closed"
    reader.close()

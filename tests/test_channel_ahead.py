"""Trace batches sent ahead on the channel: the child goes on, and errors still reach it."""

from __future__ import annotations

import select
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.channel import Channel, RemoteError
from jarvis.runtime.execution import Execution, error_type_name
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import load_settings


def test_an_answer_sent_ahead_is_read_before_the_next_request() -> None:
    child_end, host_end = socket.socketpair()
    child, host = Channel(child_end), Channel(host_end)
    try:
        child.send_ahead({"op": "trace", "rows": [1]})
        assert host.receive()[0]["rows"] == [1]
        host.send({"ok": True})
        child.send_ahead({"op": "trace", "rows": [2]})  # reads the first answer (ok)
        assert host.receive()[0]["rows"] == [2]
        host.send({"error": "refused", "type": "FencedOff"})
        # The next request first reads the refusal, and is not sent.
        with pytest.raises(RemoteError, match="refused") as raised:
            child.request({"op": "journal"}, b"record")
        assert raised.value.type_name == "FencedOff"
        child.settle()  # nothing outstanding any more
        readable, _, _ = select.select([host_end], [], [], 0.2)
        assert readable == []  # the journal request never left the child
    finally:
        child.close()
        host.close()


class FailingSink(MemorySink):
    """Takes `good` batches, then refuses every batch, as a fenced-off host's does."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good
        self.lock = threading.Lock()

    def deliver(self, events: Any) -> None:
        with self.lock:
            if self.good <= 0:
                raise RuntimeError("the trace sink refused the batch")
            self.good -= 1
        super().deliver(events)


@pytest.mark.parametrize("good", [0, 1])
def test_a_refused_trace_batch_fails_the_run_in_the_child(tmp_path: Path, good: int) -> None:
    source = "total = 0\nfor i in range(20000):\n    total = total + i\noutput('total', total)\n"
    program = Compilation.of(source, "prog.spy").program("full")
    pool = ChildPool(size=1)
    try:
        sink = FailingSink(good)
        settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False)
        outcome = Execution(program, execution_id="refused", inputs={},
                            books=BookRegistry(), settings=settings, sink=sink,
                            isolation=pool).run()
    finally:
        pool.close()
    assert outcome.status == "failed", outcome
    assert error_type_name(outcome.error) == "RuntimeError"
    assert "refused the batch" in str(outcome.error)

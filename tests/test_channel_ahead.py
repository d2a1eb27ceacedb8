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


class LeaseLostBook:
    """Records its calls; during the second one the execution's lease is lost."""

    name = "svc"

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.lease_lost = False

    def call(self, procedure: str, args: list[Any], kwargs: dict[str, Any],
             idempotency_key: str) -> Any:
        self.keys.append(idempotency_key)
        if len(self.keys) == 2:
            self.lease_lost = True
        return len(self.keys)


def test_a_book_call_sent_behind_a_refused_journal_record_is_never_made(
        tmp_path: Path) -> None:
    # The child sends each journal record ahead and the next Book call right behind
    # it; the host must append the record before it makes the call, and make no call
    # at all once an append was refused.
    source = ("from books import svc\n"
              "total = 0\n"
              "for i in range(5):\n"
              "    total = total + svc.charge(i)\n"
              "output('total', total)\n")
    program = Compilation.of(source, "prog.spy").program("off")
    book = LeaseLostBook()

    def guard() -> None:
        if book.lease_lost:
            raise RuntimeError("the lease on this execution was lost; refusing to write")

    pool = ChildPool(size=1)
    try:
        settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False)
        execution = Execution(program, execution_id="fenced", inputs={},
                              books=BookRegistry({"svc": book}), settings=settings,
                              sink=MemorySink(), isolation=pool, guard=guard)
        # The refusal ends the run, and the host leaves the status to the new owner.
        with pytest.raises(RuntimeError, match="refusing to write"):
            execution.run()
    finally:
        pool.close()
    # Call 2's record was refused: call 3, already on its way behind it, was not made.
    assert book.keys == ["fenced:1", "fenced:2"]

"""Books whose calls, and whose state, outlive the process that calls them.

A kill test runs one execution in several processes, one after the other. A Book that
lives in the executing process (a Python Book of tests/spec or tests/spygen.py) would
forget its calls, and its state (a ledger, a call counter), every time that process
dies. `LoggedBook` wraps such a Book the way a real remote service behaves:

- every call it receives is appended to a `CallLog` (one JSON line, written with a
  single `write` on an O_APPEND descriptor, so a SIGKILL cannot leave half of it),
  together with its answer (result or error);
- it honours the Idempotency-Key: a key it has answered before gets the same answer
  again, without performing the call a second time (the line it logs says `resent`);
- a fresh process rebuilds the wrapped Book's state by performing, in order, the calls
  the log holds (each key once), before it answers its first call.

`kill_key`: when a call with this key arrives for the first time, the Book performs
it, logs it, and then SIGKILLs its own process, so the answer never reaches the
program: the call is in flight at the kill.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jarvis.runtime.books import Book, BookRegistry
from jarvis.runtime.errors import BookError


@dataclass(frozen=True)
class LoggedCall:
    """One call a Book received, as the log holds it."""

    key: str
    book: str
    procedure: str
    args: Any
    kwargs: Any
    answer: dict[str, Any]
    resent: bool

    @property
    def seq(self) -> int:
        """The call_seq part of the Idempotency-Key (`execution_id:call_seq`)."""
        return int(self.key.rsplit(":", 1)[1])

    @property
    def execution_id(self) -> str:
        return self.key.rsplit(":", 1)[0]

    def what(self) -> tuple[str, str, Any, Any, int]:
        """The call without who made it: what two executions of a program compare."""
        return (self.book, self.procedure, self.args, self.kwargs, self.seq)


class CallLog:
    """An append-only JSON-lines file of Book calls, shared by every process of a test."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, call: LoggedCall) -> None:
        line = json.dumps({
            "key": call.key, "book": call.book, "procedure": call.procedure,
            "args": call.args, "kwargs": call.kwargs, "answer": call.answer,
            "resent": call.resent,
        }, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            data = line.encode("utf-8")
            written = os.write(fd, data)
            assert written == len(data), "a short write to the call log"
        finally:
            os.close(fd)

    def calls(self) -> list[LoggedCall]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n"), "a torn line in the call log"
        return [LoggedCall(**json.loads(line)) for line in text.splitlines()]


def _answer_of(book: Book, procedure: str, args: list[Any], kwargs: dict[str, Any],
               key: str) -> dict[str, Any]:
    try:
        return {"ok": book.call(procedure, args, kwargs, key)}
    except BookError as exc:
        return {"err": {"type": exc.error_type, "message": exc.message, "status": exc.status}}


def _give(book: str, procedure: str, answer: dict[str, Any]) -> Any:
    if "err" in answer:
        err = answer["err"]
        raise BookError(book, procedure, err["type"], err["message"], err["status"])
    return answer["ok"]


class LoggedBook:
    """A Book that logs its calls, answers a repeated key from the log, and may kill."""

    def __init__(self, book: Book, log: CallLog, kill_key: str | None = None) -> None:
        self.name = book.name
        self._book = book
        self._log = log
        self._kill_key = kill_key
        self._answers: dict[str, dict[str, Any]] | None = None

    def _rebuild(self) -> dict[str, dict[str, Any]]:
        """The answers given so far, by key; the wrapped Book's state brought up to date."""
        answers: dict[str, dict[str, Any]] = {}
        for call in self._log.calls():
            if call.book != self.name or call.key in answers:
                continue
            again = _answer_of(self._book, call.procedure, call.args, call.kwargs, call.key)
            assert again == call.answer, f"the Book {self.name} is not deterministic: {call}"
            answers[call.key] = call.answer
        return answers

    def call(self, procedure: str, args: list[Any], kwargs: dict[str, Any],
             idempotency_key: str) -> Any:
        if self._answers is None:
            self._answers = self._rebuild()
        known = self._answers.get(idempotency_key)
        answer = known if known is not None else _answer_of(
            self._book, procedure, args, kwargs, idempotency_key)
        self._log.append(LoggedCall(idempotency_key, self.name, procedure, args, kwargs,
                                    answer, resent=known is not None))
        if known is None:
            self._answers[idempotency_key] = answer
            if idempotency_key == self._kill_key:
                os.kill(os.getpid(), signal.SIGKILL)
        return _give(self.name, procedure, answer)


def logged_registry(registry: Path, log: CallLog, kill_key: str | None = None) -> BookRegistry:
    """The Books of `registry` (loaded fresh), each wrapped in a `LoggedBook` on `log`."""
    loaded = BookRegistry.load(registry)
    return BookRegistry({name: LoggedBook(loaded.get(name), log, kill_key)
                         for name in loaded.names()})

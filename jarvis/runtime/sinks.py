"""Where trace events go: a JSONL file, the console, memory (tests), or nowhere.

Every sink remembers `last_delivered`, the highest seq it has passed on, and drops
events at or below it: a resumed execution replays from its snapshot and regenerates
events the sink already has, with the same seqs, and they must not appear twice. A
sink that outlives the process (a file) recovers `last_delivered` when it opens.

`line_protocol` encodes an event in InfluxDB line protocol, the format of the
`spy_logs` Kafka topic.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from jarvis.runtime.trace import EventBatch, TraceEvent


@runtime_checkable
class Sink(Protocol):
    """A destination of trace events, delivered in batches in seq order."""

    last_delivered: int
    """The highest seq already delivered; events at or below it are dropped."""

    def deliver(self, events: Sequence[TraceEvent]) -> None: ...

    def close(self) -> None: ...


def fresh(events: Sequence[TraceEvent], last_delivered: int) -> Sequence[TraceEvent]:
    """The events with a seq above `last_delivered` (events come in seq order)."""
    if not events or events[-1].seq <= last_delivered:
        return ()
    if events[0].seq > last_delivered:
        return events
    if isinstance(events, EventBatch):
        return events.after(last_delivered)
    return [event for event in events if event.seq > last_delivered]


class NullSink:
    """Drops every event; still counts them, for benchmarks and trace level "off"."""

    def __init__(self, last_delivered: int = 0) -> None:
        self.last_delivered = last_delivered

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        if events:
            self.last_delivered = max(self.last_delivered, events[-1].seq)

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps every delivered event in `events`, in order."""

    def __init__(self, last_delivered: int = 0) -> None:
        self.last_delivered = last_delivered
        self.events: list[TraceEvent] = []
        self.batches = 0
        self.closed = False

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        events = fresh(events, self.last_delivered)
        if events:
            self.events.extend(events)
            self.batches += 1
            self.last_delivered = events[-1].seq

    def close(self) -> None:
        self.closed = True


class JsonlSink:
    """Appends each event as one JSON object per line; flushed after every batch.

    On open, the last complete line gives `last_delivered`; a torn last line (a crash
    mid-write leaves one without its newline) is cut off first.
    """

    def __init__(self, path: str | os.PathLike[str], last_delivered: int = 0, *,
                 fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        recovered = _recover_jsonl(self.path)
        self.last_delivered = max(last_delivered, recovered)
        self._file: IO[str] | None = open(  # noqa: SIM115 - closed by close()
            self.path, "a", encoding="utf-8", newline="\n"
        )

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        if self._file is None:
            raise ValueError("the sink is closed")
        events = fresh(events, self.last_delivered)
        if not events:
            return
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self._file.write("".join([dumps(event.to_json()) + "\n" for event in events]))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.last_delivered = events[-1].seq

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_TAIL_CHUNK = 64 * 1024


def _recover_jsonl(path: Path) -> int:
    """The seq of the last complete event line of `path` (0 if none); cuts a torn
    last line off the file."""
    try:
        handle = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return 0
    with handle:
        end = handle.seek(0, os.SEEK_END)
        position = end
        tail = b""
        # Walk back chunk by chunk until the tail holds a complete line we can parse.
        while position > 0:
            step = min(_TAIL_CHUNK, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
            complete = tail.rfind(b"\n")
            if complete < 0:
                continue
            if position + complete + 1 < end:
                handle.truncate(position + complete + 1)  # a torn last line
                end = position + complete + 1
                tail = tail[: complete + 1]
            for line in reversed(tail.split(b"\n")[1:-1] if position else tail.split(b"\n")[:-1]):
                seq = _seq_of(line)
                if seq is not None:
                    return seq
            if position == 0:
                return 0
            tail = tail[: tail.find(b"\n") + 1] if b"\n" in tail else tail
        if tail and not tail.endswith(b"\n"):
            handle.truncate(0)  # one torn line and nothing else
        return 0


def _seq_of(line: bytes) -> int | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    seq = data.get("seq") if isinstance(data, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class ConsoleSink:
    """A live, human-readable trace (for `jarvis run`), one line per event:

        12  L3:5    total + x        →  42  (int)

    Expressions and values are clipped to keep each line short; prints, Book calls,
    exceptions and limits stand out (in color when `color` is true).
    """

    EXPR_WIDTH = 32
    VALUE_WIDTH = 60

    _STYLE = {
        "print": "\x1b[1;33m",
        "book_start": "\x1b[1;36m",
        "book_end": "\x1b[1;36m",
        "exception": "\x1b[1;31m",
        "limit": "\x1b[1;31m",
        "output": "\x1b[1;32m",
        "checkpoint": "\x1b[35m",
        "sleep": "\x1b[35m",
        "stmt": "\x1b[2m",
    }
    _RESET = "\x1b[0m"

    def __init__(self, stream: IO[str] | None = None, color: bool | None = None,
                 last_delivered: int = 0) -> None:
        self.stream = sys.stderr if stream is None else stream
        if color is None:
            isatty = getattr(self.stream, "isatty", None)
            color = bool(isatty and isatty()) and "NO_COLOR" not in os.environ
        self.color = color
        self.last_delivered = last_delivered

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        events = fresh(events, self.last_delivered)
        if not events:
            return
        self.stream.write("".join([self.format(event) + "\n" for event in events]))
        self.stream.flush()
        self.last_delivered = events[-1].seq

    def format(self, event: TraceEvent) -> str:
        where = f"L{event.line}:{event.col}" if event.line else ""
        expr = _one_line(event.expr, self.EXPR_WIDTH)
        value = _one_line(event.value, self.VALUE_WIDTH)
        kind = event.kind
        if kind == "expr":
            body = f"{expr:<{self.EXPR_WIDTH}}  →  {value}  ({event.type})"
        elif kind == "stmt":
            body = expr
        elif kind == "print":
            body = f"print  {value}"
        elif kind == "book_end":
            took = "" if event.duration_ms is None else f"  {event.duration_ms:.1f} ms"
            body = f"{kind:<10} {expr}  →  {value}  ({event.type}){took}"
        else:
            shown = f"  {value}" if value else ""
            body = f"{kind:<10} {expr}{shown}"
        line = f"{event.seq:>6}  {where:<9} {body}".rstrip()
        style = self._STYLE.get(kind) if self.color else None
        return f"{style}{line}{self._RESET}" if style else line

    def close(self) -> None:
        self.stream.flush()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(text: str, width: int) -> str:
    """`text` on one line (control characters shown as escapes), at most `width` chars."""
    if _CONTROL.search(text):
        text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= width else text[: width - 1] + "…"


# -- InfluxDB line protocol -----------------------------------------------------------

MEASUREMENT = "spy_trace"

_MEASUREMENT_ESCAPES = str.maketrans({
    "\\": "\\\\", ",": "\\,", " ": "\\ ", "\n": "\\n", "\r": "\\r",
})
_TAG_ESCAPES = str.maketrans({
    "\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\r": "\\r",
})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_tag(text: str) -> str:
    """A tag key or value: backslash, comma, equals sign and space escaped."""
    return text.translate(_TAG_ESCAPES)


def escape_string_field(text: str) -> str:
    """A string field value, without its double quotes."""
    return text.translate(_STRING_ESCAPES)


def line_protocol(event: TraceEvent, timestamp_ns: int | None = None) -> str:
    """`event` as one line of InfluxDB line protocol (no trailing newline).

    Measurement `spy_trace`; tags `execution_id` (left out when empty: Influx refuses
    empty tag values) and `kind`; integer fields seq, line, col, end_line, end_col;
    string fields expr, value, type; a float field duration_ms when set. Newlines and
    carriage returns, which line protocol cannot carry raw, travel as `\\n` and `\\r`.
    """
    tags = f",kind={escape_tag(event.kind)}"
    if event.execution_id:
        tags = f",execution_id={escape_tag(event.execution_id)}" + tags
    fields = (
        f"seq={event.seq}i,line={event.line}i,col={event.col}i,"
        f"end_line={event.end_line}i,end_col={event.end_col}i,"
        f'expr="{escape_string_field(event.expr)}",'
        f'value="{escape_string_field(event.value)}",'
        f'type="{escape_string_field(event.type)}"'
    )
    if event.duration_ms is not None:
        fields += f",duration_ms={event.duration_ms!r}"
    line = f"{escape_measurement(MEASUREMENT)}{tags} {fields}"
    return line if timestamp_ns is None else f"{line} {timestamp_ns}"


class FanOutSink:
    """Delivers every batch to several sinks (say, the console and a JSONL log)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    @property
    def last_delivered(self) -> int:
        return min((sink.last_delivered for sink in self.sinks), default=0)

    @last_delivered.setter
    def last_delivered(self, seq: int) -> None:
        for sink in self.sinks:
            sink.last_delivered = max(sink.last_delivered, seq)

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        for sink in self.sinks:
            sink.deliver(events)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

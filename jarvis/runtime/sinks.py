"""Where trace events go: a JSONL file, the console, memory (tests), or nowhere.

Every sink remembers `last_delivered`, the highest seq it has passed on, and drops
events at or below it: a resumed execution replays from its snapshot and regenerates
events the sink already has, with the same seqs, and they must not appear twice. A
sink that outlives the process (a file) recovers `last_delivered` when it opens.

`line_protocol` encodes an event in InfluxDB line protocol, the format of the
`spy_logs` Kafka topic; `render_lines` a whole batch of them, column by column.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, ClassVar, Protocol, runtime_checkable

from jarvis.runtime.trace import EventBatch, TraceEvent

_json_string = json.encoder.encode_basestring
"""A str as a JSON string, non-ASCII kept (the json module's C encoder)."""


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
            # A batch knows its last seq without making (and rendering) its last event.
            last = events.last_seq if type(events) is EventBatch else events[-1].seq
            self.last_delivered = max(self.last_delivered, last)

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
        # A lone surrogate (a program can print one) is not UTF-8: it is written as the
        # JSON escape `\ud800`, which reads back as the same string.
        self._file: IO[str] | None = open(  # noqa: SIM115 - closed by close()
            self.path, "a", encoding="utf-8", errors="backslashreplace", newline="\n"
        )

    def deliver(self, events: Sequence[TraceEvent]) -> None:
        if self._file is None:
            raise ValueError("the sink is closed")
        events = fresh(events, self.last_delivered)
        if not events:
            return
        text = "".join([_json_line(event) for event in events])
        if _UNICODE_LINE_BREAK.search(text):
            # JSON leaves these unescaped, and readers that split at every Unicode
            # line break (str.splitlines, for one) would cut the line there.
            text = _UNICODE_LINE_BREAK.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        self._file.write(text)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.last_delivered = events[-1].seq

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_JSON_LINE = (
    '{"execution_id":%s,"seq":%d,"kind":%s,"line":%d,"col":%d,"end_line":%d,"end_col":%d,'
    '"expr":%s,"value":%s,"type":%s%s}\n'
)


def _json_line(event: TraceEvent) -> str:
    """`json.dumps(event.to_json())` and a newline, written by a template: the JSON
    encoding of the strings is the C one of the json module, and the rest is fixed."""
    execution_id, seq, kind, line, col, end_line, end_col, expr, value, type_, duration = event
    tail = "" if duration is None or not math.isfinite(duration) else f',"duration_ms":{duration!r}'
    return _JSON_LINE % (
        _json_string(execution_id), seq, _json_string(kind), line, col, end_line, end_col,
        _json_string(expr), _json_string(value), _json_string(type_), tail,
    )


_TAIL_CHUNK = 64 * 1024
_UNICODE_LINE_BREAK = re.compile("[\x85\u2028\u2029]")


def _recover_jsonl(path: Path) -> int:
    """The seq of the last complete event line of the file at `path` (0 if none).

    A last line without its newline is a write cut short by a crash: it is cut off
    the file, so that the next batch starts on a line of its own.
    """
    try:
        handle = open(path, "r+b")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return 0
    with handle:
        end = handle.seek(0, os.SEEK_END)
        complete_end = _last_newline(handle, end) + 1
        if complete_end < end:
            handle.truncate(complete_end)
        for line in _lines_backwards(handle, complete_end):
            seq = _seq_of(line)
            if seq is not None:
                return seq
    return 0


def _last_newline(handle: IO[bytes], end: int) -> int:
    """The offset of the last newline before `end`, or -1."""
    position = end
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        handle.seek(start)
        found = handle.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1


def _lines_backwards(handle: IO[bytes], end: int) -> Iterator[bytes]:
    """The lines of the file before offset `end` (which follows a newline), last first."""
    position = end
    partial = b""
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        handle.seek(start)
        chunk = handle.read(position - start) + partial
        lines = chunk.split(b"\n")
        # The first piece may be the end of a line that starts in an earlier chunk.
        partial = lines[0] if start > 0 else b""
        for line in reversed(lines[1:] if start > 0 else lines):
            if line.strip():
                yield line
        position = start
    if partial.strip():
        yield partial


def _seq_of(line: bytes) -> int | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    seq = data.get("seq") if isinstance(data, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class ConsoleSink:
    """A live, human-readable trace (for `jarvis run`), one line per event:

         12  L3:5      total + x                       →  42  (int)
         13  L4:1      print(total)
         14  L4:1      print      42
         15  L6:7      book_end   crm.find(name)  →  {'id': 7}  (dict)  12.5 ms

    The seq, the position, then per kind: an expression with its value and type; a
    statement's text (dimmed); a print with its text; engine events with their kind,
    what they concern and their value. Texts are put on one line (control characters
    escaped) and clipped, so lines stay short and aligned. Prints, Book calls,
    outputs, exceptions and limits stand out in color when `color` is true (by default
    when the stream is a terminal and NO_COLOR is not set).
    """

    EXPR_WIDTH = 32
    VALUE_WIDTH = 60
    STMT_WIDTH = 96

    STYLES: ClassVar[dict[str, str]] = {
        "print": "\x1b[1;33m",
        "book_start": "\x1b[36m",
        "book_end": "\x1b[1;36m",
        "exception": "\x1b[1;31m",
        "limit": "\x1b[1;31m",
        "output": "\x1b[1;32m",
        "checkpoint": "\x1b[35m",
        "sleep": "\x1b[35m",
        "stmt": "\x1b[2m",
    }
    RESET = "\x1b[0m"

    def __init__(self, stream: IO[str] | None = None, color: bool | None = None,
                 last_delivered: int = 0) -> None:
        self.stream = sys.stderr if stream is None else stream
        if color is None:
            isatty = getattr(self.stream, "isatty", None)
            color = bool(isatty and isatty()) and not os.environ.get("NO_COLOR")
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
        """One event as one line (without the newline)."""
        kind = event.kind
        if kind == "expr":
            expr = _one_line(event.expr, self.EXPR_WIDTH)
            value = _one_line(event.value, self.VALUE_WIDTH)
            body = f"{expr:<{self.EXPR_WIDTH}}  →  {value}  ({event.type})"
        elif kind == "stmt":
            body = _one_line(event.expr, self.STMT_WIDTH)
        elif kind == "print":
            text = event.value[:-1] if event.value.endswith("\n") else event.value
            body = f"{'print':<10} {_one_line(text, self.STMT_WIDTH)}"
        else:
            expr = _one_line(event.expr, self.EXPR_WIDTH)
            value = _one_line(event.value, self.VALUE_WIDTH)
            if kind == "book_end":
                took = "" if event.duration_ms is None else f"  {event.duration_ms:.1f} ms"
                body = f"{kind:<10} {expr}  →  {value}  ({event.type}){took}"
            else:
                body = f"{kind:<10} {expr}  {value}" if value else f"{kind:<10} {expr}"
        where = f"L{event.line}:{event.col}" if event.line else ""
        line = f"{event.seq:>6}  {where:<9} {body}".rstrip()
        style = self.STYLES.get(kind) if self.color else None
        return f"{style}{line}{self.RESET}" if style else line

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
_TAG_SPECIAL = re.compile(r"[\\,= \n\r]").search
_STRING_SPECIAL = re.compile(r'[\\"\n\r]').search


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_tag(text: str) -> str:
    """A tag key or value: backslash, comma, equals sign and space escaped."""
    return text.translate(_TAG_ESCAPES) if _TAG_SPECIAL(text) else text


def escape_string_field(text: str) -> str:
    """A string field value, without its double quotes."""
    return text.translate(_STRING_ESCAPES) if _STRING_SPECIAL(text) else text


_FIELDS = (
    ' seq=%di,line=%di,col=%di,end_line=%di,end_col=%di,expr="%s",value="%s",type="%s"'
)
_series: dict[tuple[str, str], str] = {}
"""The measurement and tags of each (execution id, kind) seen: the same for every
event of an execution, so escaped once."""


def series(execution_id: str, kind: str) -> str:
    """The measurement and tags of a line: `spy_trace,execution_id=ID,kind=KIND`, the
    execution id left out when empty (Influx refuses empty tag values)."""
    return series_of_kinds(execution_id, (kind,))[0]


def series_of_kinds(execution_id: str, kinds: Sequence[str]) -> list[str]:
    """`series(execution_id, kind)` of each of `kinds`, the id escaped once (a host
    renders a run's lines with the series of every kind)."""
    head = escape_measurement(MEASUREMENT)
    if execution_id:
        head += f",execution_id={escape_tag(execution_id)}"
    return [f"{head},kind={escape_tag(kind)}" for kind in kinds]


def line_protocol(event: TraceEvent, timestamp_ns: int | None = None) -> str:
    """`event` as one line of InfluxDB line protocol (no trailing newline).

    Measurement `spy_trace`; tags `execution_id` (left out when empty: Influx refuses
    empty tag values) and `kind`; integer fields seq, line, col, end_line, end_col;
    string fields expr, value, type; a float field duration_ms when set. Newlines and
    carriage returns, which line protocol cannot carry raw, travel as `\\n` and `\\r`.
    """
    execution_id, seq, kind, line, col, end_line, end_col, expr, value, type_, duration = event
    prefix = _series.get((execution_id, kind))
    if prefix is None:
        prefix = series(execution_id, kind)
        if len(_series) >= 4096:
            _series.clear()
        _series[(execution_id, kind)] = prefix
    text = prefix + _FIELDS % (
        seq, line, col, end_line, end_col,
        expr.translate(_STRING_ESCAPES) if _STRING_SPECIAL(expr) else expr,
        value.translate(_STRING_ESCAPES) if _STRING_SPECIAL(value) else value,
        type_.translate(_STRING_ESCAPES) if _STRING_SPECIAL(type_) else type_,
    )
    if duration is not None and math.isfinite(duration):
        text += f",duration_ms={duration!r}"
    return text if timestamp_ns is None else f"{text} {timestamp_ns}"


_LINE = "%s" + _FIELDS + "%s %d"
"""A whole line: series, fields, the duration field (or nothing), timestamp."""
_SEPARATOR = "\x00"
"""Joins a batch's string fields so that they are escaped by one `translate` (none of
the escapes touches it)."""


def render_lines(events: Sequence[TraceEvent], first_timestamp_ns: int) -> list[str]:
    """The events as lines of line protocol (as `sinks.line_protocol` writes them),
    stamped `first_timestamp_ns`, +1, +2, ...: a whole batch at a time, column by column,
    so that the per-event work is C-level formatting."""
    (ids, seqs, kinds, lines, cols, end_lines, end_cols, exprs, values, types,
     durations) = zip(*events, strict=True)
    prefixes = {key: series(*key) for key in set(zip(ids, kinds, strict=True))}
    count = len(seqs)
    strings = exprs + values + types
    joined = _SEPARATOR.join(strings)
    escaped = escape_string_field(joined)
    if escaped is not joined:  # something to escape: split the escaped text again
        parts = escaped.split(_SEPARATOR)
        if len(parts) != len(strings):  # a field holds the separator itself
            parts = [escape_string_field(text) for text in strings]
        exprs, values, types = (tuple(parts[:count]), tuple(parts[count:2 * count]),
                                tuple(parts[2 * count:]))
    extra = [""] * count
    for index, duration in enumerate(durations):
        if duration is not None and math.isfinite(duration):
            extra[index] = f",duration_ms={duration!r}"
    return list(map(_LINE.__mod__, zip(
        map(prefixes.__getitem__, zip(ids, kinds, strict=True)), seqs, lines, cols,
        end_lines, end_cols, exprs, values, types, extra,
        range(first_timestamp_ns, first_timestamp_ns + count), strict=True)))


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

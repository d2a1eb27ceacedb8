"""Trace batches on the channel: a child's events as one binary blob, and the host's
InfluxDB line protocol of it.

The host compiled the program, so it holds the trace sites (position, text, kind): a
child sends, per event, the site index and, for an expression, the rendered value and
its type; nothing per event for a statement. Seqs are implicit (`first_seq + i`), the
execution id is the host's. All integers are little-endian:

    header   "JTB1" | u64 first_seq | u32 count | u16 type_count
    types    type_count times: u16 length | UTF-8      (type names, by first use)
    events   count times, one of:
      site >= 0, a statement   i32 site
      site >= 0, an expression i32 site | u16 type | u32 length | UTF-8 value
      an event carried whole   i32 -1 | u8 kind (index in KINDS) | i64 line, col,
                               end_line, end_col | u32 length | UTF-8 expr |
                               u32 length | UTF-8 value | u16 type |
                               u8 0, or u8 1 | f64 duration_ms

Engine events (prints, Book calls, ...) are carried whole. A text that has no UTF-8
form (a lone surrogate a program printed) travels with that character as an escape
(`\\ud800`).

The child is untrusted: the host checks every batch (`EncodedBatch`) and refuses a
malformed one with ChannelError; it renders the line protocol of a batch directly
(`EncodedBatch.render`, for the Kafka sink) or decodes it into TraceEvents for any
other sink. Both sides are written twice, in C (`jarvis.runtime._tracebatch`, built by
setup.py) and in Python here, with byte-identical results; the Python versions are
used where the extension was not built or when JARVIS_TRACE_HOOKS is "python".
"""

from __future__ import annotations

import bisect
import itertools
import struct
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, overload

from jarvis.runtime.channel import ChannelError
from jarvis.runtime.sinks import escape_string_field, render_lines, series_of_kinds
from jarvis.runtime.trace import EventBatch, TraceEvent, python_only

if TYPE_CHECKING:
    from jarvis.compiler.trace import Site

KINDS: Final = ("expr", "stmt", "print", "book_start", "book_end", "exception",
                "checkpoint", "limit", "output", "sleep")
"""Every event kind, in the order of their indexes in a batch."""

MAX_BATCH_EVENTS: Final = 16_384
"""The most events a batch may hold (a Tracer's batches hold 4096): the host renders
a site's position and text for a few bytes of the batch, so this bounds what a batch
can make the host write (site texts are at most 200 characters)."""

MAGIC: Final = b"JTB1"
EXPLICIT: Final = -1
"""The site index of an event carried whole."""

_HEADER = struct.Struct("<4sQIH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_EXPLICIT_HEAD = struct.Struct("<iB4q")
_POSITION = struct.Struct("<B4q")
_F64 = struct.Struct("<d")
_INT64_MAX: Final = 2**63 - 1
_MAX_TYPE_BYTES: Final = 0xFFFF


def _extension() -> types.ModuleType | None:
    """The C batch code, if it was built."""
    try:
        from jarvis.runtime import _tracebatch
    except ImportError:
        return None
    return _tracebatch


_built: Final = _extension()
_native: Final = None if python_only() else _built
"""The C code this process uses: none where it was not built or JARVIS_TRACE_HOOKS=python."""


# -- the child: encoding ----------------------------------------------------------------

def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def encode_columns_python(
    first_seq: int, sites: list[int], start: int, stop: int, expr_sites: bytes,
    texts: list[str] | None, values: list[Any], names: dict[int, str], max_chars: int,
    clip: Callable[[str, Any], str], event: Callable[[int], TraceEvent],
) -> bytes:
    """Entries `start` to `stop` of a batch's columns (see `trace.BatchColumns`) as a
    binary batch; `expr_sites[k]` is 1 when site k is an expression."""
    type_index: dict[str, int] = {}
    type_table = bytearray()
    body = bytearray()

    def type_of(name: str) -> int:
        index = type_index.get(name)
        if index is None:
            if len(type_index) >= 0xFFFF:
                raise ValueError("too many type names in one trace batch")
            data = _utf8(name)
            if len(data) > _MAX_TYPE_BYTES:
                raise ValueError("a trace text is too long")
            index = type_index[name] = len(type_index)
            type_table.extend(_U16.pack(len(data)) + data)
        return index

    for i in range(start, stop):
        k = sites[i]
        if k < 0:
            body += _explicit(event(i), type_of)
            continue
        body += _I32.pack(k)
        if not expr_sites[k]:
            continue
        if texts is None:
            raise ValueError("encode: an expression without its text")
        value = values[i]
        body += _U16.pack(type_of(names.get(i) or type(value).__name__))
        text = texts[i]
        if len(text) > max_chars:
            text = clip(text, value)
        data = _utf8(text)
        body += _U32.pack(len(data)) + data
    return _HEADER.pack(MAGIC, first_seq, stop - start, len(type_index)) + type_table + body


def _explicit(event: TraceEvent, type_of: Callable[[str], int]) -> bytes:
    _, _, kind, line, col, end_line, end_col, expr, value, type_name, duration = event
    expr_data, value_data = _utf8(expr), _utf8(value)
    parts = [_EXPLICIT_HEAD.pack(EXPLICIT, KINDS.index(kind), line, col, end_line, end_col),
             _U32.pack(len(expr_data)), expr_data, _U32.pack(len(value_data)), value_data,
             _U16.pack(type_of(type_name))]
    parts.append(b"\x00" if duration is None else b"\x01" + _F64.pack(float(duration)))
    return b"".join(parts)


_encode_columns: Callable[..., bytes] = (
    _native.encode if _native is not None else encode_columns_python)

_expr_sites: list[tuple[object, bytes]] = []
"""The `expr_sites` flags of the last site table seen (a child runs one program)."""


def forget_sites() -> None:
    """Let go of the last site table `_expr_flags` kept: for a zygote, after its warm-up,
    so that each child does not free the warm-up program's sites when it replaces them
    (writing, and so copying, the zygote's pages that hold them)."""
    _expr_sites.clear()


def _expr_flags(table: Sequence[tuple[str, int, int, int, int, str]]) -> bytes:
    if _expr_sites and _expr_sites[0][0] is table:
        return _expr_sites[0][1]
    flags = bytes(row[0] == "expr" for row in table)
    _expr_sites[:] = [(table, flags)]
    return flags


def encode(events: Sequence[TraceEvent], after_seq: int) -> tuple[bytes, int] | None:
    """The events with a seq above `after_seq` as a binary batch, and the last seq; None
    when there are none. An EventBatch is read column by column (no TraceEvent built
    but for engine events); any other sequence is carried event by event, whole."""
    if not events or events[-1].seq <= after_seq:
        return None
    if isinstance(events, EventBatch):
        first, start, stop, table, sites, texts, values, names, renderer, event = \
            events.columns()
        start = min(max(start, after_seq - first + 1), stop)
        blob = _encode_columns(first + start, sites, start, stop, _expr_flags(table), texts,
                               values, names, renderer.max_chars, renderer.clip, event)
        return blob, first + stop - 1
    fresh = [event for event in events if event.seq > after_seq]
    return _encode_columns(fresh[0].seq, [EXPLICIT] * len(fresh), 0, len(fresh), b"",
                           None, [None] * len(fresh), {}, 0, _no_clip,
                           fresh.__getitem__), fresh[-1].seq


def _no_clip(text: str, value: Any) -> str:
    return text


# -- the host: checking, rendering, decoding ------------------------------------------

class SiteTable:
    """What the host renders a run's batches with: the execution id, the sites, and
    the constant parts of each site's line, rendered once per run."""

    def __init__(self, execution_id: str, sites: Sequence[Site]) -> None:
        self.execution_id = execution_id
        self.heads = tuple(f"{head} seq=".encode()
                           for head in series_of_kinds(execution_id, KINDS))
        """Per kind: measurement and tags up to the seq."""
        rendered = _rendered_sites(sites)
        self.rows = rendered.rows
        self.site_kinds = rendered.site_kinds
        self.middles = rendered.middles
        """Per site: the line from the seq's `i` to the value (a statement's to its end)."""


class _RenderedSites:
    """The parts of a `SiteTable` that depend on the sites alone (not on the run)."""

    def __init__(self, sites: Sequence[Site]) -> None:
        self.sites = sites
        self.rows = tuple((site.kind, site.line, site.col, site.end_line, site.end_col,
                           site.text) for site in sites)
        self.site_kinds = bytes(KINDS.index(row[0]) for row in self.rows)
        middles = []
        for kind, line, col, end_line, end_col, text in self.rows:
            expr = escape_string_field(text)
            middle = (f'i,line={line}i,col={col}i,end_line={end_line}i,end_col={end_col}i,'
                      f'expr="{expr}",value="')
            middles.append((middle if kind == "expr" else middle + '",type=""').encode())
        self.middles = tuple(middles)


_RENDERED_KEPT = 64
"""How many programs' rendered sites the host keeps (a worker runs the same few
programs again and again: their sites are one object per compiled program)."""

_rendered: dict[int, _RenderedSites] = {}
_rendered_lock = threading.Lock()  # runs of a worker render in threads of their own


def _rendered_sites(sites: Sequence[Site]) -> _RenderedSites:
    """The rendered parts of `sites`, made once per sites object (found by identity: the
    entry holds the object, so its id is not reused while it is kept)."""
    with _rendered_lock:
        found = _rendered.get(id(sites))
        if found is not None and found.sites is sites:
            return found
    made = _RenderedSites(sites)
    with _rendered_lock:
        if len(_rendered) >= _RENDERED_KEPT:
            _rendered.pop(next(iter(_rendered)))  # the oldest
        _rendered[id(sites)] = made
    return made


class EncodedBatch(Sequence[TraceEvent]):
    """A batch from a child, as sent: its header checked, its events read on demand.

    `render` writes its line protocol directly (the Kafka sink); reading it as a
    sequence decodes it into TraceEvents (any other sink). Either checks the whole
    batch and raises ChannelError if it is malformed."""

    def __init__(self, blob: bytes, table: SiteTable) -> None:
        if not isinstance(blob, bytes) or len(blob) < _HEADER.size:
            raise ChannelError("malformed trace batch: no header")
        magic, first_seq, count, _ = _HEADER.unpack_from(blob)
        _check_header(magic, first_seq, count)
        self.blob = blob
        self.table = table
        self.execution_id = table.execution_id
        self.first_seq: int = first_seq
        self.length: int = count
        self._events: list[TraceEvent] | None = None

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.length - 1

    def render(self, first_ns: int, after_seq: int,
               max_message_bytes: int) -> tuple[list[bytes], list[int]]:
        """The events with a seq above `after_seq` as lines of line protocol stamped
        `first_ns`, +1, ..., packed into messages of whole lines of at most
        `max_message_bytes` (a longer line is a message of its own); and the seq of
        each message's last event."""
        skip = min(max(after_seq - self.first_seq + 1, 0), self.length)
        return render(self.blob, self.table, first_ns, skip, max_message_bytes)

    def events(self) -> list[TraceEvent]:
        if self._events is None:
            self._events = decode(self.blob, self.table)
        return self._events

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> TraceEvent: ...

    @overload
    def __getitem__(self, index: slice) -> list[TraceEvent]: ...

    def __getitem__(self, index: int | slice) -> TraceEvent | list[TraceEvent]:
        return self.events()[index]

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self.events())


def decode(blob: bytes, table: SiteTable) -> list[TraceEvent]:
    """The events of a batch (ChannelError if it is malformed)."""
    try:
        return _decode(blob, table)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ChannelError(f"malformed trace batch: {exc}") from exc


def _decode(blob: bytes, table: SiteTable) -> list[TraceEvent]:
    if len(blob) < _HEADER.size:
        raise ChannelError("malformed trace batch: no header")
    magic, first_seq, count, type_count = _HEADER.unpack_from(blob)
    _check_header(magic, first_seq, count)
    offset = _HEADER.size
    if len(blob) - offset < 4 * count:
        raise ChannelError("malformed trace batch: truncated")
    type_names = []
    for _ in range(type_count):
        name, offset = _text(blob, offset, _U16)
        type_names.append(name)
    rows = table.rows
    execution_id = table.execution_id
    events = []
    for seq in range(first_seq, first_seq + count):
        (k,) = _I32.unpack_from(blob, offset)
        offset += 4
        if 0 <= k < len(rows):
            kind, line, col, end_line, end_col, expr = rows[k]
            if kind == "expr":
                (type_index,) = _U16.unpack_from(blob, offset)
                value, offset = _text(blob, offset + 2, _U32)
                type_name = _type_name(type_names, type_index)
            else:
                value = type_name = ""
            events.append(TraceEvent(execution_id, seq, kind, line, col, end_line, end_col,
                                     expr, value, type_name))
        elif k == EXPLICIT:
            kind_index, line, col, end_line, end_col = _POSITION.unpack_from(blob, offset)
            if kind_index >= len(KINDS):
                raise ChannelError("malformed trace batch: unknown kind")
            expr, offset = _text(blob, offset + _POSITION.size, _U32)
            value, offset = _text(blob, offset, _U32)
            (type_index,) = _U16.unpack_from(blob, offset)
            type_name = _type_name(type_names, type_index)
            flag = blob[offset + 2] if offset + 2 < len(blob) else _truncated()
            offset += 3
            duration: float | None = None
            if flag == 1:
                (duration,) = _F64.unpack_from(blob, offset)
                offset += 8
            elif flag != 0:
                raise ChannelError("malformed trace batch: bad duration flag")
            events.append(TraceEvent(execution_id, seq, KINDS[kind_index], line, col,
                                     end_line, end_col, expr, value, type_name, duration))
        else:
            raise ChannelError("malformed trace batch: site index out of range")
    if offset != len(blob):
        raise ChannelError("malformed trace batch: bytes after the last event")
    return events


def _check_header(magic: bytes, first_seq: int, count: int) -> None:
    if magic != MAGIC:
        raise ChannelError("malformed trace batch: no header")
    if count > MAX_BATCH_EVENTS:
        raise ChannelError("malformed trace batch: too many events")
    if not 1 <= first_seq <= _INT64_MAX - count:
        raise ChannelError("malformed trace batch: seq out of range")


def _truncated() -> int:
    raise ChannelError("malformed trace batch: truncated")


def _text(blob: bytes, offset: int, length: struct.Struct) -> tuple[str, int]:
    (size,) = length.unpack_from(blob, offset)
    offset += length.size
    end = offset + size
    if end > len(blob):
        _truncated()
    return blob[offset:end].decode("utf-8"), end


def _type_name(names: list[str], index: int) -> str:
    if index >= len(names):
        raise ChannelError("malformed trace batch: type index out of range")
    return names[index]


def render_python(blob: bytes, table: SiteTable, first_ns: int, skip: int,
                  max_message_bytes: int) -> tuple[list[bytes], list[int]]:
    """`EncodedBatch.render` in Python: the decoded events' lines, as
    `sinks.render_lines` (and `sinks.line_protocol`) write them."""
    events = decode(blob, table)[skip:]
    if not events:
        return [], []
    return render_events(events, first_ns, max_message_bytes)


def render_events(events: Sequence[TraceEvent], first_ns: int,
                  max_message_bytes: int) -> tuple[list[bytes], list[int]]:
    """TraceEvents (at least one) as lines of line protocol (`sinks.render_lines`)
    stamped `first_ns`, +1, ..., packed into messages (`pack_messages`); and the seq of
    each message's last event."""
    lines = [line.encode() for line in render_lines(events, first_ns)]
    return pack_messages(lines, [event.seq for event in events], max_message_bytes)


def pack_messages(lines: list[bytes], seqs: list[int],
                  max_message_bytes: int) -> tuple[list[bytes], list[int]]:
    """Lines (without their newlines) of the events `seqs` packed into messages: as many
    whole lines each as fit in `max_message_bytes`, at least one; and the seq of each
    message's last line."""
    ends = list(itertools.accumulate(len(line) + 1 for line in lines))
    messages: list[bytes] = []
    last_seqs: list[int] = []
    start, taken = 0, 0
    while start < len(lines):
        stop = max(start + 1, bisect.bisect_right(ends, taken + max_message_bytes, start))
        messages.append(b"\n".join(lines[start:stop]) + b"\n")
        last_seqs.append(seqs[stop - 1])
        taken, start = ends[stop - 1], stop
    return messages, last_seqs


def render_native(blob: bytes, table: SiteTable, first_ns: int, skip: int,
                  max_message_bytes: int) -> tuple[list[bytes], list[int]]:
    """`render_python` in C (jarvis/runtime/_tracebatch.c)."""
    if _built is None:
        raise RuntimeError("jarvis.runtime._tracebatch was not built")
    try:
        result: tuple[list[bytes], list[int]] = _built.render(
            blob, table.heads, table.site_kinds, table.middles, first_ns, skip,
            max_message_bytes)
    except ValueError as exc:
        raise ChannelError(str(exc)) from exc
    return result


render: Callable[[bytes, SiteTable, int, int, int], tuple[list[bytes], list[int]]] = (
    render_native if _native is not None else render_python)
"""The batch as Kafka messages of line protocol (see `EncodedBatch.render`)."""

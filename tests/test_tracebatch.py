"""Trace batches on the channel (jarvis/runtime/tracebatch.py, _tracebatch.c).

The child encodes, the host checks and renders: the C and the Python versions of each
must give the same bytes, the rendering must be exactly `sinks.line_protocol` of the
decoded events, and a malformed batch (the child is untrusted) must be refused with
ChannelError by both, never crash or be read past its end.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from fake_producer import FakeProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jarvis.compiler import Compilation
from jarvis.compiler.trace import Site
from jarvis.runtime import _tracebatch, tracebatch
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.channel import ChannelError
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.machine import Machine
from jarvis.runtime.sinks import MemorySink, line_protocol, series
from jarvis.runtime.trace import EventBatch, TraceEvent, Tracer
from jarvis.runtime.tracebatch import KINDS, EncodedBatch, SiteTable
from jarvis.worker.logs import KafkaLogSink

NASTY = st.sampled_from(['"', "\\", "\n", "\r", " ", ",", "=", "\x00", "é", "\u2028", "😀",
                         "i", "x"])
TEXTS = st.lists(st.one_of(NASTY, st.characters(blacklist_categories=["Cs"])),
                 max_size=12).map("".join)
INTS = st.integers(-(2**63), 2**63 - 1)

sites_strategy = st.lists(
    st.builds(Site, st.sampled_from(["expr", "stmt"]), st.integers(0, 10**6),
              st.integers(0, 10**4), st.integers(0, 10**6), st.integers(0, 10**4), TEXTS),
    min_size=1, max_size=8)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Site], dict[str, Any], list[TraceEvent]]:
    """A site table, the columns of a batch over it (as `EventBatch.columns` gives them)
    and the events those columns are."""
    sites = draw(sites_strategy)
    count = draw(st.integers(0, 30))
    first_seq = draw(st.integers(1, 2**40))
    max_chars = draw(st.integers(16, 40))
    column_sites: list[int] = []
    texts: list[str] = []
    values: list[Any] = []
    names: dict[int, str] = {}
    engine: dict[int, TraceEvent] = {}
    expected: list[TraceEvent] = []
    for i in range(count):
        seq = first_seq + i
        if draw(st.integers(0, 4)) == 0:  # an engine event, carried whole
            duration = draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
            event = TraceEvent("child-chosen", seq, draw(st.sampled_from(KINDS)), draw(INTS),
                               draw(INTS), draw(INTS), draw(INTS), draw(TEXTS), draw(TEXTS),
                               draw(TEXTS), duration)
            engine[i] = event
            column_sites.append(-1)
            texts.append("")
            values.append(None)
            expected.append(event._replace(execution_id="ex 1,a=b"))
            continue
        k = draw(st.integers(0, len(sites) - 1))
        site = sites[k]
        column_sites.append(k)
        if draw(st.booleans()):  # a value kept as it was: its type names itself
            value = draw(st.one_of(st.integers(), st.floats(), st.booleans(), st.none(),
                                   TEXTS))
            text = repr(value)
            type_name = type(value).__name__
        else:  # a value rendered by the hook: its type name is in `names`
            value, text, type_name = None, draw(TEXTS), draw(TEXTS.filter(bool))
            names[i] = type_name
        texts.append(text)
        values.append(value)
        if site.kind == "stmt":
            expected.append(TraceEvent("ex 1,a=b", seq, "stmt", site.line, site.col,
                                       site.end_line, site.end_col, site.text, "", ""))
        else:
            shown = text if len(text) <= max_chars else clip(text, value, max_chars)
            expected.append(TraceEvent("ex 1,a=b", seq, "expr", site.line, site.col,
                                       site.end_line, site.end_col, site.text, shown,
                                       type_name))
    columns = {
        "first_seq": first_seq, "sites": column_sites, "start": 0, "stop": count,
        "expr_sites": bytes(site.kind == "expr" for site in sites), "texts": texts,
        "values": values, "names": names, "max_chars": max_chars,
        "clip": lambda text, value: clip(text, value, max_chars),
        "event": engine.__getitem__,
    }
    return sites, columns, expected


def clip(text: str, value: Any, max_chars: int) -> str:
    return text[: max_chars - 1] + "…"


def encodings(columns: dict[str, Any]) -> tuple[bytes, bytes]:
    args = [columns[name] for name in ("first_seq", "sites", "start", "stop", "expr_sites",
                                       "texts", "values", "names", "max_chars", "clip",
                                       "event")]
    return _tracebatch.encode(*args), tracebatch.encode_columns_python(*args)


def expected_messages(events: list[TraceEvent], first_ns: int, skip: int,
                      limit: int) -> tuple[list[bytes], list[int]]:
    """What a batch renders to, from `sinks.line_protocol` (the reference)."""
    messages: list[bytes] = []
    last_seqs: list[int] = []
    for number, event in enumerate(events[skip:]):
        line = (line_protocol(event, first_ns + number) + "\n").encode()
        if messages and len(messages[-1]) + len(line) <= limit:
            messages[-1] += line
            last_seqs[-1] = event.seq
        else:
            messages.append(line)
            last_seqs.append(event.seq)
    return messages, last_seqs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.integers(0, 2**62), st.integers(0, 40), st.integers(1, 2000))
def test_any_batch_encodes_alike_and_renders_as_line_protocol(
    batch: tuple[list[Site], dict[str, Any], list[TraceEvent]], first_ns: int, skip: int,
    limit: int,
) -> None:
    sites, columns, expected = batch
    native, python = encodings(columns)
    assert native == python
    table = SiteTable("ex 1,a=b", sites)
    decoded = tracebatch.decode(native, table)
    assert [e._replace(duration_ms=_same_nan(e.duration_ms)) for e in decoded] == [
        e._replace(duration_ms=_same_nan(e.duration_ms)) for e in expected]
    skip = min(skip, len(expected))
    reference = expected_messages(decoded, first_ns, skip, limit)
    assert tracebatch.render_native(native, table, first_ns, skip, limit) == reference
    assert tracebatch.render_python(native, table, first_ns, skip, limit) == reference
    # Every event is one line: no field can end a line or its quotes early.
    lines = b"".join(reference[0]).split(b"\n")[:-1]
    assert len(lines) == len(expected) - skip
    assert all(line.startswith(b"spy_trace,execution_id=ex\\ 1\\,a\\=b,kind=") for line in lines)


def _same_nan(value: float | None) -> object:
    return "nan" if value is not None and math.isnan(value) else value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.data())
def test_a_damaged_batch_is_refused_alike_and_never_read_past_its_end(
    batch: tuple[list[Site], dict[str, Any], list[TraceEvent]], data: st.DataObject,
) -> None:
    sites, columns, _ = batch
    blob, _ = encodings(columns)
    damage = data.draw(st.sampled_from(["cut", "flip", "extend", "splice"]))
    if damage == "cut":
        blob = blob[: data.draw(st.integers(0, max(0, len(blob) - 1)))]
    elif damage == "flip" and blob:
        at = data.draw(st.integers(0, len(blob) - 1))
        blob = blob[:at] + bytes([data.draw(st.integers(0, 255))]) + blob[at + 1:]
    elif damage == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=16))
    else:
        at = data.draw(st.integers(0, len(blob)))
        blob = blob[:at] + data.draw(st.binary(max_size=16)) + blob[at:]
    table = SiteTable("ex-1", sites)
    skip = data.draw(st.integers(0, 3))
    outcomes = []
    for render in (tracebatch.render_native, tracebatch.render_python):
        try:
            outcomes.append(render(blob, table, 5, skip, 10_000))
        except ChannelError:
            outcomes.append(None)
    assert outcomes[0] == outcomes[1]
    if outcomes[0] is None:
        with pytest.raises(ChannelError):
            EncodedBatch(blob, table)[-1]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), sites_strategy)
def test_random_bytes_are_refused_or_read_alike(blob: bytes, sites: list[Site]) -> None:
    table = SiteTable("ex-1", sites)
    header = struct.pack("<4sQIH", b"JTB1", 1, 3, 1) + b"\x03\x00int"
    for candidate in (blob, header + blob):
        results = []
        for render in (tracebatch.render_native, tracebatch.render_python):
            try:
                results.append(render(candidate, table, 0, 0, 1000))
            except ChannelError:
                results.append(None)
        assert results[0] == results[1]


def one_site_table() -> SiteTable:
    return SiteTable("ex-1", [Site("expr", 3, 5, 3, 10, "a + b"),
                              Site("stmt", 4, 1, 4, 9, "x = 1")])


def blob_of(events: list[tuple[int, str, str]], first_seq: int = 1) -> bytes:
    """A batch of site events (site, value text, type name), written by hand."""
    names: list[str] = []
    body = b""
    for site, text, type_name in events:
        body += struct.pack("<i", site)
        if site == 0:
            if type_name not in names:
                names.append(type_name)
            data = text.encode()
            body += struct.pack("<HI", names.index(type_name), len(data)) + data
    table = b"".join(struct.pack("<H", len(n.encode())) + n.encode() for n in names)
    return struct.pack("<4sQIH", b"JTB1", first_seq, len(events), len(names)) + table + body


@pytest.mark.parametrize("render", [tracebatch.render_native, tracebatch.render_python])
def test_malformed_batches_raise_channel_error(
    render: Callable[..., tuple[list[bytes], list[int]]],
) -> None:
    table = one_site_table()
    good = blob_of([(0, "1", "int"), (1, "", "")])
    assert render(good, table, 7, 0, 1000)[1] == [2]
    bad_utf8 = good.replace(b"1", b"\xff", 1)  # the value's only byte
    surrogate = blob_of([(0, "abc", "int")]).replace(b"abc", b"\xed\xa0\x80")
    huge_length = good[:-len(struct.pack("<i", 1)) - 4 - 1] + struct.pack("<I", 2**32 - 1)
    cases = {
        "no header": b"JTB",
        "wrong magic": b"XXXX" + good[4:],
        "seq 0": blob_of([(1, "", "")], first_seq=0),
        "seq past int64": blob_of([(1, "", "")], first_seq=2**63 - 1) + b"",
        "truncated": good[:-1],
        "count too high": good[:12] + struct.pack("<I", 3) + good[16:],
        "count too low": good[:12] + struct.pack("<I", 1) + good[16:],
        "bytes after": good + b"\x00",
        "site out of range": blob_of([(2, "", "")]),
        "negative site": blob_of([(-2, "", "")]),
        "bad UTF-8": bad_utf8,
        "a surrogate": surrogate,
        "a length past the end": huge_length,
        "type out of range": good.replace(struct.pack("<HI", 0, 1), struct.pack("<HI", 9, 1)),
        "unknown kind": struct.pack("<4sQIH", b"JTB1", 1, 1, 0) + struct.pack(
            "<iB4q", -1, len(KINDS), 0, 0, 0, 0),
    }
    for name, blob in cases.items():
        with pytest.raises(ChannelError):
            render(blob, table, 7, 0, 1000)
        with pytest.raises(ChannelError):
            tracebatch.decode(blob, table)
        assert name


def test_the_execution_id_is_the_hosts_and_a_value_cannot_add_a_line() -> None:
    table = SiteTable("host-id", [Site("expr", 1, 1, 1, 2, "x")])
    value = 'x" 1\nspy_trace,execution_id=other,kind=expr seq=1i 1\r'
    messages, last = tracebatch.render(blob_of([(0, value, "str")]), table, 9, 0, 1000)
    (line,) = messages[0].decode().split("\n")[:-1]
    assert line.startswith("spy_trace,execution_id=host-id,kind=expr seq=1i,")
    assert line.endswith(' 9') and "\\n" in line and '\\"' in line and last == [1]


def run_traced(source: str, sink: Any) -> None:
    program = Compilation.of(source, "t.spy").program("full")
    tracer = Tracer("ex-1", program.trace_sites, sink, batch_size=64)
    Machine(program, execution_id="ex-1", inputs={}, books=BookRegistry(),
            effects=MemoryEffects(), tracer=tracer).run()


PROGRAM = """
xs = []
for i in range(100):
    xs.append({"i": i, "s": "a\\"b" * (i % 90)})
    print("p\\ud800", i)
output("n", len(xs))
"""


class Relay:
    """The channel in one process: each batch encoded (C and Python alike) and read back."""

    def __init__(self, table: SiteTable) -> None:
        self.table = table
        self.last_delivered = 0
        self.batches: list[EncodedBatch] = []

    def deliver(self, events: Any) -> None:
        assert isinstance(events, EventBatch)
        encoded = tracebatch.encode(events, self.last_delivered)
        assert encoded is not None
        columns = events.columns()
        python = tracebatch.encode_columns_python(
            columns.first_seq + columns.start, columns.sites, columns.start, columns.stop,
            bytes(row[0] == "expr" for row in columns.table), columns.texts, columns.values,
            columns.names, columns.renderer.max_chars, columns.renderer.clip, columns.event)
        assert python == encoded[0]
        self.batches.append(EncodedBatch(encoded[0], self.table))
        self.last_delivered = encoded[1]


def test_a_run_through_the_batches_gives_the_events_of_a_run_without_them() -> None:
    direct = MemorySink()
    run_traced(PROGRAM, direct)
    program = Compilation.of(PROGRAM, "t.spy").program("full")
    relay = Relay(SiteTable("ex-1", program.trace_sites))
    run_traced(PROGRAM, relay)
    through = [event for batch in relay.batches for event in batch]
    # A lone surrogate has no UTF-8 form: it travels as its escape.
    assert through == [e._replace(value=e.value.replace("\ud800", "\\ud800"))
                       for e in direct.events]
    assert len(relay.batches) > 3


def test_the_kafka_sink_sends_a_batch_as_it_sends_its_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    program = Compilation.of(PROGRAM, "t.spy").program("full")
    relay = Relay(SiteTable("ex-1", program.trace_sites))
    run_traced(PROGRAM, relay)
    monkeypatch.setattr("jarvis.worker.logs.MAX_MESSAGE_BYTES", 2000)
    encoded, plain = FakeProducer(), FakeProducer()
    fast = KafkaLogSink(encoded, "spy_logs", "ex-1", last_delivered=10)
    slow = KafkaLogSink(plain, "spy_logs", "ex-1", last_delivered=10)
    for batch in relay.batches:
        fast.deliver(batch)
        slow.deliver(list(batch))
        fast.deliver(batch)  # again, as after a resume: nothing more
    assert fast.flush(1) and slow.flush(1)

    def without_stamps(sent: list[bytes]) -> list[str]:
        return [line.rsplit(b" ", 1)[0].decode() for value in sent
                for line in value.split(b"\n")[:-1]]

    assert without_stamps(encoded.values) == without_stamps(plain.values)
    assert [len(v) for v in encoded.values] == [len(v) for v in plain.values]
    assert all(len(value) <= 2000 for value in encoded.values)
    seqs = [int(line.split("seq=")[1].split("i")[0]) for line in without_stamps(encoded.values)]
    assert seqs == list(range(11, relay.batches[-1].last_seq + 1))
    stamps = [int(line.rsplit(b" ", 1)[1]) for v in encoded.values for line in v.split(b"\n")[:-1]]
    assert stamps == sorted(set(stamps))
    assert fast.last_delivered == relay.batches[-1].last_seq == fast.events_sent + 10


def test_the_kafka_sink_checks_a_batch_it_has_already_sent() -> None:
    sink = KafkaLogSink(FakeProducer(), "spy_logs", "ex-1", last_delivered=100)
    with pytest.raises(ChannelError):
        sink.deliver(EncodedBatch(blob_of([(0, "1", "int")])[:-1], one_site_table()))


def test_this_install_uses_the_c_batch_code_unless_told_not_to() -> None:
    python = os.environ.get("JARVIS_TRACE_HOOKS", "").strip().lower() == "python"
    assert (tracebatch.render is tracebatch.render_python) == python
    assert (tracebatch.render is tracebatch.render_native) != python


@pytest.mark.parametrize("render", [tracebatch.render_native, tracebatch.render_python])
def test_a_batch_holds_at_most_max_batch_events(
    render: Callable[..., tuple[list[bytes], list[int]]],
) -> None:
    """A statement costs the child four bytes and the host a whole line: the number of
    events bounds what a batch can make the host write."""
    table = one_site_table()
    most = blob_of([(1, "", "")] * tracebatch.MAX_BATCH_EVENTS)
    messages, last_seqs = render(most, table, 1, 0, 10**9)
    assert last_seqs == [tracebatch.MAX_BATCH_EVENTS] and messages[0].count(b"\n") == len(
        decoded := tracebatch.decode(most, table)) == tracebatch.MAX_BATCH_EVENTS
    assert decoded[-1].expr == "x = 1"
    too_many = blob_of([(1, "", "")] * (tracebatch.MAX_BATCH_EVENTS + 1))
    with pytest.raises(ChannelError, match="too many events"):
        render(too_many, table, 1, 0, 10**9)
    with pytest.raises(ChannelError, match="too many events"):
        EncodedBatch(too_many, table)


def test_only_the_events_not_yet_delivered_are_encoded() -> None:
    """As after a resume: the child's sink skips what the host already delivered, in
    a batch of the Tracer (read column by column) or any sequence of events."""
    program = Compilation.of(PROGRAM, "t.spy").program("full")
    table = SiteTable("ex-1", program.trace_sites)
    checked: list[int] = []

    class Cut:
        last_delivered = 0

        def deliver(self, events: Any) -> None:
            assert isinstance(events, EventBatch)
            after = events.first_seq + 5
            expected = [e._replace(value=e.value.replace("\ud800", "\\ud800"))
                        for e in events if e.seq > after]
            for sequence in (events, list(events)):
                encoded = tracebatch.encode(sequence, after)
                if not expected:  # a short last batch
                    assert encoded is None
                    continue
                assert encoded is not None and encoded[1] == events.last_seq
                assert tracebatch.decode(encoded[0], table) == expected
            assert tracebatch.encode(events, events.last_seq) is None
            checked.append(len(expected))

    run_traced(PROGRAM, Cut())
    assert len(checked) > 3 and all(count >= 64 - 6 for count in checked[:-1])


def test_tables_of_one_program_share_its_rendered_sites_but_not_the_execution() -> None:
    sites = [Site("expr", 3, 5, 3, 10, "a + b"), Site("stmt", 4, 1, 4, 9, 'print("x")')]
    first, second = SiteTable("ex-1", sites), SiteTable("ex-2", sites)
    assert first.middles is second.middles and first.rows is second.rows
    assert first.heads != second.heads
    assert all(b"ex-1" in head for head in first.heads)
    # Equal sites in another object (another program) are rendered for themselves.
    other = SiteTable("ex-1", [Site("expr", 3, 5, 3, 10, "a - b"), sites[1]])
    assert other.middles is not first.middles and b"a - b" in other.middles[0]


@pytest.mark.parametrize("execution_id", ["ex-1", "", "a b,c=d\\e", "naïve"])
def test_a_tables_heads_are_the_series_of_each_kind(execution_id: str) -> None:
    table = SiteTable(execution_id, [Site("expr", 1, 1, 1, 2, "x")])
    assert table.heads == tuple(f"{series(execution_id, kind)} seq=".encode()
                                for kind in tracebatch.KINDS)
    assert series("a b", "expr") == "spy_trace,execution_id=a\\ b,kind=expr"

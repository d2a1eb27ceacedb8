"""Trace sinks: delivering once, JSONL recovery, the console format, line protocol."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jarvis.compiler.trace import Site
from jarvis.runtime import sinks
from jarvis.runtime.sinks import (
    ConsoleSink,
    FanOutSink,
    JsonlSink,
    MemorySink,
    NullSink,
    Sink,
    escape_string_field,
    escape_tag,
    fresh,
    line_protocol,
)
from jarvis.runtime.trace import TraceEvent, Tracer


def event(seq: int, kind: str = "expr", expr: str = "a + b", value: str = "3",
          type_: str = "int", **fields: Any) -> TraceEvent:
    return TraceEvent(fields.pop("execution_id", "ex-1"), seq, kind, fields.pop("line", 2),
                      fields.pop("col", 5), fields.pop("end_line", 2), fields.pop("end_col", 10),
                      expr, value, type_, fields.pop("duration_ms", None))


def events(first: int, last: int) -> list[TraceEvent]:
    return [event(seq) for seq in range(first, last + 1)]


SITES = (Site("stmt", 1, 1, 1, 6, "x = 1"), Site("expr", 2, 5, 2, 10, "a + b"))


def tracer_batches(count: int, sink: Sink, start_seq: int = 0) -> Tracer:
    """A Tracer that has recorded `count` events and delivered them to `sink`."""
    tracer = Tracer("ex-1", SITES, sink, start_seq=start_seq, batch_size=4)
    for i in range(count):
        if i % 2:
            tracer.hook_expr(1, i)
        else:
            tracer.hook_stmt(0)
    tracer.flush()
    return tracer


# -- delivering once --------------------------------------------------------------------


def test_every_sink_is_a_sink() -> None:
    for sink in (NullSink(), MemorySink(), ConsoleSink(io.StringIO()), FanOutSink([])):
        assert isinstance(sink, Sink)


def test_fresh_keeps_only_events_after_last_delivered() -> None:
    batch = events(5, 9)
    assert fresh(batch, 4) is batch
    assert [e.seq for e in fresh(batch, 6)] == [7, 8, 9]
    assert list(fresh(batch, 9)) == []
    assert list(fresh([], 0)) == []


def test_null_sink_counts_what_it_drops() -> None:
    sink = NullSink(last_delivered=3)
    sink.deliver(events(1, 2))
    assert sink.last_delivered == 3
    tracer_batches(10, sink)
    assert sink.last_delivered == 10
    sink.close()


def test_memory_sink_drops_events_it_already_has() -> None:
    sink = MemorySink(last_delivered=2)
    sink.deliver(events(1, 4))
    sink.deliver(events(3, 6))
    assert [e.seq for e in sink.events] == [3, 4, 5, 6]
    assert sink.last_delivered == 6 and sink.batches == 2


def test_a_resumed_run_does_not_deliver_its_regenerated_events_again() -> None:
    sink = MemorySink()
    tracer_batches(10, sink)
    first = list(sink.events)
    # The run resumes from a snapshot taken at seq 4 and regenerates 5..10, then more.
    tracer_batches(12, sink, start_seq=4)
    assert [e.seq for e in sink.events] == list(range(1, 17))
    assert sink.events[:10] == first


def test_fan_out_delivers_to_each_sink() -> None:
    one, two = MemorySink(), MemorySink(last_delivered=3)
    fan = FanOutSink([one, two])
    fan.deliver(events(1, 5))
    assert [e.seq for e in one.events] == [1, 2, 3, 4, 5]
    assert [e.seq for e in two.events] == [4, 5]
    assert fan.last_delivered == 5
    fan.close()
    assert one.closed and two.closed


# -- JSONL ------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_writes_one_object_per_line_and_flushes_each_batch(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = JsonlSink(path)
    tracer_batches(6, sink)  # not closed: the batches are on disk already
    lines = read_jsonl(path)
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[0] == {"execution_id": "ex-1", "seq": 1, "kind": "stmt", "line": 1, "col": 1,
                        "end_line": 1, "end_col": 6, "expr": "x = 1", "value": "", "type": ""}
    assert lines[1]["value"] == "1" and lines[1]["type"] == "int"
    sink.close()
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.deliver(events(7, 7))


def test_jsonl_round_trips_any_text(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = JsonlSink(path)
    odd = [
        event(1, "print", "print(x)", "żółw 😀 \x00 \n \"quoted\" \\ \u2028", "str"),
        event(2, "print", "print(x)", "lone \ud800 surrogate", "str"),
        event(3, "book_end", duration_ms=2.25),
    ]
    sink.deliver(odd)
    sink.close()
    assert [TraceEvent.from_json(line) for line in read_jsonl(path)] == odd
    assert "żółw" in path.read_text(encoding="utf-8")


def test_jsonl_recovers_last_delivered_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = JsonlSink(path)
    sink.deliver(events(1, 5))
    sink.close()
    again = JsonlSink(path)
    assert again.last_delivered == 5
    again.deliver(events(3, 8))
    again.close()
    assert [line["seq"] for line in read_jsonl(path)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_jsonl_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = JsonlSink(path)
    sink.deliver(events(1, 3))
    sink.close()
    complete = path.read_bytes()
    path.write_bytes(complete + b'{"execution_id": "ex-1", "seq": 4, "ki')
    sink = JsonlSink(path)
    assert sink.last_delivered == 3
    assert path.read_bytes() == complete
    sink.deliver(events(4, 4))
    sink.close()
    assert [line["seq"] for line in read_jsonl(path)] == [1, 2, 3, 4]


@pytest.mark.parametrize(("content", "expected", "kept"), [
    (b"", 0, b""),
    (b'{"seq": 1, "kin', 0, b""),
    (b'{"seq": 7}\n\n\n', 7, b'{"seq": 7}\n\n\n'),
    (b'{"seq": 7}\nnot json\n[1, 2]\n{"seq": true}\n', 7,
     b'{"seq": 7}\nnot json\n[1, 2]\n{"seq": true}\n'),
    (b"garbage only\n", 0, b"garbage only\n"),
])
def test_jsonl_recovery_of_odd_files(tmp_path: Path, content: bytes, expected: int,
                                     kept: bytes) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_bytes(content)
    sink = JsonlSink(path)
    assert sink.last_delivered == expected
    sink.close()
    assert path.read_bytes() == kept


def test_jsonl_recovery_reads_back_across_chunks(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "_TAIL_CHUNK", 16)
    path = tmp_path / "trace.jsonl"
    long_line = json.dumps(event(41, value="v" * 100).to_json())
    path.write_text(long_line + "\nnot json at all, but long enough to span chunks\n"
                    + "x" * 50, encoding="utf-8")
    sink = JsonlSink(path)
    assert sink.last_delivered == 41
    sink.close()
    assert path.read_text(encoding="utf-8").endswith("chunks\n")


def test_jsonl_known_last_delivered_wins_when_higher(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    sink = JsonlSink(path)
    sink.deliver(events(1, 2))
    sink.close()
    sink = JsonlSink(path, last_delivered=10)
    assert sink.last_delivered == 10
    sink.deliver(events(9, 11))
    sink.close()
    assert [line["seq"] for line in read_jsonl(path)] == [1, 2, 11]


# -- console ----------------------------------------------------------------------------


def console_lines(*evs: TraceEvent, color: bool = False) -> list[str]:
    stream = io.StringIO()
    sink = ConsoleSink(stream, color=color)
    sink.deliver(list(evs))
    return stream.getvalue().splitlines()


def test_console_format() -> None:
    lines = console_lines(
        event(12, "expr", "total + x", "42", "int", line=3, col=5),
        event(13, "stmt", "print(total)", "", "", line=4, col=1),
        event(14, "print", "print(total)", "42\n", "str", line=4, col=1),
        event(15, "book_end", "crm.find(name)", "{'id': 7}", "dict", line=6, col=7,
              duration_ms=12.46),
        event(16, "checkpoint", "checkpoint()", "", "", line=0, col=0),
    )
    assert lines == [
        "    12  L3:5      total + x                         →  42  (int)",
        "    13  L4:1      print(total)",
        "    14  L4:1      print      42",
        "    15  L6:7      book_end   crm.find(name)  →  {'id': 7}  (dict)  12.5 ms",
        "    16            checkpoint checkpoint()",
    ]


def test_console_clips_and_keeps_each_event_on_one_line() -> None:
    [line] = console_lines(event(1, expr="f(\n  x)" + "y" * 100, value="'a\\nb'" + "z" * 100))
    assert "\n" not in line
    expr_part, value_part = line.split("  →  ")
    assert "f(\\n  x)" in expr_part and expr_part.endswith("…")
    assert len(value_part) <= ConsoleSink.VALUE_WIDTH + len("  (int)")
    [printed] = console_lines(event(2, "print", "print(s)", "tab\there\nnext\n", "str"))
    assert printed.endswith("print      tab\\there\\nnext")


def test_console_colors_highlight_prints_and_books() -> None:
    [plain, printed, book] = console_lines(
        event(1), event(2, "print", value="hi\n"), event(3, "book_start"), color=True)
    assert "\x1b" not in plain
    assert printed.startswith(ConsoleSink.STYLES["print"]) and printed.endswith(ConsoleSink.RESET)
    assert book.startswith(ConsoleSink.STYLES["book_start"])


def test_console_color_defaults_to_off_for_non_terminals() -> None:
    assert ConsoleSink(io.StringIO()).color is False


def test_console_drops_events_it_already_showed() -> None:
    stream = io.StringIO()
    sink = ConsoleSink(stream, color=False, last_delivered=1)
    sink.deliver(events(1, 3))
    assert len(stream.getvalue().splitlines()) == 2 and sink.last_delivered == 3


# -- line protocol ----------------------------------------------------------------------


def test_line_protocol_example() -> None:
    line = line_protocol(event(12, expr='total + "x"', value="42", line=3, col=5, end_col=16),
                         timestamp_ns=1_700_000_000_000_000_000)
    assert line == (
        'spy_trace,execution_id=ex-1,kind=expr seq=12i,line=3i,col=5i,end_line=2i,'
        'end_col=16i,expr="total + \\"x\\"",value="42",type="int" 1700000000000000000'
    )


def test_line_protocol_escapes_tags_and_strings() -> None:
    line = line_protocol(event(1, "print", "print(s)", "a\\b\n\"c\"", "str",
                               execution_id="run 1,a=b\\", duration_ms=1.5))
    assert line.startswith('spy_trace,execution_id=run\\ 1\\,a\\=b\\\\,kind=print ')
    assert 'value="a\\\\b\\n\\"c\\""' in line
    assert line.endswith(",duration_ms=1.5")
    assert "\n" not in line


def test_line_protocol_leaves_out_an_empty_execution_id() -> None:
    assert line_protocol(event(1, execution_id="")).startswith("spy_trace,kind=expr ")


def test_line_protocol_leaves_out_a_duration_influx_cannot_store() -> None:
    assert "duration_ms" not in line_protocol(event(1, duration_ms=math.inf))


def test_escape_helpers() -> None:
    assert escape_tag("a b,c=d\\e\nf") == "a\\ b\\,c\\=d\\\\e\\nf"
    assert escape_string_field('say "hi"\\\r\n') == 'say \\"hi\\"\\\\\\r\\n'


_TAG_CHARS = {"\\\\": "\\", "\\,": ",", "\\=": "=", "\\ ": " ", "\\n": "\n", "\\r": "\r"}
_STRING_CHARS = {"\\\\": "\\", '\\"': '"', "\\n": "\n", "\\r": "\r"}


def parse_line(line: str) -> dict[str, Any]:
    """A parser for the line protocol subset `line_protocol` writes, escapes included."""
    assert "\n" not in line and "\r" not in line
    at = 0

    def take(stop: str, escapes: dict[str, str]) -> str:
        nonlocal at
        out: list[str] = []
        while at < len(line) and line[at] not in stop:
            pair = line[at : at + 2]
            if pair in escapes:
                out.append(escapes[pair])
                at += 2
            else:
                assert line[at] != "\\" or pair not in _TAG_CHARS, line
                out.append(line[at])
                at += 1
        return "".join(out)

    record: dict[str, Any] = {"measurement": take(", ", _TAG_CHARS), "tags": {}, "fields": {}}
    while line[at] == ",":
        at += 1
        key = take("=", _TAG_CHARS)
        at += 1
        record["tags"][key] = take(", ", _TAG_CHARS)
    assert line[at] == " "
    at += 1
    while True:
        key = take("=", _TAG_CHARS)
        at += 1
        if line[at] == '"':
            at += 1
            value: Any = take('"', _STRING_CHARS)
            assert line[at] == '"'
            at += 1
        else:
            raw = take(", ", {})
            value = int(raw[:-1]) if raw.endswith("i") else float(raw)
        record["fields"][key] = value
        if at >= len(line) or line[at] == " ":
            break
        assert line[at] == ","
        at += 1
    if at < len(line):
        record["timestamp"] = int(line[at + 1 :])
    return record


texts = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", ",", "=", "\\", "\\\\", '"', "\\n", "\n", "\r\n", "a\\", 'x="1"', "é 😀"])


@given(execution_id=texts.filter(bool), kind=st.sampled_from(sorted(
           {"expr", "stmt", "print", "book_start", "book_end", "exception", "checkpoint",
            "limit", "output", "sleep"})),
       seq=st.integers(min_value=0, max_value=2**62), numbers=st.lists(
           st.integers(min_value=0, max_value=10**6), min_size=4, max_size=4),
       expr=texts, value=texts, type_=texts,
       duration=st.none() | st.floats(min_value=0, max_value=1e9, allow_nan=False),
       timestamp=st.none() | st.integers(min_value=0, max_value=2**63 - 1))
@settings(max_examples=400, deadline=None)
def test_line_protocol_round_trips(execution_id: str, kind: str, seq: int, numbers: list[int],
                                   expr: str, value: str, type_: str, duration: float | None,
                                   timestamp: int | None) -> None:
    line_no, col, end_line, end_col = numbers
    original = TraceEvent(execution_id, seq, kind, line_no, col, end_line, end_col, expr, value,
                          type_, duration)
    line = line_protocol(original, timestamp)
    assert "\n" not in line and "\r" not in line
    record = parse_line(line)
    assert record["measurement"] == "spy_trace"
    assert record["tags"] == {"execution_id": execution_id, "kind": kind}
    fields = record["fields"]
    assert fields.pop("duration_ms", None) == duration
    assert fields == {"seq": seq, "line": line_no, "col": col,
                      "end_line": end_line, "end_col": end_col,
                      "expr": expr, "value": value, "type": type_}
    assert record.get("timestamp") == timestamp
    # Unescaped separators appear only where the syntax puts them.
    head = re.sub(r"\\.", "", line.split(" seq=")[0])
    assert head.count(" ") == 0 and head.count(",") == 2 - (not execution_id)


@given(execution_id=texts, text=texts, seq=st.integers(min_value=0, max_value=2**62),
       duration=st.none() | st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=200, deadline=None)
def test_jsonl_lines_are_the_json_of_the_event(execution_id: str, text: str, seq: int,
                                               duration: float | None) -> None:
    original = event(seq, "output", text, text[::-1], text[:3], execution_id=execution_id,
                     duration_ms=duration)
    line = sinks._json_line(original)
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == original.to_json()
    assert line == json.dumps(original.to_json(), ensure_ascii=False,
                              separators=(",", ":")) + "\n"

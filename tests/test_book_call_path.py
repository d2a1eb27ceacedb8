"""The Book call's fast path: deferred engine events, the record encoded without being
built, the journal's prepared HMAC, and the procedure cache of an in-process Book."""

from __future__ import annotations

import hmac
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry, PythonBook
from jarvis.runtime.effects_log import (
    MemoryEffects,
    book_record,
    decode,
    encode,
    encode_book_result,
)
from jarvis.runtime.errors import BookError, LimitExceeded
from jarvis.runtime.journal import Journal, encode_record
from jarvis.runtime.machine import Machine
from jarvis.runtime.sinks import MemorySink
from jarvis.runtime.trace import Tracer

EXECUTION = "ex-fast"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=12,
)


# -- the journal record ---------------------------------------------------------------


def reference_record(key: bytes, execution_id: str, index: int, payload: bytes) -> bytes:
    """The record layout of docs/durability.md, signed with the standard library's HMAC."""
    ident = execution_id.encode("ascii")
    message = (b"jarvis journal record\x00" + struct.pack(">H", len(ident)) + ident
               + struct.pack(">Q", index) + payload)
    mac = hmac.new(key, message, "sha256").digest()
    length = struct.pack(">I", len(payload))
    crc = zlib.crc32(length + mac + payload)
    return length + struct.pack(">I", crc) + mac + payload


@pytest.mark.parametrize("key_length", [16, 32, 63, 64, 65, 200])
@pytest.mark.parametrize("payload", [b"", b"{}", b'{"k":"book"}', bytes(range(256)) * 300])
def test_a_record_is_signed_as_hmac_sha256_signs_it(key_length: int, payload: bytes) -> None:
    key = bytes((7 * i + 3) % 256 for i in range(key_length))
    for index in (0, 1, 99_999):
        assert encode_record(key, EXECUTION, index, payload) == reference_record(
            key, EXECUTION, index, payload)


def test_records_appended_are_signed_with_the_first_key_and_verify_with_any(
        tmp_path: Path) -> None:
    first, second = b"k" * 32, b"q" * 40
    path = tmp_path / "journal"
    with Journal.open(path, [first, second], EXECUTION, fsync=False) as journal:
        for n in range(3):
            journal.append(b"record %d" % n)
    data = path.read_bytes()
    assert data.endswith(reference_record(first, EXECUTION, 2, b"record 2"))
    with Journal.open(path, [second, first], EXECUTION, fsync=False) as reopened:
        assert list(reopened.records()) == [b"record 0", b"record 1", b"record 2"]


# -- the Book record --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(result=json_values, duration=st.floats(min_value=0, max_value=1e7))
def test_a_book_result_encodes_as_its_record_would(result: Any, duration: float) -> None:
    expected = encode(book_record("crm", "find", result, None, duration))
    assert encode_book_result("crm", "find", duration, result) == expected


def test_non_ascii_names_and_results_encode_as_their_record() -> None:
    record = book_record("crm", "grüße", {"naïve": ["é", "\u2028", '"q"']}, None, 1.23456)
    encoded = encode_book_result("crm", "grüße", 1.23456, {"naïve": ["é", "\u2028", '"q"']})
    assert encoded == encode(record)
    assert decode(encoded) == record


def test_an_encoding_that_fails_leaves_the_encoder_usable() -> None:
    shared: list[Any] = [1]
    with pytest.raises(ValueError):
        encode({"k": "x", "v": [shared, math.nan]})
    with pytest.raises(TypeError):
        encode({"k": "x", "v": [shared, object()]})
    # The same list again, and a cycle still refused as one.
    assert encode({"k": "x", "v": [shared, shared]}) == b'{"k":"x","v":[[1],[1]]}'
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="Circular"):
        encode({"k": "x", "v": cyclic})


# -- engine events ------------------------------------------------------------------------


def test_a_deferred_engine_event_reads_as_an_event_recorded_at_once() -> None:
    eager_sink, lazy_sink = MemorySink(), MemorySink()
    eager, lazy = Tracer(EXECUTION, [], eager_sink), Tracer(EXECUTION, [], lazy_sink)
    eager.event("print", text="x")
    lazy.event("print", text="x")
    cases: list[tuple[str, Any, float | None]] = [
        ("book_start", {"args": [1, "two", None], "kwargs": {"k": 2.5}}, None),
        ("book_end", 42, 1.5),
        ("book_end", "s" * 500, math.inf),
        ("checkpoint", None, None),
    ]
    for kind, value, duration in cases:
        eager.event(kind, 3, 4, 0, 0, "crm.find", value, duration_ms=duration)
        lazy.engine_event(kind, 3, 4, 0, 0, "crm.find", value, duration)
    eager.event("limit", 1, 1, expr="none")
    lazy.engine_event("limit", 1, 1, 0, 0, "none")
    eager.flush()
    lazy.flush()
    assert lazy_sink.events == eager_sink.events
    assert [e.seq for e in lazy_sink.events] == [1, 2, 3, 4, 5, 6]
    assert lazy_sink.events[2].end_line == 3 and lazy_sink.events[3].duration_ms is None


def test_a_deferred_event_counts_against_the_trace_limit() -> None:
    sink = MemorySink()
    tracer = Tracer(EXECUTION, [], sink, max_events=2)
    tracer.engine_event("book_start", 1, 1, 1, 9, "a.b", {"args": [], "kwargs": {}})
    tracer.engine_event("book_end", 1, 1, 1, 9, "a.b", 1, 0.5)
    with pytest.raises(LimitExceeded, match="trace events"):
        tracer.engine_event("book_start", 2, 1, 2, 9, "a.b", {"args": [], "kwargs": {}})
    tracer.engine_event("limit", 0, 0, 0, 0, "trace_events")
    tracer.flush()
    assert [(e.seq, e.kind) for e in sink.events] == [
        (1, "book_start"), (2, "book_end"), (3, "limit")]
    with pytest.raises(ValueError, match="unknown trace event kind"):
        tracer.engine_event("shout", 0, 0, 0, 0, "")


BOOK = '''
stored = []
def find(n, tag=None):
    return [n, tag]
def count(n):
    return n + 1
def keep(values):
    stored.append(values)
    values.append("changed by the Book")
    return len(values)
def fail(n):
    raise ValueError(f"no {n}")
'''

PROGRAM = '''
from books import crm
found = crm.find(1, tag="a")
found.append("changed by the program")
n = crm.count(41)
items = [1, 2]
size = crm.keep(items)
try:
    crm.fail(7)
except Exception as exc:
    caught = str(exc)
output("found", found)
output("n", n)
output("items", items)
'''


def run_machine(tmp_path: Path, effects: MemoryEffects) -> tuple[Machine, MemorySink]:
    (tmp_path / "crm.py").write_text(BOOK, encoding="utf-8")
    registry = BookRegistry({"crm": PythonBook("crm", tmp_path / "crm.py")})
    program = Compilation.of(PROGRAM, "p.spy").program("off")
    sink = MemorySink()
    tracer = Tracer(EXECUTION, program.trace_sites, sink)
    machine = Machine(program, execution_id=EXECUTION, inputs={}, books=registry,
                      effects=effects, tracer=tracer)
    outcome = machine.run()
    assert outcome.status == "completed", outcome.error
    assert outcome.outputs == {"found": [1, "a", "changed by the program"], "n": 42,
                               "items": [1, 2]}
    return machine, sink


def book_events(sink: MemorySink) -> list[tuple[str, str, str, str]]:
    return [(e.kind, e.expr, e.value, e.type) for e in sink.events
            if e.kind.startswith("book")]


EXPECTED_EVENTS = [
    ("book_start", "crm.find", "{'args': [1], 'kwargs': {'tag': 'a'}}", "dict"),
    ("book_end", "crm.find", "[1, 'a']", "list"),
    ("book_start", "crm.count", "{'args': [41], 'kwargs': {}}", "dict"),
    ("book_end", "crm.count", "42", "int"),
    ("book_start", "crm.keep", "{'args': [[1, 2]], 'kwargs': {}}", "dict"),
    ("book_end", "crm.keep", "3", "int"),
    ("book_start", "crm.fail", "{'args': [7], 'kwargs': {}}", "dict"),
    ("book_end", "crm.fail",
     "{'error': {'type': 'ValueError', 'message': 'no 7', 'status': None}}", "dict"),
]


def test_book_events_show_values_as_they_were_at_the_call(tmp_path: Path) -> None:
    # The program changes the list a Book returned, the Book the list it was given:
    # neither change reaches the trace, whenever the events are read.
    effects = MemoryEffects()
    _, sink = run_machine(tmp_path, effects)
    assert book_events(sink) == EXPECTED_EVENTS
    records = [decode(payload) for payload in effects.records]
    assert records[0] == {"k": "book", "b": "crm", "p": "find", "ms": records[0]["ms"],
                          "ok": [1, "a"]}
    assert records[3]["err"] == {"type": "ValueError", "message": "no 7", "status": None}
    # Replayed from the journal, without calling the Book: the same events.
    _, replayed = run_machine(tmp_path, MemoryEffects(effects.records))
    assert book_events(replayed) == EXPECTED_EVENTS
    assert [e.duration_ms for e in replayed.events if e.kind == "book_end"] == [
        decode(payload)["ms"] for payload in effects.records]


def test_a_python_book_looks_a_procedure_up_once_and_still_refuses_others(
        tmp_path: Path) -> None:
    (tmp_path / "crm.py").write_text(BOOK + "from os import getenv\n", encoding="utf-8")
    book = PythonBook("crm", tmp_path / "crm.py")
    assert book.procedure("count") is book.procedure("count")
    assert book.call("count", [1], {}, "k:1") == 2
    for name in ("getenv", "_private", "missing", "stored"):
        with pytest.raises(BookError, match="no such procedure"):
            book.procedure(name)
    result = book.call("find", [1], {"tag": "t"}, "k:2")
    assert result == [1, "t"]

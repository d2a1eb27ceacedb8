"""A Book call's duration as records hold it, and the record's fast encodings."""

from __future__ import annotations

import math
import sys
from pathlib import Path

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
    encode_book_ok,
    encode_book_result,
    round_ms,
)
from jarvis.runtime.machine import Machine
from jarvis.runtime.sinks import MemorySink
from jarvis.runtime.trace import Tracer


@settings(max_examples=300, deadline=None)
@given(duration=st.floats(min_value=0, max_value=1e7))
def test_a_duration_is_kept_to_the_microsecond(duration: float) -> None:
    ms = round_ms(duration)
    # The float nearest a whole number of microseconds.
    assert round(ms * 1000) / 1000 == ms
    assert abs(ms - duration) <= 0.0005 + 1e-9 * duration
    assert round_ms(ms) == ms
    text = repr(ms)
    assert len(text.partition(".")[2]) <= 3 or "e" in text


@pytest.mark.parametrize("result", [0, -7, 2**62, 10**40, "", "plain", "naïve \u2028 \"q\"",
                                    True, False, None, 1.5, [1, "a"], {"b": [None]}])
def test_each_fast_encoding_is_the_records(result: object) -> None:
    expected = encode(book_record("crm", "find", result, None, 0.0123456))
    assert encode_book_result("crm", "find", 0.0123456, result) == expected
    assert encode_book_ok("crm", "find", round_ms(0.0123456), result) == expected
    assert decode(expected)["ok"] == result


def test_an_int_too_long_to_write_is_refused_as_the_json_encoder_refuses_it() -> None:
    huge = 10 ** (sys.get_int_max_str_digits() + 1)
    with pytest.raises(ValueError, match="digits"):
        encode(book_record("crm", "find", huge, None, 1.0))
    with pytest.raises(ValueError, match="digits"):
        encode_book_result("crm", "find", 1.0, huge)


def test_a_nan_result_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_book_result("crm", "find", 1.0, math.nan)


BOOK = "def slow(n):\n    total = 0\n    for i in range(2000):\n        total += i\n    return n\n"
PROGRAM = "from books import crm\nfor i in range(5):\n    crm.slow(i)\noutput('done', 1)\n"


def test_a_live_book_end_event_carries_the_journaled_duration(tmp_path: Path) -> None:
    (tmp_path / "crm.py").write_text(BOOK, encoding="utf-8")
    registry = BookRegistry({"crm": PythonBook("crm", tmp_path / "crm.py")})
    program = Compilation.of(PROGRAM, "p.spy").program("off")
    sink = MemorySink()
    effects = MemoryEffects()
    machine = Machine(program, execution_id="ex-durations", inputs={}, books=registry,
                      effects=effects, tracer=Tracer("ex-durations", program.trace_sites, sink))
    assert machine.run().status == "completed"
    durations = [event.duration_ms for event in sink.events if event.kind == "book_end"]
    journaled = [decode(payload)["ms"] for payload in effects.records]
    assert len(durations) == 5
    assert durations == journaled
    assert all(ms > 0 for ms in journaled)

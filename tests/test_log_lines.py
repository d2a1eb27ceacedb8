"""The worker's batched line-protocol rendering writes what `line_protocol` writes."""

from __future__ import annotations

from jarvis.runtime.sinks import line_protocol
from jarvis.runtime.trace import TraceEvent
from jarvis.worker.logs import render_lines


def test_a_batch_renders_line_by_line_the_same_with_escapes_and_durations() -> None:
    texts = ["plain", 'say "hi"', "back\\slash", "two\nlines\r", "nul\x00inside", ""]
    events = [
        TraceEvent("ex 1,a=b", seq, kind, seq, 1, seq, 9, texts[seq % len(texts)],
                   texts[(seq + 1) % len(texts)], "str",
                   [None, 2.5, float("nan")][seq % 3] if kind == "book_end" else None)
        for seq, kind in enumerate(["stmt", "expr", "book_end"] * 8, start=1)
    ]
    expected = [line_protocol(event, 1000 + index) for index, event in enumerate(events)]
    assert render_lines(events, 1000) == expected
    clean = [event._replace(expr="x", value="1") for event in events if event.kind != "stmt"]
    assert render_lines(clean, 7) == [line_protocol(e, 7 + i) for i, e in enumerate(clean)]

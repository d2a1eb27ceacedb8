"""The trace recorder: numbering, steps, batches, engine events and value rendering."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jarvis.compiler import Compilation
from jarvis.compiler.trace import Site, TraceLevel, instrument
from jarvis.runtime.builtins import make_builtins
from jarvis.runtime.errors import LimitExceeded
from jarvis.runtime.reference import ReferenceEffects
from jarvis.runtime.sinks import MemorySink
from jarvis.runtime.trace import (
    DEFAULT_MAX_VALUE_CHARS,
    EVENT_KINDS,
    EventBatch,
    Renderer,
    TraceEvent,
    Tracer,
    render,
)


def program_tracer(
    text: str, level: TraceLevel = "full", **options: Any
) -> tuple[Tracer, MemorySink, Any]:
    """A Tracer for `text` and the compiled program, ready to `run`."""
    compilation = Compilation.of(text, "<test>")
    assert compilation.ok, compilation.diagnostics
    assert compilation.tree is not None and compilation.source is not None
    tree, sites = instrument(compilation.tree, compilation.source, level)
    sink = MemorySink()
    tracer = Tracer("ex-1", sites, sink, **options)
    return tracer, sink, compile(tree, "<test>", "exec")


def run(tracer: Tracer, code: Any) -> ReferenceEffects:
    from jarvis.runtime.books import BookRegistry

    effects = ReferenceEffects(BookRegistry())
    namespace: dict[str, Any] = {"__builtins__": make_builtins(effects, []), **tracer.hooks()}
    exec(code, namespace)
    return effects


def traced_events(text: str, level: TraceLevel = "full", **options: Any) -> list[TraceEvent]:
    tracer, sink, code = program_tracer(text, level, **options)
    run(tracer, code)
    tracer.flush()
    return sink.events


LOOP = "total = 0\nfor i in range(50):\n    total = total + i * 2\noutput('total', total)\n"

SITES = (Site("stmt", 1, 1, 1, 6, "x = 1"), Site("expr", 2, 5, 2, 10, "a + b"),
         Site("expr", 3, 1, 3, 2, "d", summarize=True))


# -- events -----------------------------------------------------------------------------


def test_trace_event_json_round_trip() -> None:
    event = TraceEvent("ex", 7, "book_end", 3, 5, 3, 20, "crm.find(x)", "{'id': 1}", "dict", 12.5)
    data = event.to_json()
    assert data["duration_ms"] == 12.5 and data["seq"] == 7
    assert TraceEvent.from_json(data) == event
    plain = event._replace(duration_ms=None)
    assert "duration_ms" not in plain.to_json()
    assert TraceEvent.from_json(plain.to_json()) == plain


# -- numbering --------------------------------------------------------------------------


def test_events_are_numbered_in_program_order_and_deterministically() -> None:
    first = traced_events(LOOP, batch_size=7)
    second = traced_events(LOOP, batch_size=1000)
    assert first == second
    assert [event.seq for event in first] == list(range(1, len(first) + 1))
    assert first[0].kind == "stmt" and first[0].expr == "total = 0"
    assert {event.execution_id for event in first} == {"ex-1"}


def test_start_seq_continues_the_numbering() -> None:
    events = traced_events(LOOP, start_seq=1000)
    assert [event.seq for event in events] == list(range(1001, 1001 + len(events)))
    assert [event._replace(seq=0) for event in events] == [
        event._replace(seq=0) for event in traced_events(LOOP)
    ]


def test_seq_counts_pending_events() -> None:
    tracer = Tracer("ex", SITES, MemorySink(), start_seq=10)
    assert tracer.seq == 10
    tracer.hook_stmt(0)
    assert tracer.hook_expr(1, 42) == 42
    assert (tracer.seq, tracer.pending) == (12, 2)
    tracer.flush()
    assert (tracer.seq, tracer.pending) == (12, 0)


def test_resume_at_drops_pending_events_and_continues_from_a_snapshot() -> None:
    sink = MemorySink()
    tracer = Tracer("ex", SITES, sink)
    tracer.hook_stmt(0)
    tracer.resume_at(40, 30)
    tracer.hook_stmt(0)
    tracer.flush()
    assert [event.seq for event in sink.events] == [41]
    assert tracer.steps == 31


# -- steps ------------------------------------------------------------------------------


def test_steps_count_hook_calls_not_engine_events() -> None:
    tracer = Tracer("ex", SITES, MemorySink(), start_steps=5)
    tracer.hook_stmt(0)
    tracer.hook_expr(1, 1)
    tracer.event("print", 1, 1, text="hi\n")
    assert tracer.steps == 7
    tracer.flush()
    assert tracer.steps == 7
    assert tracer.seq == 3


@pytest.mark.parametrize("level", ["statements", "full"])
def test_the_steps_limit_stops_a_loop(level: TraceLevel) -> None:
    tracer, sink, code = program_tracer(
        "n = 0\nwhile True:\n    n = n + 1\n", level, max_steps=1000
    )
    with pytest.raises(LimitExceeded) as raised:
        run(tracer, code)
    assert raised.value.limit == "steps"
    # Checked at each statement: at most one statement's expressions past the limit.
    assert 1000 < tracer.steps <= 1005
    tracer.flush()
    assert sink.events[-1].seq == tracer.seq


def test_the_steps_limit_stops_a_comprehension_and_is_not_caught_by_except() -> None:
    program = (
        "try:\n"
        "    total = sum(item for item in iter(int, 1))\n"
        "except Exception:\n"
        "    print('swallowed')\n"
    )
    tracer, _, code = program_tracer(program, max_steps=500)
    with pytest.raises(LimitExceeded):
        run(tracer, code)
    assert 500 < tracer.steps <= 502


def test_the_steps_limit_keeps_raising_once_reached() -> None:
    tracer = Tracer("ex", SITES, MemorySink(), max_steps=2)
    tracer.hook_stmt(0)
    tracer.hook_stmt(0)
    for _ in range(3):
        with pytest.raises(LimitExceeded):
            tracer.hook_stmt(0)


def test_a_limit_at_resume_counts_the_steps_before() -> None:
    tracer = Tracer("ex", SITES, MemorySink(), max_steps=10, start_steps=9)
    tracer.hook_stmt(0)
    with pytest.raises(LimitExceeded):
        tracer.hook_stmt(0)


# -- batches ----------------------------------------------------------------------------


def test_batches_deliver_every_event_once_in_order() -> None:
    tracer, sink, code = program_tracer(LOOP, batch_size=10)
    run(tracer, code)
    assert sink.batches > 1
    assert tracer.pending > 0 or sink.events[-1].seq == tracer.seq
    tracer.flush()
    assert tracer.pending == 0
    assert [event.seq for event in sink.events] == list(range(1, tracer.seq + 1))
    tracer.flush()  # nothing pending: nothing delivered
    assert len(sink.events) == tracer.seq


def test_engine_events_take_their_place_in_the_numbering() -> None:
    sink = MemorySink()
    tracer = Tracer("ex", SITES, sink, batch_size=3)
    tracer.hook_stmt(0)
    event = tracer.event("print", 4, 1, 4, 12, "print(x)", text="hello\n")
    assert event.seq == 2
    tracer.hook_expr(1, 3)
    tracer.event("book_start", 5, 1, 5, 20, "crm.find(x)", {"args": [1]})
    tracer.event("book_end", 5, 1, 5, 20, "crm.find(x)", [1, 2], duration_ms=1.5)
    tracer.flush()
    assert [(e.seq, e.kind) for e in sink.events] == [
        (1, "stmt"), (2, "print"), (3, "expr"), (4, "book_start"), (5, "book_end"),
    ]
    assert sink.events[1].value == "hello\n" and sink.events[1].type == "str"
    assert sink.events[3].value == "{'args': [1]}"
    assert (sink.events[4].value, sink.events[4].type, sink.events[4].duration_ms) == (
        "[1, 2]", "list", 1.5,
    )


def test_engine_events_are_rendered_when_they_happen() -> None:
    sink = MemorySink()
    tracer = Tracer("ex", SITES, sink)
    value = {"items": [1]}
    tracer.event("output", 0, 0, 0, 0, "result", value)
    value["items"].append(2)
    tracer.event("checkpoint", 3, 1, expr="checkpoint()")
    tracer.event("print", text="x" * 1000)
    tracer.flush()
    output, checkpoint, printed = sink.events
    assert output.value == "{'items': [1]}"
    assert (checkpoint.value, checkpoint.type, checkpoint.end_line, checkpoint.end_col) == (
        "", "", 3, 1)
    assert len(printed.value) == DEFAULT_MAX_VALUE_CHARS and printed.value.endswith("…")


def test_engine_events_check_their_kind_and_duration() -> None:
    tracer = Tracer("ex", SITES, MemorySink())
    with pytest.raises(ValueError, match="unknown trace event kind"):
        tracer.event("shout")
    assert tracer.event("book_end", duration_ms=math.nan).duration_ms is None
    assert {"expr", "stmt", "print", "book_start", "book_end", "exception", "checkpoint",
            "limit", "output", "sleep"} == EVENT_KINDS


def test_containers_are_rendered_as_they_were_at_the_event() -> None:
    program = (
        "xs = [1]\n"
        "print(xs)\n"
        "xs.append(2)\n"
        "d = {'k': xs}\n"
        "xs.append(3)\n"
        "print(d)\n"
    )
    events = traced_events(program, batch_size=4096)  # one batch: rendered at the end
    values = [(e.expr, e.value) for e in events
              if e.kind == "expr" and e.expr in ("xs", "d", "{'k': xs}")]
    assert values == [
        ("xs", "[1]"),  # print(xs)
        ("xs", "[… (1 item)]"),  # the receiver of xs.append(2): shown by its size
        ("xs", "[1, 2]"),
        ("{'k': xs}", "{'k': [1, 2]}"),
        ("xs", "[… (2 items)]"),
        ("d", "{'k': [1, 2, 3]}"),
    ]


def test_values_of_each_type_and_their_type_names() -> None:
    program = (
        "def f():\n    return 1\n"
        "values = [1, 2.5, True, None, 'text', (1, 'a'), {1, 2}, range(3), f, len, int,"
        " 10 ** 400, 'é' * 300, -7]\n"
        "for v in values:\n    print(v)\n"
    )
    events = traced_events(program)
    seen = [(e.value, e.type) for e in events if e.kind == "expr" and e.expr == "v"]
    assert seen[:10] == [
        ("1", "int"), ("2.5", "float"), ("True", "bool"), ("None", "NoneType"),
        ("'text'", "str"), ("(1, 'a')", "tuple"), ("{1, 2}", "set"),
        ("range(0, 3)", "range"), ("<function f>", "function"),
        ("<built-in function len>", "builtin_function_or_method"),
    ]
    assert seen[10] == ("<class 'int'>", "type")
    big, big_type = seen[11]
    assert big_type == "int" and big.startswith("1000") and big.endswith("(401 digits)")
    assert len(big) <= DEFAULT_MAX_VALUE_CHARS
    text, text_type = seen[12]
    assert text_type == "str" and text.endswith("…' (300 chars)") and len(text) <= 200
    assert seen[13] == ("-7", "int")


def test_long_values_in_a_batch_are_bounded() -> None:
    renderer = Renderer(40)
    values: list[Any] = [10 ** 5000, "\x00" * 30, "y" * 100, 3, ("[1]", "list")]
    texts, names = renderer.render_batch(values, [9])
    assert texts[0] == "<int of 16610 bits>"
    assert renderer.clip(texts[1], values[1]).endswith("(30 chars)")
    assert len(renderer.clip(texts[1], values[1])) <= 40
    assert texts[3] == "3"
    assert (texts[4], names[4]) == ("[1]", "list")
    assert values[4] is None


def test_summarized_sites_show_containers_by_size() -> None:
    tracer = Tracer("ex", SITES, MemorySink())
    tracer.hook_expr(2, {"a": 1, "b": 2})
    tracer.hook_expr(2, [])
    tracer.hook_expr(2, "text")
    tracer.hook_expr(1, {"a": 1})
    tracer.flush()
    assert [(e.value, e.type) for e in tracer.sink.events] == [  # type: ignore[attr-defined]
        ("{… (2 items)}", "dict"), ("[]", "list"), ("'text'", "str"), ("{'a': 1}", "dict"),
    ]


# -- the event batch --------------------------------------------------------------------


def test_event_batch_is_a_sequence_of_events() -> None:
    sink = MemorySink()
    batches: list[EventBatch] = []
    tracer = Tracer("ex", SITES, sink)
    tracer.sink = type("Capture", (), {"deliver": lambda self, b: batches.append(b)})()
    tracer.hook_stmt(0)
    tracer.hook_expr(1, 5)
    tracer.event("print", text="p")
    tracer.hook_expr(1, [1, 2])
    tracer.flush()
    [batch] = batches
    assert len(batch) == 4 and (batch.first_seq, batch.last_seq) == (1, 4)
    assert batch[1] == TraceEvent("ex", 2, "expr", 2, 5, 2, 10, "a + b", "5", "int")
    assert batch[-1].value == "[1, 2]" and batch[-1].type == "list"
    assert batch[0] == TraceEvent("ex", 1, "stmt", 1, 1, 1, 6, "x = 1", "", "")
    assert [e.seq for e in batch[1:3]] == [2, 3]
    assert [e.seq for e in batch.after(2)] == [3, 4]
    assert len(batch.after(10)) == 0 and batch.after(0) is batch
    assert list(batch) == [batch[i] for i in range(4)]
    with pytest.raises(IndexError):
        batch[4]
    with pytest.raises(ValueError):
        batch[::2]


# -- rendering --------------------------------------------------------------------------

RENDERINGS: list[tuple[Any, str]] = [
    (None, "None"), (True, "True"), (-12, "-12"), (1.5, "1.5"), (math.inf, "inf"),
    ("it's", '"it\'s"'), ("a\nb", "'a\\nb'"), ([], "[]"), ((), "()"), ((1,), "(1,)"),
    ({}, "{}"), (set(), "set()"), (frozenset({2, 1}), "frozenset({1, 2})"),
    ({"b", "a", "c"}, "{'a', 'b', 'c'}"),
    ([1, [2, [3, [4, [5]]]]], "[1, [2, [3, [4, [… (1 item)]]]]]"),
    (list(range(1_000_000)), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, … (1000000 items)]"),
    ({i: i for i in range(20)},
     "{0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 10, 11: 11, "
     "… (20 items)}"),
    ({"k": list(range(10))}, "{'k': [0, 1, 2, … (10 items)]}"),
    ({"a": 1}.items(), "dict_items([('a', 1)])"),
    (ValueError("bad", 2), "ValueError('bad', 2)"), (KeyError("k"), "KeyError('k')"),
    (range(0, 10, 2), "range(0, 10, 2)"), (len, "<built-in function len>"),
    ([].append, "<built-in method append of list object>"), (str, "<class 'str'>"),
    (lambda: 0, "<function <lambda>>"), (iter([]), "<list_iterator object>"),
    (set(range(100)), "{… (100 items)}"),
]


@pytest.mark.parametrize(("value", "expected"), RENDERINGS,
                         ids=[type(v).__name__ for v, _ in RENDERINGS])
def test_render(value: Any, expected: str) -> None:
    assert render(value) == (expected, type(value).__name__)


def test_rendering_huge_values_is_quick_and_bounded() -> None:
    huge_list = list(range(10_000_000))
    huge_text = "x" * 100_000_000
    nested: list[Any] = []
    for _ in range(10_000):
        nested = [nested]
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    values: list[Any] = [
        huge_list, huge_text, [huge_text], {"k": huge_text}, {huge_text: 1}, 10 ** 100_000,
        nested, cyclic, set(range(1_000_000)), {i: [i] for i in range(100_000)},
        tuple(huge_list), [[huge_list]], {"a": {"b": huge_list}},
    ]
    renderer = Renderer()
    started = time.perf_counter()
    for value in values:
        for method in (renderer.render, renderer.capture, renderer.summary):
            text, _ = method(value)
            assert len(text) <= DEFAULT_MAX_VALUE_CHARS
    assert time.perf_counter() - started < 2.0
    assert renderer.render(huge_text)[0].endswith("…' (100000000 chars)")
    assert renderer.render(cyclic)[0] == "[1, [1, [1, [1, [… (2 items)]]]]]"


def test_rendering_never_raises() -> None:
    class Broken(Exception):
        @property
        def args(self) -> Any:  # type: ignore[override]
            raise RuntimeError("no args for you")

    assert render(Broken()) == ("<unrenderable Broken>", "Broken")


def test_max_chars_is_checked_and_respected() -> None:
    with pytest.raises(ValueError):
        Renderer(5)
    text, _ = render(list(range(100)), max_chars=30)
    assert text == "[0, 1, 2, 3, 4, … (100 items)]" and len(text) == 30


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5)
    | st.tuples(children, children),
    max_leaves=40,
)


@given(json_like, st.integers(min_value=16, max_value=300))
@example([([None, 0], 0)], 16)  # the last item of a tuple fills the room exactly
@settings(max_examples=300, deadline=None)
def test_rendering_is_bounded_deterministic_and_exact_when_small(value: Any, limit: int) -> None:
    renderer = Renderer(limit)
    text, name = renderer.render(value)
    assert len(text) <= limit
    assert name == type(value).__name__
    assert renderer.render(value) == (text, name)
    assert renderer.capture(value)[0] == text or len(repr(value)) > limit
    exact = repr(value)
    if len(exact) <= limit and _small(value, renderer, 0):
        assert text == exact


def _small(value: Any, renderer: Renderer, depth: int) -> bool:
    """Whether no container in `value` is cut: the rendering should be plain repr."""
    if isinstance(value, (list, tuple, dict)):
        limit = renderer.max_items if depth == 0 else max(2, renderer.max_items // 4)
        if len(value) > limit or (value and depth >= renderer.max_depth):
            return False
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)
        return all(_small(item, renderer, depth + 1) for item in items)
    return True


def test_the_hooks_of_a_tracer() -> None:
    sink = MemorySink()
    tracer = Tracer("ex", SITES, sink)
    hooks = tracer.hooks()
    assert set(hooks) == {"_jv_t", "_jv_c", "_jv_s", "_jv_f"}
    assert hooks["_jv_f"](0, 1, [7]) == [7]
    assert hooks["_jv_t"](1, "v") == "v"
    assert hooks["_jv_c"](1, None) is None
    hooks["_jv_s"](0)
    tracer.flush()
    assert [(e.seq, e.kind, e.value) for e in sink.events] == [
        (1, "stmt", ""), (2, "expr", "[7]"), (3, "expr", "'v'"), (4, "expr", "None"),
        (5, "stmt", ""),
    ]
    assert tracer.steps == 5

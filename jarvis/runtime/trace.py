"""Trace events: what a running program reports, and the recorder the hooks feed.

The compiler's trace pass (`jarvis.compiler.trace`) makes a program call `_jv_t(K, v)`
after each traced expression and `_jv_s(K)` before each statement, K being an index
into the program's site table (and two variants: `_jv_c` in comprehension and lambda
bodies, `_jv_f` for a statement and its first expression at once). A `Tracer`
provides the hooks (`Tracer.hooks()`), numbers events 1, 2, 3, ... in program order
(`seq`), renders values and hands events to a sink in batches. The engine adds its
own events (prints, Book calls, checkpoints, ...) with `Tracer.event`, in the same
numbering; `Tracer.engine_event` records one whose value cannot change (a Book call's
scalar arguments or result) unrendered, like the hooks' deferred values.

The hooks are the hottest code of a traced run, so the work is split by what can wait:

- A hook appends the site index and the value to a flat list and returns. Values
  that cannot change (ints, floats, bools, None, strings, ranges, functions, classes)
  are kept as they are and rendered later, a whole batch at a time, by C-level `map`
  calls: no per-event Python code and no per-event objects on the common path.
- Any other value (a list, dict, set, tuple, exception, ...) may be changed by the
  program after the event, so it is rendered at once, with bounded work
  (`Renderer.capture`); the hook stores the rendered text.
- When the list holds `batch_size` events, or the engine asks (`flush`), the pending
  events are rendered and delivered as one `EventBatch`: a sequence of `TraceEvent`s
  that builds each event object only when a sink reads it.

`steps` counts hook calls (statements and expressions); `max_steps` makes the hook
that takes the count past the limit raise `LimitExceeded("steps", ...)`. `max_events`
bounds the trace itself (`seq`, engine events included): the first flush or engine
event that finds more events than that delivers the first `max_events`, drops the rest
and raises `LimitExceeded("trace_events", ...)`; only the event that reports how the
run ended (`limit`, `exception`) comes after them. Both limits cost the hooks nothing:
they lower the buffer's capacity, so the hook that passes a limit is the one that
spills.

The hooks are written twice, with the same behaviour and the same buffer layout: in C
(`jarvis.runtime._hooks`, built by `pip install`; no Python frame per call) and in
Python (`Tracer._hooks`), used where the extension was not built or when the
environment variable JARVIS_TRACE_HOOKS is "python".
"""

from __future__ import annotations

import math
import os
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice, repeat
from operator import itemgetter, rshift
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, overload

from jarvis.runtime.errors import LimitExceeded

if TYPE_CHECKING:
    from jarvis.compiler.tables import Site
    from jarvis.runtime._hooks import Hooks as NativeHooks

EVENT_KINDS: Final = frozenset({
    "expr", "stmt", "print", "book_start", "book_end", "exception", "checkpoint",
    "limit", "output", "sleep",
})
"""Every kind of trace event; docs/events.md says what each carries."""

DEFAULT_MAX_VALUE_CHARS: Final = 200
"""The longest rendered value, in characters."""

DEFAULT_BATCH_SIZE: Final = 4096
"""Events rendered and delivered at a time."""


class TraceEvent(NamedTuple):
    """One thing a program did, as a trace records it.

    `value` is the rendered value (bounded; see `Renderer`) and `type` its type name;
    both are "" for events without a value. `duration_ms` is set on `book_end` events
    (the call's wall-clock time) and None elsewhere.
    """

    execution_id: str
    seq: int
    kind: str
    line: int
    col: int
    end_line: int
    end_col: int
    expr: str
    value: str
    type: str
    duration_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "execution_id": self.execution_id,
            "seq": self.seq,
            "kind": self.kind,
            "line": self.line,
            "col": self.col,
            "end_line": self.end_line,
            "end_col": self.end_col,
            "expr": self.expr,
            "value": self.value,
            "type": self.type,
        }
        if self.duration_ms is not None:
            data["duration_ms"] = self.duration_ms
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TraceEvent:
        duration = data.get("duration_ms")
        return cls(
            str(data["execution_id"]), int(data["seq"]), str(data["kind"]),
            int(data["line"]), int(data["col"]), int(data["end_line"]), int(data["end_col"]),
            str(data["expr"]), str(data["value"]), str(data["type"]),
            None if duration is None else float(duration),
        )


# -- rendering ------------------------------------------------------------------------

_NoneType = type(None)
_BIG_INT: Final = 10**18
"""Ints between -_BIG_INT and _BIG_INT render with a plain repr."""
_MAX_INT_BITS: Final = 13_000
"""Ints wider than this (about 3900 digits) are not converted to decimal at all:
CPython refuses beyond 4300 digits, and the conversion is quadratic."""
_FLAT_KEYS_KEPT: Final = 1024
"""How many key tuples `Renderer.capture` remembers."""
_SET_SORT_LIMIT: Final = 64
"""Sets up to this size render sorted (deterministic); larger ones show their size."""

_NUMBERS: Final = frozenset({int, float, bool, _NoneType})
"""Scalars whose repr is always short enough to write without looking (ints are
bounded by CPython's own limit on decimal conversion; longer ones are cut later)."""
_FLAT: Final = frozenset({int, float, bool, _NoneType, str})
"""Scalars whose repr C writes directly, strings after a length check."""
DEFERRED_TYPES: Final = _FLAT
"""Values of these exact types cannot change, so the hooks keep them as they are and
their rendering waits for the batch (strings only up to `max_chars` characters: a
longer one is cut at once)."""

_pair = "{}: {}".format
_first = itemgetter(0)
_second = itemgetter(1)


def _summary_forms(opening: str, closing: str, empty: str, name: str) -> tuple[str, str, str, str]:
    many = opening.replace("%", "%%") + "… (%d items)" + closing
    return many, f"{opening}… (1 item){closing}", empty, name


_SUMMARY_SHAPES: Final[list[tuple[type, str, str, str]]] = [
    (list, "[", "]", "[]"),
    (tuple, "(", ")", "()"),
    (dict, "{", "}", "{}"),
    (set, "{", "}", "set()"),
    (frozenset, "frozenset({", "})", "frozenset()"),
    (types.MappingProxyType, "mappingproxy({", "})", "mappingproxy({})"),
    (type({}.keys()), "dict_keys([", "])", "dict_keys([])"),
    (type({}.values()), "dict_values([", "])", "dict_values([])"),
    (type({}.items()), "dict_items([", "])", "dict_items([])"),
]
_SUMMARIES: Final[dict[type, tuple[str, str, str, str]]] = {
    kind: _summary_forms(opening, closing, empty, kind.__name__)
    for kind, opening, closing, empty in _SUMMARY_SHAPES
}
"""How `Renderer.summary` writes each container type: (several items, one item,
empty, type name)."""


class _TypeNames(dict[type, str]):
    def __missing__(self, key: type) -> str:
        name = self[key] = key.__name__
        return name


_type_names = _TypeNames()


class Renderer:
    """A bounded, deterministic, never-failing repr.

    At most `max_chars` characters; at most `max_items` items of a container and
    `max_depth` levels of nesting are looked at, so the work does not grow with the
    value. Cut-off containers, strings and ints say how big they are:
    `[1, 2, 3, … (1000000 items)]`, `'abc…' (5000000 chars)`, `<int of 20000 bits>`.
    Functions and builtins render without memory addresses, sets sorted; a value whose
    rendering fails renders as `<unrenderable TYPE>`.
    """

    def __init__(
        self, max_chars: int = DEFAULT_MAX_VALUE_CHARS, max_items: int = 12, max_depth: int = 4
    ) -> None:
        if max_chars < 16:
            raise ValueError("max_chars must be at least 16")
        self.max_chars = max_chars
        self.max_items = max_items
        self.max_depth = max_depth
        self._nested_items = max(2, max_items // 4)
        """Items looked at in a container inside a container."""
        self._flat_keys: set[tuple[Any, ...]] = set()
        """Key tuples of dicts known to be short scalars (see `capture`)."""
        self._by_type: dict[type, Callable[[Any, int, int], str]] | None = None
        """How `text` renders the less common types; made when first needed."""

    def _renderers(self) -> dict[type, Callable[[Any, int, int], str]]:
        self._by_type = {
            types.MappingProxyType: self._mappingproxy,
            set: self._set,
            frozenset: self._set,
            type({}.keys()): self._view,
            type({}.values()): self._view,
            type({}.items()): self._view,
            range: self._range,
            type: _class,
            types.FunctionType: _function,
            types.BuiltinFunctionType: _builtin,
        }
        return self._by_type

    # -- one value ----------------------------------------------------------------

    def render(self, value: object) -> tuple[str, str]:
        """(text, type name) of `value`."""
        kind = type(value)
        try:
            text = self.text(value, self.max_chars, 0)
        except Exception:
            text = f"<unrenderable {kind.__name__}>"
        if len(text) > self.max_chars:
            text = text[: self.max_chars - 1] + "…"
        return text, kind.__name__

    def summary(self, value: Any) -> tuple[str, str]:
        """A container by its size only, `[… (3 items)]`; other values as `render`."""
        form = _SUMMARIES.get(type(value))
        if form is None:
            return self.render(value)
        many, one, empty, name = form
        size = len(value)
        return (many % size if size > 1 else one if size else empty), name

    def capture(self, value: Any) -> tuple[str, str]:
        """`render`, for the expression hook: a value that may change later.

        Small flat lists, tuples and dicts (numbers, short strings) are by far the
        most common such values; C writes their repr after a few C-level checks.
        """
        kind = type(value)
        if kind is list or kind is tuple:
            size = len(value)
            head = value if size <= self.max_items else value[: self.max_items]
            kinds = {*map(type, head)}
            if kinds <= _NUMBERS or (
                kinds <= _FLAT and _short(head, kinds, self.max_chars)
            ):
                try:
                    text = repr(head)
                except ValueError:  # an int too long for decimal conversion
                    return self.render(value)
                if size > len(head):
                    text = f"{text[:-1]}, {_more(size)}{text[-1]}"
                if len(text) <= self.max_chars:
                    return text, kind.__name__
        elif kind is dict and len(value) <= self.max_items:
            keys = tuple(value)
            if keys not in self._flat_keys:
                # Dicts of a program mostly share their keys (records): check a set of
                # keys once; `tuple` and a set lookup are cheaper than the checks.
                key_kinds = {*map(type, keys)}
                if not key_kinds <= _FLAT or not (
                    key_kinds <= _NUMBERS or _short(keys, key_kinds, self.max_chars)
                ):
                    return self.render(value)
                if len(self._flat_keys) >= _FLAT_KEYS_KEPT:
                    self._flat_keys.clear()
                self._flat_keys.add(keys)
            kinds = {*map(type, value.values())}
            if kinds <= _NUMBERS or (
                kinds <= _FLAT and _short(value.values(), kinds, self.max_chars)
            ):
                try:
                    text = repr(value)
                except ValueError:
                    return self.render(value)
                if len(text) <= self.max_chars:
                    return text, "dict"
        return self.render(value)

    def text(self, value: Any, room: int, depth: int) -> str:
        """The rendering of `value` in about `room` characters (never much more).

        The common types are tested inline, most frequent first: this runs for every
        container event and for every item shown of a container.
        """
        kind = type(value)
        if kind is str:
            if len(value) <= room:
                text = repr(value)
                if len(text) <= room:
                    return text
            return self._str(value, room, depth)
        if kind is int:
            if -_BIG_INT < value < _BIG_INT:
                return repr(value)
            return self._int(value, room, depth)
        if kind is float or kind is bool or value is None:
            return repr(value)
        if kind is dict:
            return self._mapping(value, "{", "}", room, depth)
        if kind is list:
            return self._sequence(value, len(value), "[", "]", room, depth, True)
        if kind is tuple:
            if len(value) == 1:
                return "(" + self.text(value[0], room - 3, depth + 1) + ",)"
            return self._sequence(value, len(value), "(", ")", room, depth, True)
        render = (self._by_type or self._renderers()).get(kind)
        if render is not None:
            return render(value, room, depth)
        if isinstance(value, BaseException):
            return self._exception(value, room, depth)
        return f"<{kind.__name__} object>"

    def _int(self, value: int, room: int, depth: int) -> str:
        bits = value.bit_length()
        if bits > _MAX_INT_BITS:
            return f"<int of {bits} bits>"
        text = repr(value)
        if len(text) <= room:
            return text
        digits = len(text) - (text[0] == "-")
        suffix = f"… ({digits} digits)"
        return text[: max(1, room - len(suffix))] + suffix

    def _str(self, value: str, room: int, depth: int) -> str:
        size = len(value)
        if size <= room:
            text = repr(value)
            if len(text) <= room:
                return text
        head = repr(value[:room])
        suffix = f"…{head[-1]} ({size} chars)"
        return head[: max(2, room - len(suffix))] + suffix

    def _range(self, value: range, room: int, depth: int) -> str:
        bounds = [value.start, value.stop] if value.step == 1 else [
            value.start, value.stop, value.step]
        return "range(" + ", ".join([self._int(b, room // 3, depth) for b in bounds]) + ")"

    def _sequence(
        self, value: list[Any] | tuple[Any, ...], size: int, opening: str, closing: str,
        room: int, depth: int, whole: bool = False,
    ) -> str:
        """The first items of `value` between `opening` and `closing`, for a container
        of `size` items. `whole`: `repr` of a list or tuple of the items has that form,
        so C may write it in one go."""
        if not size:
            return opening + closing
        if depth >= self.max_depth:
            return f"{opening}{_more(size)}{closing}"
        limit = self.max_items if not depth else self._nested_items
        head = value if len(value) <= limit else value[:limit]
        kinds = {*map(type, head)}
        if kinds <= _FLAT and (str not in kinds or _short(head, kinds, room)):
            try:
                if whole:
                    text = repr(head)
                    if len(head) < size:
                        text = f"{text[:-1]}, {_more(size)}{closing}"
                    if len(text) <= room:
                        return text
                return _join([*map(repr, head)], size, opening, closing, room)
            except ValueError:  # an int too long for decimal conversion
                pass
        if opening == "[" and len(head) == size and self._nested_flat(head, room, depth):
            # Small flat lists and dicts inside: `repr` writes what `_items` would.
            text = repr(value)
            if len(text) <= room:
                return text
        return self._items(head, size, opening, closing, room, depth)

    def _mapping(
        self, value: dict[Any, Any] | types.MappingProxyType[Any, Any], opening: str,
        closing: str, room: int, depth: int,
    ) -> str:
        size = len(value)
        if not size:
            return opening + closing
        if depth >= self.max_depth:
            return f"{opening}{_more(size)}{closing}"
        limit = self.max_items if not depth else self._nested_items
        if size <= limit:
            keys, values = [*value], [*value.values()]
        else:
            keys, values = [*islice(value, limit)], [*islice(value.values(), limit)]
        key_kinds = {*map(type, keys)}
        value_kinds = {*map(type, values)}
        if (
            key_kinds <= _FLAT
            and value_kinds <= _FLAT
            and (str not in key_kinds or _short(keys, key_kinds, room))
            and (str not in value_kinds or _short(values, value_kinds, room))
        ):
            try:
                if opening == "{":
                    text = repr(value if size <= limit else dict(zip(keys, values, strict=True)))
                    if size > limit:
                        text = f"{text[:-1]}, {_more(size)}}}"
                    if len(text) <= room:
                        return text
                texts = [*map(_pair, map(repr, keys), map(repr, values))]
                return _join(texts, size, opening, closing, room)
            except ValueError:  # an int too long for decimal conversion
                pass
        if (opening == "{" and size <= limit and self._nested_flat(keys, room, depth)
                and self._nested_flat(values, room, depth)):
            # A Book call's `{'args': [...], 'kwargs': {...}}`, a record: `repr`
            # writes what `_items` would.
            text = repr(value)
            if len(text) <= room:
                return text
        pairs = zip(keys, values, strict=True)
        return self._items(pairs, size, opening, closing, room, depth, pairs=True)

    def _mappingproxy(self, value: types.MappingProxyType[Any, Any], room: int, depth: int) -> str:
        return self._mapping(value, "mappingproxy({", "})", room, depth)

    def _set(self, value: set[Any] | frozenset[Any], room: int, depth: int) -> str:
        size = len(value)
        opening, closing = ("{", "}") if type(value) is set else ("frozenset({", "})")
        if not size:
            return "set()" if type(value) is set else "frozenset()"
        if size > _SET_SORT_LIMIT or depth >= self.max_depth:
            # The iteration order of a set of strings changes from process to process
            # (hash randomization), and sorting a large set is not bounded work.
            return f"{opening}{_more(size)}{closing}"
        texts = sorted([self.text(item, room, depth + 1) for item in value])
        return _join(texts, size, opening, closing, room)

    def _view(self, value: Any, room: int, depth: int) -> str:
        name = type(value).__name__
        items = [*islice(value, self.max_items)]
        return self._sequence(items, len(value), name + "([", "])", room, depth)

    def _exception(self, value: BaseException, room: int, depth: int) -> str:
        name = type(value).__name__
        args = value.args
        if len(args) == 1:
            return f"{name}({self.text(args[0], room - len(name) - 2, depth + 1)})"
        return self._sequence(args, len(args), name + "(", ")", room, depth)

    def _nested_flat(self, items: Iterable[Any], room: int, depth: int) -> bool:
        """Whether each of `items` (of a container at `depth`) is a scalar `text`
        writes as its `repr` (a string of at most `room` characters), or a list or
        dict of at most `_nested_items` such scalars. If so, and the container's
        `repr` fits `room`, that `repr` is exactly what rendering item by item gives
        (each item then fits its own room), so the caller may write it in one go; and
        writing it is bounded work."""
        if depth + 1 >= self.max_depth:
            return False
        limit = self._nested_items
        for item in items:
            kind = type(item)
            if kind is list:
                if len(item) > limit:
                    return False
                members: Iterable[Any] = item
            elif kind is dict:
                if len(item) > limit or not _plain_scalars(item, room):
                    return False
                members = item.values()
            else:
                members = (item,)
            if not _plain_scalars(members, room):
                return False
        return True

    def _items(
        self, items: Iterable[Any], size: int, opening: str, closing: str, room: int,
        depth: int, pairs: bool = False,
    ) -> str:
        """Items rendered one by one, as many as fit in `room`."""
        space = room - len(opening) - len(closing)
        parts: list[str] = []
        used = 0  # the parts' length, with a separator after each
        for item in items:
            left = space - used  # the last item needs no separator after it
            if left < 1:
                break
            if pairs:
                key, val = item
                key_text = self.text(key, left, depth + 1)
                text = key_text + ": " + self.text(val, left - len(key_text) - 2, depth + 1)
            else:
                text = self.text(item, left, depth + 1)
            if len(text) > left:
                break
            parts.append(text)
            used += len(text) + 2
        if len(parts) < size:
            marker = _more(size)
            while parts and used + len(marker) > space:
                used -= len(parts.pop()) + 2
            parts.append(marker)
        return opening + ", ".join(parts) + closing

    # -- a batch of deferred values -----------------------------------------------

    def render_batch(
        self, values: list[Any], rendered: Iterable[int] = ()
    ) -> tuple[list[str], dict[int, str]]:
        """Render a batch of values: their texts, and the type names of the entries
        whose type is not `type(values[i])` after the call.

        `values` holds ints, floats, bools, None and strings of at most `max_chars`
        characters, and, at the buffer positions `rendered` (index `2 * i + 1` for
        entry i), `(text, type name)` pairs rendered earlier, which are replaced by
        None. A text may be longer than `max_chars` (an int of many digits, a string
        with many escapes): `clip` it when it is read. The common case is one C-level
        `map` over the batch.
        """
        # C-level passes over the rendered entries too: there may be many (a loop
        # that indexes a dict has one per iteration).
        indexes = [*map(rshift, rendered, repeat(1))]
        pairs = [*map(values.__getitem__, indexes)]
        deque(map(values.__setitem__, indexes, repeat(None)), 0)
        try:
            texts = _reprs(values)
        except ValueError:  # an int too long for decimal conversion
            texts = [*map(self._scalar, values)]
        deque(map(texts.__setitem__, indexes, map(_first, pairs)), 0)
        return texts, dict(zip(indexes, map(_second, pairs), strict=True))

    def _scalar(self, value: object) -> str:
        if type(value) is int and value.bit_length() > _MAX_INT_BITS:
            return self.render(value)[0]
        return repr(value)

    def clip(self, text: str, value: object) -> str:
        """`text`, the batch rendering of `value`, cut to `max_chars` if longer."""
        if len(text) <= self.max_chars:
            return text
        return self.render(value)[0]


def _plain_scalars(items: Iterable[Any], room: int) -> bool:
    """Whether every one of `items` is a scalar whose rendering is its `repr`, strings
    of at most `room` characters."""
    for item in items:
        kind = type(item)
        if kind is int:
            if not -_BIG_INT < item < _BIG_INT:
                return False
        elif kind is str:
            if len(item) > room:
                return False
        elif kind not in _NUMBERS:
            return False
    return True


def _short(items: Iterable[Any], kinds: set[type], limit: int) -> bool:
    """Whether every string among `items` is at most `limit` characters long."""
    if len(kinds) == 1:
        return max(map(len, items), default=0) <= limit
    return all(len(item) <= limit for item in items if type(item) is str)


def _more(size: int) -> str:
    return f"… ({size} item{'' if size == 1 else 's'})"


def _class(value: type, room: int, depth: int) -> str:
    return f"<class '{value.__name__}'>"


def _function(value: types.FunctionType, room: int, depth: int) -> str:
    return f"<function {value.__name__}>"


def _builtin(value: types.BuiltinFunctionType, room: int, depth: int) -> str:
    owner = value.__self__
    if owner is None or isinstance(owner, types.ModuleType):
        return f"<built-in function {value.__name__}>"
    return f"<built-in method {value.__name__} of {type(owner).__name__} object>"


def _join(texts: list[str], size: int, opening: str, closing: str, room: int) -> str:
    """`opening + ", ".join(texts) + closing`, cut at an item so that it fits `room`,
    with a "… (N items)" marker when not all `size` items are shown."""
    if len(texts) == size:
        text = opening + ", ".join(texts) + closing
        if len(text) <= room:
            return text
    marker = _more(size)
    space = room - len(opening) - len(closing) - len(marker)
    shown = 0
    used = 0
    for text in texts:
        used += len(text) + 2
        if used > space:
            break
        shown += 1
    return opening + ", ".join([*texts[:shown], marker]) + closing


_default_renderer = Renderer()


def render(value: object, max_chars: int = DEFAULT_MAX_VALUE_CHARS) -> tuple[str, str]:
    """The bounded rendering of `value` and its type name: `(text, type)`."""
    renderer = _default_renderer if max_chars == DEFAULT_MAX_VALUE_CHARS else Renderer(max_chars)
    return renderer.render(value)


# -- batches --------------------------------------------------------------------------

def _new_event(fields: tuple[Any, ...]) -> TraceEvent:
    """`TraceEvent(*fields)` without the Python-level `__new__` of a NamedTuple: a batch
    builds one per event a sink reads."""
    return tuple.__new__(TraceEvent, fields)


SiteRow = tuple[str, int, int, int, int, str]
"""A site as a batch reads it: (kind, line, col, end_line, end_col, text)."""

EngineRow = tuple[str, int, int, int, int, str, Any, "float | None"]
"""An engine event whose value is rendered when it is read (`Tracer.engine_event`):
(kind, line, col, end_line, end_col, expr, value, duration_ms); its seq is its place
in the batch."""

_NO_VALUE: Final[Any] = object()
"""The value of an event without one."""


class EventBatch(Sequence[TraceEvent]):
    """Consecutive events, stored as columns; a `TraceEvent` is built when read.

    Entry i has seq `first_seq + i`. A site index >= 0 refers to the site table, and
    the value's text is `texts[i]`, its type that of `values[i]` unless `names` says
    otherwise; a site index -1 - j refers to `extra[j]`, an engine event built whole.
    """

    __slots__ = ("_extra", "_first", "_names", "_renderer", "_sites", "_start", "_stop",
                 "_table", "_texts", "_values", "execution_id")

    def __init__(
        self,
        execution_id: str,
        first_seq: int,
        table: Sequence[SiteRow],
        sites: list[int],
        values: list[Any],
        rendered: tuple[list[str], dict[int, str]] | None,
        extra: list[TraceEvent | EngineRow],
        renderer: Renderer,
    ) -> None:
        self.execution_id = execution_id
        self._first = first_seq
        self._table = table
        self._sites = sites
        self._values = values
        self._texts: list[str] | None = None
        self._names: dict[int, str] = {}
        if rendered is not None:
            self._texts, self._names = rendered
        self._extra = extra
        self._renderer = renderer
        self._start = 0
        self._stop = len(sites)

    @property
    def first_seq(self) -> int:
        return self._first + self._start

    @property
    def last_seq(self) -> int:
        """The seq of the last event (first_seq - 1 when empty)."""
        return self._first + self._stop - 1

    def __len__(self) -> int:
        return self._stop - self._start

    def _event(self, index: int) -> TraceEvent:
        k = self._sites[index]
        if k < 0:
            entry = self._extra[-1 - k]
            if isinstance(entry, TraceEvent):
                return entry
            return self._engine_event(entry, self._first + index)
        kind, line, col, end_line, end_col, text = self._table[k]
        seq = self._first + index
        if kind == "stmt" or self._texts is None:
            return _new_event((self.execution_id, seq, kind, line, col, end_line, end_col,
                               text, "", "", None))
        value = self._values[index]
        name = self._names.get(index) or _type_names[type(value)]
        rendered = self._texts[index]
        if len(rendered) > self._renderer.max_chars:
            rendered = self._renderer.clip(rendered, value)
        return _new_event((self.execution_id, seq, kind, line, col, end_line, end_col, text,
                           rendered, name, None))

    def _engine_event(self, entry: EngineRow, seq: int) -> TraceEvent:
        """An engine event recorded by `Tracer.engine_event`, its value rendered now."""
        kind, line, col, end_line, end_col, expr, value, duration_ms = entry
        rendered, type_name = ("", "") if value is _NO_VALUE else self._renderer.render(value)
        return _new_event((self.execution_id, seq, kind, line, col, end_line, end_col, expr,
                           rendered, type_name, duration_ms))

    @overload
    def __getitem__(self, index: int) -> TraceEvent: ...

    @overload
    def __getitem__(self, index: slice) -> EventBatch: ...

    def __getitem__(self, index: int | slice) -> TraceEvent | EventBatch:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("an EventBatch slice must be contiguous")
            return self._narrow(self._start + start, self._start + max(start, stop))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("event index out of range")
        return self._event(self._start + index)

    def __iter__(self) -> Iterator[TraceEvent]:
        return map(self._event, range(self._start, self._stop))

    def _narrow(self, start: int, stop: int) -> EventBatch:
        batch = EventBatch(self.execution_id, self._first, self._table, self._sites,
                           self._values, None, self._extra, self._renderer)
        batch._texts, batch._names = self._texts, self._names
        batch._start, batch._stop = start, stop
        return batch

    def after(self, seq: int) -> EventBatch:
        """The events of this batch whose seq is greater than `seq`."""
        start = min(max(self._start, seq - self._first + 1), self._stop)
        return self if start == self._start else self._narrow(start, self._stop)

    def columns(self) -> BatchColumns:
        """The batch as it is stored, for an encoder that reads it without building an
        event per entry (jarvis/runtime/tracebatch.py)."""
        return BatchColumns(self._first, self._start, self._stop, self._table, self._sites,
                            self._texts, self._values, self._names, self._renderer,
                            self._event)


class BatchColumns(NamedTuple):
    """What `EventBatch.columns` gives: entries `start` to `stop` of `sites` are the
    batch, entry i with seq `first_seq + i`. A site index k >= 0 is row k of `table`,
    with (for an expression) the text `texts[i]` (cut with `renderer.clip(text,
    values[i])` when longer than `renderer.max_chars`) and the type name `names[i]`, or
    that of `values[i]`; a site index < 0 is an engine event, `event(i)`."""

    first_seq: int
    start: int
    stop: int
    table: Sequence[SiteRow]
    sites: list[int]
    texts: list[str] | None
    values: list[Any]
    names: dict[int, str]
    renderer: Renderer
    event: Callable[[int], TraceEvent]


class EventSink(Protocol):
    """What a Tracer delivers to (`jarvis.runtime.sinks.Sink` is the full protocol)."""

    def deliver(self, events: Sequence[TraceEvent]) -> None: ...


# -- the recorder ---------------------------------------------------------------------

_CLOSING_KINDS: Final = frozenset({"limit", "exception"})
"""Engine events that report how a run ended: recorded even past `max_events`."""


def python_only() -> bool:
    """Whether the environment asks for the Python trace code (JARVIS_TRACE_HOOKS=python)
    rather than the C extensions (the hooks here, the batches in tracebatch.py)."""
    return os.environ.get("JARVIS_TRACE_HOOKS", "").strip().lower() == "python"


def _extension() -> types.ModuleType | None:
    """The C hooks, unless they were not built or JARVIS_TRACE_HOOKS=python."""
    if python_only():
        return None
    try:
        from jarvis.runtime import _hooks
    except ImportError:
        return None
    return _hooks


def _python_reprs(values: list[Any]) -> list[str]:
    return [*map(repr, values)]


_EXTENSION: Final = _extension()
_native: type[NativeHooks] | None = getattr(_EXTENSION, "Hooks", None)
"""The class of the C hooks `Tracer` uses, or None for the Python ones."""
_reprs: Callable[[list[Any]], list[str]] = getattr(_EXTENSION, "reprs", _python_reprs)
"""`[*map(repr, values)]`, in C when the hooks are (quicker for None and ints)."""


_NO_SITES: Final[frozenset[int]] = frozenset()


class Tracer:
    """The recorder of one execution's trace: the hooks, the numbering, the batches.

    Bind `hooks()` (`_jv_t`, `_jv_c`, `_jv_s`, `_jv_f`) in the program's namespace. Events are
    numbered from `start_seq + 1`; a resumed run that replays from a snapshot taken
    at seq N passes `start_seq=N` (and the step count then as `start_steps`) and
    regenerates the same numbers. Call `flush()` before anything that must see the
    events so far (an effect, a checkpoint, the end of the run).
    """

    def __init__(
        self,
        execution_id: str,
        sites: Sequence[Site],
        sink: EventSink,
        *,
        start_seq: int = 0,
        start_steps: int = 0,
        max_steps: int | None = None,
        max_events: int | None = None,
        max_value_chars: int = DEFAULT_MAX_VALUE_CHARS,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.execution_id = execution_id
        self.sink = sink
        self.max_steps = max_steps
        self.max_events = max_events
        self._ceiling = max_events
        """The highest seq allowed: `max_events`, plus the closing events past it."""
        self.batch_size = batch_size
        self.renderer = Renderer(max_value_chars)
        self._table: list[SiteRow] = [
            (site.kind, site.line, site.col, site.end_line, site.end_col, site.text)
            for site in sites
        ] if sites else []
        self._summarized = frozenset(
            k for k, site in enumerate(sites) if site.summarize) if sites else _NO_SITES
        self._has_values = any(site.kind == "expr" for site in sites) if sites else False
        self._seq = start_seq
        """The seq of the last event flushed."""
        self._steps = start_steps
        """Hook calls up to the last flush."""
        self._extra: list[TraceEvent | EngineRow] = []
        self._buffer: list[Any] = []
        self._marks: list[int] = []
        """Where in the buffer a value rendered by the hook (a (text, type) pair) is."""
        # The capacity `_update_capacity` would set, worked out here (no events yet).
        capacity = 2 * batch_size
        if max_steps is not None:
            capacity = min(capacity, 2 * max(max_steps - start_steps + 1, 1))
        if max_events is not None:
            capacity = min(capacity, 2 * max(max_events - start_seq + 1, 1))
        (self.hook_expr, self.hook_expr_checked, self.hook_stmt, self.hook_first,
         self._set_capacity) = self._hooks(capacity)

    def _hooks(self, capacity: int) -> tuple[
        Callable[[int, Any], Any], Callable[[int, Any], Any], Callable[[int], None],
        Callable[[int, int, Any], Any], Callable[[int], None],
    ]:
        buffer = self._buffer
        marks = self._marks
        renderer = self.renderer
        summarized = self._summarized
        numbers = _NUMBERS
        longest = renderer.max_chars

        summaries = _SUMMARIES
        spill = self._spill

        if _native is not None:  # the same hooks in C (jarvis/runtime/_hooks.c)
            native = _native(buffer, marks, renderer.capture, summarized, summaries, spill,
                             capacity, longest)
            return (native.expr, native.expr_checked, native.stmt, native.first,
                    native.set_capacity)

        def capture(k: int, value: Any) -> tuple[str, str]:
            if k in summarized:
                form = summaries.get(type(value))
                if form is not None:  # `Renderer.summary`, inline
                    size = len(value)
                    return (form[0] % size if size > 1 else form[1] if size else form[2]), form[3]
            return renderer.capture(value)

        # The hooks run once per traced expression and statement: every name is a
        # local or a closure cell, `buffer.append` is specialised by the interpreter,
        # and the only tests on the common path of `hook_expr` are the type tests. It
        # does not even check whether the buffer is full (a quarter of its cost): the
        # next statement hook does, and the expressions that can repeat without a
        # statement in between (comprehension and lambda bodies) call
        # `hook_expr_checked`. A value rendered at once is marked (its position in
        # the buffer), so that the batch needs no pass over the types of all values.
        def hook_expr(k: int, value: Any) -> Any:
            if type(value) in numbers or (type(value) is str and len(value) <= longest):
                buffer.append(k)
                buffer.append(value)
            else:
                buffer.append(k)
                marks.append(len(buffer))
                buffer.append(capture(k, value))
            return value

        def hook_expr_checked(k: int, value: Any) -> Any:
            if type(value) in numbers or (type(value) is str and len(value) <= longest):
                buffer.append(k)
                buffer.append(value)
            else:
                buffer.append(k)
                marks.append(len(buffer))
                buffer.append(capture(k, value))
            if len(buffer) >= capacity:
                spill()
            return value

        def hook_stmt(k: int) -> None:
            buffer.append(k)
            buffer.append(None)
            if len(buffer) >= capacity:
                spill()

        def hook_first(ks: int, k: int, value: Any) -> Any:
            buffer.append(ks)
            buffer.append(None)
            if type(value) in numbers or (type(value) is str and len(value) <= longest):
                buffer.append(k)
                buffer.append(value)
            else:
                buffer.append(k)
                marks.append(len(buffer))
                buffer.append(capture(k, value))
            if len(buffer) >= capacity:
                spill()
            return value

        def set_capacity(entries: int) -> None:
            nonlocal capacity
            capacity = entries

        return hook_expr, hook_expr_checked, hook_stmt, hook_first, set_capacity

    def resume_at(self, seq: int, steps: int) -> None:
        """Continue numbering after `seq` (and counting after `steps`): how a run
        restored from a snapshot regenerates the numbers it had. Pending events are
        dropped: they belong to the run being replaced."""
        self._buffer.clear()
        self._marks.clear()
        self._extra.clear()
        self._seq = seq
        self._steps = steps
        self._ceiling = self.max_events
        self._update_capacity()

    def hooks(self) -> dict[str, Callable[..., Any]]:
        """The names an instrumented program calls, to bind in its namespace."""
        return {"_jv_t": self.hook_expr, "_jv_c": self.hook_expr_checked,
                "_jv_s": self.hook_stmt, "_jv_f": self.hook_first}

    # -- counters -----------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The seq of the last event recorded (flushed or not)."""
        return self._seq + len(self._buffer) // 2

    @property
    def steps(self) -> int:
        """Hook calls so far (including `start_steps`)."""
        return self._steps + len(self._buffer) // 2 - len(self._extra)

    @property
    def pending(self) -> int:
        """Events recorded and not yet delivered."""
        return len(self._buffer) // 2

    # -- engine events ------------------------------------------------------------

    def event(
        self,
        kind: str,
        line: int = 0,
        col: int = 0,
        end_line: int = 0,
        end_col: int = 0,
        expr: str = "",
        value: object = _NO_VALUE,
        *,
        text: str | None = None,
        duration_ms: float | None = None,
    ) -> TraceEvent:
        """Record an engine event in program order; return it (with its seq).

        `value` is rendered now (it may change later); pass `text` instead to record
        a string verbatim (clipped), e.g. the printed text of a `print` event. Without
        either the event has no value. `end_line` and `end_col` default to the start.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown trace event kind {kind!r}")
        if text is not None:
            limit = self.renderer.max_chars
            rendered = text if len(text) <= limit else text[: limit - 1] + "…"
            type_name = "str"
        elif value is _NO_VALUE:
            rendered = type_name = ""
        else:
            rendered, type_name = self.renderer.render(value)
        if duration_ms is not None and not math.isfinite(duration_ms):
            duration_ms = None
        if self._ceiling is not None and self.seq >= self._ceiling:
            self._at_ceiling(kind)
        event = TraceEvent(
            self.execution_id, self.seq + 1, kind, line, col, end_line or line,
            end_col or col, expr, rendered, type_name, duration_ms,
        )
        self._append_engine(event)
        return event

    def engine_event(
        self,
        kind: str,
        line: int,
        col: int,
        end_line: int,
        end_col: int,
        expr: str,
        value: object = _NO_VALUE,
        duration_ms: float | None = None,
    ) -> None:
        """`event`, for a value nothing will change: it is kept as it is and rendered
        only when a sink reads the event (often never: a sink that drops events, a
        trace level that keeps none). The engine's own events on the hot path (a Book
        call's start and end) come this way when their values are immutable, or
        containers only the engine holds.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown trace event kind {kind!r}")
        if duration_ms is not None and not math.isfinite(duration_ms):
            duration_ms = None
        if self._ceiling is not None and self.seq >= self._ceiling:
            self._at_ceiling(kind)
        self._append_engine((kind, line, col, end_line or line, end_col or col, expr, value,
                             duration_ms))

    def _at_ceiling(self, kind: str) -> None:
        """An engine event of `kind` comes when the trace holds `max_events` events."""
        assert self._ceiling is not None
        if kind not in _CLOSING_KINDS:
            self._cut_at_limit()
        # How the run ended is reported past the limit, right after its last event.
        self._drop_beyond(self._ceiling)
        self._ceiling += 1

    def _append_engine(self, entry: TraceEvent | EngineRow) -> None:
        buffer = self._buffer
        buffer.append(-1 - len(self._extra))
        buffer.append(None)
        self._extra.append(entry)
        if len(buffer) >= 2 * self.batch_size:
            self.flush()

    # -- batches ------------------------------------------------------------------

    def flush(self) -> None:
        """Render the pending events and deliver them to the sink as one batch.

        Raises `LimitExceeded("trace_events")` (after delivering the events up to the
        limit) if there are more events than `max_events`."""
        if self._ceiling is not None and self.seq > self._ceiling:
            self._cut_at_limit()
        self._deliver()

    def _deliver(self) -> None:
        buffer = self._buffer
        if buffer:
            sites: list[int] = buffer[0::2]
            values: list[Any] = buffer[1::2]
            buffer.clear()
            marks = self._marks[:]
            self._marks.clear()
            extra, self._extra = self._extra, []
            first = self._seq + 1
            self._seq += len(sites)
            self._steps += len(sites) - len(extra)
            rendered = self.renderer.render_batch(values, marks) if self._has_values else None
            batch = EventBatch(self.execution_id, first, self._table, sites, values,
                               rendered, extra, self.renderer)
            self._update_capacity()
            self.sink.deliver(batch)

    def _update_capacity(self) -> None:
        entries = 2 * self.batch_size
        pending = len(self._buffer) // 2  # `steps` and `seq`, without their calls
        if self.max_steps is not None:
            left = self.max_steps - (self._steps + pending - len(self._extra))
            entries = min(entries, 2 * max(left + 1, 1))
        if self._ceiling is not None:
            entries = min(entries, 2 * max(self._ceiling - (self._seq + pending) + 1, 1))
        self._set_capacity(entries)

    def _drop_beyond(self, seq: int) -> None:
        """Forget the pending events numbered after `seq`."""
        keep = 2 * max(seq - self._seq, 0)
        buffer = self._buffer
        if len(buffer) > keep:
            del buffer[keep:]  # in place: the hooks hold the list
            self._marks[:] = [mark for mark in self._marks if mark < keep]
            del self._extra[sum(1 for k in buffer[0::2] if k < 0):]

    def _cut_at_limit(self) -> None:
        """Deliver the events up to `max_events`, drop the rest, raise."""
        assert self._ceiling is not None
        self._drop_beyond(self._ceiling)
        self._deliver()
        raise LimitExceeded(
            "trace_events", f"the execution emitted more than {self.max_events:,} trace events"
        )

    def _spill(self) -> None:
        """Called by a hook when the buffer is full or the step limit is reached."""
        self.flush()
        if self.max_steps is not None and self._steps > self.max_steps:
            raise LimitExceeded(
                "steps", f"the program ran more than {self.max_steps:,} traced steps"
            )

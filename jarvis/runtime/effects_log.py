"""The record of an execution's completed effects, and its replay after a resume.

Every completed effect (a Book call's result or error, `now()`, `sleep`, `checkpoint`,
an `artifact` upload's key and URL or its error) is one journal record, JSON-encoded,
appended (and fsynced) before the program sees the result. After a resume, effects the
journal already holds are served from it, in order and without calling any Book; a
record that does not match what the program asks for means the program is not the one
that wrote the journal, which is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, Protocol

from jarvis.runtime.errors import BookError


class NondeterminismError(RuntimeError):
    """A resumed program asked for a different effect than the journal recorded."""


class EffectStore(Protocol):
    """Where effect records go: a durable journal or, for tests, a list."""

    @property
    def count(self) -> int: ...

    def append(self, payload: bytes) -> int: ...

    def record(self, index: int) -> bytes: ...


class MemoryEffects:
    """An in-memory effect store (tests, benchmarks, non-durable runs)."""

    def __init__(self, records: Sequence[bytes] = ()) -> None:
        self.records = list(records)

    @property
    def count(self) -> int:
        return len(self.records)

    def append(self, payload: bytes) -> int:
        self.records.append(payload)
        return len(self.records) - 1

    def record(self, index: int) -> bytes:
        return self.records[index]


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""Made once: `json.dumps` with options builds an encoder on every call."""


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_MARKERS: dict[int, Any] = {}
"""The C encoder's record of the containers it is inside (how it finds a cycle)."""
_C_ENCODE: Callable[[Any, int], Iterable[str]] | None = (
    None if c_make_encoder is None else c_make_encoder(
        _MARKERS, _not_json, encode_basestring, None, ":", ",", False, False, False))
"""`_ENCODER`'s C encoder, made once: `JSONEncoder.encode` makes one on every call,
which is a third of the cost of encoding a small record."""


def encode_value(value: Any) -> bytes:
    """A JSON value as `encode` writes it inside a record."""
    if _C_ENCODE is None:
        return _ENCODER.encode(value).encode("utf-8")
    try:
        return "".join(_C_ENCODE(value, 0)).encode("utf-8")
    except BaseException:
        # A failed encoding may leave containers in the markers; the next one must not
        # take them for a cycle.
        _MARKERS.clear()
        raise


encode: Callable[[dict[str, Any]], bytes] = encode_value
"""A record as the journal holds it (the same encoder, without a second call)."""


_BOOK_HEADS: dict[tuple[str, str], bytes] = {}
"""The start of a Book call's record, up to its "ms", by (book, procedure)."""
_BOOK_HEADS_KEPT = 1024


def round_ms(duration_ms: float) -> float:
    """A duration as records hold it: in milliseconds, to the microsecond.

    The float nearest a whole number of microseconds, as `round(duration_ms, 3)` would
    give but for ties, in a third of the time (`round` with digits goes through a
    decimal string)."""
    return int(duration_ms * 1000.0 + 0.5) / 1000


def encode_book_result(book: str, procedure: str, duration_ms: float, result: Any) -> bytes:
    """`encode(book_record(book, procedure, result, None, duration_ms))`, the same
    bytes, without building the record: the head of the record is kept per procedure."""
    return encode_book_ok(book, procedure, round_ms(duration_ms), result)


def encode_book_ok(book: str, procedure: str, ms: float, result: Any) -> bytes:
    """`encode_book_result` for a duration `ms` already rounded by `round_ms`."""
    key = (book, procedure)
    head = _BOOK_HEADS.get(key)
    if head is None:
        if len(_BOOK_HEADS) >= _BOOK_HEADS_KEPT:
            _BOOK_HEADS.clear()
        head = _BOOK_HEADS[key] = encode({"k": "book", "b": book, "p": procedure})[:-1]
    # `%r` of a finite float is its JSON form, and `%d` of an int (not a bool) is too,
    # digit limit included; the json module's C encoder writes them the same way.
    kind = type(result)
    if kind is int:
        return b'%b,"ms":%r,"ok":%d}' % (head, ms, result)
    if kind is str:
        return b'%b,"ms":%r,"ok":%b}' % (head, ms, encode_basestring(result).encode("utf-8"))
    return b'%b,"ms":%r,"ok":%b}' % (head, ms, encode_value(result))


def decode(payload: bytes) -> dict[str, Any]:
    record = json.loads(payload.decode("utf-8"))
    if not isinstance(record, dict) or "k" not in record:
        raise NondeterminismError("a journal record is not an effect record")
    return record


def book_record(book: str, procedure: str, result: Any, error: BookError | None,
                duration_ms: float) -> dict[str, Any]:
    record: dict[str, Any] = {"k": "book", "b": book, "p": procedure,
                              "ms": round_ms(duration_ms)}
    if error is None:
        record["ok"] = result
    else:
        record["err"] = {"type": error.error_type, "message": error.message,
                         "status": error.status}
    return record


def book_outcome(record: dict[str, Any]) -> tuple[Any, BookError | None]:
    if "err" in record:
        err = record["err"]
        return None, BookError(record["b"], record["p"], str(err["type"]), str(err["message"]),
                               err.get("status"))
    return record.get("ok"), None


def expect(record: dict[str, Any], kind: str, index: int, **fields: Any) -> None:
    """Refuse to replay a record of another kind or for another call."""
    found = {key: record.get(key) for key in fields}
    if record.get("k") != kind or found != fields:
        wanted = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        raise NondeterminismError(
            f"effect {index + 1}: the journal holds {record.get('k')!r} {found}, but the "
            f"program now asks for {kind!r} {wanted}; the program or its inputs changed "
            "since this execution started"
        )

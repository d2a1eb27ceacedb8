"""Status events encoded straight to JSON, without building a `StatusEvent` model.

A worker sends two or three status events per execution; making each a pydantic model
(validation of every field) and dumping it cost a good part of a trivial execution's
time on the worker. `encode_status` writes the same document with `json.dumps`, after
checking the fields as the model would; whatever it cannot vouch for (a value the model
validates in a way it does not mirror: an `ErrorInfo` with extra keys, a result with a
NaN, a counter that is not a plain int) it leaves to the model: it returns None and the
caller builds the model, which encodes it or says what is wrong.

The document is the model's: the same keys in the same order, a UTC timestamp written
as pydantic writes one (`2025-01-31T12:00:00.250000Z`, no fraction when it is zero).
Numbers in `result` are written as Python writes them (`1e+16` where pydantic writes
`1e16`): the same values to any JSON reader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from jarvis.runtime.statedir import validate_execution_id

_ERROR_KEYS: Final = frozenset({"type", "message", "line", "col"})

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                            default=str)
"""Compact, UTF-8 text, no NaN or infinity (which JSON has not); what JSON cannot hold
becomes its str(), as `status_event` does with a result."""


def utc_timestamp(when: datetime) -> str:
    """`when` in UTC as RFC 3339 text, as pydantic serialises an aware datetime."""
    text = when.astimezone(UTC).isoformat()  # microseconds only when there are some
    return text[:-6] + "Z"  # "+00:00"


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _error(error: Mapping[str, Any]) -> dict[str, Any] | None:
    """The error object, or None when the model must judge it."""
    if not _ERROR_KEYS.issuperset(error) or type(error.get("type")) is not str \
            or type(error.get("message")) is not str:
        return None
    line, col = error.get("line"), error.get("col")
    if (line is not None and not _count(line)) or (col is not None and not _count(col)):
        return None
    return {"type": error["type"], "message": error["message"], "line": line, "col": col}


def encode_status(
    version: int,
    execution_id: str,
    status: str,
    statuses: tuple[str, ...],
    *,
    worker: str,
    attempt: int,
    result: Mapping[str, Any] | None,
    error: Mapping[str, Any] | None,
    counters: Mapping[str, int] | None,
    ts: datetime | None,
) -> bytes | None:
    """A status event as `StatusEvent(...).model_dump_json()` encodes it (`version`: the
    protocol's, `statuses`: those it allows), or None when the model has to look at it."""
    if status not in statuses or type(worker) is not str or not worker \
            or not _count(attempt) or (ts is not None and ts.tzinfo is None):
        return None
    try:
        validate_execution_id(execution_id)
    except ValueError:
        return None
    counted = dict(counters or {})
    if not all(type(name) is str and _count(value) for name, value in counted.items()):
        return None
    checked_error = None
    if error is not None:
        if not isinstance(error, Mapping):
            return None
        checked_error = _error(error)
        if checked_error is None:
            return None
    if result is not None and not isinstance(result, Mapping):
        return None
    document = {
        "v": version, "execution_id": execution_id, "status": status,
        "ts": utc_timestamp(ts if ts is not None else datetime.now(UTC)),
        "worker": worker, "attempt": attempt,
        "result": None if result is None else dict(result),
        "error": checked_error, "counters": counted,
    }
    try:
        return _ENCODER.encode(document).encode("utf-8")
    except (ValueError, TypeError, RecursionError):
        # NaN or infinity, keys JSON cannot have, a cycle: as the model says.
        return None

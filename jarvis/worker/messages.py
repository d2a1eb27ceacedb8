"""The worker's messages on Kafka, defined once: commands in, status and dead letters out.

    spy_control      StartCommand | StopCommand   (JSON, key = execution id)
    spy_status       StatusEvent                  (JSON, key = execution id)
    spy_control.dlq  DeadLetter                   (JSON, key = the refused message's key)

Every model is closed (unknown fields are refused), strict (no "5" for 5) and carries
the protocol version `v` = 1. The JSON Schema files in `schemas/` are generated from
these models (`python -m jarvis.worker.messages --write-schemas`), and docs/events.md
describes them with examples; a test keeps all three in step.

`parse_command` is the only way bytes from `spy_control` become a command. It never
raises: whatever arrives, it returns a command or a `Rejection` whose reason names the
field and the problem, for the dead-letter record and the `rejected` status event.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NoReturn, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    NonNegativeInt,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from jarvis.runtime.statedir import MAX_EXECUTION_ID_LENGTH, validate_execution_id
from jarvis.settings import Limits, TraceLevel
from jarvis.worker.statusjson import encode_status

PROTOCOL_VERSION: Final = 1
"""The version every message carries in `v`; a message of another version is refused."""

MAX_SOURCE_CHARS: Final = 1_000_000
"""The longest source a start may carry inline: the compiler's limit in bytes
(`jarvis.compiler.source.MAX_SOURCE_BYTES`), so a source that is surely too long is
refused here already. The compiler checks the bytes."""

MAX_OBJECT_KEY_BYTES: Final = 1024
"""S3's own limit on an object key, in UTF-8 bytes."""

MAX_REASON_CHARS: Final = 1000
"""The longest reason a stop command may give."""

MAX_JSON_DEPTH: Final = 64
"""How deeply arrays and objects may nest in a command (the command itself is level 1)."""

MAX_INT_DIGITS: Final = 1000
"""The most digits an integer in a command may have."""

DLQ_MAX_VALUE_BYTES: Final = 512 << 10
"""Bytes of a refused message kept in its dead letter: base64 of this still fits in a
Kafka message of the default 1 MB limit."""

DLQ_MAX_KEY_BYTES: Final = 1024
"""Bytes of a refused message's key kept in its dead letter."""

DLQ_MAX_REASON_CHARS: Final = 4000
"""The longest reason a dead letter carries; longer ones are cut."""

Status = Literal[
    "started", "resumed", "checkpointed", "suspended", "completed", "failed", "cancelled",
    "rejected", "duplicate",
]
STATUSES: Final[tuple[str, ...]] = get_args(Status)
"""Every status a `StatusEvent` may report."""

RejectionCode = Literal[
    "too_large", "not_utf8", "not_json", "unsupported_version", "unknown_type", "invalid",
    "key_mismatch", "limits_too_high",
]

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR: Final = Path(__file__).with_name("schemas")


# -- field types ------------------------------------------------------------------------


def _check_version(value: Any) -> Any:
    # Literal[1] alone would take `true` and `1.0`, which compare equal to 1.
    if type(value) is not int or value != PROTOCOL_VERSION:
        raise ValueError(
            f"protocol version {_show(value)} is not supported; this is version "
            f"{PROTOCOL_VERSION}"
        )
    return value


def _check_execution_id(value: str) -> str:
    return validate_execution_id(value)


def _check_object_key(value: str) -> str:
    problem = _object_key_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _object_key_problem(value: str) -> str | None:
    if value.startswith("s3://"):
        bucket, slash, key = value[len("s3://"):].partition("/")
        if not _is_bucket_name(bucket):
            return (
                f"bucket {_show(bucket)} is not a valid S3 bucket name (3 to 63 characters: "
                "lowercase letters, digits, '.' and '-', starting and ending with a letter or "
                "digit)"
            )
        if not slash:
            return "names a bucket but no object key"
    elif "://" in value:
        return "must be an s3://bucket/key URI or a key in the worker's store, not another URL"
    else:
        key = value
    if not key:
        return "the object key is empty"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_OBJECT_KEY_BYTES:
        return f"the object key is longer than {MAX_OBJECT_KEY_BYTES} bytes"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        return "the object key holds a control character"
    if key.startswith("/"):
        return "the object key starts with '/'"
    if any(part in (".", "..") for part in key.split("/")):
        return "the object key has a '.' or '..' segment"
    return None


_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_BUCKET_EDGE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _is_bucket_name(name: str) -> bool:
    return (
        3 <= len(name) <= 63
        and set(name) <= _BUCKET_CHARS
        and name[0] in _BUCKET_EDGE_CHARS
        and name[-1] in _BUCKET_EDGE_CHARS
    )


# The same rules for the JSON Schema: no control characters; an s3:// URI or a bare key
# (no other scheme); a key of 1 to 1024 characters without a leading '/' or a '.' or '..'
# segment. A schema counts characters, so the byte length is checked by the models alone.
OBJECT_KEY_PATTERN: Final = (
    r"^(?![\s\S]*[\x00-\x1f\x7f])"
    r"(?:s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/|(?![\s\S]*://))"
    rf"(?!/)(?!(?:.*/)?\.\.?(?:/|$)).{{1,{MAX_OBJECT_KEY_BYTES}}}$"
)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


ExecutionId = Annotated[
    str,
    AfterValidator(_check_execution_id),
    WithJsonSchema({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_EXECUTION_ID_LENGTH,
        # `(?![\s\S])` is the end of the string: Python's `$` also matches before a final
        # newline, and this must mean the same to every JSON Schema validator.
        "pattern": "^[A-Za-z0-9._-]+(?![\\s\\S])",
        "not": {"enum": [".", ".."]},
        "description": (
            "The execution's id, also the Kafka key: 1 to 128 ASCII letters, digits, "
            "'-', '_' and '.', not '.' or '..'."
        ),
    }),
]

ObjectKey = Annotated[
    str,
    AfterValidator(_check_object_key),
    WithJsonSchema({
        "type": "string",
        "minLength": 1,
        "maxLength": len("s3://") + 63 + 1 + MAX_OBJECT_KEY_BYTES,
        "pattern": OBJECT_KEY_PATTERN,
    }),
]

Version = Annotated[
    Literal[1],
    BeforeValidator(_check_version),
    Field(description="The protocol version: 1."),
]

UtcTimestamp = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    Field(description="When it happened: RFC 3339, UTC (e.g. 2025-01-31T12:00:00.250000Z)."),
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Outgoing(_Message):
    # Producers of these always send every field, so the schema says so.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


# -- commands (spy_control) -------------------------------------------------------------


def _program_schema(schema: dict[str, Any]) -> None:
    # Each field is a plain string in JSON (null is refused), and exactly one is present.
    for prop in schema["properties"].values():
        choices = prop.pop("anyOf")
        prop.pop("default", None)
        prop.update(next(choice for choice in choices if choice.get("type") != "null"))
    schema["oneOf"] = [{"required": ["source"]}, {"required": ["uri"]}]


def _is_none(value: Any) -> bool:
    return value is None


class Program(_Message):
    """The program to run: its source text, or where the worker reads it. Exactly one."""

    model_config = ConfigDict(json_schema_extra=_program_schema)

    source: str | None = Field(
        default=None,
        max_length=MAX_SOURCE_CHARS,
        exclude_if=_is_none,
        description=f"The SPy source, at most {MAX_SOURCE_CHARS} characters.",
    )
    uri: ObjectKey | None = Field(
        default=None,
        exclude_if=_is_none,
        description=(
            "Where the source is: s3://<bucket>/<key> (the worker serves only its own "
            "bucket) or a bare key in the worker's store (JARVIS_S3__PREFIX + key, or its "
            f"local artifact directory). Keys are at most {MAX_OBJECT_KEY_BYTES} UTF-8 bytes, "
            "without control characters, a leading '/' or '.'/'..' segments."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [name for name in ("source", "uri") if name in data]
            if len(given) != 1:
                raise ValueError(
                    "give exactly one of 'source' (the program text) or 'uri' (where to read it)"
                )
            if data[given[0]] is None:
                raise ValueError(f"{given[0]} must be a string, not null")
        return data


def _limit_doc(name: str) -> str | None:
    return Limits.model_fields[name].description


class LimitOverrides(_Message):
    """Limits a start asks for, each one at most the worker's own (see `effective_limits`)."""

    max_steps: int | None = Field(
        default=None, ge=1, description=_limit_doc("max_steps")
    )
    max_seconds: float | None = Field(
        default=None, gt=0, description=_limit_doc("max_seconds")
    )
    max_output_bytes: int | None = Field(
        default=None, ge=0, description=_limit_doc("max_output_bytes")
    )
    max_trace_events: int | None = Field(
        default=None, ge=0, description=_limit_doc("max_trace_events")
    )
    max_recursion_depth: int | None = Field(
        default=None, ge=1, description=_limit_doc("max_recursion_depth")
    )
    max_book_calls: int | None = Field(
        default=None, ge=0, description=_limit_doc("max_book_calls")
    )
    max_snapshot_bytes: int | None = Field(
        default=None, ge=1, description=_limit_doc("max_snapshot_bytes")
    )
    max_artifact_bytes: int | None = Field(
        default=None, ge=0, le=128 << 20, description=_limit_doc("max_artifact_bytes")
    )
    max_memory_bytes: int | None = Field(
        default=None, ge=128 << 20, description=_limit_doc("max_memory_bytes")
    )
    max_cpu_seconds: float | None = Field(
        default=None, gt=0, description=_limit_doc("max_cpu_seconds")
    )


class StartCommand(_Message):
    """Run an execution, or resume it when it has a checkpoint."""

    v: Version
    type: Literal["start"]
    execution_id: ExecutionId
    program: Program
    inputs: dict[str, JsonValue] = Field(
        default_factory=dict, description="The program's inputs, by name."
    )
    limits: LimitOverrides | None = Field(
        default=None,
        description="Tighter limits for this execution; omitted ones are the worker's.",
    )
    trace: TraceLevel | None = Field(
        default=None,
        description="Which trace events to emit; null means the worker's JARVIS_TRACE_LEVEL.",
    )

    def effective_limits(self, worker_limits: Limits) -> Limits:
        """The limits this execution runs under on a worker configured with `worker_limits`."""
        return effective_limits(worker_limits, self.limits)


class StopCommand(_Message):
    """Stop an execution: `suspend` keeps its checkpoint to resume later, `cancel` ends it."""

    v: Version
    type: Literal["stop"]
    execution_id: ExecutionId
    mode: Literal["suspend", "cancel"]
    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON_CHARS,
        description="Why, for people reading the status events.",
    )


Command = Annotated[StartCommand | StopCommand, Field(discriminator="type")]
"""What `spy_control` carries."""


# -- status events (spy_status) ---------------------------------------------------------


class ErrorInfo(_Outgoing):
    """Why an execution failed or a command was refused."""

    type: str = Field(description="The error's type name, e.g. ZeroDivisionError.")
    message: str
    line: NonNegativeInt | None = Field(
        default=None, description="Where in the program, when the error has a position."
    )
    col: NonNegativeInt | None = None


class StatusEvent(_Outgoing):
    """One step in the life of an execution, as the worker reports it."""

    v: Version = PROTOCOL_VERSION
    execution_id: ExecutionId
    status: Status
    ts: UtcTimestamp = Field(default_factory=_now)
    worker: str = Field(min_length=1, description="The id of the worker that reports it.")
    attempt: NonNegativeInt = Field(
        default=0,
        description=(
            "The run attempt: the fencing token of the worker's lease, larger for every "
            "new owner. 0 when no run was attempted (rejected, duplicate)."
        ),
    )
    result: dict[str, JsonValue] | None = Field(
        default=None, description="The program's outputs so far, by name."
    )
    error: ErrorInfo | None = Field(
        default=None, description="Why it failed, or why the command was refused."
    )
    counters: dict[str, NonNegativeInt] = Field(
        default_factory=dict, description="What the run used: steps, book_calls, ..."
    )


# -- dead letters (spy_control.dlq) -----------------------------------------------------


class RawBytes(_Outgoing):
    """Bytes as they arrived: as text when they are UTF-8, else base64; maybe cut short."""

    encoding: Literal["text", "base64"]
    data: str
    length: NonNegativeInt = Field(description="How many bytes the original had.")
    truncated: bool = Field(description="True when `data` holds only the first bytes.")

    def decode(self) -> bytes:
        """The bytes kept (all of them unless `truncated`)."""
        if self.encoding == "text":
            return self.data.encode("utf-8")
        return base64.b64decode(self.data)


class DeadLetter(_Outgoing):
    """A message of `spy_control` that was refused, with where it came from and why."""

    v: Version = PROTOCOL_VERSION
    ts: UtcTimestamp = Field(default_factory=_now)
    worker: str | None = Field(default=None, description="The worker that refused it.")
    reason: str = Field(description="What is wrong with the message: the field and the problem.")
    execution_id: ExecutionId | None = Field(
        default=None, description="The execution it named, when that could be read."
    )
    topic: str = Field(description="Where the message was read: topic, partition, offset.")
    partition: int
    offset: int
    key: RawBytes | None = Field(description="The message's key; null when it had none.")
    value: RawBytes | None = Field(description="The message's value; null for a tombstone.")


# -- parsing commands -------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A control message that is not an acceptable command, and why."""

    reason: str
    execution_id: str | None = None
    code: RejectionCode = "invalid"


class LimitsNotAllowed(ValueError):
    """A start asked for a limit above the worker's own."""


def effective_limits(worker_limits: Limits, requested: LimitOverrides | None) -> Limits:
    """The worker's limits, tightened by those a start asked for.

    A start may only lower limits: its requests are the worker's maxima at most, and
    raise `LimitsNotAllowed` otherwise (`parse_command(..., worker_limits=...)` refuses
    such starts before they get this far).
    """
    if requested is None:
        return worker_limits
    wanted = {name: value for name, value in requested if value is not None}
    too_high = [
        f"{name} {value} is above the worker's {getattr(worker_limits, name)}"
        for name, value in wanted.items()
        if value > getattr(worker_limits, name)
    ]
    if too_high:
        raise LimitsNotAllowed("limits may only be lowered: " + "; ".join(too_high))
    return worker_limits.model_copy(update=wanted)


def parse_command(
    raw: bytes | None,
    max_bytes: int,
    *,
    key: bytes | None = None,
    worker_limits: Limits | None = None,
) -> Command | Rejection:
    """The command in a `spy_control` message's value, or why it is refused; never raises.

    Messages longer than `max_bytes` are refused before they are decoded. When `key`
    is given it must be the command's execution id (messages without a key are
    accepted). When `worker_limits` is given, a start asking for higher limits is refused.
    """
    try:
        return _parse(raw, max_bytes, key, worker_limits)
    except Exception as exc:  # a bug here must not take the worker down with it
        return Rejection(f"the command could not be checked: {type(exc).__name__}: {exc}")


def _parse(
    raw: bytes | None, max_bytes: int, key: bytes | None, worker_limits: Limits | None
) -> Command | Rejection:
    if raw is not None and not isinstance(raw, bytes | bytearray | memoryview):
        return Rejection(f"a message value is bytes, not {type(raw).__name__}")
    if raw is None or len(raw) == 0:
        return Rejection("empty message: a command is a JSON object", code="not_json")
    if len(raw) > max_bytes:
        return Rejection(
            f"message is {len(raw)} bytes; commands may be at most {max_bytes}",
            code="too_large",
        )
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(f"not UTF-8: {exc.reason} at byte {exc.start}", code="not_utf8")
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        document = _COMMAND_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return Rejection(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="not_json"
        )
    except RecursionError:
        return Rejection(f"not JSON: nested deeper than {MAX_JSON_DEPTH} levels", code="not_json")
    except ValueError as exc:  # duplicate keys, NaN, integers of a thousand digits
        return Rejection(f"not JSON: {exc}", code="not_json")
    problem = _json_problem(document)
    if problem is not None:
        return Rejection(f"not JSON: {problem}", _execution_id_in(document), code="not_json")
    if not isinstance(document, dict):
        return Rejection(f"a command is a JSON object, not {_json_type(document)}")
    execution_id = _execution_id_in(document)
    if "v" in document:
        try:
            _check_version(document["v"])
        except ValueError as exc:
            return Rejection(f"v: {exc}", execution_id, code="unsupported_version")
    kind = document.get("type")
    model: type[StartCommand | StopCommand]
    if kind == "start":
        model = StartCommand
    elif kind == "stop":
        model = StopCommand
    elif "type" not in document:
        return Rejection("type: is required ('start' or 'stop')", execution_id)
    else:
        return Rejection(
            f"unknown command type {_show(kind)}; expected 'start' or 'stop'",
            execution_id,
            code="unknown_type",
        )
    try:
        command = model.model_validate(document, strict=True)
    except ValidationError as exc:
        return Rejection(f"invalid {kind} command: {_describe(exc)}", execution_id)
    if key is not None and bytes(key) != command.execution_id.encode("ascii"):
        return Rejection(
            f"the message key {_show(bytes(key))} is not the execution id "
            f"{command.execution_id!r}; keys of spy_control are execution ids",
            execution_id,
            code="key_mismatch",
        )
    if worker_limits is not None and isinstance(command, StartCommand):
        try:
            command.effective_limits(worker_limits)
        except LimitsNotAllowed as exc:
            return Rejection(str(exc), execution_id, code="limits_too_high")
    return command


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins, so a command may not have them.
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _DuplicateKey(f"key {_show(name)} appears twice in one object")
        result[name] = value
    return result


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _parse_int(digits: str) -> int:
    # Python refuses to convert longer ones anyway, with advice meant for programmers.
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(digits)


_COMMAND_DECODER = json.JSONDecoder(
    object_pairs_hook=_refuse_duplicates,
    parse_constant=_refuse_constant,
    parse_int=_parse_int,
)
"""What `json.loads(text, object_pairs_hook=..., ...)` would make anew for every command."""


def _json_problem(document: Any) -> str | None:
    """What makes a parsed document unfit to pass on, if anything: depth, bad strings, inf."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
            if isinstance(value, dict):
                pending.extend((name, depth) for name in value)
                pending.extend((item, depth + 1) for item in value.values())
            else:
                pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds an unpaired surrogate (\\ud800-\\udfff)"
        elif isinstance(value, float) and not math.isfinite(value):
            return "a number is too large to be a float"
    return None


def _execution_id_in(document: Any) -> str | None:
    if not isinstance(document, dict):
        return None
    candidate = document.get("execution_id")
    if not isinstance(candidate, str):
        return None
    try:
        return validate_execution_id(candidate)
    except ValueError:
        return None


_MAX_PROBLEMS_SHOWN = 5


def _describe(error: ValidationError) -> str:
    """Pydantic's errors as one line: `field.path: problem; ...`."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        loc = item["loc"]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        problems.append(f"{where.lstrip('.') or '(command)'}: {_problem(item)}")
    shown = "; ".join(problems[:_MAX_PROBLEMS_SHOWN])
    if len(problems) > _MAX_PROBLEMS_SHOWN:
        shown += f"; and {len(problems) - _MAX_PROBLEMS_SHOWN} more"
    return shown


def _problem(item: Any) -> str:
    kind = item["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind in ("model_type", "dict_type"):
        return "should be a JSON object"
    message = str(item["msg"])
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _show(value: Any, width: int = 60) -> str:
    """A short repr of a foreign value, for a reason that must stay readable."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# -- producing events -------------------------------------------------------------------


def encode(message: BaseModel) -> bytes:
    """A message as compact JSON, ready to be a Kafka value."""
    return message.model_dump_json().encode("utf-8")


def status_event(
    execution_id: str,
    status: Status,
    *,
    worker: str,
    attempt: int = 0,
    result: Mapping[str, Any] | None = None,
    error: ErrorInfo | Mapping[str, Any] | None = None,
    counters: Mapping[str, int] | None = None,
    ts: datetime | None = None,
) -> bytes:
    """An encoded `StatusEvent`; `result` is made JSON (tuples become lists, others str).

    Written straight to JSON when statusjson.py can vouch for every field (the model's
    document, without building the model); else through the model, which also says
    what is wrong with a field."""
    fast = encode_status(
        PROTOCOL_VERSION, execution_id, status, STATUSES, worker=worker, attempt=attempt,
        result=result, error=error.model_dump() if isinstance(error, ErrorInfo) else error,
        counters=counters, ts=ts)
    if fast is not None:
        return fast
    fields: dict[str, Any] = {
        "execution_id": execution_id,
        "status": status,
        "worker": worker,
        "attempt": attempt,
        "result": None if result is None else json.loads(json.dumps(result, default=str)),
        "error": error if error is None or isinstance(error, ErrorInfo) else ErrorInfo(**error),
        "counters": dict(counters or {}),
    }
    if ts is not None:
        fields["ts"] = ts
    return encode(StatusEvent(**fields))


def dead_letter(
    value: bytes | None,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    *,
    worker: str | None = None,
    execution_id: str | None = None,
    ts: datetime | None = None,
) -> bytes:
    """An encoded `DeadLetter` for a refused message; never raises on what the message held."""
    try:
        named = None if execution_id is None else validate_execution_id(execution_id)
    except ValueError:
        named = None
    if len(reason) > DLQ_MAX_REASON_CHARS:
        reason = reason[: DLQ_MAX_REASON_CHARS - 3] + "..."
    letter = DeadLetter(
        ts=ts or _now(),
        worker=worker,
        reason=reason,
        execution_id=named,
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else raw_bytes(key, DLQ_MAX_KEY_BYTES),
        value=None if value is None else raw_bytes(value, DLQ_MAX_VALUE_BYTES),
    )
    return encode(letter)


def raw_bytes(data: bytes, limit: int) -> RawBytes:
    """`data` for a dead letter: its first `limit` bytes, as text if it is UTF-8."""
    data = bytes(data)
    truncated = len(data) > limit
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        encoded = base64.b64encode(data[:limit]).decode("ascii")
        return RawBytes(encoding="base64", data=encoded, length=len(data), truncated=truncated)
    # Valid UTF-8 cut short can only be broken in its last character: drop it.
    text = data[:limit].decode("utf-8", errors="ignore")
    return RawBytes(encoding="text", data=text, length=len(data), truncated=truncated)


# -- JSON Schema files ------------------------------------------------------------------


def json_schemas() -> dict[str, dict[str, Any]]:
    """The schema of each message, by file name: commands as producers may write them,
    events as the worker writes them (every field present)."""
    generated = {
        "start.schema.json": StartCommand.model_json_schema(mode="validation"),
        "stop.schema.json": StopCommand.model_json_schema(mode="validation"),
        "status.schema.json": StatusEvent.model_json_schema(mode="serialization"),
        "dlq.schema.json": DeadLetter.model_json_schema(mode="serialization"),
    }
    return {name: {"$schema": SCHEMA_DIALECT, **schema} for name, schema in generated.items()}


def schema_text(schema: Mapping[str, Any]) -> str:
    """How a schema file is written: sorted keys, two-space indents, a final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file into `directory`; returns the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, schema in json_schemas().items():
        path = directory / name
        text = schema_text(schema)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def stale_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """The schema files in `directory` that are missing or differ from the models."""
    stale = []
    for name, schema in json_schemas().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != schema_text(schema):
            stale.append(name)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jarvis.worker.messages",
        description="Write or check the JSON Schema files of the worker's messages.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-schemas", action="store_true",
                        help="regenerate the schema files from the models")
    action.add_argument("--check", action="store_true",
                        help="exit 1 if a schema file differs from the models")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR,
                        help=f"where the files are (default: {SCHEMA_DIR})")
    args = parser.parse_args(argv)
    if args.write_schemas:
        for path in write_schemas(args.dir):
            print(f"wrote {path}")
        return 0
    stale = stale_schemas(args.dir)
    for name in stale:
        print(f"{args.dir / name} is out of date; run with --write-schemas", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

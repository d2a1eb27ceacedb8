"""The worker's messages: commands parse or are refused with a reason, never an exception;
the schema files match the models; the examples of docs/events.md are valid."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from jarvis.compiler.source import MAX_SOURCE_BYTES
from jarvis.runtime.statedir import validate_execution_id
from jarvis.settings import Limits
from jarvis.worker import messages
from jarvis.worker.messages import (
    MAX_JSON_DEPTH,
    MAX_SOURCE_CHARS,
    OBJECT_KEY_PATTERN,
    PROTOCOL_VERSION,
    STATUSES,
    Command,
    DeadLetter,
    ErrorInfo,
    LimitOverrides,
    LimitsNotAllowed,
    Program,
    RawBytes,
    Rejection,
    StartCommand,
    StatusEvent,
    StopCommand,
    dead_letter,
    effective_limits,
    encode,
    parse_command,
    raw_bytes,
    status_event,
)
from jarvis.worker.statusjson import encode_status

ROOT = Path(__file__).resolve().parent.parent
EVENTS_DOC = ROOT / "docs" / "events.md"
MAX = 2 << 20

START_SOURCE: dict[str, Any] = {
    "v": 1,
    "type": "start",
    "execution_id": "lead-1",
    "program": {"source": "output('x', inputs['n'] + 1)\n"},
    "inputs": {"n": 41, "tags": ["a", {"b": None}], "ratio": 0.5},
    "limits": {"max_steps": 1000, "max_seconds": 2.5},
    "trace": "full",
}
START_URI: dict[str, Any] = {
    "v": 1,
    "type": "start",
    "execution_id": "invoice.4711",
    "program": {"uri": "s3://acme-programs/invoice/v3.spy"},
}
STOP: dict[str, Any] = {
    "v": 1, "type": "stop", "execution_id": "lead-1", "mode": "suspend", "reason": "maintenance",
}


def raw(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def schema_validator(name: str) -> Any:
    schema = json.loads((messages.SCHEMA_DIR / f"{name}.schema.json").read_text("utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


SCHEMAS = {name: schema_validator(name) for name in ("start", "stop", "status", "dlq")}


# -- valid commands -----------------------------------------------------------------------


@pytest.mark.parametrize("document", [START_SOURCE, START_URI, STOP], ids=["source", "uri", "stop"])
def test_valid_commands_parse_and_round_trip(document: dict[str, Any]) -> None:
    command = parse_command(raw(document), MAX, key=document["execution_id"].encode())
    assert isinstance(command, StartCommand | StopCommand)
    assert command.execution_id == document["execution_id"]
    assert parse_command(encode(command), MAX) == command
    SCHEMAS[document["type"]].validate(json.loads(encode(command)))


def test_a_start_gives_the_worker_what_it_needs() -> None:
    command = parse_command(raw(START_SOURCE), MAX)
    assert isinstance(command, StartCommand)
    assert command.program == Program(source="output('x', inputs['n'] + 1)\n")
    assert command.program.uri is None
    assert command.inputs == START_SOURCE["inputs"]
    assert command.trace == "full"
    limits = command.effective_limits(Limits())
    assert (limits.max_steps, limits.max_seconds) == (1000, 2.5)
    assert limits.max_book_calls == Limits().max_book_calls

    stored = parse_command(raw(START_URI), MAX)
    assert isinstance(stored, StartCommand)
    assert (stored.program.source, stored.program.uri) == (None, "s3://acme-programs/invoice/v3.spy")
    assert stored.inputs == {} and stored.limits is None and stored.trace is None
    assert stored.effective_limits(Limits(max_steps=7)) == Limits(max_steps=7)


@pytest.mark.parametrize("uri", [
    "s3://acme-programs/invoice/v3.spy", "s3://a.b-c/k", "programs/lead.spy", "lead.spy",
    ".hidden/a..b", "s3://bucket/a://b", "k" * 1024,
])
def test_program_uris_accepted(uri: str) -> None:
    assert isinstance(parse_command(raw({**START_URI, "program": {"uri": uri}}), MAX),
                      StartCommand)


def test_the_command_union_dispatches_on_type() -> None:
    adapter: TypeAdapter[Command] = TypeAdapter(Command)
    assert isinstance(adapter.validate_python(STOP), StopCommand)
    assert isinstance(adapter.validate_json(raw(START_URI)), StartCommand)


def test_a_program_is_encoded_without_the_missing_half() -> None:
    assert json.loads(encode(Program(uri="a/b.spy"))) == {"uri": "a/b.spy"}
    with pytest.raises(ValidationError, match="exactly one"):
        Program(source="x", uri=None)


# -- refused commands ---------------------------------------------------------------------


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(base)
    for name, value in changes.items():
        if value is _DROP:
            document.pop(name, None)
        else:
            document[name] = value
    return document


_DROP = object()

REFUSED: list[tuple[str, bytes | None, str, str, str | None]] = [
    # (id, value, code, words the reason must hold, execution id read)
    ("none", None, "not_json", "empty message", None),
    ("empty", b"", "not_json", "empty message", None),
    ("latin-1", b'{"v": 1, "type": "st\xe4rt"}', "not_utf8", "not UTF-8", None),
    ("truncated", b'{"v": 1, "type": "start"', "not_json", "not JSON", None),
    ("text", b"start lead-1", "not_json", "not JSON", None),
    ("bom", b'\xef\xbb\xbf{"v": 1}', "not_json", "not JSON", None),
    ("nan", b'{"v": 1, "inputs": {"x": NaN}}', "not_json", "NaN", None),
    ("huge float", b'{"execution_id": "e1", "x": 1e400}', "not_json", "too large", "e1"),
    ("huge int", b'{"x": 1' + b"0" * 2000 + b"}", "not_json", "digits", None),
    ("duplicate key", b'{"type": "stop", "type": "start"}', "not_json", "'type' appears twice",
     None),
    ("surrogate", b'{"execution_id": "e1", "x": "\\ud800"}', "not_json", "surrogate", "e1"),
    ("deep", b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "not_json",
     "nested deeper", None),
    ("very deep", b"[" * 100_000, "not_json", "nested deeper", None),
    ("array", b"[1, 2]", "invalid", "JSON object, not an array", None),
    ("string", b'"start"', "invalid", "JSON object, not a string", None),
    ("version 2", raw(with_(STOP, v=2)), "unsupported_version", "version 2", "lead-1"),
    ("version true", raw(with_(STOP, v=True)), "unsupported_version", "version True", "lead-1"),
    ("version 1.0", raw(with_(STOP, v=1.0)), "unsupported_version", "version 1.0", "lead-1"),
    ("no version", raw(with_(STOP, v=_DROP)), "invalid", "v: is required", "lead-1"),
    ("no type", raw(with_(STOP, type=_DROP)), "invalid", "type: is required", "lead-1"),
    ("unknown type", raw(with_(STOP, type="pause")), "unknown_type",
     "unknown command type 'pause'", "lead-1"),
    ("type not a string", raw(with_(STOP, type=["stop"])), "unknown_type",
     "unknown command type ['stop']", "lead-1"),
    ("unknown field", raw(with_(START_URI, input={})), "invalid",
     "input: is not a known field", "invoice.4711"),
    ("bad id", raw(with_(STOP, execution_id="../etc")), "invalid",
     "execution_id: execution id '../etc' may hold only", None),
    ("dot id", raw(with_(STOP, execution_id="..")), "invalid", "execution_id:", None),
    ("long id", raw(with_(STOP, execution_id="x" * 129)), "invalid", "129 characters", None),
    ("id not a string", raw(with_(STOP, execution_id=7)), "invalid",
     "execution_id: input should be a valid string", None),
    ("no id", raw(with_(STOP, execution_id=_DROP)), "invalid", "execution_id: is required", None),
    ("mode", raw(with_(STOP, mode="kill")), "invalid",
     "mode: input should be 'suspend' or 'cancel'", "lead-1"),
    ("long reason", raw(with_(STOP, reason="r" * 1001)), "invalid", "reason:", "lead-1"),
    ("no program", raw(with_(START_URI, program=_DROP)), "invalid", "program: is required",
     "invoice.4711"),
    ("both programs", raw(with_(START_URI, program={"source": "x", "uri": "a/b"})), "invalid",
     "program: give exactly one of 'source'", "invoice.4711"),
    ("empty program", raw(with_(START_URI, program={})), "invalid", "exactly one",
     "invoice.4711"),
    ("null source", raw(with_(START_URI, program={"source": None})), "invalid",
     "source must be a string, not null", "invoice.4711"),
    ("program string", raw(with_(START_URI, program="x = 1")), "invalid",
     "program: should be a JSON object", "invoice.4711"),
    ("source too long", raw(with_(START_URI, program={"source": "x" * (MAX_SOURCE_CHARS + 1)})),
     "invalid", "program.source: string should have at most", "invoice.4711"),
    ("http uri", raw(with_(START_URI, program={"uri": "https://example.com/a.spy"})), "invalid",
     "program.uri: must be an s3://bucket/key URI", "invoice.4711"),
    ("bucket", raw(with_(START_URI, program={"uri": "s3://Acme_Programs/a.spy"})), "invalid",
     "bucket 'Acme_Programs' is not a valid S3 bucket name", "invoice.4711"),
    ("no key", raw(with_(START_URI, program={"uri": "s3://acme-programs"})), "invalid",
     "no object key", "invoice.4711"),
    ("dot dot", raw(with_(START_URI, program={"uri": "programs/../secrets"})), "invalid",
     "'.' or '..' segment", "invoice.4711"),
    ("absolute", raw(with_(START_URI, program={"uri": "/etc/passwd"})), "invalid",
     "starts with '/'", "invoice.4711"),
    ("control", raw(with_(START_URI, program={"uri": "a\nb"})), "invalid", "control character",
     "invoice.4711"),
    ("key too long", raw(with_(START_URI, program={"uri": "é" * 513})), "invalid",
     "longer than 1024 bytes", "invoice.4711"),
    ("inputs array", raw(with_(START_URI, inputs=[1])), "invalid",
     "inputs: should be a JSON object", "invoice.4711"),
    ("limit zero", raw(with_(START_URI, limits={"max_steps": 0})), "invalid",
     "limits.max_steps: input should be greater than or equal to 1", "invoice.4711"),
    ("limit string", raw(with_(START_URI, limits={"max_seconds": "60"})), "invalid",
     "limits.max_seconds: input should be a valid number", "invoice.4711"),
    ("limit float", raw(with_(START_URI, limits={"max_steps": 10.0})), "invalid",
     "limits.max_steps: input should be a valid integer", "invoice.4711"),
    ("unknown limit", raw(with_(START_URI, limits={"max_memory": 1})), "invalid",
     "limits.max_memory: is not a known field", "invoice.4711"),
    ("trace", raw(with_(START_URI, trace="loud")), "invalid",
     "trace: input should be 'off', 'statements' or 'full'", "invoice.4711"),
]


@pytest.mark.parametrize(("value", "code", "words", "execution_id"),
                         [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_bad_commands_are_refused_with_a_reason(
    value: bytes | None, code: str, words: str, execution_id: str | None
) -> None:
    result = parse_command(value, MAX)
    assert isinstance(result, Rejection), result
    assert result.code == code
    assert words in result.reason
    assert result.execution_id == execution_id


def test_many_problems_are_listed_together_up_to_five() -> None:
    document = with_(START_URI, trace="x", inputs=3, limits={"max_steps": 0}, a=1, b=2, c=3)
    result = parse_command(raw(document), MAX)
    assert isinstance(result, Rejection)
    assert result.reason.startswith("invalid start command: ")
    assert result.reason.count(";") == 5
    assert result.reason.endswith("; and 1 more")


def test_a_value_that_is_not_bytes_is_refused() -> None:
    result = parse_command("{}", MAX)  # type: ignore[arg-type]
    assert isinstance(result, Rejection) and "bytes, not str" in result.reason


def test_oversized_messages_are_refused_before_they_are_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_json(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json.loads must not be called")

    monkeypatch.setattr(json, "loads", no_json)
    document = raw(START_SOURCE)
    for value in (document, b"\xff" * len(document)):
        result = parse_command(value, len(document) - 1)
        assert result == Rejection(
            f"message is {len(document)} bytes; commands may be at most {len(document) - 1}",
            None, "too_large")


def test_the_key_must_be_the_execution_id() -> None:
    assert isinstance(parse_command(raw(STOP), MAX, key=b"lead-1"), StopCommand)
    assert isinstance(parse_command(raw(STOP), MAX, key=None), StopCommand)
    for key in (b"lead-2", b"", b"\xff"):
        result = parse_command(raw(STOP), MAX, key=key)
        assert isinstance(result, Rejection)
        assert result.code == "key_mismatch" and result.execution_id == "lead-1"
        assert "is not the execution id 'lead-1'" in result.reason


# -- limits ---------------------------------------------------------------------------------


def test_limit_overrides_have_the_fields_and_bounds_of_the_limits() -> None:
    overrides = LimitOverrides.model_fields
    assert list(overrides) == list(Limits.model_fields)
    for name, field in Limits.model_fields.items():
        assert overrides[name].metadata == field.metadata, name
        assert overrides[name].description == field.description
        assert overrides[name].annotation == field.annotation | None  # type: ignore[operator]


def test_limits_may_be_lowered_or_kept() -> None:
    worker = Limits(max_steps=1000, max_seconds=60.0)
    assert effective_limits(worker, None) is worker
    assert effective_limits(worker, LimitOverrides()) == worker
    tightened = effective_limits(worker, LimitOverrides(max_steps=10, max_seconds=60))
    assert tightened == Limits(max_steps=10, max_seconds=60.0)


def test_limits_may_not_be_raised() -> None:
    worker = Limits(max_steps=1000, max_seconds=60.0)
    with pytest.raises(LimitsNotAllowed) as caught:
        effective_limits(worker, LimitOverrides(max_steps=1001, max_seconds=61.5, max_book_calls=1))
    assert str(caught.value) == (
        "limits may only be lowered: max_steps 1001 is above the worker's 1000; "
        "max_seconds 61.5 is above the worker's 60.0")
    document = with_(START_URI, limits={"max_steps": 1001})
    assert isinstance(parse_command(raw(document), MAX), StartCommand)  # no worker limits
    result = parse_command(raw(document), MAX, worker_limits=worker)
    assert isinstance(result, Rejection)
    assert result.code == "limits_too_high" and "max_steps 1001" in result.reason
    assert result.execution_id == "invoice.4711"


limit_values = st.fixed_dictionaries({}, optional={
    "max_steps": st.integers(1, 10**12),
    "max_seconds": st.floats(min_value=1e-6, max_value=1e9) | st.integers(1, 10**9),
    "max_output_bytes": st.integers(0, 10**12),
    "max_trace_events": st.integers(0, 10**12),
    "max_recursion_depth": st.integers(1, 10**6),
    "max_book_calls": st.integers(0, 10**12),
    "max_snapshot_bytes": st.integers(1, 10**12),
})


@given(worker=limit_values, requested=limit_values)
def test_effective_limits_are_never_above_the_workers(
    worker: dict[str, Any], requested: dict[str, Any]
) -> None:
    worker_limits = Limits(**worker)
    try:
        limits = effective_limits(worker_limits, LimitOverrides(**requested))
    except LimitsNotAllowed:
        assert any(value > getattr(worker_limits, name) for name, value in requested.items())
        return
    for name in Limits.model_fields:
        assert getattr(limits, name) <= getattr(worker_limits, name)
        assert getattr(limits, name) == requested.get(name, getattr(worker_limits, name))


# -- nothing raises -------------------------------------------------------------------------


def check_result(result: object) -> None:
    assert isinstance(result, StartCommand | StopCommand | Rejection)
    if isinstance(result, Rejection):
        assert result.reason
        if result.execution_id is not None:
            validate_execution_id(result.execution_id)


@settings(max_examples=300)
@given(value=st.binary(max_size=300), limit=st.integers(0, 400), key=st.none() | st.binary())
def test_arbitrary_bytes_never_raise(value: bytes, limit: int, key: bytes | None) -> None:
    check_result(parse_command(value, limit, key=key, worker_limits=Limits()))


json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(value=json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    check_result(parse_command(raw(value), MAX))


# Values that are sometimes right: the field names and the words of the protocol.
FIELDS = [
    "v", "type", "execution_id", "program", "inputs", "limits", "trace", "mode", "reason",
    "source", "uri", *Limits.model_fields,
]
WORDS = [
    "start", "stop", "suspend", "cancel", "off", "statements", "full", "lead-1", ".", "..",
    "a b", "", "s3://acme-programs/a.spy", "s3://ab/x", "a/../b", "/a", "http://x/y",
    "programs/x.spy", "x = 1\n", "lead-1\n", "a\nb",
]
near_scalars = (
    st.none() | st.booleans() | st.integers(-2, 3) | st.integers()
    # An integral float is an "integer" to JSON Schema but not to the strict models.
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | st.sampled_from(WORDS) | st.text(alphabet="abs3:/.-_\n", max_size=8)
)
near_values = st.recursive(
    near_scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def near_commands(draw: st.DrawFn) -> dict[str, Any]:
    """A valid command with a few fields changed, removed or added."""
    document: dict[str, Any] = copy.deepcopy(draw(st.sampled_from([START_SOURCE, START_URI,
                                                                   STOP])))
    for _ in range(draw(st.integers(1, 3))):
        target = document
        nested = draw(st.sampled_from([None, "program", "limits"]))
        if nested is not None and isinstance(document.get(nested), dict):
            target = document[nested]
        name = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            target.pop(name, None)
        else:
            target[name] = draw(near_values)
    return document


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(document=near_commands())
def test_the_schema_files_accept_exactly_what_the_models_accept(document: dict[str, Any]) -> None:
    result = parse_command(raw(document), MAX)
    check_result(result)
    accepted = not isinstance(result, Rejection)
    kind = document.get("type")
    schema_accepts = kind in ("start", "stop") and SCHEMAS[str(kind)].is_valid(document)
    assert accepted == schema_accepts, (result, document)


@given(value=st.text(alphabet="s3:/.abAB-_é\x00\n ", max_size=14))
def test_the_object_key_pattern_is_the_object_key_rule(value: str) -> None:
    by_model = messages._object_key_problem(value) is None
    assert by_model == (re.search(OBJECT_KEY_PATTERN, value) is not None), value


@given(value=st.text(alphabet="aZ09._-/ \n", max_size=6) | st.text(min_size=127, max_size=130))
def test_the_execution_id_schema_is_the_execution_id_rule(value: str) -> None:
    try:
        validate_execution_id(value)
        valid = True
    except ValueError:
        valid = False
    assert SCHEMAS["stop"].is_valid({**STOP, "execution_id": value}) == valid


def test_the_inline_source_limit_is_the_compilers() -> None:
    assert MAX_SOURCE_CHARS == MAX_SOURCE_BYTES


# -- status events --------------------------------------------------------------------------


def test_status_events_carry_every_field() -> None:
    when = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
    value = status_event("lead-1", "failed", worker="w-1", attempt=3, result={"pair": (1, 2)},
                         error={"type": "KeyError", "message": "'x'", "line": 4, "col": 2},
                         counters={"book_calls": 2}, ts=when)
    document = json.loads(value)
    SCHEMAS["status"].validate(document)
    assert document == {
        "v": 1, "execution_id": "lead-1", "status": "failed", "ts": "2025-03-14T09:26:53.589000Z",
        "worker": "w-1", "attempt": 3, "result": {"pair": [1, 2]},
        "error": {"type": "KeyError", "message": "'x'", "line": 4, "col": 2},
        "counters": {"book_calls": 2},
    }
    assert StatusEvent.model_validate_json(value).error is not None


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_encodes_to_the_schema(status: str) -> None:
    value = status_event("e-1", status, worker="w")  # type: ignore[arg-type]
    document = json.loads(value)
    SCHEMAS["status"].validate(document)
    assert document["ts"].endswith("Z") and document["error"] is None
    assert StatusEvent.model_validate_json(value).status == status


def test_timestamps_are_utc() -> None:
    event = StatusEvent(execution_id="e", status="started", worker="w",
                        ts=datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    assert json.loads(encode(event))["ts"] == "2025-01-01T10:00:00Z"
    document = json.loads(encode(event))
    with pytest.raises(ValidationError):
        StatusEvent.model_validate_json(json.dumps({**document, "ts": "2025-01-01T10:00:00"}))
    with pytest.raises(ValidationError):
        StatusEvent.model_validate_json(json.dumps({**document, "status": "running"}))


# -- dead letters ---------------------------------------------------------------------------


def test_a_dead_letter_keeps_the_message_and_the_reason() -> None:
    value = raw(with_(STOP, mode="kill"))
    refused = parse_command(value, MAX)
    assert isinstance(refused, Rejection)
    letter = dead_letter(value, b"lead-1", "spy_control", 2, 41, refused.reason, worker="w-1",
                         execution_id=refused.execution_id)
    document = json.loads(letter)
    SCHEMAS["dlq"].validate(document)
    parsed = DeadLetter.model_validate_json(letter)
    assert (parsed.topic, parsed.partition, parsed.offset) == ("spy_control", 2, 41)
    assert parsed.reason == refused.reason and parsed.execution_id == "lead-1"
    assert parsed.value is not None and parsed.value.decode() == value
    assert document["value"]["encoding"] == "text"
    assert parsed.key == RawBytes(encoding="text", data="lead-1", length=6, truncated=False)


def test_a_dead_letter_of_binary_or_missing_bytes() -> None:
    letter = DeadLetter.model_validate_json(
        dead_letter(b"\x1f\x8b\x00", None, "spy_control", 0, 7, "not UTF-8", execution_id="../x"))
    assert letter.key is None and letter.execution_id is None and letter.worker is None
    assert letter.value == RawBytes(encoding="base64", data=base64.b64encode(b"\x1f\x8b\x00")
                                    .decode(), length=3, truncated=False)
    tombstone = DeadLetter.model_validate_json(dead_letter(None, b"k", "t", 0, 0, "empty"))
    assert tombstone.value is None


def test_a_dead_letter_cuts_what_is_too_long() -> None:
    text = raw_bytes("é".encode() * 10, 5)
    assert (text.encoding, text.data, text.length, text.truncated) == ("text", "éé", 20, True)
    letter = json.loads(dead_letter(b"x" * (messages.DLQ_MAX_VALUE_BYTES + 10), b"k" * 5000,
                                    "spy_control", 0, 0, "r" * 10_000))
    SCHEMAS["dlq"].validate(letter)
    assert len(letter["value"]["data"]) == messages.DLQ_MAX_VALUE_BYTES
    assert letter["value"]["truncated"] and letter["key"]["truncated"]
    assert len(letter["reason"]) == messages.DLQ_MAX_REASON_CHARS


@given(value=st.none() | st.binary(max_size=200), key=st.none() | st.binary(max_size=40),
       limit=st.integers(0, 64), reason=st.text(max_size=50))
def test_dead_letters_of_any_bytes(value: bytes | None, key: bytes | None, limit: int,
                                   reason: str) -> None:
    letter = json.loads(dead_letter(value, key, "spy_control", 0, 0, reason))
    SCHEMAS["dlq"].validate(letter)
    if value is not None:
        kept = raw_bytes(value, limit)
        assert value.startswith(kept.decode())
        assert kept.truncated == (len(value) > limit) and kept.length == len(value)
        assert len(kept.decode()) <= limit


# -- schema files and documentation ---------------------------------------------------------


def test_schema_files_match_the_models(tmp_path: Path) -> None:
    stale = messages.stale_schemas()
    assert not stale, f"run: python -m jarvis.worker.messages --write-schemas ({stale})"
    assert messages.main(["--check"]) == 0
    assert messages.main(["--check", "--dir", str(tmp_path)]) == 1
    assert messages.main(["--write-schemas", "--dir", str(tmp_path)]) == 0
    for name in messages.json_schemas():
        assert (tmp_path / name).read_bytes() == (messages.SCHEMA_DIR / name).read_bytes()
    assert messages.main(["--check", "--dir", str(tmp_path)]) == 0


def test_schema_files_are_closed() -> None:
    def objects(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)

    for name, schema in messages.json_schemas().items():
        found = list(objects(schema))
        assert found, name
        assert all(node.get("additionalProperties") is False for node in found), name


def doc_examples() -> list[tuple[str, str]]:
    """(schema name, JSON text) of every `<!-- example: NAME -->` block of docs/events.md."""
    text = EVENTS_DOC.read_text("utf-8")
    pattern = re.compile(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", re.DOTALL)
    return [(match.group(1), match.group(2)) for match in pattern.finditer(text)]


def test_docs_have_examples_of_every_message() -> None:
    names = {name for name, _ in doc_examples()}
    assert names == {"start", "stop", "status", "dlq"}


@pytest.mark.parametrize(("name", "text"), doc_examples(),
                         ids=[f"{name}-{i}" for i, (name, _) in enumerate(doc_examples())])
def test_docs_examples_are_valid(name: str, text: str) -> None:
    document = json.loads(text)
    SCHEMAS[name].validate(document)
    value = text.encode("utf-8")
    if name in ("start", "stop"):
        command = parse_command(value, MAX, worker_limits=Limits())
        assert isinstance(command, StartCommand | StopCommand), command
        assert command.type == name
    elif name == "status":
        StatusEvent.model_validate_json(value)
    else:
        DeadLetter.model_validate_json(value)


def _through_the_model(execution_id: str, status: str, **fields: Any) -> bytes:
    result = fields.pop("result", None)
    error = fields.pop("error", None)
    return encode(StatusEvent(
        execution_id=execution_id, status=status,  # type: ignore[arg-type]
        result=None if result is None else json.loads(json.dumps(result, default=str)),
        error=None if error is None else ErrorInfo(**error), **fields))


@pytest.mark.parametrize("fields", [
    {"attempt": 3, "result": {"x": 1.5, "big": 1e16, "text": 'é"\n\u2028\\', "list": [1, None],
                              "pair": (1, 2), 7: {"nested": True}},
     "counters": {"steps": 3, "book_calls": 0}},
    {"error": {"type": "KeyError", "message": "'x'", "line": 4, "col": 2}},
    {"error": {"type": "Duplicate", "message": "the execution is completed"}},
    {"result": {"when": datetime(2020, 1, 1)}},
    {"ts": datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))},
    {"ts": datetime(2025, 1, 1, 12, 0, 0, 5, tzinfo=UTC)},
])
def test_status_events_are_written_as_the_model_writes_them(fields: dict[str, Any]) -> None:
    fields = {"ts": datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC), **fields}
    fast = encode_status(PROTOCOL_VERSION, "e-1", "completed", STATUSES, worker="w",
                         attempt=fields.get("attempt", 0), result=fields.get("result"),
                         error=fields.get("error"), counters=fields.get("counters"),
                         ts=fields["ts"])
    assert fast is not None  # written without the model
    assert fast == status_event("e-1", "completed", worker="w", **fields)
    assert fast == _through_the_model("e-1", "completed", worker="w", **fields)


@pytest.mark.parametrize("fields", [
    {"result": {"n": math.nan}},
    {"error": {"type": "T", "message": "m", "extra": 1}},
    {"counters": {"steps": True}},
    {"counters": {"steps": -1}},
    {"attempt": -1},
])
def test_what_the_direct_writer_cannot_vouch_for_goes_through_the_model(
        fields: dict[str, Any]) -> None:
    assert encode_status(PROTOCOL_VERSION, "e-1", "failed", STATUSES, worker="w",
                         attempt=fields.get("attempt", 0), result=fields.get("result"),
                         error=fields.get("error"), counters=fields.get("counters"),
                         ts=None) is None
    if "result" in fields:  # the model's verdict, as before
        when = datetime(2025, 3, 14, tzinfo=UTC)
        assert status_event("e-1", "failed", worker="w", ts=when, **fields) \
            == _through_the_model("e-1", "failed", worker="w", ts=when, **fields)
    else:
        with pytest.raises(ValidationError):
            status_event("e-1", "failed", worker="w", **fields)


@pytest.mark.parametrize("bad", [{"status": "running"}, {"worker": ""},
                                 {"execution_id": "../x"}])
def test_bad_status_events_are_refused_as_before(bad: dict[str, Any]) -> None:
    fields = {"execution_id": "e-1", "status": "started", "worker": "w", **bad}
    with pytest.raises(ValidationError):
        status_event(**fields)

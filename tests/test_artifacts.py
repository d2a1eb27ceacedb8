"""The artifact builtin and large outputs, with the local and in-memory stores.

- The stores: keys stay inside the directory, URLs point at the bytes, writes are whole.
- Names, content and content types are checked; keys are derived from the effect.
- `artifact()` is an effect: journaled, replayed after a resume without a second upload
  (in-process and in a child process), retried to the same key after a crash, and its
  failures are journaled too.
- Outputs larger than a threshold are replaced by references to stored copies.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from test_lowering_differential import StubTracer

from jarvis.compiler import Compilation
from jarvis.runtime.artifacts import (
    ArtifactTooLarge,
    ExecutionArtifacts,
    LocalArtifactStore,
    MemoryArtifactStore,
    artifact_key,
    check_content_type,
    check_name,
    offload_outputs,
    output_key,
)
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.effects_log import MemoryEffects, NondeterminismError
from jarvis.runtime.errors import LimitExceeded
from jarvis.runtime.execution import Execution
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.machine import Machine, MachineLimits, Outcome
from jarvis.runtime.reference import run_reference
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import load_settings

REPORT = """\
text = "id,name\\n" + "".join([f"{i},Grüße {i}\\n" for i in range(inputs["rows"])])
url = artifact("report.csv", text, "text/csv")
output("url", url)
output("size", len(text))
"""


class CountingStore(MemoryArtifactStore):
    """An in-memory store that also counts `url` calls and can be made to fail."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail

    def put(self, key: str, content: bytes, content_type: str) -> str:
        if self.fail:
            raise ConnectionError("the store is unreachable")
        return super().put(key, content, content_type)


def machine(source: str, effects: MemoryEffects, store: MemoryArtifactStore, *,
            execution_id: str = "m1", max_artifact_bytes: int = 1 << 20,
            inputs: dict[str, Any] | None = None) -> Machine:
    program = Compilation.of(source, "a.spy").program("off")
    return Machine(program, execution_id=execution_id, inputs=inputs or {},
                   books=BookRegistry(), effects=effects, tracer=StubTracer(),
                   limits=MachineLimits(max_artifact_bytes=max_artifact_bytes),
                   artifacts=ExecutionArtifacts(store, execution_id, max_artifact_bytes))


def expected_report(rows: int) -> bytes:
    text = "id,name\n" + "".join(f"{i},Grüße {i}\n" for i in range(rows))
    return text.encode("utf-8")


# -- the stores ---------------------------------------------------------------------------


def test_local_store_writes_files_under_its_directory_with_file_urls(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    key = "executions/e1/000001-a.bin"
    content = bytes(range(256)) * 3

    assert store.put(key, content, "application/octet-stream") == key
    path = tmp_path / "artifacts" / "executions" / "e1" / "000001-a.bin"
    assert path.read_bytes() == content
    assert store.get(key) == content
    assert store.url(key) == path.resolve().as_uri()
    # A retried upload replaces the object whole; no partial file is left beside it.
    store.put(key, b"second", "text/plain")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["000001-a.bin"]


@pytest.mark.parametrize("key", ["../outside", "executions/../../outside", "/etc/passwd"])
def test_local_store_refuses_keys_that_leave_its_directory(tmp_path: Path, key: str) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ValueError, match="leaves the artifact directory"):
        store.put(key, b"x", "text/plain")
    assert not (tmp_path / "outside").exists()


def test_keys_are_derived_from_the_execution_and_the_effect() -> None:
    assert artifact_key("e1", 3, "report.csv") == "executions/e1/000003-report.csv"
    assert artifact_key("e1", 1234567, "a") == "executions/e1/1234567-a"
    # Free text is cleaned (the builtin refuses such names before they get here).
    assert artifact_key("e1", 2, "../../x y") == "executions/e1/000002-x_y"
    digest = hashlib.sha256(b"[1]").hexdigest()
    assert output_key("e1", "rows/all", digest) == (
        f"executions/e1/outputs/rows_all-{digest[:16]}.json")


@pytest.mark.parametrize("name", ["a", "report.csv", "part-1_final.tar.gz", "9" * 100])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a\\b", ".hidden", "..", "a b",
                                  "x" * 101, "é.txt", "-dash", "a\n"])
def test_bad_names_are_value_errors(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


def test_content_types_are_printable_ascii() -> None:
    assert check_content_type("text/csv; charset=utf-8") == "text/csv; charset=utf-8"
    for bad in ["", "text/plain\r\nX-Injected: 1", "tëxt/plain", " text/plain", "x" * 256]:
        with pytest.raises(ValueError):
            check_content_type(bad)
    with pytest.raises(TypeError):
        check_content_type(None)


def test_uploads_are_checked_on_the_host_side_too() -> None:
    """A child could send anything; the host's ExecutionArtifacts checks it again."""
    store = MemoryArtifactStore()
    uploads = ExecutionArtifacts(store, "e1", max_bytes=4)
    with pytest.raises(ArtifactTooLarge):
        uploads.upload(1, "a.txt", b"12345", "text/plain")
    with pytest.raises(ValueError):
        uploads.upload(1, "../a", b"1", "text/plain")
    stored = uploads.upload(7, "a.txt", b"1234", "text/plain")
    assert stored.key == "executions/e1/000007-a.txt"
    assert stored.url == "memory://executions/e1/000007-a.txt"
    assert (stored.size, stored.sha256) == (4, hashlib.sha256(b"1234").hexdigest())
    assert store.objects == {stored.key: (b"1234", "text/plain")}


# -- the builtin on the Machine ------------------------------------------------------------


def test_artifact_stores_the_utf8_bytes_and_journals_the_upload() -> None:
    store = MemoryArtifactStore()
    effects = MemoryEffects()
    outcome = machine(REPORT, effects, store, inputs={"rows": 5}).run()

    assert outcome.status == "completed", outcome.error
    key = "executions/m1/000001-report.csv"
    assert outcome.outputs["url"] == f"memory://{key}"
    assert store.objects[key] == (expected_report(5), "text/csv")
    record = json.loads(effects.records[0])
    assert record["k"] == "artifact"
    assert (record["n"], record["key"], record["url"]) == ("report.csv", key, f"memory://{key}")
    assert record["bytes"] == len(expected_report(5))
    assert record["sha256"] == hashlib.sha256(expected_report(5)).hexdigest()
    assert outcome.counters["artifacts"] == 1
    assert outcome.counters["artifact_bytes"] == len(expected_report(5))


def test_the_engine_and_the_reference_give_the_same_keys() -> None:
    source = """\
t = now()
a = artifact("a.txt", "1")
checkpoint()
b = artifact("b.txt", "2", content_type="text/plain")
output("urls", [a, b])
"""
    store = MemoryArtifactStore()
    outcome = machine(source, MemoryEffects(), store, execution_id="same").run()
    reference = run_reference(source, execution_id="same")

    assert outcome.outputs == reference.outputs
    assert outcome.outputs["urls"] == ["memory://executions/same/000002-a.txt",
                                       "memory://executions/same/000004-b.txt"]
    assert [a.key for a in reference.artifacts] == sorted(store.objects)


def test_a_replayed_artifact_is_not_uploaded_again() -> None:
    store = MemoryArtifactStore()
    effects = MemoryEffects()
    first = machine(REPORT, effects, store, inputs={"rows": 3}).run()
    assert store.puts == 1

    # A fresh Machine from the start, with the journal: everything is replayed.
    replayed = machine(REPORT, effects, store, inputs={"rows": 3}).run()

    assert replayed.outputs == first.outputs
    assert store.puts == 1
    assert effects.count == 1


def test_a_replay_with_other_content_is_refused() -> None:
    store = MemoryArtifactStore()
    effects = MemoryEffects()
    machine(REPORT, effects, store, inputs={"rows": 3}).run()

    outcome = machine(REPORT, effects, store, inputs={"rows": 4}).run()

    assert outcome.status == "failed"
    assert isinstance(outcome.error, NondeterminismError)
    assert store.puts == 1


class CrashingEffects(MemoryEffects):
    """A journal whose appends fail: the process dies after the upload, before the record."""

    def append(self, payload: bytes) -> int:
        raise OSError("the disk went away")


def test_an_upload_retried_after_a_crash_writes_the_same_key() -> None:
    store = MemoryArtifactStore()
    crashed = machine(REPORT, CrashingEffects(), store, inputs={"rows": 2}).run()
    assert crashed.status == "failed"
    assert store.puts == 1

    effects = MemoryEffects()
    retried = machine(REPORT, effects, store, inputs={"rows": 2}).run()

    assert retried.status == "completed", retried.error
    assert store.puts == 2
    assert list(store.objects) == ["executions/m1/000001-report.csv"]
    assert json.loads(effects.records[0])["key"] == "executions/m1/000001-report.csv"


def test_a_failed_upload_is_journaled_and_replayed() -> None:
    source = """\
try:
    artifact("a.txt", "x")
except RuntimeError as e:
    output("error", str(e))
"""
    failing = CountingStore(fail=True)
    effects = MemoryEffects()
    first = machine(source, effects, failing).run()

    message = "artifact(): storing 'a.txt' failed: ConnectionError: the store is unreachable"
    assert first.outputs == {"error": message}
    assert json.loads(effects.records[0])["err"] == "ConnectionError: the store is unreachable"
    # On replay the store works again, but the journal decides: the same error.
    working = CountingStore()
    assert machine(source, effects, working).run().outputs == {"error": message}
    assert working.puts == 0


def test_an_artifact_over_the_limit_ends_the_execution() -> None:
    store = MemoryArtifactStore()
    outcome = machine('artifact("big.txt", "é" * 6)\n', MemoryEffects(), store,
                      max_artifact_bytes=11).run()

    assert outcome.status == "failed"
    assert isinstance(outcome.error, LimitExceeded)
    assert outcome.error.limit == "artifact_bytes"
    assert "12 bytes; the limit is 11" in str(outcome.error)
    assert store.puts == 0


# -- durable executions: stop after the upload, resume --------------------------------------


class StopAfterUpload:
    """`stop_requested` that turns true once the store has taken an upload."""

    def __init__(self, store: MemoryArtifactStore) -> None:
        self.store = store

    def __call__(self) -> bool:
        return self.store.puts > 0


# The sleep gives a stop time to arrive (a child is stopped by a signal, not at once).
SLOW_TAIL = """\
url = artifact("notes.txt", "first line\\nsecond line\\n", "text/plain")
sleep(1)
total = 0
for i in range(3):
    total += i
    checkpoint()
output("url", url)
output("total", total)
"""


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child"])
def test_a_run_stopped_after_an_artifact_resumes_without_uploading_again(
    tmp_path: Path, isolated: bool
) -> None:
    settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False)
    program = Compilation.of(SLOW_TAIL, "notes.spy").program("statements")
    store = MemoryArtifactStore()
    pool = ChildPool(size=0) if isolated else None

    def execution(stop: Any) -> Execution:
        return Execution(program, execution_id="notes-1", inputs={}, books=BookRegistry(),
                         settings=settings, sink=MemorySink(), stop_requested=stop,
                         isolation=pool, artifacts=store)

    try:
        stopped = execution(StopAfterUpload(store)).run()
        assert stopped.status == "suspended", stopped.error
        assert store.puts == 1

        resumed_execution = execution(lambda: False)
        resumed = resumed_execution.run()
    finally:
        if pool is not None:
            pool.close()

    assert resumed.status == "completed", resumed.error
    assert resumed_execution.report.resumed
    assert store.puts == 1
    key = "executions/notes-1/000001-notes.txt"
    assert resumed.outputs == {"url": f"memory://{key}", "total": 3}
    assert store.objects == {key: (b"first line\nsecond line\n", "text/plain")}
    assert resumed.counters["artifacts"] == 1


def test_jarvis_run_stores_artifacts_in_the_state_directory(tmp_path: Path) -> None:
    """The embedded default: files under <state_dir>/artifacts/, file:// URLs, also
    when the program runs in a child process, which has no access to them."""
    settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False)
    program = Compilation.of(REPORT, "report.spy").program("off")
    pool = ChildPool(size=0)
    try:
        outcome: Outcome = Execution(
            program, execution_id="r-1", inputs={"rows": 40}, books=BookRegistry(),
            settings=settings, sink=MemorySink(), isolation=pool).run()
    finally:
        pool.close()

    assert outcome.status == "completed", outcome.error
    path = tmp_path / "state" / "artifacts" / "executions" / "r-1" / "000001-report.csv"
    assert outcome.outputs["url"] == path.resolve().as_uri()
    assert path.read_bytes() == expected_report(40)


# -- large outputs ------------------------------------------------------------------------


def test_outputs_over_the_threshold_are_replaced_by_references() -> None:
    store = MemoryArtifactStore()
    rows = [{"id": i, "name": f"Grüße {i}"} for i in range(200)]
    outputs = {"count": 200, "rows": rows, "edge": "x" * 8}
    # The JSON of "edge" is exactly 10 bytes: at the threshold, it stays inline.
    result = offload_outputs(outputs, store, "big-1", inline_bytes=10)

    encoded = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()
    digest = hashlib.sha256(encoded).hexdigest()
    key = f"executions/big-1/outputs/rows-{digest[:16]}.json"
    assert result == {
        "count": 200,
        "rows": {"artifact": {"key": key, "url": f"memory://{key}", "bytes": len(encoded),
                              "sha256": digest}},
        "edge": "x" * 8,
    }
    assert store.objects[key] == (encoded, "application/json")
    assert json.loads(store.get(key)) == rows
    # The same outputs again: the same object, not a second one.
    assert offload_outputs(outputs, store, "big-1", inline_bytes=10) == result
    assert list(store.objects) == [key]


def test_outputs_under_the_threshold_are_left_alone() -> None:
    store = MemoryArtifactStore()
    outputs = {"a": [1, 2, 3], "b": None, "c": "é" * 100}
    assert offload_outputs(outputs, store, "e", inline_bytes=64 << 10) == outputs
    assert store.puts == 0

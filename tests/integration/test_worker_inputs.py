"""The worker's inputs and outputs: bad commands, trace events through Telegraf, S3.

- A flood of malformed commands between good ones: every good one completes, every bad
  one is dead-lettered with its reason, and the worker's memory stays flat.
- A real Telegraf reads `spy_logs` as deploy/telegraf does and gets every trace event
  of a run with its fields intact: quotes, backslashes, newlines, non-ASCII text.
- Programs stored in S3 run, and artifacts stored there are served by presigned URLs.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from services import KafkaBroker, RedisServer, S3Server, Telegraf
from test_worker_support import SUM_PROGRAM, WorkerCluster, clusters, unique, wait_until

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.execution import Execution
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import WorkerSettings, load_settings
from jarvis.worker.artifacts import S3ArtifactStore, artifact_key
from jarvis.worker.messages import DeadLetter


@pytest.fixture
def cluster_factory(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Any:
    yield from clusters(kafka, redis_server, tmp_path)


# -- malformed commands -------------------------------------------------------------------


def _bad_commands() -> list[tuple[bytes | None, bytes | None, str]]:
    """(value, key, a part of the reason) for each kind of bad command."""
    def start(**fields: Any) -> dict[str, Any]:
        return {"v": 1, "type": "start", "execution_id": "bad-1",
                "program": {"source": "x = 1\n"}, **fields}

    def dumps(document: Any) -> bytes:
        return json.dumps(document).encode()

    return [
        (b"not json at all", None, "not JSON"),
        (b"\xff\xfe\x00garbage", b"k", "not UTF-8"),
        (b"", b"bad-1", "empty message"),
        (None, b"bad-1", "empty message"),
        (b"[1, 2, 3]", None, "a command is a JSON object, not an array"),
        (dumps({**start(), "v": 2}), None, "protocol version 2 is not supported"),
        (dumps({**start(), "type": "pause"}), None, "unknown command type 'pause'"),
        (dumps({"v": 1, "type": "start", "execution_id": "bad-1"}), None,
         "program: is required"),
        (dumps(start()), b"someone-else", "is not the execution id"),
        (dumps(start(limits={"max_steps": 10**12})), None, "limits may only be lowered"),
        (dumps(start(inputs={"blob": "x" * 5000})), None, "commands may be at most 4096"),
        (b"[" * 100 + b"]" * 100, None, "nested deeper than 64"),
        (b'{"v": 1, "v": 1}', None, "appears twice"),
        (dumps(start(execution_id="../etc")), None, "execution_id"),
        (dumps({"v": 1, "type": "stop", "execution_id": "bad-1", "mode": "pause"}), None,
         "mode"),
    ]


def test_malformed_commands_go_to_the_dlq_and_memory_stays_flat(
        cluster_factory: Any) -> None:
    cluster: WorkerCluster = cluster_factory(
        partitions=4, env={"JARVIS_KAFKA__MAX_COMMAND_BYTES": "4096"})
    worker = cluster.start_worker("a")
    cluster.wait_for_members(1)
    kinds = _bad_commands()
    expected: dict[tuple[int, int], str] = {}
    good: list[str] = []

    def delivered_as(reason: str) -> Callable[[Any, Any], None]:
        def record(error: Any, message: Any) -> None:
            assert error is None, error
            expected[(message.partition(), message.offset())] = reason
        return record

    def send_batch(bad: int, valid: int) -> None:
        for n in range(bad):
            value, key, reason = kinds[n % len(kinds)]
            cluster.producer.produce(cluster.control, value=value, key=key,
                                     on_delivery=delivered_as(reason))
            if n % (bad // valid) == 0 and len(good) < 20:
                execution_id = unique("ok")
                good.append(execution_id)
                cluster.send(json.dumps({
                    "v": 1, "type": "start", "execution_id": execution_id,
                    "program": {"source": SUM_PROGRAM}, "inputs": {"count": 2}}).encode(),
                    execution_id.encode())
            cluster.producer.poll(0)
        cluster.flush()

    send_batch(100, 2)
    cluster.wait_for_endings(good, timeout=60)
    wait_until(lambda: len(cluster.read_topic(cluster.dlq, 100, timeout=5)) >= 100, 30,
               "the first 100 dead letters")
    baseline = worker.rss_kib()
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            samples.append(worker.rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        send_batch(900, 18)
        endings = cluster.wait_for_endings(good, timeout=60)
        letters = [DeadLetter.model_validate_json(m.value())
                   for m in cluster.read_topic(cluster.dlq, 1000, timeout=60)]
    finally:
        sampling.set()
        sampler.join()
    samples.append(worker.rss_kib())

    assert len(good) == 20
    assert all(e["status"] == "completed" and e["result"] == {"total": 1}
               for e in endings.values())
    assert len(letters) == 1000
    for letter in letters:
        reason = expected[(letter.partition, letter.offset)]
        assert reason in letter.reason, (reason, letter.reason)
        assert letter.topic == cluster.control and letter.worker == "a"
    # Flat: no growth with the number of commands handled (RSS in KiB).
    assert max(samples) - baseline < 20 * 1024, (baseline, samples)
    assert samples[-1] - baseline < 10 * 1024, (baseline, samples)
    cluster.wait_all_committed(timeout=60)


# -- Telegraf -----------------------------------------------------------------------------

TRICKY_PROGRAM = """\
from books import crm

text = inputs["text"]
quoted = 'she said "hi" \\\\ left a \\\\\\\\ double backslash'
lines = text.split("\\n")
print(text)
print(quoted)
n = crm.get(n=len(lines))["n"]
output("text", text)
output("lines", lines)
"""

TRICKY_TEXT = 'first "line", with = signs\\and \\\\ slashes\nsecond: Grüße, 日本語 ✓\r\nthird\ttab'


def test_telegraf_receives_every_trace_event_intact(
        cluster_factory: Any, telegraf_factory: Callable[..., Telegraf],
        tmp_path: Path) -> None:
    cluster: WorkerCluster = cluster_factory(partitions=1)
    cluster.start_worker("a")
    agent = telegraf_factory([cluster.logs], output_format="json")
    execution_id = unique("tricky")
    cluster.send_start(execution_id, TRICKY_PROGRAM, {"text": TRICKY_TEXT}, trace="full")
    ending = cluster.wait_for_status(execution_id, "completed", "failed")
    assert ending["status"] == "completed", ending

    reference = _reference_events(tmp_path, execution_id)
    assert ending["counters"]["trace_seq"] == len(reference)
    metrics = agent.wait_for_metrics(len(reference), timeout=30)

    got = sorted(metrics, key=lambda m: m["fields"]["seq"])
    assert len(got) == len(reference)
    for metric, event in zip(got, reference, strict=True):
        assert metric["name"] == "spy_trace"
        assert metric["tags"] == {"execution_id": execution_id, "kind": event.kind}
        fields = dict(metric["fields"])
        duration = fields.pop("duration_ms", None)
        assert (duration is None) == (event.duration_ms is None)
        assert fields == {
            "seq": event.seq, "line": event.line, "col": event.col,
            "end_line": event.end_line, "end_col": event.end_col,
            "expr": event.expr, "value": event.value, "type": event.type,
        }
    printed = [m["fields"]["value"] for m in got if m["tags"]["kind"] == "print"]
    assert printed[0] == TRICKY_TEXT + "\n"
    assert printed[1] == 'she said "hi" \\ left a \\\\ double backslash\n'
    assert len({m["timestamp"] for m in got}) == len(got)


def _reference_events(tmp_path: Path, execution_id: str) -> list[Any]:
    """The same execution run in this process: the events Telegraf must have."""
    program = Compilation.of(TRICKY_PROGRAM, f"{execution_id}.spy").program("full")
    sink = MemorySink()
    books = BookRegistry.load(tmp_path / "books.toml")
    outcome = Execution(program, execution_id=execution_id, inputs={"text": TRICKY_TEXT},
                        books=books, sink=sink,
                        settings=load_settings(state_dir=tmp_path / "reference",
                                               journal_fsync=False)).run()
    assert outcome.status == "completed", outcome.error
    return sink.events


# -- S3 -----------------------------------------------------------------------------------


@pytest.fixture
def s3_settings(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    return WorkerSettings(s3={"endpoint_url": s3.endpoint_url, "bucket": s3.bucket,
                              "region": s3.region, "prefix": f"{unique('t')}/"})


def test_a_presigned_artifact_url_returns_the_exact_bytes(s3_settings: WorkerSettings) -> None:
    store = S3ArtifactStore(s3_settings)
    content = bytes(range(256)) * 512 + "Grüße ✓\n".encode() + os.urandom(4096)
    key = artifact_key("exec-1", 3, "report (final).pdf")

    assert store.put(key, content, "application/pdf") == key
    response = httpx.get(store.url(key), timeout=30)

    assert response.status_code == 200
    assert response.content == content
    assert response.headers["content-type"] == "application/pdf"
    assert store.get(key) == content
    assert key == "executions/exec-1/000003-report_final_.pdf"


def test_a_presigned_url_is_refused_once_tampered(s3_settings: WorkerSettings) -> None:
    store = S3ArtifactStore(s3_settings)
    key = artifact_key("exec-2", 1, "a.txt")
    store.put(key, b"secret", "text/plain")
    url = store.url(key)

    forged = url.replace("exec-2", "exec-3")
    assert httpx.get(forged, timeout=30).status_code in (403, 404)


def test_a_program_stored_in_s3_runs(cluster_factory: Any, s3: S3Server) -> None:
    prefix = f"{unique('programs')}/"
    cluster: WorkerCluster = cluster_factory(partitions=1, env={
        "JARVIS_S3__ENDPOINT_URL": s3.endpoint_url, "JARVIS_S3__BUCKET": s3.bucket,
        "JARVIS_S3__REGION": s3.region, "JARVIS_S3__PREFIX": prefix,
        "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
    s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}sum/v1.spy",
                           Body=SUM_PROGRAM.encode())
    cluster.start_worker("a")
    bare, full = unique("s3bare"), unique("s3full")

    for execution_id, uri in ((bare, "sum/v1.spy"),
                              (full, f"s3://{s3.bucket}/{prefix}sum/v1.spy")):
        cluster.send(json.dumps({"v": 1, "type": "start", "execution_id": execution_id,
                                 "program": {"uri": uri}, "inputs": {"count": 4}}).encode(),
                     execution_id.encode())
    cluster.flush()

    endings = cluster.wait_for_endings([bare, full])
    assert endings[bare]["result"] == endings[full]["result"] == {"total": 6}

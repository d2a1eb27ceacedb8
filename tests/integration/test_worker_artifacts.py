"""Artifacts through a real worker, Kafka, Redis and S3 (S3Proxy).

- A program's `artifact(...)` call is uploaded by the worker (the program runs in a
  child process without network) to the bucket, under the execution's key; the
  presigned URL the program gets back returns the exact bytes with a plain HTTP GET.
- An output larger than `JARVIS_S3__INLINE_BYTES` reaches the status topic as a
  reference whose URL returns the output's full JSON; small outputs stay inline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from services import KafkaBroker, RedisServer, S3Server
from test_worker_support import WorkerCluster, clusters, unique


@pytest.fixture
def cluster_factory(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Any:
    yield from clusters(kafka, redis_server, tmp_path)


def s3_cluster(cluster_factory: Any, s3: S3Server, prefix: str,
               **env: str) -> WorkerCluster:
    cluster: WorkerCluster = cluster_factory(partitions=1, env={
        "JARVIS_S3__ENDPOINT_URL": s3.endpoint_url, "JARVIS_S3__BUCKET": s3.bucket,
        "JARVIS_S3__REGION": s3.region, "JARVIS_S3__PREFIX": prefix,
        "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key, **env})
    cluster.start_worker("a")
    return cluster


REPORT = """\
from books import crm

lines = ["id;name;note"]
for i in range(inputs["rows"]):
    lines.append(f"{i};Grüße {i};\\"quoted\\" ✓")
text = "\\n".join(lines) + "\\n"
crm.get(len(lines))
url = artifact(inputs["name"], text, "text/csv; charset=utf-8")
output("url", url)
output("size", len(text))
"""


def expected_report(rows: int) -> bytes:
    lines = ["id;name;note"] + [f'{i};Grüße {i};"quoted" ✓' for i in range(rows)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def test_an_artifact_is_stored_in_s3_and_its_url_returns_the_exact_bytes(
    cluster_factory: Any, s3: S3Server
) -> None:
    prefix = f"{unique('art')}/"
    cluster = s3_cluster(cluster_factory, s3, prefix)
    execution_id = unique("report")

    cluster.send_start(execution_id, REPORT, {"rows": 3000, "name": "report-2025.csv"})
    ending = cluster.wait_for_status(execution_id, "completed", "failed", timeout=90)

    assert ending["status"] == "completed", ending["error"]
    content = expected_report(3000)
    url = ending["result"]["url"]
    # The effect number: the Book call is effect 1, the artifact effect 2.
    key = f"{prefix}executions/{execution_id}/000002-report-2025.csv"
    assert url.startswith(f"{s3.endpoint_url}/{s3.bucket}/{key}?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    assert response.content == content
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    # The object is where the key says, and it is the only one the execution wrote.
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}executions/")
    assert [item["Key"] for item in listed["Contents"]] == [key]
    assert ending["counters"]["artifacts"] == 1
    assert ending["counters"]["artifact_bytes"] == len(content)
    # Without the signature the bucket does not serve it.
    assert httpx.get(url.split("?")[0], timeout=30).status_code in (401, 403)


LARGE_OUTPUT = """\
rows = [{"id": i, "name": f"Grüße {i}", "tags": ["a", "b"]} for i in range(inputs["rows"])]
output("count", len(rows))
output("rows", rows)
output("note", "small outputs stay inline")
"""


def test_a_large_output_is_a_reference_whose_url_returns_the_full_json(
    cluster_factory: Any, s3: S3Server
) -> None:
    prefix = f"{unique('big')}/"
    cluster = s3_cluster(cluster_factory, s3, prefix, JARVIS_S3__INLINE_BYTES="4096")
    execution_id = unique("large")

    cluster.send_start(execution_id, LARGE_OUTPUT, {"rows": 2000})
    ending = cluster.wait_for_status(execution_id, "completed", "failed", timeout=90)

    assert ending["status"] == "completed", ending["error"]
    rows = [{"id": i, "name": f"Grüße {i}", "tags": ["a", "b"]} for i in range(2000)]
    encoded = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(encoded).hexdigest()
    result = ending["result"]
    assert result["count"] == 2000
    assert result["note"] == "small outputs stay inline"
    assert set(result["rows"]) == {"artifact"}
    reference: dict[str, Any] = result["rows"]["artifact"]
    key = f"executions/{execution_id}/outputs/rows-{digest[:16]}.json"
    assert reference["key"] == key
    assert reference["bytes"] == len(encoded)
    assert reference["sha256"] == digest
    response = httpx.get(reference["url"], timeout=30)
    assert response.status_code == 200
    assert response.content == encoded
    assert response.json() == rows
    assert response.headers["content-type"] == "application/json"
    assert s3.client().head_object(Bucket=s3.bucket, Key=prefix + key)["ContentLength"] == len(
        encoded)

"""Artifacts: large values, files a program stores, and programs referenced by key.

Two stores behind one interface: `S3ArtifactStore` (boto3; any S3-compatible endpoint,
a bucket, a key prefix, optional server-side encryption, presigned GET URLs with a
TTL) and `LocalArtifactStore` (a directory, `file://` URLs) for the embedded default.
Keys are derived from the execution and the effect that wrote them, so a replayed
upload writes the same object again rather than a second one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from jarvis.settings import EngineSettings, WorkerSettings

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ArtifactStore(Protocol):
    def put(self, key: str, content: bytes, content_type: str) -> str: ...

    def get(self, key: str) -> bytes: ...

    def url(self, key: str) -> str: ...


def artifact_key(execution_id: str, index: int, name: str) -> str:
    """A deterministic key for the `index`-th effect's artifact `name`."""
    cleaned = _SAFE_NAME.sub("_", name).strip("._") or "artifact"
    return f"executions/{execution_id}/{index:06d}-{cleaned[:100]}"


class LocalArtifactStore:
    """Artifacts as files under a directory (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key {key!r} leaves the artifact directory")
        return path

    def put(self, key: str, content: bytes, content_type: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return key

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def url(self, key: str) -> str:
        return self._path(key).as_uri()


class S3ArtifactStore:
    """Artifacts in an S3-compatible bucket."""

    def __init__(self, settings: WorkerSettings, client: Any | None = None) -> None:
        s3 = settings.s3
        if not s3.bucket:
            raise ValueError("JARVIS_S3__BUCKET is not set")
        self.bucket = s3.bucket
        self.prefix = s3.prefix
        self.encryption = s3.server_side_encryption
        self.kms_key_id = s3.kms_key_id
        self.presign_seconds = s3.presign_seconds
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)
        self.client = client

    def _key(self, key: str) -> str:
        if key.startswith("s3://"):
            bucket, _, rest = key[5:].partition("/")
            if bucket != self.bucket:
                raise ValueError(f"{key}: only bucket {self.bucket!r} is served")
            return rest
        return self.prefix + key

    def put(self, key: str, content: bytes, content_type: str) -> str:
        extra: dict[str, Any] = {}
        if self.encryption:
            extra["ServerSideEncryption"] = self.encryption
            if self.kms_key_id:
                extra["SSEKMSKeyId"] = self.kms_key_id
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=content,
                               ContentType=content_type, **extra)
        return key

    def get(self, key: str) -> bytes:
        response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        data: bytes = response["Body"].read()
        return data

    def url(self, key: str) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=self.presign_seconds)
        return url


def artifact_store(settings: EngineSettings) -> ArtifactStore:
    """S3 when a bucket is configured, otherwise a directory in the state dir."""
    if isinstance(settings, WorkerSettings) and settings.s3.bucket:
        return S3ArtifactStore(settings)
    return LocalArtifactStore(Path(settings.state_dir) / "artifacts")

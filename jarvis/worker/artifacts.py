"""Artifacts: large values, files a program stores, and programs referenced by key.

Two stores behind one interface (`jarvis.runtime.artifacts.ArtifactStore`):
`S3ArtifactStore` here (boto3; any S3-compatible endpoint, a bucket, a key prefix,
optional server-side encryption, presigned GET URLs with a TTL) and
`LocalArtifactStore` (a directory, `file://` URLs; jarvis/runtime/artifacts.py) for the
embedded default. Keys are derived from the execution and the effect that wrote them,
so a replayed upload writes the same object again rather than a second one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jarvis.runtime.artifacts import ArtifactStore, LocalArtifactStore, artifact_key
from jarvis.settings import EngineSettings, WorkerSettings

__all__ = ["ArtifactStore", "LocalArtifactStore", "S3ArtifactStore", "artifact_key",
           "artifact_store"]


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
            from botocore.config import Config

            # Signature V4 also for presigned URLs (boto3 may presign with V2, which
            # AWS no longer accepts in newer regions).
            client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
                                  config=Config(signature_version="s3v4"))
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

"""A real S3-compatible server on loopback: S3Proxy over a folder, with real credentials.

    with S3Server() as s3:
        client = s3.client()                      # boto3, SigV4, path-style
        client.put_object(Bucket=s3.bucket, Key="k", Body=b"...")

S3Proxy (Apache-2.0, from Maven Central via `scripts/services.py install s3`) speaks
the S3 API, checks AWS Signature V2 and V4 (headers and presigned URLs) against one
access key, and stores objects as files in a temp folder, so they survive `restart()`.
The server makes the bucket `bucket` when it starts.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from .ports import LOOPBACK, accepts_connections, free_port
from .process import Service, ServiceProcess, installed

START_TIMEOUT = 60.0
REGION = "us-east-1"


class S3Server(Service):
    """One S3Proxy process on 127.0.0.1 and a random port."""

    def __init__(self, *, bucket: str = "jarvis-test", workdir: Path | None = None) -> None:
        self.bucket = bucket
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="jarvis-s3-"))
        self.port = free_port()
        self.access_key = "jarvis-test"
        self.secret_key = secrets.token_urlsafe(24)
        self.region = REGION
        self._process: ServiceProcess | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self, **options: Any) -> Any:
        """A boto3 S3 client for this server (SigV4, path-style addressing)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 2}),
            **options,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def start(self) -> S3Server:
        first = self._process is None
        if self._process is None:
            install = installed("s3")
            self._write_config()
            self._process = ServiceProcess(
                "s3proxy",
                [install.java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-Djava.awt.headless=true",
                 f"-Dlogback.configurationFile={self.workdir / 'logback.xml'}",
                 "-cp", install.classpath, "org.gaul.s3proxy.Main",
                 "--properties", str(self.workdir / "s3proxy.properties")],
                log_path=self.workdir / "s3proxy.log",
            )
        self._process.start()
        self._process.wait_until(self._answers_http, timeout=START_TIMEOUT,
                                 what=f"HTTP on {self.endpoint_url} answered")
        if first:
            self.create_bucket(self.bucket)
        return self

    def _answers_http(self) -> bool:
        if not accepts_connections(self.port):
            return False
        # Unsigned, so refused; any S3 answer means the server is up.
        return httpx.get(self.endpoint_url + "/", timeout=2).status_code in (200, 403)

    def _write_config(self) -> None:
        blobs = self.workdir / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        settings = {
            "s3proxy.endpoint": self.endpoint_url,
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": self.access_key,
            "s3proxy.credential": self.secret_key,
            "jclouds.provider": "filesystem",
            "jclouds.filesystem.basedir": str(blobs),
        }
        (self.workdir / "s3proxy.properties").write_text(
            "".join(f"{key}={value}\n" for key, value in settings.items()))
        (self.workdir / "logback.xml").write_text(
            "<configuration>\n"
            '  <appender name="out" class="ch.qos.logback.core.ConsoleAppender">\n'
            "    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{30} - %msg%n</pattern>"
            "</encoder>\n"
            "  </appender>\n"
            '  <root level="INFO"><appender-ref ref="out"/></root>\n'
            "</configuration>\n"
        )

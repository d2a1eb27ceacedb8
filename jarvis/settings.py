"""The engine's settings: one pydantic-settings model read from `JARVIS_*` variables.

This is the only configuration system of the engine. Every field has a default, so
`load_settings()` works on a bare machine; a deployment sets what it needs through the
environment, for example:

    JARVIS_STATE_DIR=/mnt/efs/jarvis
    JARVIS_HMAC_KEYS='["new-secret-0123456789", "old-secret-0123456789"]'
    JARVIS_LIMITS__MAX_STEPS=5000000

`JARVIS_HMAC_KEYS` also takes a comma-separated list (`new-secret,old-secret`). When it
is not set, the engine signs with `DEVELOPMENT_HMAC_KEY`, a public value that protects
nothing: it exists so that local runs and tests need no setup. Production must set
`JARVIS_HMAC_KEYS`; `EngineSettings.uses_development_key` tells whether it did.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: DEVELOPMENT ONLY. A published key, so anyone can forge journals and snapshots
#: signed with it. Used only when `JARVIS_HMAC_KEYS` is not configured.
DEVELOPMENT_HMAC_KEY = "jarvis-development-key-not-secret-do-not-use-in-production"

#: Shorter secrets are refused: an HMAC key is only as strong as it is long.
MIN_HMAC_KEY_LENGTH = 16

TraceLevel = Literal["off", "statements", "full"]


CPU_MARGIN_SECONDS = 10
"""How far the default CPU-time limit lies past the wall-clock limit."""


class Limits(BaseModel):
    """What one execution may use before the engine stops it (`LimitExceeded`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(
        default=10_000_000, ge=1, description="Statements the program may execute, in total."
    )
    max_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Wall-clock seconds of running (time spent suspended does not count).",
    )
    max_output_bytes: int = Field(
        default=1 << 20, ge=0, description="Bytes the program may print and return as outputs."
    )
    max_trace_events: int = Field(
        default=1_000_000, ge=0, description="Trace events one execution may emit."
    )
    max_recursion_depth: int = Field(
        default=200, ge=1, description="Nested SPy function calls (frames) at one time."
    )
    max_book_calls: int = Field(
        default=1_000_000, ge=0, description="Book procedure calls, in total."
    )
    max_snapshot_bytes: int = Field(
        default=64 << 20, ge=1, description="Size of one snapshot's payload (the pickled state)."
    )
    max_artifact_bytes: int = Field(
        default=16 << 20, ge=0, le=128 << 20,
        description="Size of one artifact a program stores with artifact().",
    )
    max_memory_bytes: int = Field(
        default=1 << 30,
        ge=128 << 20,
        description=(
            "Address space of the process that runs one execution (RLIMIT_AS; the "
            "interpreter alone takes about 100 MiB): past it allocations fail and the "
            "execution fails with the limit 'memory'."
        ),
    )
    max_cpu_seconds: float = Field(
        default=3600.0 + CPU_MARGIN_SECONDS,
        gt=0,
        description=(
            "CPU seconds the process of one run may use (RLIMIT_CPU): a backstop for work "
            "the wall-clock limit cannot interrupt. The process gets the lower of this and "
            f"max_seconds + {CPU_MARGIN_SECONDS}."
        ),
    )

    @property
    def cpu_seconds(self) -> int:
        """The CPU-time limit of one run's process, in whole seconds."""
        return max(1, math.ceil(min(self.max_cpu_seconds,
                                    self.max_seconds + CPU_MARGIN_SECONDS)))


class EngineSettings(BaseSettings):
    """Settings of the durable engine, from `JARVIS_*` variables or keyword overrides."""

    model_config = SettingsConfigDict(
        env_prefix="JARVIS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    state_dir: Path = Field(
        default=Path(".jarvis"),
        description=(
            "Where executions keep journals, snapshots and status; a relative path is "
            "taken from the working directory. Shared storage (EFS) in a deployment."
        ),
    )
    snapshot_every_effects: int = Field(
        default=100, ge=1, description="Take a snapshot after this many journaled effects."
    )
    snapshot_every_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Take a snapshot when this many seconds have passed since the last one.",
    )
    snapshot_keep: int = Field(
        default=2, ge=1, description="Snapshots kept per execution; older ones are deleted."
    )
    journal_fsync: bool = Field(
        default=True,
        description=(
            "fsync the journal after every record. Turning it off trades crash safety "
            "for speed (tests, local runs)."
        ),
    )
    hmac_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=lambda: [SecretStr(DEVELOPMENT_HMAC_KEY)],
        description=(
            "Secrets that sign journals and snapshots: the first signs, every one "
            "verifies (so keys can be rotated). A JSON list or comma-separated. "
            "Defaults to the public development key."
        ),
    )
    trace_level: TraceLevel = Field(
        default="statements",
        description=(
            "Which trace events are emitted: off, statements (one event per statement) "
            "or full (one per expression)."
        ),
    )
    limits: Limits = Field(
        default_factory=lambda: Limits(), description="Default limits of an execution."
    )

    @field_validator("hmac_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        # The environment gives one string; JSON when it looks like a list, else commas.
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"not a valid JSON list: {exc}") from exc
            return [part.strip() for part in text.split(",")]
        return value

    @field_validator("hmac_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        # An empty list is refused rather than replaced by the development key: someone
        # who set the variable meant to configure real keys.
        if not keys:
            raise ValueError("at least one key is needed")
        for position, key in enumerate(keys):
            if len(key.get_secret_value()) < MIN_HMAC_KEY_LENGTH:
                raise ValueError(
                    f"key {position} is shorter than {MIN_HMAC_KEY_LENGTH} characters"
                )
        return keys

    @property
    def hmac_key_bytes(self) -> list[bytes]:
        """The keys as bytes (UTF-8), signing key first: what Journal and SnapshotStore take."""
        return [key.get_secret_value().encode("utf-8") for key in self.hmac_keys]

    @property
    def uses_development_key(self) -> bool:
        """True when the public development key is among the keys: unsafe outside development."""
        return any(key.get_secret_value() == DEVELOPMENT_HMAC_KEY for key in self.hmac_keys)


def load_settings(**overrides: Any) -> EngineSettings:
    """Read the settings from the environment; keyword arguments win over it.

    Nested overrides merge with the environment field by field, so
    `load_settings(limits={"max_steps": 10})` keeps `JARVIS_LIMITS__MAX_SECONDS`.
    """
    return EngineSettings(**overrides)


class KafkaSettings(BaseModel):
    """Where the worker's topics live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(default="127.0.0.1:9092",
                                   description="Kafka bootstrap servers, comma-separated.")
    group_id: str = Field(default="jarvis-workers", description="The workers' consumer group.")
    control_topic: str = Field(default="spy_control", description="Start and stop commands.")
    status_topic: str = Field(default="spy_status", description="Status events.")
    logs_topic: str = Field(default="spy_logs", description="Trace events, line protocol.")
    metrics_topic: str = Field(default="spy_metrics", description="Worker metrics, line protocol.")
    dlq_topic: str = Field(default="spy_control.dlq",
                           description="Commands that failed validation, with the reason.")
    max_command_bytes: int = Field(default=2 << 20, ge=1024,
                                   description="Larger control messages are refused.")
    session_timeout_ms: int = Field(
        default=45_000, ge=1000,
        description=("A worker that sends no heartbeat for this long leaves the group and "
                     "its partitions move to the others (the broker allows 6000 and up "
                     "by default)."))
    heartbeat_interval_ms: int = Field(
        default=3000, ge=100,
        description="How often the consumer heartbeats; at most a third of the session timeout.")
    max_poll_interval_ms: int = Field(
        default=300_000, ge=1000,
        description="A worker whose loop does not poll for this long leaves the group.")
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka settings (security.protocol, sasl.*, ...).",
    )


class RedisSettings(BaseModel):
    """Where leases, stop requests and execution status live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(default="redis://127.0.0.1:6379/0", description="The Redis URL.")
    lease_seconds: float = Field(default=15.0, gt=0,
                                 description="A lease lapses this long after its last renewal.")
    reconnect_seconds: float = Field(
        default=60.0, ge=0,
        description=("While Redis is unreachable, how long a run waits for it before its "
                     "writes are refused (its lease cannot be confirmed)."))


class S3Settings(BaseModel):
    """Object storage for large artifacts and programs referenced by key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = Field(default=None,
                                     description="S3-compatible endpoint; None for AWS.")
    bucket: str | None = Field(default=None,
                               description="The bucket; without one, artifacts stay local.")
    prefix: str = Field(default="jarvis/", description="Key prefix for everything written.")
    region: str = Field(default="us-east-1", description="The bucket's region.")
    server_side_encryption: str | None = Field(
        default=None, description="AES256 or aws:kms; None for the bucket's default.")
    kms_key_id: str | None = Field(default=None, description="KMS key for aws:kms.")
    presign_seconds: int = Field(default=3600, ge=1,
                                 description="Lifetime of presigned GET URLs.")
    inline_bytes: int = Field(
        default=64 << 10, ge=0,
        description=("Outputs whose JSON is larger than this many bytes go to storage; "
                     "status events carry a reference to them."))


class WorkerSettings(EngineSettings):
    """Settings of `jarvis worker`: the engine's, plus Kafka, Redis, S3 and the pool."""

    worker_id: str | None = Field(default=None,
                                  description="This worker's id; defaults to host-pid.")
    books_file: Path | None = Field(default=None,
                                    description="The Book registry (TOML) the worker serves.")
    max_concurrency: int = Field(default=4, ge=1,
                                 description="Executions run at once, each in its own process.")
    heartbeat_file: Path = Field(default=Path("/tmp/jarvis-heartbeat.json"),
                                 description="Where the worker writes its health.")
    heartbeat_seconds: float = Field(default=5.0, gt=0,
                                     description="How often the heartbeat is written.")
    shutdown_grace_seconds: float = Field(
        default=25.0, gt=0,
        description="On SIGTERM, how long running executions get to snapshot and stop.")
    metrics_seconds: float = Field(
        default=15.0, gt=0,
        description="How often the worker publishes its metrics to the metrics topic.")
    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings())
    redis: RedisSettings = Field(default_factory=lambda: RedisSettings())
    s3: S3Settings = Field(default_factory=lambda: S3Settings())


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """The worker's settings from the environment; keyword arguments win over it."""
    return WorkerSettings(**overrides)

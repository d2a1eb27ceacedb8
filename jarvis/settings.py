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

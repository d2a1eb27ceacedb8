"""Engine settings: defaults, `JARVIS_*` variables, keyword overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from jarvis.settings import (
    DEVELOPMENT_HMAC_KEY,
    EngineSettings,
    Limits,
    load_settings,
)

SECRET_1 = "first-secret-0123456789"
SECRET_2 = "second-secret-0123456789"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("JARVIS_"):
            monkeypatch.delenv(name)
    # No stray .env or similar file may influence the result.
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.state_dir == Path(".jarvis")
    assert settings.snapshot_every_effects == 100
    assert settings.snapshot_every_seconds == 5.0
    assert settings.snapshot_keep == 2
    assert settings.journal_fsync is True
    assert settings.trace_level == "statements"
    assert settings.limits == Limits()
    assert settings.limits.max_steps > 0
    assert settings.hmac_key_bytes == [DEVELOPMENT_HMAC_KEY.encode()]
    assert settings.uses_development_key


def test_every_field_is_described() -> None:
    models: list[type[BaseModel]] = [EngineSettings, Limits]
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


def test_state_dir_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JARVIS_STATE_DIR", "/mnt/efs/jarvis")
    assert load_settings().state_dir == Path("/mnt/efs/jarvis")


@pytest.mark.parametrize(
    "value",
    [
        f"{SECRET_1},{SECRET_2}",
        f" {SECRET_1} , {SECRET_2} ",
        f'["{SECRET_1}", "{SECRET_2}"]',
    ],
)
def test_hmac_keys_as_a_list_or_json(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("JARVIS_HMAC_KEYS", value)
    settings = load_settings()
    assert settings.hmac_key_bytes == [SECRET_1.encode(), SECRET_2.encode()]
    assert not settings.uses_development_key


def test_one_hmac_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JARVIS_HMAC_KEYS", SECRET_1)
    assert load_settings().hmac_key_bytes == [SECRET_1.encode()]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "at least one key"),
        ("[]", "at least one key"),
        ("short", "shorter than 16"),
        (f"{SECRET_1},", "shorter than 16"),
        ('["unclosed', "not a valid JSON list"),
    ],
)
def test_bad_hmac_keys_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("JARVIS_HMAC_KEYS", value)
    with pytest.raises(ValidationError, match=message):
        load_settings()


def test_keys_do_not_show_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JARVIS_HMAC_KEYS", SECRET_1)
    settings = load_settings()
    assert SECRET_1 not in repr(settings)
    assert SECRET_1 not in str(settings.model_dump())


def test_limits_from_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JARVIS_LIMITS__MAX_STEPS", "5000")
    monkeypatch.setenv("JARVIS_LIMITS__MAX_SECONDS", "2.5")
    limits = load_settings().limits
    assert (limits.max_steps, limits.max_seconds) == (5000, 2.5)
    assert limits.max_book_calls == Limits().max_book_calls


def test_scalar_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JARVIS_JOURNAL_FSYNC", "false")
    monkeypatch.setenv("JARVIS_SNAPSHOT_KEEP", "3")
    monkeypatch.setenv("JARVIS_SNAPSHOT_EVERY_SECONDS", "0.5")
    monkeypatch.setenv("JARVIS_TRACE_LEVEL", "full")
    settings = load_settings()
    assert settings.journal_fsync is False
    assert settings.snapshot_keep == 3
    assert settings.snapshot_every_seconds == 0.5
    assert settings.trace_level == "full"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JARVIS_TRACE_LEVEL", "everything"),
        ("JARVIS_SNAPSHOT_KEEP", "0"),
        ("JARVIS_LIMITS__MAX_STEPS", "-1"),
        ("JARVIS_LIMITS__MAX_STEPZ", "5"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        load_settings()


def test_overrides_win_and_merge_with_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JARVIS_SNAPSHOT_KEEP", "4")
    monkeypatch.setenv("JARVIS_LIMITS__MAX_SECONDS", "9")
    settings = load_settings(snapshot_keep=6, limits={"max_steps": 10}, hmac_keys=[SECRET_2])
    assert settings.snapshot_keep == 6
    assert (settings.limits.max_steps, settings.limits.max_seconds) == (10, 9.0)
    assert settings.hmac_key_bytes == [SECRET_2.encode()]


def test_unknown_overrides_are_refused() -> None:
    with pytest.raises(ValidationError):
        load_settings(snapshot_kepe=3)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.snapshot_keep = 9

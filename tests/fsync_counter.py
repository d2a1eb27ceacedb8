"""Counting `os.fsync` calls in a test, with each still done."""

from __future__ import annotations

import os

import pytest


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors `os.fsync` is called with from now on, in order."""
    calls: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    return calls

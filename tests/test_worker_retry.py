"""Which failures the worker waits out, and how long it waits between tries."""

from __future__ import annotations

import random

import redis.exceptions

from jarvis.worker.retry import Backoff, is_transient


def test_connection_failures_are_transient_and_bad_input_is_not() -> None:
    assert is_transient(redis.exceptions.ConnectionError("refused"))
    assert is_transient(redis.exceptions.TimeoutError("slow"))
    assert is_transient(redis.exceptions.ResponseError("LOADING Redis is loading"))
    assert is_transient(OSError(5, "Input/output error"))
    assert not is_transient(redis.exceptions.ResponseError("WRONGTYPE Operation"))
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(ValueError("bad"))


def test_backoff_doubles_up_to_its_ceiling_with_jitter() -> None:
    backoff = Backoff(first=0.1, ceiling=1.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    for tries, delay in enumerate(delays):
        full = min(1.0, 0.1 * 2**tries)
        assert full / 2 <= delay <= full
    backoff.reset()
    assert backoff.next_delay() <= 0.1

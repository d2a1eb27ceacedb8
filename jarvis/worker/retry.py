"""Which failures are worth waiting out, and how long to wait between tries.

A worker depends on Redis and the shared state directory. When either is briefly
away (a restart, a failover, a network blip) the worker waits and tries again rather
than failing an execution or dead-lettering a good command; anything else is a real
error and is reported as one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def is_transient(exc: BaseException) -> bool:
    """True for a failure of Redis's connection or of the file system, not of the input."""
    import redis.exceptions

    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        # A Redis that is still loading its data, or a replica promoted meanwhile.
        text = str(exc)
        return text.startswith(("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN"))
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError)


_JITTER = random.Random()
"""One generator for every Backoff: seeding a new one reads the OS's entropy, and a
worker makes several Backoffs per run."""


@dataclass
class Backoff:
    """Exponential backoff with jitter: 0.1 s, 0.2 s, ... up to `ceiling` seconds."""

    first: float = 0.1
    ceiling: float = 2.0
    tries: int = 0
    rng: random.Random = field(default_factory=lambda: _JITTER)

    def next_delay(self) -> float:
        delay: float = min(self.ceiling, self.first * 2.0 ** self.tries)
        self.tries += 1
        jitter: float = 0.5 + self.rng.random() / 2
        return delay * jitter

    def reset(self) -> None:
        self.tries = 0

"""Redis connections of their own for the threads that talk to Redis on every run.

A run asks Redis twice (its lease with its beginning, its ending with the release). A
command through the client's connection pool checks a connection out and back in each
time, and the check-out makes sure nothing is left to read on it: three system calls,
each a hand-over of the GIL on a busy worker, and the pool's own bookkeeping. A thread
that holds a connection of its own (`redis.Redis.client()`: the same pool's settings,
one connection kept) skips both. The connection goes back to the pool when its thread
ends (the client is collected with the thread's data).

A client that is not a `redis.Redis` (a test's stand-in) is used as it is.
"""

from __future__ import annotations

import threading
from typing import Any


class ThreadConnections:
    """A client per thread, each holding one connection of `redis`'s pool."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.dedicated = callable(getattr(redis, "client", None)) \
            and hasattr(redis, "connection_pool")
        self.local = threading.local()

    def client(self) -> Any:
        """This thread's client (connecting it on first use: it raises as a command
        would while Redis is away, and is made again on the next call)."""
        if not self.dedicated:
            return self.redis
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = self.redis.client()
        return client

    def run(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """Run a registered script on this thread's client."""
        if not self.dedicated:
            return script(keys=keys, args=args)
        return script(keys=keys, args=args, client=self.client())

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

from redis.exceptions import NoScriptError


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
        """Run a registered script on this thread's client.

        Sent on the client's connection as it is: `EVALSHA` written and its answer
        read, with the connection's own retry policy (as a command of the client has),
        but without the client's layers around a command (its lock, which a client of
        one thread does not need, and its bookkeeping: half the time a script took).
        A script Redis does not know yet goes through the client, which loads it."""
        if not self.dedicated:
            return script(keys=keys, args=args)
        client = self.client()
        connection = getattr(client, "connection", None)
        if connection is None:
            return script(keys=keys, args=args, client=client)
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)

        def call() -> Any:
            connection.send_command(*command)
            return connection.read_response()

        try:
            return connection.retry.call_with_retry(
                call, lambda _error: connection.disconnect())
        except NoScriptError:
            return script(keys=keys, args=args, client=client)

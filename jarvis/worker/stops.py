"""Stop requests: a `stop` command reaches whichever worker runs the execution.

The worker that reads a `stop` tells its own run at once; the request is also left in
Redis (`jarvis:stop:{id}`, for a day), where the lease keeper (keeper.py) of whichever
worker holds the execution's lease looks for it.
"""

from __future__ import annotations

from typing import Any, Final

KEEP_SECONDS: Final = 24 * 3600


def stop_key(execution_id: str) -> str:
    return f"jarvis:stop:{execution_id}"


class StopRequests:
    """Stop requests in Redis, by execution id."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def request(self, execution_id: str, mode: str) -> None:
        # A cancel is never weakened into a suspend by a later request.
        if mode == "suspend" and self.pending(execution_id) == "cancel":
            return
        self.redis.set(stop_key(execution_id), mode, ex=KEEP_SECONDS)

    def pending(self, execution_id: str) -> str | None:
        mode = self.redis.get(stop_key(execution_id))
        if mode is None:
            return None
        return mode.decode() if isinstance(mode, bytes) else str(mode)

    def clear(self, execution_id: str) -> None:
        self.redis.delete(stop_key(execution_id))

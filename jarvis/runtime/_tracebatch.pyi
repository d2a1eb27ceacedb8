"""Types of the C extension `jarvis.runtime._tracebatch` (source: _tracebatch.c beside
this file; the same functions in Python: tracebatch.py)."""

from collections.abc import Callable
from typing import Any

from jarvis.runtime.trace import TraceEvent

def encode(
    first_seq: int, sites: list[int], start: int, stop: int, expr_sites: bytes,
    texts: list[str] | None, values: list[Any], names: dict[int, str], max_chars: int,
    clip: Callable[[str, Any], str], event: Callable[[int], TraceEvent], /,
) -> bytes:
    """`tracebatch.encode_columns_python`."""

def render(
    blob: bytes, heads: tuple[bytes, ...], site_kinds: bytes, middles: tuple[bytes, ...],
    first_ns: int, skip: int, max_message_bytes: int, /,
) -> tuple[list[bytes], list[int]]:
    """`tracebatch.render_python` (ValueError where it raises ChannelError)."""

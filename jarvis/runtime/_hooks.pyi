"""Types of the C extension `jarvis.runtime._hooks` (source: _hooks.c beside this file)."""

from collections.abc import Callable
from typing import Any, TypeVar

_V = TypeVar("_V")

class Hooks:
    """The trace hooks of one Tracer, writing into its buffer and marks lists."""

    def __new__(
        cls,
        buffer: list[Any],
        marks: list[int],
        capture: Callable[[Any], tuple[str, str]],
        summarized: frozenset[int] | set[int],
        summaries: dict[type, tuple[str, str, str, str]],
        spill: Callable[[], object],
        capacity: int,
        longest: int,
    ) -> Hooks: ...
    @property
    def capacity(self) -> int: ...
    def expr(self, k: int, value: _V, /) -> _V: ...
    def expr_checked(self, k: int, value: _V, /) -> _V: ...
    def stmt(self, k: int, /) -> None: ...
    def first(self, ks: int, k: int, value: _V, /) -> _V: ...
    def set_capacity(self, entries: int, /) -> None: ...

def reprs(values: list[Any], /) -> list[str]:
    """`[repr(v) for v in values]`, with None and ints that fit a C long written directly."""

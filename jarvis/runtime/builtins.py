"""The namespace a SPy program runs in: safe builtins, runtime builtins, Book proxies.

Everything a program can reach without defining it is built here, fresh for each
execution, so nothing one execution mutates is seen by another. Effects (Book calls,
the clock, sleep, checkpoints, artifacts, outputs, prints) go through one `Effects`
object, the single interface that a host performs, in-process or on the far side of a
channel.
"""

from __future__ import annotations

import builtins as _py
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol

from jarvis.compiler.language import BOOKS_MODULE, EXCEPTIONS, SAFE_FUNCTIONS
from jarvis.runtime.artifacts import artifact_arguments
from jarvis.runtime.books import check_json_value, json_copy, to_json_value
from jarvis.runtime.errors import BookError


class Effects(Protocol):
    """What a running program asks of its host."""

    def book_call(self, book: str, procedure: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        ...

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def checkpoint(self) -> None: ...

    def artifact(self, name: str, content: bytes, content_type: str) -> str: ...

    def output(self, name: str, value: Any) -> None: ...

    def print(self, text: str) -> None: ...


class BookProcedure:
    """`crm.create_lead`: calling it performs the Book call through the host."""

    __slots__ = ("_jv_book", "_jv_effects", "_jv_procedure")

    def __init__(self, book: str, procedure: str, effects: Effects) -> None:
        self._jv_book = book
        self._jv_procedure = procedure
        self._jv_effects = effects

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            # The host gets private copies: nothing it does reaches the program's values.
            copied_args = json_copy(args, "the arguments")
            copied_kwargs = json_copy(kwargs, "the keyword arguments")
        except TypeError as exc:
            raise TypeError(f"{self._jv_book}.{self._jv_procedure}(): {exc}") from None
        return self._jv_effects.book_call(self._jv_book, self._jv_procedure, copied_args,
                                          copied_kwargs)

    def __repr__(self) -> str:
        return f"<procedure {self._jv_book}.{self._jv_procedure}>"


class BookProxy:
    """A Book as a program sees it: only `BOOK.procedure(...)` works."""

    __slots__ = ("_jv_effects", "_jv_name")

    def __init__(self, name: str, effects: Effects) -> None:
        self._jv_name = name
        self._jv_effects = effects

    def __getattr__(self, procedure: str) -> BookProcedure:
        if procedure.startswith("_"):
            raise AttributeError(procedure)
        return BookProcedure(self._jv_name, procedure, self._jv_effects)

    def __repr__(self) -> str:
        return f"<book {self._jv_name}>"


def _make_print(effects: Effects) -> Callable[..., None]:
    def spy_print(*values: Any, sep: str | None = " ", end: str | None = "\n") -> None:
        sep = " " if sep is None else sep
        end = "\n" if end is None else end
        if not isinstance(sep, str) or not isinstance(end, str):
            raise TypeError("print(): sep and end must be strings")
        effects.print(sep.join(str(value) for value in values) + end)

    return spy_print


_PLAIN_INT_BITS: Final = 4096
"""Ints up to this size (about 1,200 digits) convert to and from JSON text unchanged;
longer ones take the general path, which raises what a conversion past Python's digit
limit raises."""


def _make_output(effects: Effects) -> Callable[[str, Any], None]:
    def output(name: str, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("output(): the name must be a non-empty string")
        kind = type(value)
        if kind is str or kind is bool or value is None or (
                kind is int and value.bit_length() <= _PLAIN_INT_BITS):
            # Its own JSON copy (what the round trip below would make of it).
            effects.output(name, value)
            return
        check_json_value(value, f"output {name!r}")
        # The value as it is now: later mutation of the program's list or dict
        # does not change a recorded output.
        effects.output(name, to_json_value(value))

    return output


def _make_sleep(effects: Effects) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError("sleep(): seconds must be a number")
        if not seconds >= 0:
            raise ValueError("sleep(): seconds must be zero or more")
        effects.sleep(float(seconds))

    return sleep


def _make_artifact(effects: Effects) -> Callable[..., str]:
    def artifact(*args: Any, **kwargs: Any) -> str:
        return effects.artifact(*artifact_arguments(args, kwargs))

    return artifact


_PYTHON_BUILTINS: dict[str, Any] = {
    **{name: getattr(_py, name) for name in SAFE_FUNCTIONS},
    **{name: getattr(_py, name) for name in EXCEPTIONS},
}
"""The Python builtins a program may use, looked up once (each table is a copy)."""

EFFECT_FUNCTIONS: Final = ("print", "output", "sleep", "now", "checkpoint", "artifact")
"""The builtins made for each execution by `make_builtins`: closures over its effects."""

BUILTINS_LAYOUT: Final[Mapping[str, Any]] = MappingProxyType({
    **_PYTHON_BUILTINS,
    **dict.fromkeys(EFFECT_FUNCTIONS),
    "BookError": BookError,
    # Nothing can reach the dict under this proxy: one serves every table.
    "inputs": MappingProxyType({}),
})
"""What `make_builtins` makes, in its order, with None for the entries it makes per
execution (`EFFECT_FUNCTIONS`); the rest is shared by every table."""


def make_builtins(effects: Effects, book_names: list[str],
                  table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `__builtins__` of one execution: safe Python builtins and the SPy runtime,
    and its Book proxies under `_jv_book_table`. Given a `table` (a fresh copy of
    `BUILTINS_LAYOUT`, possibly with more entries), its per-execution entries are
    filled in and `_jv_book_table` is not added."""
    if table is None:
        table = dict(BUILTINS_LAYOUT)
        table["_jv_book_table"] = {name: BookProxy(name, effects) for name in book_names}
    table["print"] = _make_print(effects)
    table["output"] = _make_output(effects)
    table["sleep"] = _make_sleep(effects)
    table["now"] = lambda: effects.now()
    table["checkpoint"] = lambda: effects.checkpoint()
    table["artifact"] = _make_artifact(effects)
    return table


def set_inputs(table: dict[str, Any], inputs: Mapping[str, Any]) -> None:
    """Install the execution's inputs: a read-only mapping over a private deep copy."""
    table["inputs"] = MappingProxyType(json_copy(dict(inputs), "the inputs"))


def books_importer(books: dict[str, BookProxy]) -> Callable[..., Any]:
    """An `__import__` that serves only `from books import NAME` (used by the reference)."""

    class _BooksModule:
        __slots__ = ()

        def __getattr__(self, name: str) -> BookProxy:
            try:
                return books[name]
            except KeyError:
                raise ImportError(f"no Book named {name!r} is configured") from None

    module = _BooksModule()

    def spy_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name != BOOKS_MODULE:
            raise ImportError(f"SPy programs cannot import {name!r}")
        return module

    return spy_import

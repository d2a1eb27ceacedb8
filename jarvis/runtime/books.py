"""Books: the registry of third-party integrations a program may call, and how to call them.

A registry is a TOML file:

    [books.crm]
    python = "books/crm.py"          # in-process, for development and tests

    [books.erp]
    url = "http://127.0.0.1:8080"    # HTTP protocol v1 (docs/books.md)
    timeout_s = 10
    token_env = "ERP_TOKEN"

An in-process Book is a Python file whose public module-level functions are its
procedures; an exception it raises becomes a `BookError` in the program. Arguments and
results must be JSON values (None, bool, int, float, str, lists and string-keyed dicts).
"""

from __future__ import annotations

import importlib.util
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from jarvis.runtime.errors import BookError, RuntimeSetupError


class Book(Protocol):
    """Something a program can call procedures on."""

    name: str

    def call(
        self, procedure: str, args: list[Any], kwargs: dict[str, Any], idempotency_key: str
    ) -> Any: ...


def check_json_value(value: Any, where: str) -> None:
    """Raise TypeError unless `value` is a JSON value (finite floats, str dict keys)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if item is None or isinstance(item, (bool, int, str)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise TypeError(f"{path} is {item!r}, which JSON cannot carry")
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((element, f"{path}[{i}]") for i, element in enumerate(item))
            continue
        if isinstance(item, dict):
            for key, element in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"{path} has key {key!r}; JSON object keys must be str")
                stack.append((element, f"{path}[{key!r}]"))
            continue
        raise TypeError(f"{path} is a {type(item).__name__}, not a JSON value")


def to_json_value(value: Any) -> Any:
    """A deep copy of a JSON value with tuples turned into lists, as JSON would."""
    return json.loads(json.dumps(value, allow_nan=False))


@dataclass
class PythonBook:
    """An in-process Book loaded from a Python file (development and tests)."""

    name: str
    path: Path

    def __post_init__(self) -> None:
        self._module: ModuleType | None = None

    def _procedures(self) -> ModuleType:
        if self._module is None:
            spec = importlib.util.spec_from_file_location(f"jarvis_book_{self.name}", self.path)
            if spec is None or spec.loader is None:
                raise RuntimeSetupError(f"Book {self.name!r}: cannot load {self.path}")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except OSError as exc:
                raise RuntimeSetupError(f"Book {self.name!r}: cannot read {self.path}: {exc}") from exc
            self._module = module
        return self._module

    def procedure(self, procedure: str) -> Callable[..., Any]:
        if procedure.startswith("_"):
            raise BookError(self.name, procedure, "UnknownProcedure", "no such procedure")
        func = getattr(self._procedures(), procedure, None)
        if not callable(func):
            raise BookError(self.name, procedure, "UnknownProcedure", "no such procedure")
        return func  # type: ignore[no-any-return]

    def call(
        self, procedure: str, args: list[Any], kwargs: dict[str, Any], idempotency_key: str
    ) -> Any:
        func = self.procedure(procedure)
        try:
            result = func(*to_json_value(args), **to_json_value(kwargs))
        except BookError:
            raise
        except Exception as exc:
            raise BookError(self.name, procedure, type(exc).__name__, str(exc)) from None
        try:
            check_json_value(result, f"the result of {self.name}.{procedure}")
        except TypeError as exc:
            raise BookError(self.name, procedure, "InvalidResult", str(exc)) from None
        return to_json_value(result)


class BookRegistry:
    """The Books available to an execution, by name."""

    def __init__(self, books: Mapping[str, Book] | None = None) -> None:
        self._books: dict[str, Book] = dict(books or {})

    def __contains__(self, name: object) -> bool:
        return name in self._books

    def names(self) -> list[str]:
        return sorted(self._books)

    def get(self, name: str) -> Book:
        try:
            return self._books[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise RuntimeSetupError(
                f"the program imports Book {name!r}, which the registry does not define "
                f"(defined: {known})"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> BookRegistry:
        """Read a registry file; relative `python` paths are relative to the file."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RuntimeSetupError(f"cannot read Book registry {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise RuntimeSetupError(f"Book registry {path} is not valid TOML: {exc}") from exc
        table = data.get("books", {})
        if not isinstance(table, dict):
            raise RuntimeSetupError(f"{path}: `books` must be a table of [books.NAME] entries")
        books: dict[str, Book] = {}
        for name, entry in table.items():
            if not isinstance(entry, dict):
                raise RuntimeSetupError(f"{path}: [books.{name}] must be a table")
            if "python" in entry:
                books[name] = PythonBook(name, (path.parent / str(entry["python"])).resolve())
            elif "url" in entry:
                raise RuntimeSetupError(
                    f"{path}: [books.{name}] is an HTTP Book; HTTP Books are not supported "
                    "by this version of the runtime yet"
                )
            else:
                raise RuntimeSetupError(
                    f"{path}: [books.{name}] needs `python = \"file.py\"` or `url = \"http://...\"`"
                )
        return cls(books)

"""Books: the registry of third-party integrations a program may call, and how to call them.

A registry is a TOML file:

    [books.crm]
    python = "books/crm.py"          # in-process, for development and tests

    [books.erp]
    url = "http://127.0.0.1:8080"    # HTTP protocol v1 (docs/books.md, http_book.py)
    timeout_s = 10                   # per attempt; optional
    token_env = "ERP_TOKEN"          # bearer token from this variable; optional
    retry_budget_s = 30              # optional
    max_attempts = 5                 # optional

Unknown keys are refused, so that a typo is not a silently ignored setting.

An in-process Book is a Python file whose public module-level functions are its
procedures; an exception it raises becomes a `BookError` in the program. Arguments and
results must be JSON values (None, bool, int, float, str, lists and string-keyed dicts).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any, Protocol, runtime_checkable

from jarvis.runtime.errors import BookError, RuntimeSetupError


class Book(Protocol):
    """Something a program can call procedures on.

    `call` gets JSON values that are the caller's private copies (the Machine makes
    them with `json_copy`), so a Book may keep or change its arguments.
    """

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


class _NotPlain(Exception):
    """A value `_plain_copy` leaves to the general path (or to refuse)."""


def _plain_copy(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise _NotPlain
    if kind is list or kind is tuple:
        return [_plain_copy(item) for item in value]
    if kind is dict:
        copied = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain
            copied[key] = _plain_copy(item)
        return copied
    raise _NotPlain


PLAIN_SCALARS = frozenset({str, int, bool, type(None)})
"""JSON values that are their own copy (a float is checked: JSON has no NaN)."""


def json_copy(value: Any, where: str) -> Any:
    """`to_json_value(value)` after `check_json_value(value, where)`, in one pass.

    The value as JSON would carry it, a private deep copy (tuples become lists); a
    value that is not JSON raises the TypeError `check_json_value` raises. Book
    arguments and results cross the Book boundary through it, once each way.
    """
    try:
        return _plain_copy(value)
    except _NotPlain:
        # Not plain JSON types (or not JSON at all): the exact error, or the subclasses
        # of int, float and str converted as JSON converts them.
        check_json_value(value, where)
        return to_json_value(value)
    except RecursionError:
        copied = to_json_value(value)  # refuses a cycle, or nests too deep for JSON
        check_json_value(value, where)
        return copied


@dataclass
class PythonBook:
    """An in-process Book loaded from a Python file (development and tests)."""

    name: str
    path: Path

    def __post_init__(self) -> None:
        self._module: ModuleType | None = None
        # Procedures found so far: a module's functions are looked up once.
        self._found: dict[str, Callable[..., Any]] = {}

    def _procedures(self) -> ModuleType:
        if self._module is None:
            spec = importlib.util.spec_from_file_location(f"jarvis_book_{self.name}", self.path)
            if spec is None or spec.loader is None:
                raise RuntimeSetupError(f"Book {self.name!r}: cannot load {self.path}")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except OSError as exc:
                raise RuntimeSetupError(
                    f"Book {self.name!r}: cannot read {self.path}: {exc}"
                ) from exc
            except Exception as exc:
                raise RuntimeSetupError(
                    f"Book {self.name!r}: loading {self.path} failed: {type(exc).__name__}: {exc}"
                ) from exc
            self._module = module
        return self._module

    def procedure(self, procedure: str) -> Callable[..., Any]:
        found = self._found.get(procedure)
        if found is not None:
            return found
        module = self._procedures()
        func = getattr(module, procedure, None) if not procedure.startswith("_") else None
        # Only functions the Book's file defines are procedures: what it imports (`from os
        # import getenv`), its classes and other callables would run in the host.
        if not isinstance(func, FunctionType) or func.__module__ != module.__name__:
            raise BookError(self.name, procedure, "UnknownProcedure", "no such procedure")
        self._found[procedure] = func
        return func

    def call(
        self, procedure: str, args: list[Any], kwargs: dict[str, Any], idempotency_key: str
    ) -> Any:
        # `args` and `kwargs` are the caller's private copies (`json_copy`): the Book
        # may keep or change them without reaching the program's values.
        func = self.procedure(procedure)
        try:
            result = func(*args, **kwargs)
        except BookError:
            raise
        except Exception as exc:
            raise BookError(self.name, procedure, type(exc).__name__, str(exc)) from None
        if type(result) in PLAIN_SCALARS:
            return result  # nothing to copy or check
        try:
            # A copy: the program must not share a value the Book may change later.
            return json_copy(result, f"the result of {self.name}.{procedure}")
        except (TypeError, ValueError) as exc:
            raise BookError(self.name, procedure, "InvalidResult", str(exc)) from None


@runtime_checkable
class Closable(Protocol):
    """A Book holding resources (connections) that the registry releases on close."""

    def close(self) -> None: ...


BOOK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
PYTHON_KEYS = frozenset({"python"})
HTTP_KEYS = frozenset({"url", "timeout_s", "token_env", "retry_budget_s", "max_attempts"})


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

    def close(self) -> None:
        """Release every Book's connections (HTTP Books reopen them if called again)."""
        for book in self._books.values():
            if isinstance(book, Closable):
                book.close()

    def __enter__(self) -> BookRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def load(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> BookRegistry:
        """Read a registry file (docs/books.md).

        Relative `python` paths are relative to the file; `token_env` variables are
        read now, from `environ` (default: the process environment).
        """
        import tomllib  # here: a zygote (and so every child) never loads a registry

        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RuntimeSetupError(f"cannot read Book registry {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise RuntimeSetupError(f"Book registry {path} is not valid TOML: {exc}") from exc
        extra = sorted(set(data) - {"books"})
        if extra:
            raise RuntimeSetupError(
                f"{path}: unknown top-level key(s) {_listing(extra)}; a registry holds only "
                "[books.NAME] tables"
            )
        table = data.get("books", {})
        if not isinstance(table, dict):
            raise RuntimeSetupError(f"{path}: `books` must be a table of [books.NAME] entries")
        env = os.environ if environ is None else environ
        books: dict[str, Book] = {}
        for name, entry in table.items():
            where = f"{path}: [books.{name}]"
            if not BOOK_NAME.fullmatch(name):
                raise RuntimeSetupError(
                    f"{where}: a Book name is letters, digits and _, starting with a letter"
                )
            if not isinstance(entry, dict):
                raise RuntimeSetupError(f"{where} must be a table")
            books[name] = _book_from_entry(name, entry, path, where, env)
        return cls(books)


def _book_from_entry(
    name: str, entry: dict[str, Any], path: Path, where: str, env: Mapping[str, str]
) -> Book:
    if "python" in entry and "url" in entry:
        raise RuntimeSetupError(f"{where} has both `python` and `url`; a Book is one or the other")
    if "python" in entry:
        _refuse_unknown_keys(entry, PYTHON_KEYS, where)
        file = _string(entry, "python", where)
        resolved = (path.parent / file).resolve()
        if not resolved.is_file():
            raise RuntimeSetupError(f"{where}: python file {resolved} does not exist")
        return PythonBook(name, resolved)
    if "url" in entry:
        _refuse_unknown_keys(entry, HTTP_KEYS, where)
        return _http_book(name, entry, where, env)
    unknown = sorted(entry)
    hint = f" (unknown key(s): {_listing(unknown)})" if unknown else ""
    raise RuntimeSetupError(
        f"{where} needs `python = \"file.py\"` or `url = \"http://...\"`{hint}"
    )


def _http_book(name: str, entry: dict[str, Any], where: str, env: Mapping[str, str]) -> Book:
    from jarvis.runtime.http_book import HttpBook, RetryPolicy, check_base_url

    url = _string(entry, "url", where)
    try:
        check_base_url(url)
    except ValueError as exc:
        raise RuntimeSetupError(f"{where}: {exc}") from None
    timeout_s = _number(entry, "timeout_s", 10.0, where, positive=True)
    budget_s = _number(entry, "retry_budget_s", 30.0, where, positive=False)
    max_attempts = entry.get("max_attempts", 5)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise RuntimeSetupError(f"{where}: max_attempts must be an integer of at least 1")
    token: str | None = None
    if "token_env" in entry:
        variable = _string(entry, "token_env", where)
        if variable not in env:
            raise RuntimeSetupError(
                f"{where}: the environment variable {variable} (token_env) is not set"
            )
        token = env[variable]
        if not token.strip():
            raise RuntimeSetupError(f"{where}: the environment variable {variable} is empty")
    try:
        return HttpBook(
            name, url, timeout_s=timeout_s, token=token,
            retry=RetryPolicy(budget_s=budget_s, max_attempts=max_attempts),
        )
    except RuntimeSetupError as exc:
        raise RuntimeSetupError(f"{where}: {exc}") from None


def _refuse_unknown_keys(entry: dict[str, Any], known: frozenset[str], where: str) -> None:
    import difflib  # a registry's: see `load`

    for key in sorted(set(entry) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise RuntimeSetupError(
            f"{where}: unknown key `{key}`{hint} (known keys: {_listing(sorted(known))})"
        )


def _string(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value:
        raise RuntimeSetupError(f"{where}: `{key}` must be a non-empty string")
    return value


def _number(
    entry: dict[str, Any], key: str, default: float, where: str, *, positive: bool
) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RuntimeSetupError(f"{where}: `{key}` must be a number of seconds")
    if value < 0 or (positive and value == 0):
        bound = "positive" if positive else "zero or more"
        raise RuntimeSetupError(f"{where}: `{key}` must be {bound}")
    return float(value)


def _listing(keys: list[str]) -> str:
    return ", ".join(f"`{key}`" for key in keys)

"""The interpreters Jarvis is compared with, each running the same program text.

- `PlainPython`: CPython's own `exec` of the source, untraced, with the shim
  (`inputs`, `output`, and `from books import ...` served from Python functions).
- `Restricted`: RestrictedPython's `compile_restricted` and `exec` with its standard
  guards: `safe_globals`, `safer_getattr`, guarded iteration, item access, writes,
  in-place operators and unpacking. Its safe builtins lack a few side-effect-free
  ones the programs use (`sorted`, `dict`, `enumerate`, ...): those are added, as
  every RestrictedPython host does.
- `MontyPool`: pydantic-monty 1.x, a sandboxed interpreter in a worker subprocess.
  Its external calls (`output`, Book procedures) are driven through the snapshot API:
  `feed_start`, then one `resume` per call.

Each `run` returns the seconds its program took (compilation excluded where the
interpreter has a separate compile step) and checks the program finished.
"""

from __future__ import annotations

import builtins
import operator
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType, SimpleNamespace
from typing import Any

from RestrictedPython.compile import compile_restricted
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_globals,
    safer_getattr,
)

BookTable = Mapping[str, Mapping[str, Callable[..., Any]]]
"""Book name -> procedure name -> the Python function that answers it."""


class _Outputs(dict[str, Any]):
    def output(self, name: str, value: Any) -> None:
        self[name] = value


def _books_import(books: BookTable) -> Callable[..., Any]:
    module = SimpleNamespace(**{name: SimpleNamespace(**procs) for name, procs in books.items()})
    real_import = builtins.__import__

    def spy_import(name: str, *args: Any, **kwargs: Any) -> Any:
        return module if name == "books" else real_import(name, *args, **kwargs)

    return spy_import


class PlainPython:
    """The program under CPython's `exec`: the untraced, unsandboxed yardstick."""

    name = "plain CPython"

    def __init__(self, source: str, path: str, books: BookTable | None = None) -> None:
        self.code = compile(source, path, "exec", dont_inherit=True)
        self.builtins = dict(vars(builtins))
        if books:
            self.builtins["__import__"] = _books_import(books)
        self.outputs: dict[str, Any] = {}

    def run(self, inputs: Mapping[str, Any]) -> float:
        outputs = _Outputs()
        namespace = {"__builtins__": self.builtins, "__name__": "__spy__",
                     "inputs": MappingProxyType(dict(inputs)), "output": outputs.output}
        started = time.perf_counter()
        exec(self.code, namespace)
        elapsed = time.perf_counter() - started
        self.outputs = outputs
        return elapsed


_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow,
    "<<=": operator.ilshift, ">>=": operator.irshift, "&=": operator.iand,
    "|=": operator.ior, "^=": operator.ixor,
}


def _inplacevar(op: str, target: Any, value: Any) -> Any:
    return _INPLACE[op](target, value)


_EXTRA_BUILTINS = ("sorted", "dict", "list", "enumerate", "zip", "min", "max", "sum",
                   "any", "all", "reversed", "set")


class Restricted:
    """The program under RestrictedPython with its standard guards."""

    name = "RestrictedPython"

    def __init__(self, source: str, path: str, books: BookTable | None = None) -> None:
        self.code = compile_restricted(source, path, "exec")
        table = dict(safe_globals["__builtins__"])
        table.update({name: getattr(builtins, name) for name in _EXTRA_BUILTINS})
        if books:
            table["__import__"] = _books_import(books)
        self.globals = {
            "__builtins__": table,
            "_getattr_": safer_getattr,
            "_getitem_": default_guarded_getitem,
            "_getiter_": default_guarded_getiter,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_write_": full_write_guard,
            "_inplacevar_": _inplacevar,
        }
        self.outputs: dict[str, Any] = {}

    def run(self, inputs: Mapping[str, Any]) -> float:
        outputs = _Outputs()
        namespace = dict(self.globals, __name__="__spy__",
                         inputs=MappingProxyType(dict(inputs)), output=outputs.output)
        started = time.perf_counter()
        exec(self.code, namespace)
        elapsed = time.perf_counter() - started
        self.outputs = outputs
        return elapsed


class MontyUnavailable(RuntimeError):
    """pydantic-monty is not installed (it comes with the `bench` extra)."""


def monty_version() -> str | None:
    try:
        import pydantic_monty
    except ImportError:
        return None
    return str(pydantic_monty.__version__)


class MontyPool:
    """A pool of one Monty worker process, shared by every Monty cell of the suite."""

    name = "pydantic-monty"

    def __init__(self) -> None:
        try:
            import pydantic_monty
        except ImportError as exc:
            raise MontyUnavailable("pydantic-monty is not installed") from exc
        self.pm: Any = pydantic_monty
        self.pool: Any = pydantic_monty.Monty(min_processes=1, max_processes=1)
        self.pool.__enter__()

    def close(self) -> None:
        self.pool.__exit__(None, None, None)

    def __enter__(self) -> MontyPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def session(self, books: BookTable | None = None) -> Any:
        """A checked-out session (a context manager) that can import `books`."""
        pm = self.pm
        modules = {}
        if books:
            modules["books"] = pm.ExternalModule(
                {name: pm.ExternalModule(dict(procs)) for name, procs in books.items()})
        # The default of 1000 suspensions per checkout is far below the Book rows.
        return self.pool.checkout(limits={"max_suspensions": 10_000_000},
                                  external_modules=modules)

    def start(self, session: Any, source: str, inputs: Mapping[str, Any]) -> Any:
        return session.feed_start(source, inputs={"inputs": dict(inputs)})

    def drive(self, snapshot: Any, books: BookTable | None, outputs: dict[str, Any],
              stop_after_calls: int | None = None) -> Any:
        """Answer suspensions until the program completes (returns None) or, with
        `stop_after_calls`, until that many Book calls were answered (returns the
        snapshot waiting for the next one)."""
        pm = self.pm
        table = {f"books.{book}.{proc}": func
                 for book, procs in (books or {}).items() for proc, func in procs.items()}
        calls = 0
        while not isinstance(snapshot, pm.MontyComplete):
            if not isinstance(snapshot, pm.FunctionSnapshot) or snapshot.is_os_function:
                snapshot = snapshot.resume_auto()  # `import books`: served by the pool
                continue
            name = snapshot.function_name
            if name == "output":
                key, value = snapshot.args
                outputs[key] = value
                snapshot = snapshot.resume({"return_value": None})
                continue
            if stop_after_calls is not None and calls >= stop_after_calls:
                return snapshot
            func = table[name]
            calls += 1
            snapshot = snapshot.resume(
                {"return_value": func(*snapshot.args, **snapshot.kwargs)})
        return None

    def run(self, source: str, inputs: Mapping[str, Any],
            books: BookTable | None = None) -> tuple[float, dict[str, Any]]:
        """Seconds from `feed_start` to completion (worker checkout excluded), outputs."""
        outputs: dict[str, Any] = {}
        with self.session(books) as session:
            started = time.perf_counter()
            self.drive(self.start(session, source, inputs), books, outputs)
            elapsed = time.perf_counter() - started
        return elapsed, outputs

"""The reference interpreter: a SPy program run by plain CPython, untraced, not durable.

It executes the program's own source text (not the compiler's output) with the SPy
runtime builtins and the Books of a registry, and records what the program did:
outputs, printed text, Book calls in order, artifacts stored, and the uncaught error if
any. Artifacts go to an in-memory store (`memory://KEY` URLs) unless one is given; keys
are those the engine would use for the same execution id. It is the
yardstick the engine is compared with in differential tests, and the shim that lets
tests/spec programs run before (and beside) the durable engine.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jarvis.compiler import Compilation, CompileError
from jarvis.compiler.validate import book_imports
from jarvis.runtime.artifacts import (
    ArtifactStore,
    ExecutionArtifacts,
    MemoryArtifactStore,
    StoredArtifact,
)
from jarvis.runtime.books import Book, BookRegistry
from jarvis.runtime.builtins import books_importer, make_builtins, set_inputs
from jarvis.runtime.errors import LimitExceeded


@dataclass(frozen=True)
class BookCallRecord:
    """One Book call as the program made it, and how it ended."""

    book: str
    procedure: str
    args: list[Any]
    kwargs: dict[str, Any]
    idempotency_key: str


@dataclass
class ReferenceEffects:
    """Effects performed directly: Books called in-process, sleep on a virtual clock."""

    registry: BookRegistry
    execution_id: str = "reference"
    real_sleep: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    prints: list[str] = field(default_factory=list)
    book_calls: list[BookCallRecord] = field(default_factory=list)
    checkpoints: int = 0
    slept: float = 0.0
    artifact_store: ArtifactStore = field(default_factory=MemoryArtifactStore)
    max_artifact_bytes: int = 16 << 20
    artifacts: list[StoredArtifact] = field(default_factory=list)
    effects: int = 0  # effects so far, numbered as the engine's journal numbers them

    def __post_init__(self) -> None:
        self._seq = itertools.count(1)

    def book_call(self, book: str, procedure: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        self.effects += 1
        key = f"{self.execution_id}:{next(self._seq)}"
        self.book_calls.append(BookCallRecord(book, procedure, args, kwargs, key))
        target: Book = self.registry.get(book)
        return target.call(procedure, args, kwargs, key)

    def now(self) -> float:
        self.effects += 1
        return time.time() + (0.0 if self.real_sleep else self.slept)

    def sleep(self, seconds: float) -> None:
        self.effects += 1
        if self.real_sleep:
            time.sleep(seconds)
        else:
            self.slept += seconds

    def checkpoint(self) -> None:
        self.effects += 1
        self.checkpoints += 1

    def artifact(self, name: str, content: bytes, content_type: str) -> str:
        if len(content) > self.max_artifact_bytes:
            raise LimitExceeded("artifact_bytes", f"artifact {name!r} has {len(content)} "
                                f"bytes; the limit is {self.max_artifact_bytes}")
        self.effects += 1
        uploads = ExecutionArtifacts(self.artifact_store, self.execution_id,
                                     self.max_artifact_bytes)
        stored = uploads.upload(self.effects, name, content, content_type)
        self.artifacts.append(stored)
        return stored.url

    def output(self, name: str, value: Any) -> None:
        self.outputs[name] = value

    def print(self, text: str) -> None:
        self.prints.append(text)


@dataclass(frozen=True)
class ReferenceResult:
    """What a program did under the reference interpreter."""

    outputs: dict[str, Any]
    prints: list[str]
    book_calls: list[BookCallRecord]
    error: BaseException | None
    artifacts: list[StoredArtifact] = field(default_factory=list)

    @property
    def printed(self) -> str:
        return "".join(self.prints)


def run_reference(
    source: str | bytes,
    *,
    inputs: Mapping[str, Any] | None = None,
    books: BookRegistry | None = None,
    path: str = "<spy>",
    execution_id: str = "reference",
    real_sleep: bool = False,
    check: bool = True,
    effects_type: type[ReferenceEffects] = ReferenceEffects,
) -> ReferenceResult:
    """Run `source` under plain CPython with the SPy runtime.

    With `check` (the default) the program is validated first and CompileError is
    raised if it is not valid SPy; the program's own exceptions end up in `error`.
    """
    compilation = Compilation.of(source, path)
    if check and not compilation.ok:
        raise CompileError(list(compilation.diagnostics))
    if compilation.tree is None or compilation.source is None:
        raise CompileError(list(compilation.diagnostics))
    registry = books or BookRegistry()
    imported = sorted(set(book_imports(compilation.tree).values()))
    for name in imported:
        registry.get(name)  # a missing Book is a setup error before the program starts
    effects = effects_type(registry, execution_id=execution_id, real_sleep=real_sleep)
    table = make_builtins(effects, imported)
    set_inputs(table, inputs or {})
    table["__import__"] = books_importer(table.pop("_jv_book_table"))
    namespace: dict[str, Any] = {"__builtins__": table, "__name__": "__spy__"}
    code = compile(compilation.source.text, path, "exec", dont_inherit=True)
    error: BaseException | None = None
    try:
        exec(code, namespace)
    except (Exception, LimitExceeded) as exc:
        error = exc
    return ReferenceResult(effects.outputs, effects.prints, effects.book_calls, error,
                           effects.artifacts)

"""The escape and abuse corpus: every attempt in tests/security/ through the real pipeline.

Each `tests/security/*.spy` file is one attempt to get out of the sandbox, to reach more
than docs/language.md documents, or to exhaust a worker. Its header says what it tries
and how it must end:

    # technique: what the program does
    # escape: what a successful escape would give the attacker
    # advisory: CVE-... [GHSA-...]        (optional, repeatable: the advisory it re-tests)
    # books: yes                          (optional: the Book `host` of tests/security/books.toml)
    # limits: max_steps=5000              (optional: Limits fields for the run)
    # runs: 2                             (optional: run it twice in the same host)
    # expect: refused SPY202@4 SPY203@6   (jarvis-compile refuses it: every code@line, exactly)
    # expect: runtime-error TypeError@4   (it fails with this error type; the line is optional)
    # expect: limit memory                (it stops at this limit)
    # expect: completes                   (contained by design; `outputs` says what it records)
    # outputs: {"json": "object"}         (the exact outputs of a run that completes)
    # message: text                       (a part of the error's message)

A refused file must be refused by the compiler with exactly the diagnostics listed. Any
other file is compiled and run as `jarvis run` runs it: an `Execution` in a child process
of a `ChildPool`. Each run gets a canary: a secret in the host's environment (the name is
in `inputs["canary_env"]`), a file holding another secret (`inputs["canary_path"]`) and a
path that must never exist (`inputs["canary_new"]`). After the run the file is unchanged,
the new path does not exist, and neither secret appears in the outputs, the prints, the
trace, the error or anything in the state directory; the Book's own state is unchanged;
every trace event renders as one line of line protocol under its own execution id.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from jarvis.cli.compile import main as compile_main
from jarvis.compiler import Compilation
from jarvis.compiler.language import (
    ATTRIBUTES,
    BOOK_ERROR_FIELDS,
    BUILTINS,
    EXCEPTION_FIELDS,
    METHODS_BY_TYPE,
)
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.channel import RemoteError
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.errors import BookError
from jarvis.runtime.execution import Execution, error_type_name
from jarvis.runtime.frames import SuspendingCallError
from jarvis.runtime.guards import CLASSES, VALUE_TYPES
from jarvis.runtime.isolation import MAX_ERROR_MESSAGE_CHARS, ChildPool
from jarvis.runtime.machine import Machine, Outcome
from jarvis.runtime.namespace import _ChangedContainerIterator
from jarvis.runtime.sinks import MemorySink, line_protocol
from jarvis.runtime.trace import Tracer
from jarvis.settings import Limits, load_settings

CORPUS = Path(__file__).resolve().parent / "security"
BOOKS = CORPUS / "books.toml"
ENTRIES = sorted(CORPUS.glob("*.spy"))
MIN_ENTRIES = 60

CANARY_ENV = "JARVIS_CORPUS_CANARY"
BOOK_TABLE = {"rate": 3, "tags": ["a", "b"]}
"""What the Book `host` returns from `table()`: a program must never change it."""

ADVISORIES = {
    "CVE-2023-37271": "generator gi_frame / f_back stack frame escape (GHSA-wqc8-x2pr-7jqh)",
    "CVE-2023-41039": "str.format, format_map and string.Formatter field access "
                      "(GHSA-xjw2-6jm9-rf67)",
    "CVE-2024-47532": "AttributeError.obj and the string module",
    "CVE-2025-22153": "try/except* handling",
    "CVE-2026-55830": "positional-only parameters shadowing guard names (GHSA-ffg3-p8fm-mjx2)",
    "CVE-2026-76825": "string.Formatter field resolution (GHSA-hp3v-5vw7-fx9w)",
}
"""The published RestrictedPython advisories; each must have an entry that re-tests it."""

KINDS = ("refused", "runtime-error", "limit", "completes")
_HEADER = re.compile(r"# (?P<key>[a-z]+): (?P<value>.+)")
_KEYS = {"technique", "escape", "advisory", "books", "limits", "runs", "expect", "outputs",
         "message"}
_REPEATABLE = {"advisory"}
_AT = re.compile(r"(?P<name>[A-Za-z_][\w]*)(?:@(?P<line>\d+))?")


@dataclass(frozen=True)
class Entry:
    """One corpus file and what its header expects."""

    path: Path
    technique: str
    escape: str
    kind: str
    diagnostics: tuple[tuple[str, int], ...] = ()
    error: str | None = None
    line: int | None = None
    limit: str | None = None
    outputs: dict[str, Any] | None = None
    message: str | None = None
    advisories: tuple[str, ...] = ()
    books: bool = False
    limits: dict[str, float] = field(default_factory=dict)
    runs: int = 1


def read_entry(path: Path) -> Entry:
    """The header of a corpus file: its leading `# key: value` lines."""
    fields: dict[str, list[str]] = {}
    for text in path.read_text(encoding="utf-8").splitlines():
        found = _HEADER.fullmatch(text)
        if found is None:
            break
        key, value = found["key"], found["value"].strip()
        assert key in _KEYS, f"{path.name}: unknown header key {key!r}"
        assert key in _REPEATABLE or key not in fields, f"{path.name}: {key!r} twice"
        fields.setdefault(key, []).append(value)
    for required in ("technique", "escape", "expect"):
        assert required in fields, f"{path.name}: the header has no {required!r} line"
    kind, _, rest = fields["expect"][0].partition(" ")
    assert kind in KINDS, f"{path.name}: expect {kind!r} is not one of {KINDS}"
    entry: dict[str, Any] = {
        "path": path, "technique": fields["technique"][0], "escape": fields["escape"][0],
        "kind": kind, "advisories": tuple(a for line in fields.get("advisory", [])
                                          for a in line.split()),
        "books": fields.get("books", ["no"])[0] == "yes",
        "runs": int(fields.get("runs", ["1"])[0]),
        "message": fields.get("message", [None])[0],
    }
    if "outputs" in fields:
        entry["outputs"] = json.loads(fields["outputs"][0])
    if "limits" in fields:
        entry["limits"] = {
            name: float(value) if "." in value else int(value)
            for name, _, value in (item.partition("=") for item in fields["limits"][0].split())
        }
    words = [_AT.fullmatch(word) for word in rest.split()]
    assert all(words), f"{path.name}: cannot read `expect: {fields['expect'][0]}`"
    if kind == "refused":
        assert words and all(w and w["line"] for w in words), path.name
        entry["diagnostics"] = tuple(sorted((w["name"], int(w["line"])) for w in words if w))
    elif kind == "runtime-error":
        assert len(words) == 1 and words[0], path.name
        entry["error"] = words[0]["name"]
        entry["line"] = int(words[0]["line"]) if words[0]["line"] else None
    elif kind == "limit":
        assert len(words) == 1 and words[0], path.name
        entry["limit"] = words[0]["name"]
    else:
        assert not words, f"{path.name}: `expect: completes` takes nothing after it"
        assert "outputs" in fields, f"{path.name}: a completing entry declares its outputs"
    return Entry(**entry)


# -- the corpus as a whole -------------------------------------------------------------


def test_the_corpus_is_large_and_varied() -> None:
    entries = [read_entry(path) for path in ENTRIES]
    assert len(entries) >= MIN_ENTRIES
    kinds = {kind: sum(1 for e in entries if e.kind == kind) for kind in KINDS}
    # Refusals by the compiler, and attempts that compile and are contained at run time.
    assert kinds["refused"] >= 30, kinds
    assert kinds["runtime-error"] + kinds["limit"] + kinds["completes"] >= 25, kinds
    assert sum(1 for e in entries if e.runs > 1) >= 3
    assert sum(1 for e in entries if e.books) >= 8


def test_every_restrictedpython_advisory_has_an_entry() -> None:
    covered = {a for path in ENTRIES for a in read_entry(path).advisories}
    missing = sorted(set(ADVISORIES) - {a for a in covered if a.startswith("CVE-")})
    assert missing == [], f"no corpus entry re-tests {missing}"
    unknown = sorted(a for a in covered if a.startswith("CVE-") and a not in ADVISORIES)
    assert unknown == [], f"entries cite advisories this list does not know: {unknown}"


def test_the_documentation_lists_every_advisory() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    for advisory in ADVISORIES:
        assert advisory in text, advisory


def test_jarvis_compile_refuses_the_refused_entries_and_accepts_the_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command a customer's CI runs agrees with the headers, for the whole corpus."""
    status = compile_main(["--format", "json", str(CORPUS)])
    report = json.loads(capsys.readouterr().out)
    assert status == 1
    found = {Path(f["path"]).name: sorted((d["code"], d["line"]) for d in f["diagnostics"])
             for f in report["files"]}
    assert set(found) == {path.name for path in ENTRIES}
    for path in ENTRIES:
        entry = read_entry(path)
        assert found[path.name] == list(entry.diagnostics), path.name


# -- one test per entry ----------------------------------------------------------------


@dataclass
class Canary:
    """Secrets and paths of the host that no run may read, change or create."""

    secret: str
    file_secret: str
    path: Path
    new: Path
    mtime_ns: int

    def inputs(self) -> dict[str, Any]:
        return {"canary_env": CANARY_ENV, "canary_path": str(self.path),
                "canary_new": str(self.new), "items": [1, 2, 3]}

    def check(self, texts: list[str], state_dir: Path) -> None:
        assert self.path.read_text() == self.file_secret
        assert self.path.stat().st_mtime_ns == self.mtime_ns
        assert not self.new.exists(), "the program created a file on the host"
        stored = [p.read_bytes() for p in state_dir.rglob("*") if p.is_file()]
        for secret in (self.secret, self.file_secret):
            assert not any(secret in text for text in texts), "a secret reached the program"
            assert not any(secret.encode() in data for data in stored)


@pytest.fixture(scope="module")
def pool() -> Iterator[ChildPool]:
    children = ChildPool(size=1)
    yield children
    children.close()


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Canary:
    secret = f"env-secret-{secrets.token_hex(16)}"
    monkeypatch.setenv(CANARY_ENV, secret)
    directory = tmp_path / "host"
    directory.mkdir()
    path = directory / "canary.txt"
    file_secret = f"file-secret-{secrets.token_hex(16)}"
    path.write_text(file_secret)
    return Canary(secret, file_secret, path, directory / "created-by-the-program",
                  path.stat().st_mtime_ns)


def _run(entry: Entry, compilation: Compilation, canary: Canary, state_dir: Path,
         pool: ChildPool, books: BookRegistry, run: int) -> tuple[Outcome, MemorySink, str]:
    program = compilation.program("statements")
    sink = MemorySink()
    settings = load_settings(state_dir=state_dir, journal_fsync=False,
                             limits=Limits(**entry.limits))
    execution_id = f"corpus-{run}"
    execution = Execution(program, execution_id=execution_id, inputs=canary.inputs(),
                          books=books, settings=settings, sink=sink, isolation=pool)
    return execution.run(), sink, execution_id


def _check_outcome(entry: Entry, outcome: Outcome) -> None:
    name = entry.path.name
    if entry.kind == "completes":
        assert outcome.status == "completed", (name, outcome.error)
        assert outcome.outputs == entry.outputs, name
        return
    assert outcome.status == "failed", (name, outcome.status, outcome.outputs)
    error = outcome.error
    assert error is not None
    assert len(str(error)) <= MAX_ERROR_MESSAGE_CHARS + 100, name
    if entry.kind == "limit":
        assert error_type_name(error) in ("LimitExceeded", "TimeLimitExceeded"), (name, error)
        assert getattr(error, "limit", None) == entry.limit, (name, str(error))
    else:
        assert error_type_name(error) == entry.error, (name, error_type_name(error), str(error))
        if entry.line is not None:
            assert outcome.location is not None and outcome.location.line == entry.line, name
    if entry.message is not None:
        assert entry.message in str(error), (name, str(error)[:500])
    if entry.outputs is not None:
        assert outcome.outputs == entry.outputs, name


def _check_trace(sink: MemorySink, execution_id: str) -> None:
    """Every event is its own execution's, and one line of line protocol."""
    for event in sink.events:
        assert event.execution_id == execution_id
        rendered = line_protocol(event)
        assert "\n" not in rendered and "\r" not in rendered
        assert rendered.startswith(f"spy_trace,execution_id={execution_id},kind=")


@pytest.mark.parametrize("path", ENTRIES, ids=[p.stem for p in ENTRIES])
def test_entry(path: Path, pool: ChildPool, canary: Canary, tmp_path: Path) -> None:
    entry = read_entry(path)
    compilation = Compilation.of(path.read_bytes(), path.name)
    if entry.kind == "refused":
        assert not compilation.ok, f"{path.name} compiled; it must be refused"
        found = sorted((d.code, d.line) for d in compilation.diagnostics)
        assert found == list(entry.diagnostics), path.name
        canary.check([], tmp_path / "state")
        return
    assert compilation.ok, [str(d) for d in compilation.diagnostics]
    books = BookRegistry.load(BOOKS) if entry.books else BookRegistry()
    results: list[dict[str, Any]] = []
    with books:
        for run in range(1, entry.runs + 1):
            state_dir = tmp_path / f"state-{run}"
            outcome, sink, execution_id = _run(entry, compilation, canary, state_dir, pool,
                                               books, run)
            _check_outcome(entry, outcome)
            _check_trace(sink, execution_id)
            texts = [json.dumps(outcome.outputs), str(outcome.error)]
            texts += [json.dumps(event.to_json(), default=str) for event in sink.events]
            canary.check(texts, state_dir)
            results.append(outcome.outputs)
            if entry.books:
                assert books.get("host").call("table", [], {}, "check") == BOOK_TABLE
    # A second run in the same host sees nothing of the first.
    assert all(outputs == results[0] for outputs in results), path.name


def test_the_canary_catches_a_leak(canary: Canary, tmp_path: Path) -> None:
    """The checks above would notice a secret that got out, or a file that got in."""
    with pytest.raises(AssertionError):
        canary.check([f"output: {os.environ[CANARY_ENV]}"], tmp_path)
    with pytest.raises(AssertionError):
        canary.check([canary.path.read_text()], tmp_path)
    canary.new.write_text("x")
    with pytest.raises(AssertionError):
        canary.check([], tmp_path)


# -- the runtime surface ------------------------------------------------------------------

DOCUMENTED: dict[type, frozenset[str]] = {
    **{getattr(builtins, name): methods for name, methods in METHODS_BY_TYPE.items()
       if name in ("str", "list", "dict", "set", "frozenset", "tuple", "int", "float",
                   "bool")},
    # docs/language.md, "inputs": get, keys, values, items and copy.
    MappingProxyType: frozenset({"copy", "get", "items", "keys", "values"}),
    # Python's own methods of these types, which SPy documents under other types (set
    # operations on dict views, a range is a sequence); docs/security.md lists them.
    range: frozenset({"count", "index"}),
    type({}.keys()): frozenset({"isdisjoint"}),
    type({}.items()): frozenset({"isdisjoint"}),
}
"""The allow-listed attributes each type documents; other types document none."""


def _reachable(value: object) -> set[str]:
    return {name for name in dir(value) if name in ATTRIBUTES}


def _documented(kind: type) -> frozenset[str]:
    if issubclass(kind, BaseException):
        return EXCEPTION_FIELDS | (BOOK_ERROR_FIELDS if issubclass(kind, BookError)
                                   else frozenset())
    return DOCUMENTED.get(kind, frozenset())


def _exception_classes(root: type) -> Iterator[type]:
    yield root
    for sub in root.__subclasses__():
        yield from _exception_classes(sub)


def test_every_value_type_exposes_only_its_documented_attributes() -> None:
    """Each type a program's values can have (and each class it can name) answers only
    the allow-listed names docs/language.md documents for it."""
    for kind in VALUE_TYPES | CLASSES:
        assert _reachable(kind) <= _documented(kind), kind


def test_exceptions_a_program_can_catch_expose_only_args() -> None:
    """Python's exceptions, and the runtime's that reach a program, have no allow-listed
    field but `args` (BookError: and its documented fields)."""
    # Exception groups (`message`, `split`) are the one exception: no SPy construct
    # makes one (except* is refused, SPY109; the names are undefined, SPY205).
    python = [c for c in _exception_classes(Exception)
              if c.__module__ == "builtins" and not issubclass(c, BaseExceptionGroup)]
    assert len(python) > 40
    for kind in python:
        assert _reachable(kind) <= EXCEPTION_FIELDS, kind
    samples: list[BaseException] = [
        AttributeError("x", name="n", obj=[]), NameError("x", name="n"), StopIteration(1),
        UnicodeDecodeError("utf-8", b"x", 0, 1, "bad"), SuspendingCallError("x"),
        RemoteError("RuntimeSetupError", "the host failed"),
        BookError("crm", "get", "KeyError", "gone", 404),
    ]
    for error in samples:
        assert _reachable(error) <= _documented(type(error)), type(error)


def test_the_runtime_builtins_expose_nothing() -> None:
    """The values behind every builtin name of a real execution's namespace, and the
    Book proxy, answer no allow-listed name their type does not document."""
    program = Compilation.of("from books import host\n", "audit.spy").program("off")
    machine = Machine(program, execution_id="audit", inputs={"k": [1]},
                      books=BookRegistry.load(BOOKS), effects=MemoryEffects(),
                      tracer=Tracer("audit", program.trace_sites, MemorySink()))
    table = machine.namespace.builtins
    for name in sorted(BUILTINS):
        value = table[name]
        kind = value if isinstance(value, type) else type(value)
        assert _reachable(value) <= _documented(kind), name
    proxy = machine.namespace.books["host"]
    assert _reachable(proxy) == set()
    assert _reachable(proxy.echo) == set()
    # What a resumed loop iterates when its dict changed size before the snapshot.
    assert _reachable(_ChangedContainerIterator("changed size")) == set()


def test_no_object_is_shared_between_executions() -> None:
    """Two executions of a program in one process get their own builtins table, inputs
    and runtime functions; what they share a program cannot change (classes, and
    functions such as the bounded `pow` that have no method a program may call)."""
    program = Compilation.of("x = 1\n", "audit.spy").program("off")

    def namespace() -> dict[str, Any]:
        machine = Machine(program, execution_id="audit", inputs={"k": [1]},
                          books=BookRegistry(), effects=MemoryEffects(),
                          tracer=Tracer("audit", program.trace_sites, MemorySink()))
        return machine.namespace.builtins

    first, second = namespace(), namespace()
    assert first is not second
    for name in sorted(BUILTINS):
        a, b = first[name], second[name]
        if a is b:
            # A class, or a function that answers no allow-listed name (so no method of
            # it can change it; attribute assignment is refused by the compiler).
            assert isinstance(a, type) or _reachable(a) == set(), name
        else:
            assert type(a) is type(b), name
    assert first["inputs"] is not second["inputs"]
    assert first["inputs"]["k"] is not second["inputs"]["k"]

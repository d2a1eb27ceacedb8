"""The compiler's phases, named and ordered in one place.

`Compilation` holds one program on its way through the pipeline; each phase is a
cached property computed from the one before it, so "what runs when" is this file:

    load_source ─▶ parse ─▶ validate + resolve ─▶ lower ─▶ python / program(trace)

`program(trace)` instruments a copy of the tree with trace hooks (compiler/trace.py),
lowers it into step functions (compiler/lower/) and compiles it into a
`CompiledProgram`, cached by the program's digest and trace level. The cache is looked
up before anything else: a new `Compilation` of a text already compiled parses nothing.
At trace level `off` the program is the lowering that `diagnostics` already made (the
front end's checks need it), so a cold compile lowers the program once, and it lowers
the parsed tree itself, not a copy (`tree` parses again if it is asked for later).

A phase that finds problems records diagnostics; later phases that need a clean
program raise `CompileError` carrying them.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gc
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from jarvis import __version__
from jarvis.compiler.bounds import bound_operations
from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.diagnostics import CompileError, Diagnostic
from jarvis.compiler.emit import unparse
from jarvis.compiler.language import LANGUAGE_VERSION
from jarvis.compiler.lower.anf import SuspensionSite
from jarvis.compiler.lower.program import LoweredProgram, lower_program
from jarvis.compiler.resolve import BookCall, resolve
from jarvis.compiler.restrict import restrict, restricted_compile
from jarvis.compiler.source import Source, load_source
from jarvis.compiler.syntax import parse
from jarvis.compiler.trace import Site, TraceLevel, instrument
from jarvis.compiler.trees import copy_tree
from jarvis.compiler.validate import book_imports, validate

COMPILER_VERSION = f"jarvis {__version__} spy{LANGUAGE_VERSION}"
"""Snapshots record it: a continuation is only valid for the compiler that made it."""

K = TypeVar("K")
V = TypeVar("V")

_PROGRAM_CACHE: dict[str, CompiledProgram] = {}
_PROGRAM_CACHE_SIZE = 64
_BY_TEXT: dict[tuple[bytes | str, str, str], CompiledProgram] = {}
"""Programs by (the text as given, path, trace level): `compile_program`'s first look,
before the text is decoded and hashed for the program cache (as many as it holds)."""
_CLEAN: dict[str, None] = {}
"""Sources (by `_source_key`) known to compile without diagnostics, oldest first."""
_CLEAN_SIZE = 1024


def _source_key(source: Source) -> str:
    return hashlib.sha256(
        f"{COMPILER_VERSION}\0{source.path}\0".encode() + source.text.encode()
    ).hexdigest()


def program_digest(source: Source, trace: TraceLevel) -> str:
    """The identity of `source` compiled at `trace`: the key of the program cache, and
    what snapshots and status files record."""
    return hashlib.sha256(
        f"{COMPILER_VERSION}\0{trace}\0{source.path}\0".encode() + source.text.encode()
    ).hexdigest()


def _remember(table: dict[K, V], key: K, value: V, size: int) -> None:
    if len(table) >= size:
        table.pop(next(iter(table)), None)
    table[key] = value


@dataclass(frozen=True)
class Analysis:
    """What the front end learned about a program."""

    diagnostics: tuple[Diagnostic, ...]
    book_calls: tuple[BookCall, ...]


class Compilation:
    """One program through the pipeline; create with `Compilation.of(data, path)`."""

    def __init__(self, source: Source | Diagnostic) -> None:
        self._source = source

    @classmethod
    def of(cls, data: bytes | str, path: str = "<string>") -> Compilation:
        return cls(load_source(data, path))

    @property
    def path(self) -> str:
        return self._source.path

    @cached_property
    def source(self) -> Source | None:
        return self._source if isinstance(self._source, Source) else None

    @cached_property
    def tree(self) -> ast.Module | None:
        """Phase 1: the parsed tree, or None when the source did not parse.

        The lowering (phase 3, which `ok` and `program` run) takes this tree over and
        rewrites it; asked for afterwards, the tree is parsed again. So take it after
        those, or keep a copy."""
        if self.source is None:
            return None
        parsed = parse(self.source)
        return parsed if isinstance(parsed, ast.Module) else None

    @cached_property
    def analysis(self) -> Analysis:
        """Phase 2: validation and name resolution, all diagnostics in source order."""
        if isinstance(self._source, Diagnostic):
            return Analysis((self._source,), ())
        parsed = parse(self._source) if self.tree is None else self.tree
        if isinstance(parsed, Diagnostic):
            return Analysis((parsed,), ())
        found = validate(self._source, parsed)
        resolved, calls = resolve(self._source, parsed)
        unique = {(d.code, d.line, d.col, d.message): d for d in [*found, *resolved]}
        ordered = sorted(unique.values(), key=Diagnostic.sort_key)
        return Analysis(tuple(ordered), tuple(calls))

    @cached_property
    def lowered(self) -> LoweredProgram | None:
        """Phase 3: the program as step functions, untraced, its arithmetic bounded
        (compiler/bounds.py): what runs at trace level `off`. None on diagnostics.

        The lowering rewrites the parsed tree in place rather than a copy of it (a
        copy costs more than parsing again): the Compilation forgets the tree, and
        `tree` parses the source again if it is asked for later."""
        if self.analysis.diagnostics or self.tree is None:
            return None
        self._books  # noqa: B018 - read from the tree before the lowering consumes it
        tree = self.tree
        del self.__dict__["tree"]
        return _lower(tree)

    @cached_property
    def _books(self) -> tuple[str, ...]:
        """The Books the program imports, sorted."""
        tree = self.tree
        return () if tree is None else tuple(sorted(set(book_imports(tree).values())))

    @cached_property
    def _key(self) -> str | None:
        return None if self.source is None else _source_key(self.source)

    @cached_property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        if self._key is not None and self._key in _CLEAN:
            return ()  # compiled cleanly before: nothing to find
        found = self.analysis.diagnostics
        if found or self.lowered is None or self.source is None:
            return found
        source = self.source
        problems = [
            source.diagnostic(code, message, getattr(node, "lineno", 1),
                              getattr(node, "col_offset", 0),
                              getattr(node, "end_lineno", None),
                              getattr(node, "end_col_offset", None))
            for code, message, node in self.lowered.problems
        ]
        if not problems and self._key is not None:
            _remember(_CLEAN, self._key, None, _CLEAN_SIZE)
        return tuple(sorted(problems, key=Diagnostic.sort_key))

    @property
    def ok(self) -> bool:
        return not self.diagnostics

    @property
    def book_calls(self) -> tuple[BookCall, ...]:
        return self.analysis.book_calls

    def books(self) -> dict[str, list[str]]:
        """Each Book the program calls, with the sorted procedures it calls on it."""
        table: dict[str, set[str]] = {}
        for call in self.book_calls:
            table.setdefault(call.book, set()).add(call.procedure)
        return {book: sorted(procs) for book, procs in sorted(table.items())}

    @cached_property
    def python(self) -> str:
        """The generated Python at trace level `off`; raises CompileError on diagnostics."""
        if not self.ok or self.source is None:
            raise CompileError(list(self.diagnostics))
        header = (
            f"# generated by {COMPILER_VERSION} from {self.path}\n"
            f"# program sha256 {self.source.digest}\n"
        )
        return header + self.program("off").python + "\n"

    def program(self, trace: TraceLevel = "off") -> CompiledProgram:
        """Phase 4: the program compiled with `trace` hooks, ready for the Machine."""
        source = self.source
        if source is None:
            raise CompileError(list(self.diagnostics))
        digest = program_digest(source, trace)
        cached = _PROGRAM_CACHE.get(digest)
        if cached is not None:
            return cached
        with _collector_paused():
            return self._compile(source, digest, trace)

    def _compile(self, source: Source, digest: str, trace: TraceLevel) -> CompiledProgram:
        if not self.ok:
            raise CompileError(list(self.diagnostics))
        trace_sites: tuple[Site, ...] = ()
        books = self._books
        if trace == "off" and self.lowered is not None:
            lowered = self.lowered
            # The program owns the lowered module from here (the restriction pass
            # rewrites it in place): the Compilation forgets it.
            self.__dict__.pop("lowered", None)
        else:
            tree = self.tree
            assert tree is not None  # it compiled without diagnostics
            instrumented, trace_sites = instrument(tree, source, trace)
            if instrumented is tree:  # trace level `off`: no copy was made
                instrumented = copy_tree(tree)
            lowered = _lower(instrumented)
        if lowered.problems:
            # The untraced program lowered cleanly (self.ok), so this is the trace level
            # interacting with a lowering rule: say so rather than run an empty program.
            raise CompileError([
                source.diagnostic(code, f"{message} (at trace level {trace})",
                                  getattr(node, "lineno", 1), getattr(node, "col_offset", 0))
                for code, message, node in lowered.problems
            ])
        code = restricted_compile(lowered.module, source.path)
        sites = [
            SuspensionSite(s.line, source.char_col(s.line, s.col), s.end_line,
                           source.char_col(s.end_line, s.end_col))
            for s in lowered.sites
        ]
        program = CompiledProgram(
            digest=digest,
            source=source,
            trace_level=trace,
            code=code,
            render=functools.partial(_python_text, source, trace),
            functions=lowered.functions,
            suspension_sites=sites,
            trace_sites=trace_sites,
            books=books,
        )
        _remember(_PROGRAM_CACHE, digest, program, _PROGRAM_CACHE_SIZE)
        return program


def compile_program(data: bytes | str, path: str = "<string>",
                    trace: TraceLevel = "off") -> CompiledProgram:
    """`Compilation.of(data, path).program(trace)` (CompileError on diagnostics), found
    by the text itself when it was compiled lately: what a caller that compiles the
    same few programs again and again (a worker, for every start) asks for, without
    decoding, checking and hashing the text each time."""
    key = (data, path, trace)
    program = _BY_TEXT.get(key)
    if program is None:
        program = Compilation.of(data, path).program(trace)
        _remember(_BY_TEXT, key, program, _PROGRAM_CACHE_SIZE)
    return program


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a program compiles.

    A compile makes tens of thousands of syntax nodes, all tracked by the collector,
    which would run dozens of times over them (a tenth of a cold compile) to find no
    cycles: syntax trees are freed by reference counting. It runs again afterwards,
    as usual, if it was enabled.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _python_text(source: Source, trace: TraceLevel) -> str:
    """The generated Python of `source` at `trace`, compiled again: `CompiledProgram`
    asks for it only when someone reads `python`, and keeps no syntax tree for it."""
    tree = parse(source)
    assert isinstance(tree, ast.Module)  # it compiled before
    instrumented, _ = instrument(tree, source, trace)
    # A tree of its own (parsed here, or the instrumented copy).
    return unparse(restrict(_lower(instrumented).module))


def _lower(tree: ast.Module) -> LoweredProgram:
    """`tree` with its arithmetic bounded, then lowered, both in place: for a tree no
    one else will read."""
    return lower_program(bound_operations(tree, copy=False), copy=False)

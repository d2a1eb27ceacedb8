"""The compiler's phases, named and ordered in one place.

`Compilation` holds one program on its way through the pipeline; each phase is a
cached property computed from the one before it, so "what runs when" is this file:

    load_source ─▶ parse ─▶ validate + resolve ─▶ lower ─▶ python / program(trace)

`program(trace)` instruments a copy of the tree with trace hooks (compiler/trace.py),
lowers it into step functions (compiler/lower/) and compiles it into a
`CompiledProgram`, cached by the program's digest and trace level.

A phase that finds problems records diagnostics; later phases that need a clean
program raise `CompileError` carrying them.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from functools import cached_property

from jarvis import __version__
from jarvis.compiler.bounds import bound_operations
from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.diagnostics import CompileError, Diagnostic
from jarvis.compiler.emit import unparse
from jarvis.compiler.language import LANGUAGE_VERSION
from jarvis.compiler.lower.anf import SuspensionSite
from jarvis.compiler.lower.program import LoweredProgram, lower_program
from jarvis.compiler.resolve import BookCall, resolve
from jarvis.compiler.restrict import restricted_compile
from jarvis.compiler.source import Source, load_source
from jarvis.compiler.syntax import parse
from jarvis.compiler.trace import TraceLevel, instrument
from jarvis.compiler.validate import book_imports, validate

COMPILER_VERSION = f"jarvis {__version__} spy{LANGUAGE_VERSION}"
"""Snapshots record it: a continuation is only valid for the compiler that made it."""

_PROGRAM_CACHE: dict[str, CompiledProgram] = {}
_PROGRAM_CACHE_SIZE = 64


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
        """Phase 1: the parsed tree, or None when the source did not parse."""
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
        """Phase 3: the program as step functions (untraced); None on diagnostics."""
        if self.analysis.diagnostics or self.tree is None:
            return None
        return lower_program(self.tree)

    @cached_property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
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
        """The generated Python (untraced); raises CompileError on diagnostics."""
        if not self.ok or self.lowered is None or self.source is None:
            raise CompileError(list(self.diagnostics))
        header = (
            f"# generated by {COMPILER_VERSION} from {self.path}\n"
            f"# program sha256 {self.source.digest}\n"
        )
        return header + unparse(self.lowered.module) + "\n"

    def program(self, trace: TraceLevel = "off") -> CompiledProgram:
        """Phase 4: the program compiled with `trace` hooks, ready for the Machine."""
        if not self.ok or self.tree is None or self.source is None:
            raise CompileError(list(self.diagnostics))
        source = self.source
        digest = hashlib.sha256(
            f"{COMPILER_VERSION}\0{trace}\0{source.path}\0".encode() + source.text.encode()
        ).hexdigest()
        cached = _PROGRAM_CACHE.get(digest)
        if cached is not None:
            return cached
        instrumented, trace_sites = instrument(self.tree, source, trace)
        lowered = lower_program(bound_operations(instrumented))
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
            python=unparse(lowered.module),
            functions=lowered.functions,
            suspension_sites=sites,
            trace_sites=trace_sites,
            books=tuple(sorted(set(book_imports(self.tree).values()))),
        )
        if len(_PROGRAM_CACHE) >= _PROGRAM_CACHE_SIZE:
            _PROGRAM_CACHE.pop(next(iter(_PROGRAM_CACHE)))
        _PROGRAM_CACHE[digest] = program
        return program

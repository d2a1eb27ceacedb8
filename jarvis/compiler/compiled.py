"""`CompiledProgram`: everything the runtime needs to run one SPy program.

It is the compiler's final product and the runtime's input: the code object of the
lowered module, the table of resumable functions, the positions of suspension points
and trace sites, and the identity (`digest`) that snapshots are checked against.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import CodeType
from typing import Any

from jarvis.compiler.source import Source
from jarvis.compiler.tables import FunctionInfo, SuspensionSite


class CompiledProgram:
    """A program ready to run: compiled once, cached by `digest`. Read-only by convention.

    `python`, the generated Python as text, is for people (`jarvis-compile --emit`):
    nothing runs it. Give either the text or `render`, which writes it: it is then
    written the first time it is asked for, so that compiling a program does not pay
    for it, and the program does not keep its syntax tree alive for it.
    """

    def __init__(self, *, digest: str, source: Source, trace_level: str, code: CodeType,
                 functions: dict[int, FunctionInfo], suspension_sites: list[SuspensionSite],
                 trace_sites: tuple[Any, ...], books: tuple[str, ...],
                 python: str | None = None, render: Callable[[], str] | None = None,
                 ) -> None:
        if python is None and render is None:
            raise ValueError("a CompiledProgram needs its Python text or a way to write it")
        self.digest = digest
        """SHA-256 over the source, the trace level and the compiler version."""
        self.source = source
        self.trace_level = trace_level
        self.code = code
        self.functions = functions
        self.suspension_sites = suspension_sites
        self.trace_sites = trace_sites
        self.books = books
        self.codes: tuple[CodeType, ...] = tuple(all_codes(code))
        self._python = python
        self._render = None if python is not None else render
        self._lock = threading.Lock()

    @property
    def python(self) -> str:
        """The generated Python, as text (written on first use)."""
        with self._lock:
            if self._python is None:
                assert self._render is not None
                self._python = self._render()
                self._render = None
            return self._python

    @property
    def path(self) -> str:
        return self.source.path

    def __repr__(self) -> str:
        return (f"CompiledProgram(path={self.path!r}, trace_level={self.trace_level!r}, "
                f"digest={self.digest[:12]!r})")


def all_codes(code: CodeType, out: list[CodeType] | None = None) -> list[CodeType]:
    """Every code object of the module, in a stable depth-first order (appended to
    `out`, if given)."""
    if out is None:
        out = []
    out.append(code)
    for constant in code.co_consts:
        if type(constant) is CodeType:
            all_codes(constant, out)
    return out

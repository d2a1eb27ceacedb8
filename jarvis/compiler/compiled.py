"""`CompiledProgram`: everything the runtime needs to run one SPy program.

It is the compiler's final product and the runtime's input: the code object of the
lowered module, the table of resumable functions, the positions of suspension points
and trace sites, and the identity (`digest`) that snapshots are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import CodeType
from typing import Any

from jarvis.compiler.lower.anf import SuspensionSite
from jarvis.compiler.lower.program import FunctionInfo
from jarvis.compiler.source import Source


@dataclass(frozen=True)
class CompiledProgram:
    """A program ready to run: compiled once, cached by `digest`."""

    digest: str
    """SHA-256 over the source, the trace level and the compiler version."""
    source: Source
    trace_level: str
    code: CodeType
    python: str
    functions: dict[int, FunctionInfo]
    suspension_sites: list[SuspensionSite]
    trace_sites: tuple[Any, ...]
    books: tuple[str, ...]
    codes: tuple[CodeType, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", tuple(_all_codes(self.code)))

    @property
    def path(self) -> str:
        return self.source.path


def _all_codes(code: CodeType) -> list[CodeType]:
    """Every code object of the module, in a stable depth-first order."""
    out = [code]
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            out.extend(_all_codes(constant))
    return out

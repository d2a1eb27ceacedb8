"""The SPy compiler: source text in, diagnostics and runnable Python out.

The stages, in pipeline order, are modules of this package: `source` (decode and
check), `syntax` (parse), `validate` (whitelist walk), `resolve` (names and Books),
`emit` (Python). `phases.Compilation` runs them in order; `language` defines SPy.

The names below are loaded when first used, not when the package is: the runtime
imports the light modules of this package (`compiled`, `tables`, `contract`,
`language`, `source`, `diagnostics`), and a process that only runs programs (a zygote,
a child) must not pay for the pipeline and RestrictedPython.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jarvis.compiler.diagnostics import RULES, CompileError, Diagnostic, Rule
    from jarvis.compiler.phases import Analysis, Compilation, compile_program
    from jarvis.compiler.resolve import BookCall
    from jarvis.compiler.source import Source, load_source

__all__ = [
    "RULES",
    "Analysis",
    "BookCall",
    "Compilation",
    "CompileError",
    "Diagnostic",
    "Rule",
    "Source",
    "compile_program",
    "load_source",
]

_HOMES = {
    "RULES": "diagnostics",
    "Analysis": "phases",
    "BookCall": "resolve",
    "Compilation": "phases",
    "CompileError": "diagnostics",
    "Diagnostic": "diagnostics",
    "Rule": "diagnostics",
    "Source": "source",
    "compile_program": "phases",
    "load_source": "source",
}
"""The module of this package that defines each public name."""


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

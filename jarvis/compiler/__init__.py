"""The SPy compiler: source text in, diagnostics and runnable Python out.

The stages, in pipeline order, are modules of this package: `source` (decode and
check), `syntax` (parse), `validate` (whitelist walk), `resolve` (names and Books),
`emit` (Python). `phases.Compilation` runs them in order; `language` defines SPy.
"""

from jarvis.compiler.diagnostics import RULES, CompileError, Diagnostic, Rule
from jarvis.compiler.phases import Analysis, Compilation
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
    "load_source",
]

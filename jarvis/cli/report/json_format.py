"""The JSON format: one document describing every program checked, for scripts.

    {"version": 1,
     "files": [{"path": ..., "diagnostics": [...], "books": {book: [procedures]}}],
     "summary": {"files": N, "diagnostics": N}}

`version` changes only when a field changes meaning or disappears; new fields may
be added without it. Each diagnostic is `Diagnostic.to_json()`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jarvis.compiler import Compilation

JSON_VERSION = 1


def json_document(programs: Sequence[Compilation]) -> dict[str, Any]:
    """The report as JSON-ready data."""
    files = [
        {
            "path": program.path,
            "diagnostics": [diagnostic.to_json() for diagnostic in program.diagnostics],
            "books": program.books(),
        }
        for program in programs
    ]
    return {
        "version": JSON_VERSION,
        "files": files,
        "summary": {
            "files": len(programs),
            "diagnostics": sum(len(program.diagnostics) for program in programs),
        },
    }


def render_json(programs: Sequence[Compilation]) -> str:
    # ASCII-only output survives any stdout encoding and stays valid JSON.
    return json.dumps(json_document(programs), indent=2) + "\n"

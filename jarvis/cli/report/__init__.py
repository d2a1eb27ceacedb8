"""Output formats of `jarvis-compile`: how compiled programs are reported.

Each format is a module with one `render_*` function that turns the checked
programs (`Compilation`s, in the order they were given) into the text written to
stdout: `text` for people, `json_format` for scripts, `sarif` for code-scanning
services. The formats read the same diagnostics, so they always agree.
"""

from __future__ import annotations

from jarvis.cli.report.json_format import json_document, render_json
from jarvis.cli.report.sarif import artifact_uri, render_sarif, sarif_log
from jarvis.cli.report.text import (
    Palette,
    caret_lines,
    render_books,
    render_diagnostic,
    render_text,
    summary_line,
)

FORMATS = ("text", "json", "sarif")
"""The names `--format` accepts; the first is the default."""

__all__ = [
    "FORMATS",
    "Palette",
    "artifact_uri",
    "caret_lines",
    "json_document",
    "render_books",
    "render_diagnostic",
    "render_json",
    "render_sarif",
    "render_text",
    "sarif_log",
    "summary_line",
]

"""The SARIF format: a SARIF 2.1.0 log, for code-scanning services such as GitHub's.

One run, whose driver is `jarvis-compile` with a rule per diagnostic code (from
`jarvis.compiler.RULES`, in catalogue order, so `ruleIndex` is stable). Columns are
the compiler's own: 1-based and counted in Unicode code points, which the run
declares with `columnKind`. Files are named by relative POSIX URIs, so a log made at
the root of a repository lines up with the repository's files.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from jarvis import __version__
from jarvis.compiler import RULES, Compilation, Diagnostic

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
TOOL_NAME = "jarvis-compile"
STDIN_NAME = "<stdin>"
"""The name a program read from stdin is reported under (its URI is `stdin`)."""

_LEVELS = {"error": "error", "warning": "warning", "note": "note", "info": "note"}
_RULE_INDEX = {code: index for index, code in enumerate(RULES)}


def artifact_uri(path: str) -> str:
    """The URI a path is reported under: relative and POSIX where possible, escaped.

    `<stdin>` is `stdin`. An absolute path inside the working directory becomes
    relative to it; one outside stays absolute, as a `file:` URI.
    """
    if path == STDIN_NAME:
        return "stdin"
    pure = PurePath(path)
    if pure.is_absolute():
        try:
            pure = pure.relative_to(Path.cwd())
        except ValueError:
            return Path(path).as_uri()
    relative = posixpath.normpath(pure.as_posix())
    return quote(os.fsencode(relative), safe="/")


def _rules() -> list[dict[str, Any]]:
    return [
        {
            "id": rule.code,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "help": {"text": rule.hint},
            "defaultConfiguration": {"level": "error"},
        }
        for rule in RULES.values()
    ]


def _result(diagnostic: Diagnostic, artifact: int, uri: str) -> dict[str, Any]:
    text = diagnostic.message
    if diagnostic.hint:
        text = f"{text}\nhint: {diagnostic.hint}"
    result: dict[str, Any] = {"ruleId": diagnostic.code}
    if diagnostic.code in _RULE_INDEX:
        result["ruleIndex"] = _RULE_INDEX[diagnostic.code]
    result["level"] = _LEVELS.get(diagnostic.severity, "error")
    result["message"] = {"text": text}
    result["locations"] = [
        {
            "physicalLocation": {
                "artifactLocation": {"uri": uri, "index": artifact},
                "region": {
                    "startLine": diagnostic.line,
                    "startColumn": diagnostic.col,
                    "endLine": diagnostic.end_line,
                    "endColumn": diagnostic.end_col,
                },
            }
        }
    ]
    return result


def sarif_log(programs: Sequence[Compilation]) -> dict[str, Any]:
    """The report as a SARIF 2.1.0 log, as JSON-ready data."""
    artifacts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for index, program in enumerate(programs):
        uri = artifact_uri(program.path)
        artifacts.append({"location": {"uri": uri}})
        results += [_result(diagnostic, index, uri) for diagnostic in program.diagnostics]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL_NAME,
                        "version": __version__,
                        "rules": _rules(),
                    }
                },
                "columnKind": "unicodeCodePoints",
                "artifacts": artifacts,
                "results": results,
            }
        ],
    }


def render_sarif(programs: Sequence[Compilation]) -> str:
    return json.dumps(sarif_log(programs), indent=2) + "\n"

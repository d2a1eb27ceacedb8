"""Program inputs given on a command line: `--inputs FILE` and `--input NAME=JSON`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """An `--inputs` file or an `--input` item that cannot be used; the message says which."""


def parse_inputs(inputs_file: str | None, items: Sequence[str]) -> dict[str, Any]:
    """The inputs object: the file's JSON object first, then each NAME=JSON over it.

    A value that is not JSON is taken as a string, so `--input name=Ada` works unquoted.
    """
    values: dict[str, Any] = {}
    if inputs_file:
        try:
            loaded = json.loads(Path(inputs_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"--inputs {inputs_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InputError(f"--inputs {inputs_file}: must hold a JSON object")
        values.update(loaded)
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise InputError(f"--input {item!r}: expected NAME=JSON")
        try:
            values[name] = json.loads(raw)
        except ValueError:
            values[name] = raw
    return values

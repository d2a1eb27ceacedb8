"""Jarvis runs on CPython 3.11 alone: SPy means what 3.11 makes of a program."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_python.py"


def test_the_interpreter_check_passes_on_this_one() -> None:
    done = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_interpreter_check_refuses_another_version_and_says_what_to_do() -> None:
    # The check as it runs under a 3.12 (its version is all that is changed).
    script = ("import runpy, sys\n"
              "class V(tuple):\n"
              "    pass\n"
              "sys.version_info = V((3, 12, 1, 'final', 0))\n"
              f"runpy.run_path({str(CHECK)!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "Jarvis needs CPython 3.11" in done.stderr
    assert "PYTHON=/path/to/python3.11" in done.stderr


def test_the_package_and_the_image_ask_for_3_11() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["requires-python"] == ">=3.11,<3.12"
    image = re.search(r"PYTHON_IMAGE=python:(\d+\.\d+)",
                      (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert image is not None and image.group(1) == "3.11"


def test_3_11_sums_floats_as_the_language_reference_says() -> None:
    # docs/language.md gives this as what a program sees; 3.12 would say 1.0.
    assert sum([0.1] * 10) == 0.9999999999999999
    assert "0.9999999999999999" in (ROOT / "docs" / "language.md").read_text(encoding="utf-8")

"""The benchmark command keeps working: the whole suite at tiny sizes, into a tmp dir.

Figures at these sizes mean nothing; what is checked is that every section runs, the
workloads still run unchanged under each interpreter, and both files come out with
every target judged. docs/performance.md is never touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jarvis.compiler import Compilation

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `bench` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402
from bench.baselines import PlainPython, Restricted  # noqa: E402
from bench.report import MARKER  # noqa: E402
from bench.workloads import BOOK_LOOP, CPU_WORKLOADS, inc  # noqa: E402
from bench.workloads.generate import generate_program  # noqa: E402

DOCS_PAGE = ROOT / "docs" / "performance.md"


@pytest.mark.parametrize("workload", [*CPU_WORKLOADS, BOOK_LOOP], ids=lambda w: w.name)
def test_workloads_are_spy_and_python(workload: object) -> None:
    source = workload.source  # type: ignore[attr-defined]
    path = workload.file  # type: ignore[attr-defined]
    assert Compilation.of(source, path).ok
    books = {"counter": {"inc": inc}} if workload is BOOK_LOOP else None
    plain = PlainPython(source, path, books)
    plain.run({"n": 12})
    restricted = Restricted(source, path, books)
    restricted.run({"n": 12})
    assert plain.outputs and plain.outputs == restricted.outputs


def test_generated_program_has_the_lines_asked_for() -> None:
    text = generate_program(1000)
    assert text.count("\n") == 1000
    assert Compilation.of(text, "generated.spy").ok


def test_suite_runs_end_to_end(tmp_path: Path) -> None:
    before = DOCS_PAGE.read_bytes() if DOCS_PAGE.exists() else None
    (tmp_path / "performance.md").write_text("# Kept intro\n\n" + MARKER + "\nold tables\n")
    sections = [arg for name in ("cpu", "books", "durability", "compile")
                for arg in ("--only", name)]  # the worker section: test_bench_worker.py
    assert run.main(["--scale", "0.001", "--repeats", "1", "--warmup", "0",
                     "--out", str(tmp_path), *sections]) == 0
    results = json.loads((tmp_path / "performance.json").read_text())
    assert {"meta", "cpu", "books", "durability", "compile", "targets"} <= set(results)
    statuses = {target["status"] for target in results["targets"]}
    assert statuses <= {"PASS", "FAIL", "NOT MEASURED"}
    assert len(results["targets"]) >= 11
    page = (tmp_path / "performance.md").read_text()
    assert page.startswith("# Kept intro\n") and "old tables" not in page
    assert "not measured yet: needs the Kafka worker" in page
    probe = (results["meta"]["machine"]["speed_probe_ms_at_start"],
             results["meta"]["speed_probe_ms_at_end"])
    assert all(ms > 0 for ms in probe)
    assert f"took {probe[0]:g} ms of CPU at the start and {probe[1]:g} ms at the end" in page
    for heading in ("## Targets", "## CPU workloads", "## Trace volume", "## Book calls",
                    "## Durability", "## Compile"):
        assert heading in page
    after = DOCS_PAGE.read_bytes() if DOCS_PAGE.exists() else None
    assert after == before

"""The runtime loads without the compiler's pipeline: a zygote or a child that imports
what a run needs pays neither for the pipeline's modules nor for RestrictedPython, and
a program the host compiled runs there exactly as in the compiling process."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from runtime_only_run import run_with_restarts, table_classes

import jarvis.compiler
from jarvis.compiler import Compilation, tables
from jarvis.compiler.compiled import CompiledProgram
from jarvis.runtime.program_bytes import encode_program

RUNTIME = ("jarvis.runtime.machine", "jarvis.runtime.program_bytes", "jarvis.runtime.trace",
           "jarvis.runtime.child")
"""What a zygote imports for its children."""

PIPELINE = (
    "jarvis.compiler.phases", "jarvis.compiler.syntax", "jarvis.compiler.validate",
    "jarvis.compiler.resolve", "jarvis.compiler.restrict", "jarvis.compiler.policy",
    "jarvis.compiler.trees", "jarvis.compiler.bounds", "jarvis.compiler.trace",
    "jarvis.compiler.emit", "jarvis.compiler.lower.anf", "jarvis.compiler.lower.blocks",
    "jarvis.compiler.lower.program", "jarvis.compiler.lower.genexp",
    "jarvis.compiler.lower.hoist", "jarvis.compiler.lower.scopes",
    "jarvis.compiler.lower.suspension", "RestrictedPython",
)

HERE = Path(__file__).parent

PROGRAM = """\
def total(items):
    acc = 0
    for x in items:
        acc = acc + x
        checkpoint()
    return acc

a, (b, *rest) = 1, (2, 3, 4)
scale = lambda v: v * 10
output('sum', scale(total([a, b] + rest)))
output('label', f"{a!r}-{b:>3}")
output('squares', [n * n for n in range(4)])
checkpoint()
"""
"""Suspends in a function and at the top level; unpacks nested and starred targets."""


def pipeline_modules(names: list[str]) -> list[str]:
    return [name for name in names
            if name in PIPELINE or name.startswith(("jarvis.compiler.lower.",
                                                    "RestrictedPython."))]


def fresh_interpreter(code: str, *args: str) -> Any:
    """What `code`, run in a new Python, prints as JSON."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=120, cwd=HERE, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_runtime_imports_none_of_the_pipeline() -> None:
    loaded = fresh_interpreter(
        "import json, sys\n"
        + "".join(f"import {name}\n" for name in RUNTIME)
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    assert set(RUNTIME) <= set(loaded)
    assert pipeline_modules(loaded) == []


def test_the_package_loads_its_public_names_when_first_used() -> None:
    loaded = fresh_interpreter(
        "import json, sys\n"
        "import jarvis.compiler as compiler\n"
        "before = sorted(sys.modules)\n"
        "compilation = compiler.Compilation.of('output(\"x\", 1)\\n', 'p.spy')\n"
        "print(json.dumps([before, sorted(sys.modules), compilation.ok]))\n"
    )
    before, after, ok = loaded
    assert "jarvis.compiler.phases" not in before
    assert "jarvis.compiler.phases" in after
    assert ok


def test_the_public_names_are_those_of_their_modules() -> None:
    from jarvis.compiler import diagnostics, phases, resolve, source

    for name in jarvis.compiler.__all__:
        value = getattr(jarvis.compiler, name)
        homes = [m for m in (diagnostics, phases, resolve, source) if hasattr(m, name)]
        assert homes and all(getattr(m, name) is value for m in homes), name
    assert set(jarvis.compiler.__all__) <= set(dir(jarvis.compiler))


def test_moved_definitions_keep_their_old_names() -> None:
    from jarvis.compiler import contract, emit, restrict, trace
    from jarvis.compiler.lower import anf, blocks, program

    assert anf.SuspensionSite is program.SuspensionSite is tables.SuspensionSite
    assert program.FunctionInfo is tables.FunctionInfo
    assert trace.Site is tables.Site
    assert restrict.UnpackSpec is contract.UnpackSpec
    assert emit.runtime_names is contract.runtime_names
    assert blocks.STEP_INTERNALS is contract.STEP_INTERNALS
    assert (blocks.RETURN, blocks.BOOK, blocks.CALL, blocks.SLEEP, blocks.CHECKPOINT,
            blocks.ARTIFACT) == (contract.RETURN, contract.BOOK, contract.CALL,
                                 contract.SLEEP, contract.CHECKPOINT, contract.ARTIFACT)


def test_records_pickled_under_their_old_paths_still_load() -> None:
    records = {
        "jarvis.compiler.lower.anf": tables.SuspensionSite(1, 2, 3, 4),
        "jarvis.compiler.lower.program": tables.FunctionInfo(1, "f", "f", ("x",)),
        "jarvis.compiler.trace": tables.Site("expr", 1, 2, 1, 5, "a + b", True),
    }
    for old_module, record in records.items():
        data = pickle.dumps(record, protocol=0)
        name = type(record).__name__.encode()
        current = b"cjarvis.compiler.tables\n" + name + b"\n"
        assert current in data
        old = data.replace(current, f"c{old_module}\n".encode() + name + b"\n")
        assert pickle.loads(old) == record


def compiled() -> CompiledProgram:
    compilation = Compilation.of(PROGRAM, "runtime_only.spy")
    assert compilation.ok, [d.message for d in compilation.diagnostics]
    return compilation.program("full")


def test_a_program_runs_from_its_bytes_without_the_compiler(tmp_path: Path) -> None:
    program = compiled()
    expected = run_with_restarts(program)
    assert expected["status"] == "completed", expected["error"]
    assert expected["outputs"] == {"sum": 100, "label": "1-  2", "squares": [0, 1, 4, 9]}
    assert expected["restarts"] == 5
    assert expected["events"]

    encoded = tmp_path / "program.bin"
    encoded.write_bytes(encode_program(program))
    child = fresh_interpreter(
        "import runpy, sys\nrunpy.run_path('runtime_only_run.py', run_name='__main__')\n",
        str(encoded),
    )
    assert pipeline_modules(child["modules"]) == []
    assert child["tables"] == table_classes(program) == [
        "jarvis.compiler.tables.FunctionInfo", "jarvis.compiler.tables.Site",
        "jarvis.compiler.tables.SuspensionSite",
    ]
    for key in ("status", "error", "outputs", "restarts", "events"):
        assert child[key] == expected[key], key

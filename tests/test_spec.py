"""The SPy spec programs: tests/spec/*.spy assert their own behaviour.

Each program is valid SPy and runs to the end under the reference interpreter with
the fake Books of tests/spec/books.toml. Beside `NAME.spy` may stand:

- `NAME.inputs.json`: the execution's inputs (an object);
- `NAME.outputs.json`: the outputs the program must record, exactly;
- `NAME.prints.txt`: the text the program must print, exactly.

The coverage tests below tie the programs to the language definition: every allowed
AST node, every builtin and every attribute is used by some program, and
docs/language.md names every builtin, refused builtin, attribute and diagnostic code,
and documents every allowed node in a construct section whose spec program uses it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jarvis.compiler import RULES, Compilation
from jarvis.compiler.language import (
    ATTRIBUTES,
    BUILTINS,
    EXCEPTIONS,
    METHODS_BY_TYPE,
    REFUSED_ATTRIBUTES,
    REFUSED_BUILTINS,
    RUNTIME_BUILTINS,
    SAFE_FUNCTIONS,
)
from jarvis.compiler.validate import ALLOWED_NODES
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.reference import ReferenceResult, run_reference

ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = ROOT / "tests" / "spec"
REGISTRY = SPEC_DIR / "books.toml"
LANGUAGE_DOC = ROOT / "docs" / "language.md"
SPECS = sorted(SPEC_DIR.glob("*.spy"))


def run_spec(path: Path) -> ReferenceResult:
    """Run one spec program the way the suite does: fresh Books, sidecar inputs."""
    inputs_file = path.with_suffix(".inputs.json")
    inputs = json.loads(inputs_file.read_text(encoding="utf-8")) if inputs_file.exists() else {}
    return run_reference(
        path.read_bytes(),
        inputs=inputs,
        # A fresh registry per program: in-process Books keep module state.
        books=BookRegistry.load(REGISTRY),
        path=str(path),
    )


def describe_failure(path: Path, result: ReferenceResult) -> str:
    """The program's own frames of the error, outermost first, and what it printed."""
    error = result.error
    assert error is not None
    lines = path.read_text(encoding="utf-8").splitlines()
    places = []
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path) and 1 <= tb.tb_lineno <= len(lines):
            places.append(f"{path.name}:{tb.tb_lineno}: {lines[tb.tb_lineno - 1].strip()}")
        tb = tb.tb_next
    return (
        "\n".join(places or [path.name])
        + f"\n{type(error).__name__}: {error}\n"
        + f"--- printed before the error ---\n{result.printed}"
    )


def spec_trees() -> dict[str, ast.Module]:
    # Bytes, as the compiler reads them: a leading byte-order mark is allowed.
    return {path.name: ast.parse(path.read_bytes()) for path in SPECS}


def walk_all() -> Iterator[ast.AST]:
    for tree in spec_trees().values():
        yield from ast.walk(tree)


def test_there_are_spec_programs() -> None:
    assert len(SPECS) >= 20


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_spec_compiles_clean(path: Path) -> None:
    compilation = Compilation.of(path.read_bytes(), str(path))
    assert compilation.ok, "\n".join(
        f"{d.path}:{d.line}:{d.col}: {d.code} {d.message}" for d in compilation.diagnostics
    )


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_spec_runs_and_asserts_hold(path: Path) -> None:
    result = run_spec(path)
    if result.error is not None:
        pytest.fail(describe_failure(path, result), pytrace=False)
    outputs_file = path.with_suffix(".outputs.json")
    if outputs_file.exists():
        expected: Any = json.loads(outputs_file.read_text(encoding="utf-8"))
        assert result.outputs == expected
    prints_file = path.with_suffix(".prints.txt")
    if prints_file.exists():
        assert result.printed == prints_file.read_text(encoding="utf-8")


def test_every_sidecar_belongs_to_a_program() -> None:
    stems = {path.stem for path in SPECS}
    for sidecar in [*SPEC_DIR.glob("*.json"), *SPEC_DIR.glob("*.txt")]:
        stem = sidecar.name.split(".", 1)[0]
        assert stem in stems, f"{sidecar.name} has no {stem}.spy"


# -- the runner cannot pass vacuously ----------------------------------------------


def test_a_false_assert_fails_the_program(tmp_path: Path) -> None:
    program = tmp_path / "broken.spy"
    program.write_text("x = 1 + 1\nassert x == 3, x\nprint('unreachable')\n", encoding="utf-8")
    result = run_spec(program)
    assert isinstance(result.error, AssertionError)
    assert result.error.args == (2,)
    assert result.printed == ""
    assert "broken.spy:2: assert x == 3, x" in describe_failure(program, result)


def test_a_spec_with_a_wrong_expected_output_fails(tmp_path: Path) -> None:
    program = tmp_path / "told.spy"
    program.write_text("output('n', 2)\n", encoding="utf-8")
    (tmp_path / "told.outputs.json").write_text('{"n": 3}', encoding="utf-8")
    with pytest.raises(AssertionError):
        test_spec_runs_and_asserts_hold(program)


# -- coverage: the spec programs exercise the whole language -------------------------


def test_every_allowed_node_is_used_by_a_spec() -> None:
    used = {type(node) for node in walk_all()}
    missing = sorted(node.__name__ for node in ALLOWED_NODES - used)
    assert not missing, f"no spec program uses: {missing}"


def test_every_builtin_is_used_by_a_spec() -> None:
    used = {node.id for node in walk_all() if isinstance(node, ast.Name)}
    missing = sorted(BUILTINS - used)
    assert not missing, f"no spec program uses: {missing}"


def test_every_attribute_is_used_by_a_spec() -> None:
    used = {node.attr for node in walk_all() if isinstance(node, ast.Attribute)}
    missing = sorted(ATTRIBUTES - used)
    assert not missing, f"no spec program reads: {missing}"


def test_every_method_is_used_on_its_own_type() -> None:
    """Each type's methods are exercised in that type's spec program, not just somewhere."""
    trees = spec_trees()
    homes = {
        "str": "strings.spy",
        "list": "lists.spy",
        "dict": "dicts.spy",
        "set": "sets.spy",
        "frozenset": "sets.spy",
        "tuple": "tuples.spy",
        "int": "numbers.spy",
        "float": "numbers.spy",
        "bool": "numbers.spy",
        "exceptions": "exceptions.spy",
        "BookError": "books.spy",
    }
    assert set(homes) == set(METHODS_BY_TYPE)
    for kind, methods in METHODS_BY_TYPE.items():
        tree = trees[homes[kind]]
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        missing = sorted(methods - used)
        assert not missing, f"{homes[kind]} does not use the {kind} attributes {missing}"


# -- docs/language.md names everything the language defines --------------------------


def doc_text() -> str:
    return LANGUAGE_DOC.read_text(encoding="utf-8")


def backticked(text: str) -> set[str]:
    """Every `code span` of the document, and the words inside multi-word ones."""
    spans = set(re.findall(r"`([^`\n]+)`", text))
    words = {word for span in spans for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span)}
    return spans | words


@pytest.mark.parametrize(
    ("table", "names"),
    [
        ("BUILTINS", BUILTINS),
        ("REFUSED_BUILTINS", frozenset(REFUSED_BUILTINS)),
        ("ATTRIBUTES", ATTRIBUTES),
        ("REFUSED_ATTRIBUTES", frozenset(REFUSED_ATTRIBUTES)),
        ("RULES", frozenset(RULES)),
    ],
)
def test_docs_name_everything(table: str, names: frozenset[str]) -> None:
    missing = sorted(names - backticked(doc_text()))
    assert not missing, f"docs/language.md does not name these {table} entries: {missing}"


def table_rows(text: str) -> dict[str, list[list[str]]]:
    """The other cells of each Markdown table row, keyed by the first cell's code span."""
    rows: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
        if match:
            cells = [cell.strip() for cell in match.group(2).split(" | ")]
            rows.setdefault(match.group(1), []).append(cells)
    return rows


def test_docs_tables_carry_the_descriptions_of_language_py() -> None:
    rows = table_rows(doc_text())
    described = {**RUNTIME_BUILTINS, **SAFE_FUNCTIONS, **EXCEPTIONS, **REFUSED_BUILTINS}
    for name, description in described.items():
        assert any(cells[0] == description for cells in rows.get(name, [])), (
            f"docs/language.md has no table row for `{name}` saying {description!r}"
        )
    for name, reason in REFUSED_ATTRIBUTES.items():
        assert any(cells[0] == reason for cells in rows.get(name, [])), (
            f"docs/language.md has no table row for `.{name}` saying {reason!r}"
        )
    for code, rule in RULES.items():
        wanted = [rule.name, rule.summary, rule.hint]
        assert wanted in rows.get(code, []), (
            f"docs/language.md has no table row `{code}` | {' | '.join(wanted)}"
        )


CONSTRUCT = re.compile(r"<!--\s*construct:\s*ast=([A-Za-z_,\s]+?)\s+spec=([a-z_]+\.spy)\s*-->")


def constructs() -> list[tuple[str, list[str], str]]:
    """The construct sections: (heading, AST node names, spec program) for each."""
    found: list[tuple[str, list[str], str]] = []
    heading = ""
    for line in doc_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            continue
        match = CONSTRUCT.search(line)
        if match:
            nodes = [name.strip() for name in match.group(1).split(",") if name.strip()]
            found.append((heading, nodes, match.group(2)))
    return found


def test_every_allowed_node_is_documented_in_a_construct_section() -> None:
    documented = {name for _, nodes, _ in constructs() for name in nodes}
    allowed = {node.__name__ for node in ALLOWED_NODES}
    assert not allowed - documented, f"undocumented nodes: {sorted(allowed - documented)}"
    assert not documented - allowed, f"documented but not allowed: {sorted(documented - allowed)}"


def test_every_construct_section_has_a_spec_that_uses_it() -> None:
    trees = spec_trees()
    assert constructs()
    for heading, nodes, spec in constructs():
        assert spec in trees, f"section {heading!r} names a missing spec program {spec}"
        used = {type(node).__name__ for node in ast.walk(trees[spec])}
        missing = sorted(set(nodes) - used)
        assert not missing, f"section {heading!r}: {spec} does not use {missing}"

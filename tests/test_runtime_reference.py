"""The reference interpreter and the runtime surface it shares with the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jarvis.compiler import CompileError
from jarvis.runtime.books import BookRegistry, PythonBook, check_json_value
from jarvis.runtime.errors import BookError, RuntimeSetupError
from jarvis.runtime.reference import run_reference

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def registry(tmp_path: Path) -> BookRegistry:
    (tmp_path / "crm.py").write_text(
        "CALLS = []\n"
        "def create_lead(name, score=0):\n"
        "    CALLS.append(name)\n"
        "    return {'id': len(CALLS), 'name': name, 'score': score}\n"
        "def explode(reason):\n"
        "    raise PermissionError(reason)\n"
        "def bad_result():\n"
        "    return {1, 2}\n"
    )
    (tmp_path / "books.toml").write_text('[books.crm]\npython = "crm.py"\n')
    return BookRegistry.load(tmp_path / "books.toml")


def test_book_calls_outputs_and_prints(registry: BookRegistry) -> None:
    result = run_reference(
        "from books import crm\n"
        "lead = crm.create_lead(name=inputs['name'], score=3)\n"
        "print('created', lead['id'], sep=':')\n"
        "output('lead', lead)\n",
        inputs={"name": "Ada"},
        books=registry,
        execution_id="ex1",
    )
    assert result.error is None
    assert result.outputs == {"lead": {"id": 1, "name": "Ada", "score": 3}}
    assert result.printed == "created:1\n"
    [call] = result.book_calls
    expected = ("crm", "create_lead", {"name": "Ada", "score": 3})
    assert (call.book, call.procedure, call.kwargs) == expected
    assert call.idempotency_key == "ex1:1"


def test_book_failure_is_a_catchable_book_error(registry: BookRegistry) -> None:
    result = run_reference(
        "from books import crm\n"
        "try:\n"
        "    crm.explode(reason='no access')\n"
        "except BookError as e:\n"
        "    output('e', [e.book, e.procedure, e.error_type, e.message, e.status])\n",
        books=registry,
    )
    assert result.error is None
    assert result.outputs["e"] == ["crm", "explode", "PermissionError", "no access", None]


def test_non_json_results_and_arguments_are_refused(registry: BookRegistry) -> None:
    result = run_reference("from books import crm\ncrm.bad_result()\n", books=registry)
    assert isinstance(result.error, BookError)
    assert result.error.error_type == "InvalidResult"
    result = run_reference("from books import crm\ncrm.create_lead(name={1})\n", books=registry)
    assert isinstance(result.error, TypeError)
    assert "not a JSON value" in str(result.error)


def test_output_copies_the_value_at_call_time() -> None:
    result = run_reference("xs = [1]\noutput('xs', xs)\nxs.append(2)\n")
    assert result.outputs == {"xs": [1]}


def test_inputs_are_read_only_and_private() -> None:
    original = {"items": [1, 2]}
    result = run_reference("inputs['x'] = 1\n", inputs=original)
    assert isinstance(result.error, TypeError)
    result = run_reference("inputs['items'].append(3)\noutput('n', len(inputs['items']))\n",
                           inputs=original)
    assert result.outputs == {"n": 3}
    assert original == {"items": [1, 2]}


def test_sleep_and_now_use_a_virtual_clock_by_default() -> None:
    result = run_reference("a = now()\nsleep(3600)\nb = now()\noutput('d', b - a >= 3600)\n")
    assert result.outputs == {"d": True}


def test_invalid_spy_is_refused_before_running() -> None:
    with pytest.raises(CompileError) as info:
        run_reference("import os\n")
    assert info.value.diagnostics[0].code == "SPY102"


def test_a_missing_book_is_a_setup_error() -> None:
    with pytest.raises(RuntimeSetupError, match="does not define"):
        run_reference("from books import nowhere\nnowhere.x()\n")


def test_registry_errors_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "books.toml"
    path.write_text("[books.x]\nnothing = 1\n")
    with pytest.raises(RuntimeSetupError, match="needs `python"):
        BookRegistry.load(path)
    path.write_text("not toml [")
    with pytest.raises(RuntimeSetupError, match="not valid TOML"):
        BookRegistry.load(path)
    with pytest.raises(RuntimeSetupError, match="cannot read"):
        BookRegistry.load(tmp_path / "missing.toml")


def test_private_procedures_are_not_reachable(tmp_path: Path) -> None:
    (tmp_path / "b.py").write_text("def _secret():\n    return 1\n")
    book = PythonBook("b", tmp_path / "b.py")
    with pytest.raises(BookError, match="no such procedure"):
        book.call("_secret", [], {}, "k")
    with pytest.raises(BookError, match="no such procedure"):
        book.call("missing", [], {}, "k")


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), {1: "a"}, {1, 2}, b"x", object()],
)
def test_check_json_value_refuses_non_json(value: object) -> None:
    with pytest.raises(TypeError):
        check_json_value({"v": [value]}, "value")


@pytest.mark.parametrize("name", ["invoice_approval", "lead_enrichment", "subscription_renewal"])
def test_examples_run(name: str) -> None:
    inputs_file = EXAMPLES / f"{name}.inputs.json"
    inputs = json.loads(inputs_file.read_text()) if inputs_file.exists() else {}
    result = run_reference(
        (EXAMPLES / f"{name}.spy").read_text(),
        inputs=inputs,
        books=BookRegistry.load(EXAMPLES / "books.toml"),
    )
    assert result.error is None, result.error
    assert result.outputs

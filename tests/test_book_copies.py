"""Book arguments and results cross the Book boundary as copies, made once each way
(`json_copy`): neither side reaches the other's values afterwards."""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Any

import pytest

from jarvis.compiler import Compilation
from jarvis.runtime.books import (
    BookRegistry,
    PythonBook,
    check_json_value,
    json_copy,
    to_json_value,
)
from jarvis.runtime.effects_log import MemoryEffects, decode
from jarvis.runtime.machine import Machine, Outcome
from jarvis.runtime.sinks import NullSink
from jarvis.runtime.trace import Tracer

BOOK = """\
KEPT = []

def keep(value):
    KEPT.append(value)
    return value

def spoil(items):
    items.append("spoiled")
    return len(items)

def kept():
    return KEPT

def change_kept():
    KEPT[0]["n"] = 99
    return None

def pair():
    return (1, (2, 3))
"""


def run(tmp_path: Path, source: str) -> tuple[Outcome, MemoryEffects]:
    (tmp_path / "store.py").write_text(BOOK)
    registry = BookRegistry({"store": PythonBook("store", tmp_path / "store.py")})
    program = Compilation.of(source, "copies.spy").program("off")
    effects = MemoryEffects()
    machine = Machine(program, execution_id="copies", inputs={}, books=registry,
                      effects=effects, tracer=Tracer("copies", (), NullSink()))
    outcome = machine.run()
    assert outcome.status == "completed", outcome.error
    return outcome, effects


def test_a_book_changing_its_arguments_does_not_change_the_programs(tmp_path: Path) -> None:
    outcome, _ = run(tmp_path, (
        "from books import store\n"
        "items = ['a']\n"
        "n = store.spoil(items)\n"
        "output('items', items)\n"
        "output('n', n)\n"
    ))
    assert outcome.outputs == {"items": ["a"], "n": 2}


def test_results_are_not_shared_with_the_book(tmp_path: Path) -> None:
    outcome, effects = run(tmp_path, (
        "from books import store\n"
        "mine = store.keep({'n': 1})\n"
        "mine['n'] = 2\n"
        "before = store.kept()\n"
        "store.change_kept()\n"
        "after = store.kept()\n"
        "output('mine', mine)\n"
        "output('before', before)\n"
        "output('after', after)\n"
    ))
    # The program's change did not reach the Book, the Book's did not reach the program.
    assert outcome.outputs == {"mine": {"n": 2}, "before": [{"n": 1}],
                               "after": [{"n": 99}]}
    # What the program got is what the journal holds, as a resume would replay it.
    assert decode(effects.records[0])["ok"] == {"n": 1}


def test_tuples_arrive_as_lists_both_ways(tmp_path: Path) -> None:
    outcome, effects = run(tmp_path, (
        "from books import store\n"
        "got = store.keep((1, (2, 'x')))\n"
        "output('got', got)\n"
        "output('pair', store.pair())\n"
    ))
    assert outcome.outputs == {"got": [1, [2, "x"]], "pair": [1, [2, 3]]}
    assert [decode(r)["ok"] for r in effects.records] == [[1, [2, "x"]], [1, [2, 3]]]


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@pytest.mark.parametrize("value", [
    None, True, 0, -(10**40), 1.5, -0.0, "", "naïve \n", [], {}, (1, 2), [[[]]],
    {"a": [1, {"b": (2.5, None)}], "c": "d"}, Colour.RED, [Name("x"), {"k": Colour.RED}],
    {Name("key"): 1},
])
def test_json_copy_is_check_then_json_round_trip(value: Any) -> None:
    check_json_value(value, "v")
    copied = json_copy(value, "v")
    assert copied == to_json_value(value)
    assert [type(x) for x in _leaves(copied)] == [type(x) for x in _leaves(to_json_value(value))]


def test_json_copy_makes_new_containers() -> None:
    value = {"a": [1, {"b": 2}]}
    copied = json_copy(value, "v")
    assert copied == value
    assert copied is not value and copied["a"] is not value["a"]
    assert copied["a"][1] is not value["a"][1]


@pytest.mark.parametrize("value", [
    math.nan, [1, math.inf], {"a": {1: 2}}, [1, object()], {"k": {"j": b"x"}}, [(1, {2})],
])
def test_json_copy_refuses_as_check_json_value_does(value: Any) -> None:
    with pytest.raises(TypeError) as expected:
        check_json_value(value, "the arguments")
    with pytest.raises(TypeError) as got:
        json_copy(value, "the arguments")
    assert str(got.value) == str(expected.value)


def test_json_copy_refuses_a_cycle() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="Circular"):
        json_copy(cyclic, "v")


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [*value.keys(), *(leaf for item in value.values() for leaf in _leaves(item))]
    return [value]

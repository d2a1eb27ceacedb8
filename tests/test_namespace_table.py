"""Each execution's builtins table is its own: the same entries in the same order as
`make_builtins` makes them, effect functions that reach that execution only, and in a
forked process the table kept at import (the spare) goes to its first execution only."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from jarvis.compiler import Compilation
from jarvis.compiler.compiled import CompiledProgram
from jarvis.runtime import namespace
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.builtins import EFFECT_FUNCTIONS, make_builtins
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.guards import guard_table
from jarvis.runtime.machine import Machine, _json_size
from jarvis.runtime.namespace import Namespace
from jarvis.runtime.sinks import NullSink
from jarvis.runtime.trace import Tracer


def compiled(source: str) -> CompiledProgram:
    return Compilation.of(source, "t.spy").program("off")


PROGRAM = compiled('output("ok", inputs["n"] + 1)\nprint("hi")\n')


def machine(n: int, program: CompiledProgram = PROGRAM) -> Machine:
    return Machine(program, execution_id=f"x{n}", inputs={"n": n}, books=BookRegistry(),
                   effects=MemoryEffects(), tracer=Tracer("x", program.trace_sites,
                                                          NullSink()))


def test_the_table_has_make_builtins_entries_in_its_order_then_the_runtime() -> None:
    tracer = Tracer("x", PROGRAM.trace_sites, NullSink())
    ns = Namespace(PROGRAM, machine(0), tracer.hooks())
    made = [k for k in make_builtins(machine(0), []) if k != "_jv_book_table"]
    names = list(ns.builtins)
    assert names[:len(made)] == made
    assert names[len(made):len(made) + 2] == ["_jv_books", "_jv_save"]
    assert "_jv_mkfn" in names and names[-4:] == list(tracer.hooks())
    assert set(guard_table()) <= set(names)
    assert ns.builtins["_jv_mkfn"] == ns.make_function
    assert all(ns.builtins[name] is not None for name in EFFECT_FUNCTIONS)
    assert ns.builtins["pow"] is ns.builtins["_jv_pow"]  # the bounded pow


def test_every_execution_has_its_own_table_and_effect_functions() -> None:
    first, second = machine(1), machine(2)
    a, b = first.namespace.builtins, second.namespace.builtins
    assert a is not b
    for name in (*EFFECT_FUNCTIONS, "inputs", "_jv_books", "_jv_mkfn"):
        assert a[name] is not b[name], name
    assert first.run().outputs == {"ok": 2} and second.run().outputs == {"ok": 3}
    assert first.print_bytes == second.print_bytes == 3
    # One execution changing its table is not seen by the other.
    a["len"] = None
    assert b["len"] is len
    assert machine(3).namespace.builtins["len"] is len


def test_the_importing_process_never_takes_the_spare() -> None:
    spare = namespace._SPARE["table"]
    for n in range(3):
        assert machine(n).namespace.builtins is not spare[0]
    assert namespace._SPARE["table"] is spare


def _in_a_fork(work: Any) -> Any:
    """`work()`'s result (as JSON) from a forked copy of this process."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_forked_process_gives_the_spare_to_its_first_execution_only() -> None:
    spare_table, cells = namespace._SPARE["table"]
    assert cells  # the effect functions reach their execution through these

    def work() -> dict[str, Any]:
        first, second = machine(1), machine(2)
        a, b = first.namespace.builtins, second.namespace.builtins
        outcomes = [first.run(), second.run()]
        return {
            "first_has_spare": a is spare_table,
            "second_has_spare": b is spare_table,
            "spare_left": "table" in namespace._SPARE,
            "shared": [name for name in (*EFFECT_FUNCTIONS, "inputs", "_jv_mkfn")
                       if a[name] is b[name]],
            "outputs": [o.outputs for o in outcomes],
            "prints": [first.print_bytes, second.print_bytes],
            "cells_point_at_first": all(c.cell_contents is first for c in cells),
            "same_order": list(a) == list(b),
        }

    result = _in_a_fork(work)
    assert result == {
        "first_has_spare": True, "second_has_spare": False, "spare_left": False,
        "shared": [], "outputs": [{"ok": 2}, {"ok": 3}], "prints": [3, 3],
        "cells_point_at_first": True, "same_order": True,
    }
    # This process's spare is untouched: still unused, pointing at no execution.
    assert namespace._SPARE["table"] == (spare_table, cells)
    assert all(cell.cell_contents is None for cell in cells)


@pytest.mark.parametrize("value", [
    0, -7, 10**300, True, False, None, 1.5, float("1e300"), "é\n\"x\"", "",
    [1, "a", None], {"k": [1.0, {"z": "ü"}]}, [], {},
])
def test_the_output_size_is_that_of_its_json_text(value: Any) -> None:
    assert _json_size(value) == len(json.dumps(value, ensure_ascii=False))


def test_an_int_too_long_for_json_text_fails_as_before() -> None:
    program = compiled('output("big", 7 ** 6000)\n')
    outcome = machine(0, program).run()
    assert outcome.status == "failed"
    assert getattr(outcome.error, "limit", None) == "int_digits"

"""The program a child decodes is the program the host compiled: the same fields and
tables, the same names in Python's errors, the same code indices in snapshots; what a
run does not need (the Source's line table) is made only when asked for."""

from __future__ import annotations

import marshal
import pickle
from typing import Any

import pytest

from jarvis.compiler import Compilation
from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.source import Source
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.machine import Machine, Outcome
from jarvis.runtime.namespace import LOCAL_NAMES_DONE
from jarvis.runtime.program_bytes import DecodedProgram, decode_program, encode_program
from jarvis.runtime.sinks import NullSink
from jarvis.runtime.trace import Tracer

LOCALS = """\
def f(p):
    def g(q):
        return lambda: q
    h = lambda z: z
    try:
        g()
    except TypeError as e:
        output("g", str(e))
    try:
        h()
    except TypeError as e:
        output("h", str(e))
    try:
        g(1)(2)
    except TypeError as e:
        output("l", str(e))
    checkpoint()
    return g(p)
k = lambda: 0
try:
    k(1)
except TypeError as e:
    output("k", str(e))
keep = f(7)
checkpoint()
output("kept", keep())
"""
"""Local functions and lambdas, whose names Python's errors quote; one of them is live
across a checkpoint (in the snapshot, by its code index)."""


def compiled(source: str = LOCALS, trace: str = "full") -> CompiledProgram:
    return Compilation.of(source, "p.spy").program(trace)  # type: ignore[arg-type]


def run(program: CompiledProgram, **options: Any) -> tuple[Machine, Outcome]:
    machine = Machine(program, execution_id="x", inputs={}, books=BookRegistry(),
                      effects=options.pop("effects", MemoryEffects()),
                      tracer=Tracer("x", program.trace_sites, NullSink()), **options)
    return machine, machine.run()


def test_the_decoded_program_has_the_fields_and_tables_of_the_compiled_one() -> None:
    program = compiled()
    copy = decode_program(encode_program(program))
    assert isinstance(copy, CompiledProgram)
    assert copy.digest == program.digest and copy.trace_level == program.trace_level
    assert copy.path == program.path == "p.spy"
    assert copy.functions == program.functions
    assert copy.suspension_sites == program.suspension_sites
    assert copy.trace_sites == program.trace_sites and copy.trace_sites
    assert copy.books == program.books
    assert len(copy.codes) == len(program.codes)
    assert [c.co_name for c in copy.codes] == [c.co_name for c in program.codes]
    assert copy.python == ""
    # Every field of a CompiledProgram can be read from the decoded one.
    for name in vars(program):
        assert hasattr(copy, name), name


def test_the_source_is_made_only_when_asked_for() -> None:
    program = compiled()
    copy = decode_program(encode_program(program))
    assert isinstance(copy, DecodedProgram)
    assert copy._source is None
    run(copy)
    assert copy._source is None  # a run that completes never needs it
    assert copy.source == Source("p.spy", LOCALS) == program.source
    assert copy.source.lines == program.source.lines
    assert copy.source is copy.source


def test_bytes_of_another_layout_are_refused() -> None:
    program = compiled()
    old_layout = pickle.dumps((program.digest, program.path, LOCALS, "full",
                               marshal.dumps(program.code), program.functions, [], (), ()))
    with pytest.raises(ValueError):
        decode_program(old_layout)
    with pytest.raises(ValueError, match="not a program"):
        decode_program(marshal.dumps(("jarvis-program-0", program.digest)))


def test_local_functions_come_named_and_are_named_as_in_the_compiling_process() -> None:
    program = compiled()
    copy = decode_program(encode_program(program))
    assert copy.__dict__.get(LOCAL_NAMES_DONE) is True
    qualnames = {code.co_qualname for code in copy.codes}
    assert {"f.<locals>.g", "f.<locals>.<lambda>", "f.<locals>.g.<locals>.<lambda>"} <= qualnames
    assert not any(".<locals>." in q and q.startswith("_jv_step_") for q in qualnames)
    _, here = run(program)
    machine, there = run(copy)
    assert here.status == there.status == "completed", (here.error, there.error)
    assert there.outputs == here.outputs
    assert there.outputs["g"] == "f.<locals>.g() missing 1 required positional argument: 'q'"
    assert there.outputs["h"] == (
        "f.<locals>.<lambda>() missing 1 required positional argument: 'z'")
    assert there.outputs["l"] == (
        "f.<locals>.g.<locals>.<lambda>() takes 0 positional arguments but 1 was given")
    assert there.outputs["k"] == "<lambda>() takes 0 positional arguments but 1 was given"
    assert there.outputs["kept"] == 7
    assert machine.namespace.codes == {}  # nothing renamed in the decoding process


class Keeper:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def save(self, payload: bytes, effect_count: int, counters: dict[str, int]) -> None:
        self.payloads.append(payload)


@pytest.mark.parametrize("direction", ["compiled-to-decoded", "decoded-to-compiled"])
def test_a_snapshot_of_one_resumes_in_the_other(direction: str) -> None:
    """Functions in a snapshot travel by code index: the indices of the decoded
    program are those of the compiled one."""
    program = compiled()
    copy = decode_program(encode_program(program))
    first, second = (program, copy) if direction == "compiled-to-decoded" else (copy, program)
    effects = MemoryEffects()
    keeper = Keeper()
    # Stops at the first checkpoint, inside f, with g and its lambda live.
    _, stopped = run(first, effects=effects, snapshots=keeper,
                     stop_requested=lambda: effects.count > 0)
    assert stopped.status == "suspended" and keeper.payloads
    machine = Machine(second, execution_id="x", inputs={}, books=BookRegistry(),
                      effects=effects, tracer=Tracer("x", second.trace_sites, NullSink()))
    machine.restore(keeper.payloads[-1])
    resumed = machine.run()
    assert resumed.status == "completed", resumed.error
    assert resumed.outputs["kept"] == 7
    assert set(resumed.outputs) == {"g", "h", "l", "k", "kept"}

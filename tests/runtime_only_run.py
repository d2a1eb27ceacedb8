"""Run a compiled program with the runtime alone, stopping at every effect and resuming
each time from the snapshot, as a worker's children do.

tests/test_runtime_imports.py calls `run_with_restarts` in-process, and runs this file
as a script in a fresh interpreter (`python runtime_only_run.py PROGRAM_BYTES`): the
script decodes the bytes `encode_program` wrote, runs them, and prints the run as JSON
with the modules that were loaded. It imports the runtime only, never the compiler's
pipeline, and so must a run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jarvis.compiler.compiled import CompiledProgram
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.effects_log import MemoryEffects
from jarvis.runtime.machine import Machine
from jarvis.runtime.program_bytes import decode_program
from jarvis.runtime.sinks import MemorySink
from jarvis.runtime.trace import Tracer

MAX_RESTARTS = 1000


class SnapshotKeeper:
    """The Machine's snapshot sink: keeps every payload."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def save(self, payload: bytes, effect_count: int, counters: dict[str, int]) -> None:
        self.payloads.append(payload)


def run_with_restarts(program: CompiledProgram) -> dict[str, Any]:
    """The outcome, outputs, restarts and trace events of `program`, run by a fresh
    Machine after each effect (from the snapshot the previous one took)."""
    effects = MemoryEffects()
    sink = MemorySink()
    keeper = SnapshotKeeper()
    payload: bytes | None = None
    restarts = 0
    while True:
        started = effects.count
        tracer = Tracer("runtime-only", program.trace_sites, sink)
        machine = Machine(
            program, execution_id="runtime-only", inputs={}, books=BookRegistry(),
            effects=effects, tracer=tracer, snapshots=keeper, clock=lambda: 0.0,
            wait=lambda _seconds: None,
            stop_requested=lambda started=started: effects.count > started,
        )
        if payload is not None:
            machine.restore(payload)
        outcome = machine.run()
        tracer.flush()
        if outcome.status != "suspended":
            break
        assert machine.snapshots_skipped == 0, "the Machine could not pickle its state"
        payload = keeper.payloads[-1]
        restarts += 1
        assert restarts < MAX_RESTARTS
    return {
        "status": outcome.status,
        "error": None if outcome.error is None else repr(outcome.error),
        "outputs": outcome.outputs,
        "restarts": restarts,
        "events": [event.to_json() for event in sink.events],
    }


def table_classes(program: CompiledProgram) -> list[str]:
    """The classes of the records in the program's tables, as module.qualname."""
    records = [*program.functions.values(), *program.suspension_sites, *program.trace_sites]
    return sorted({f"{type(r).__module__}.{type(r).__qualname__}" for r in records})


def main(path: str) -> None:
    program = decode_program(Path(path).read_bytes())
    result = run_with_restarts(program)
    result["tables"] = table_classes(program)
    result["modules"] = sorted(sys.modules)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])

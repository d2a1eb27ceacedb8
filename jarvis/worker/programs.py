"""Where a start command's program comes from: inline source, or an object-store key."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from jarvis.settings import WorkerSettings

if TYPE_CHECKING:
    from jarvis.compiler.compiled import CompiledProgram

INLINE_PATH = "program.spy"
"""The path every inline program is compiled under. The compiler caches programs by
path and text, so one path for all makes the executions of one text share a compile
(a path naming the execution would compile each anew, 1-6 ms)."""


class ProgramLoader:
    """Turns a start command's `program` into (source bytes, path for diagnostics)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._store: Any = None

    def load(self, command: Any) -> tuple[bytes, str]:
        program = command.program
        if program.source is not None:
            return program.source.encode("utf-8"), INLINE_PATH
        from jarvis.worker.artifacts import artifact_store

        if self._store is None:
            self._store = artifact_store(self.settings)
        return self._store.get(program.uri), program.uri


class CompiledPrograms:
    """The programs this worker compiled lately, by (source, path, trace level).

    The compiler caches its work too, but finding it there costs each start the
    source's decoding, digests and checks again (tens of microseconds for a short
    program); the executions of one program with other inputs find it here with one
    lookup. Only programs that compiled are kept: the most recent `max_programs`, of
    at most `max_bytes` of source in all.
    """

    def __init__(self, max_programs: int = 64, max_bytes: int = 8 << 20) -> None:
        self.max_programs = max_programs
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.programs: OrderedDict[tuple[bytes, str, str], CompiledProgram] = OrderedDict()
        self.bytes = 0

    def get(self, source: bytes, path: str, trace: str) -> CompiledProgram | None:
        key = (source, path, trace)
        with self.lock:
            program = self.programs.get(key)
            if program is not None:
                self.programs.move_to_end(key)
            return program

    def put(self, source: bytes, path: str, trace: str, program: CompiledProgram) -> None:
        if len(source) > self.max_bytes:
            return
        key = (source, path, trace)
        with self.lock:
            if key in self.programs:
                return
            self.programs[key] = program
            self.bytes += len(source)
            while len(self.programs) > self.max_programs or self.bytes > self.max_bytes:
                (dropped, _, _), _ = self.programs.popitem(last=False)
                self.bytes -= len(dropped)

"""Where a start command's program comes from: inline source, or an object-store key."""

from __future__ import annotations

from typing import Any

from jarvis.settings import WorkerSettings

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


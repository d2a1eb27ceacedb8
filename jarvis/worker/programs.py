"""Where a start command's program comes from: inline source, or an object-store key."""

from __future__ import annotations

from typing import Any

from jarvis.settings import WorkerSettings


class ProgramLoader:
    """Turns a start command's `program` into (source bytes, path for diagnostics)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._store: Any = None

    def load(self, command: Any) -> tuple[bytes, str]:
        program = command.program
        if program.source is not None:
            return program.source.encode("utf-8"), f"{command.execution_id}.spy"
        from jarvis.worker.artifacts import artifact_store

        if self._store is None:
            self._store = artifact_store(self.settings)
        return self._store.get(program.uri), program.uri

"""The exceptions a SPy program can meet at run time, and the engine's own signals.

`BookError` is catchable by programs (`except BookError as e`), with the fields
docs/language.md documents. `LimitExceeded` derives from BaseException on purpose: a
program's `except Exception` must not swallow the engine stopping it.
"""

from __future__ import annotations

from typing import Any


class BookError(Exception):
    """A Book call failed: the Book refused it or could not be reached."""

    def __init__(
        self,
        book: str,
        procedure: str,
        error_type: str,
        message: str,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{book}.{procedure}: {error_type}: {message}")
        self.book = book
        self.procedure = procedure
        self.error_type = error_type
        self.message = message
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        # The state carries what the engine noted on the error (where it was raised).
        return (BookError, (self.book, self.procedure, self.error_type, self.message,
                            self.status), dict(self.__dict__))


class LimitExceeded(BaseException):
    """The execution crossed one of its limits (steps, time, memory, output, ...)."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"limit {limit!r} exceeded: {detail}")
        self.limit = limit
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (LimitExceeded, (self.limit, self.detail))


class RuntimeSetupError(Exception):
    """The host set an execution up wrongly (bad Book registry, bad inputs).

    Not the program's fault: it is reported as a setup error, not as the program's error.
    """

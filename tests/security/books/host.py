"""The corpus Book `host`: a few procedures, and host-side things a program must not reach.

An in-process Book runs inside the worker, next to its files and its environment. Like
real Books, this one imports helpers at module level and defines a class; none of them
may be called as a procedure (only the functions the file defines are procedures).
"""

from os import getenv  # noqa: F401 - imported on purpose: reading it would leak secrets
from shutil import copyfile  # noqa: F401 - imported on purpose: calling it writes files

TABLE = {"rate": 3, "tags": ["a", "b"]}
"""Module state that results are built from: a program must never change it."""


class Client:
    """A class of the Book's own: callable, but not a procedure."""

    def __init__(self, path: str) -> None:
        with open(path, "w") as handle:
            handle.write("written by Client")


def echo(value):
    return value


def table():
    return TABLE


def fail(message):
    raise ValueError(message)

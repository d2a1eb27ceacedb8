"""Frames and resumable functions: the picklable continuation of a running program.

A `Frame` is plain data: which function (`fid`), where in it (`pc`), and its local
variables. A `ResumableFunction` is what a `def` of a function that may suspend
creates: the function's number, the cells it closes over, and a binder (a Python
function with the user's signature) that turns call arguments into the frame's first
locals with Python's own argument rules. `Cell` holds a variable that a frame shares
with a closure across suspensions, so both keep seeing the same value after a resume.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from jarvis.compiler.contract import STEP_INTERNALS


class Cell:
    """A variable shared between a frame and the closures it created.

    The defining function reads it as `cell.value`, the closures as `cell.free`, so that
    reading it before it is assigned fails as Python's own cells do.
    """

    __slots__ = ("name", "value")

    def __init__(self, name: str, *value: Any) -> None:
        self.name = name
        if value:
            self.value = value[0]

    def __getattr__(self, attribute: str) -> Any:
        # Only reached when `value` is not set (or for an attribute a Cell lacks).
        if attribute == "value":
            raise UnboundLocalError(
                f"cannot access local variable {self.name!r} where it is not associated "
                "with a value"
            )
        raise AttributeError(attribute)

    @property
    def free(self) -> Any:
        try:
            return self.value
        except UnboundLocalError:
            raise NameError(
                f"cannot access free variable {self.name!r} where it is not associated with "
                "a value in enclosing scope"
            ) from None

    def __repr__(self) -> str:
        return f"<cell {self.name}>"

    def __getstate__(self) -> tuple[Any, ...]:
        try:
            return (self.name, self.value)
        except UnboundLocalError:
            return (self.name,)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.name = state[0]
        if len(state) > 1:
            self.value = state[1]


class Frame:
    """One activation of a resumable function (fid 0 is the program's top level)."""

    __slots__ = ("fid", "locals", "name", "pc")

    def __init__(self, fid: int, pc: int, local_vars: dict[str, Any], name: str) -> None:
        self.fid = fid
        self.pc = pc
        self.locals = local_vars
        self.name = name

    def __getstate__(self) -> tuple[int, int, dict[str, Any], str]:
        return (self.fid, self.pc, self.locals, self.name)

    def __setstate__(self, state: tuple[int, int, dict[str, Any], str]) -> None:
        self.fid, self.pc, self.locals, self.name = state

    def __repr__(self) -> str:
        return f"<frame {self.name} pc={self.pc}>"


class SuspendingCallError(TypeError):
    """A function that may call Books was called where the program cannot suspend."""


class ResumableFunction:
    """A SPy function that may suspend, as a value the program can hold and call."""

    __slots__ = ("binder", "cells", "fid", "name", "qualname")

    def __init__(
        self,
        fid: int,
        name: str,
        qualname: str,
        binder: Callable[..., dict[str, Any]],
        cells: dict[str, Cell],
    ) -> None:
        self.fid = fid
        self.name = name
        self.qualname = qualname
        self.binder = binder
        self.cells = cells

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.fid, self.name, self.qualname, self.binder, self.cells)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.fid, self.name, self.qualname, self.binder, self.cells = state

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The new frame's locals: the arguments bound by Python's rules, and the cells."""
        local_vars = self.binder(*args, **kwargs)
        local_vars.update(self.cells)
        return local_vars

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise SuspendingCallError(
            f"{self.name}() calls Books or sleeps, so it cannot be called from inside a "
            "builtin (such as a sorted() key or map()); call it directly instead"
        )

    def __repr__(self) -> str:
        return f"<function {self.qualname}>"


def with_defaults(function: Any, defaults: tuple[Any, ...],
                  kwdefaults: dict[str, Any]) -> Any:
    """A copy of a function (resumable or not) with these defaults: a hoisted lambda's
    defaults are evaluated where the lambda stood (see `compiler.lower.hoist`)."""
    plain = function.binder if type(function) is ResumableFunction else function
    copy = types.FunctionType(plain.__code__, plain.__globals__, plain.__name__,
                              defaults or None, plain.__closure__)
    copy.__kwdefaults__ = kwdefaults or None
    copy.__qualname__ = plain.__qualname__
    if type(function) is ResumableFunction:
        return ResumableFunction(function.fid, function.name, function.qualname, copy,
                                 function.cells)
    return copy


class ArgumentPacker:
    """Collects the arguments of a call that has `*` or `**` operands, for the engine.

    Python checks such operands as it makes the call (an operand that is not iterable,
    not a mapping, a keyword given twice) and names the callee in its errors. A lowered
    call collects them first, by calling its packer, which Python names as it would
    name the callee: the packer carries the callee's `__qualname__` and `__module__`,
    or, for a callee without a qualified name, its text.
    """

    def __init__(self, callee: Any) -> None:
        named = callee.binder if type(callee) is ResumableFunction else callee
        try:
            qualname = named.__qualname__
        except AttributeError:
            self.text = str(named)
            self.__dict__["__module__"] = None
        else:
            self.__dict__["__qualname__"] = qualname
            self.__dict__["__module__"] = getattr(named, "__module__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    def __str__(self) -> str:
        return self.text


def save_locals(local_vars: dict[str, Any]) -> dict[str, Any]:
    """The part of a step function's locals that belongs in its frame."""
    return {k: v for k, v in local_vars.items() if k not in STEP_INTERNALS}


def keywords(**kwargs: Any) -> dict[str, Any]:
    """Collect keyword arguments with Python's own checks (duplicates, str keys)."""
    return kwargs


def exception_matches(error: BaseException, kind: Any) -> bool:
    """`except kind:` as Python decides it, including its TypeError for non-classes."""
    classes = kind if isinstance(kind, tuple) else (kind,)
    for item in classes:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(
                "catching classes that do not inherit from BaseException is not allowed"
            )
    return isinstance(error, kind)


class _End:
    """The marker `next()` returns when a lowered for loop's iterator is exhausted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<end>"

    def __reduce__(self) -> str:
        return "END"


END = _End()

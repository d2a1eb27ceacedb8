"""Runtime guards: the checks RestrictedPython's rewrite calls where nothing was proven.

`jarvis.compiler.restrict` compiles the generated code through RestrictedPython. With
static proofs on (the default) almost every access is proven safe at compile time and
runs natively; with them off (`static_proofs=False`), attribute, item and iteration
access of program values goes through the functions below, which `Namespace` installs
as builtins (`guard_table()`).

Each guard checks the premise the static proofs rest on: that the value is one a SPy
program can hold (a value of a built-in type, an exception, a function, a class the
builtins name, a Book proxy), and for attributes, that the name is in the language's
allow-list. Then it performs the operation exactly as Python would, so a guarded
program behaves like an unguarded one, errors and their messages included:

- `_getiter_`, `_write_` and the unpack helpers hand the value itself back (checked),
  so Python's own `for`, item assignment and unpacking raise their usual errors;
- `_getitem_` and `_getattr_` do the access with Python's own operations;
- `_inplacevar_` applies the in-place operator.

A refusal raises `SandboxViolation`, a BaseException: it means a compiler bug or a
value that leaked from the runtime, never a program error, so `except Exception` in
a program cannot swallow it. The guards allocate nothing on their common path: the
unpack specifications are constants of the code, the tables are built once here.
"""

from __future__ import annotations

import builtins
import operator
import types
from collections.abc import Callable, Iterator
from typing import Any, Final

from jarvis.compiler.contract import UnpackSpec
from jarvis.compiler.language import ATTRIBUTES, EXCEPTIONS, SAFE_FUNCTIONS
from jarvis.runtime.builtins import BookProcedure, BookProxy
from jarvis.runtime.errors import BookError
from jarvis.runtime.frames import ResumableFunction
from jarvis.runtime.lazy import LazyGenerator


class SandboxViolation(BaseException):
    """A guard refused an access: a compiler bug or a leaked runtime value.

    Derives from BaseException so that a program's `except Exception` cannot catch it.
    """


def _iterator_types() -> set[type]:
    """The iterator and view types that the SPy value types and builtins produce."""
    made: list[object] = [
        iter(""), iter("\u00e9"), iter([]), iter(()), iter({}), iter(set()),
        iter(frozenset()), iter(range(1)), iter(range(2**70)), iter(int, 1),
        reversed([]), reversed(range(1)), reversed(""), reversed(()), reversed({}),
        reversed({}.values()), reversed({}.items()), iter({}.values()), iter({}.items()),
        {}.keys(), {}.values(), {}.items(), enumerate(()), zip(), map(abs, ()),
        filter(None, ()), (item for item in range(0)),
    ]
    return {type(value) for value in made}


VALUE_TYPES: Final[frozenset[type]] = frozenset({
    type(None), bool, int, float, str, list, tuple, dict, set, frozenset, range,
    types.MappingProxyType,  # `inputs`
    *_iterator_types(),
    types.FunctionType,  # native SPy functions and lambdas, runtime builtins
    types.BuiltinFunctionType,  # builtins and bound methods of built-in values
    types.MethodDescriptorType,  # `str.join` named through its class
    types.GetSetDescriptorType,  # `int.real`, `KeyError.args` named through the class
    ResumableFunction, BookProxy, BookProcedure,
    LazyGenerator,  # a generator expression's generator in its picklable form
})
"""The exact types of the values a SPy program can hold, besides exceptions and the
classes the builtins name. The compiler's `Cell` is not one: programs never hold one,
only the generated code does, and it reads `.value` without a guard."""

CLASSES: Final[frozenset[type]] = frozenset(
    value
    for value in (getattr(builtins, name) for name in (*SAFE_FUNCTIONS, *EXCEPTIONS))
    if isinstance(value, type)
) | {BookError}
"""The classes a program can name: `int`, `dict`, `KeyError`, `BookError`, ..."""

_ITERABLE_TYPES: Final[frozenset[type]] = frozenset(
    kind for kind in VALUE_TYPES if hasattr(kind, "__iter__")
)

_INPLACE: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul,
    "/=": operator.itruediv, "//=": operator.ifloordiv, "%=": operator.imod,
    "**=": operator.ipow, "<<=": operator.ilshift, ">>=": operator.irshift,
    "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor,
}


def _foreign(value: object) -> bool:
    """Whether `value` is none of the values a program can hold (the slow path)."""
    if isinstance(value, BaseException):
        return False
    return not (type(value) is type and value in CLASSES)


def _refuse(what: str, value: object) -> SandboxViolation:
    return SandboxViolation(f"{what} on a value of type {type(value).__name__!r}, which "
                            "SPy programs cannot hold")


def _getattr_(value: Any, name: str) -> Any:
    """`value.name`, for an allow-listed name (any procedure name on a Book proxy)."""
    kind = type(value)
    if name not in ATTRIBUTES:
        if kind is not BookProxy or name[:1] == "_":
            raise SandboxViolation(f"attribute {name!r} is not accessible to SPy programs")
    elif kind not in VALUE_TYPES and _foreign(value):
        raise _refuse(f"attribute {name!r}", value)
    return getattr(value, name)


def _getitem_(value: Any, key: Any) -> Any:
    """`value[key]`, slices included."""
    if type(value) not in VALUE_TYPES and _foreign(value):
        raise _refuse("item access", value)
    return value[key]


def _getiter_(value: Any) -> Any:
    """The value to iterate, checked; `for` and `*` iterate it themselves."""
    if type(value) not in VALUE_TYPES and _foreign(value):
        raise _refuse("iteration", value)
    return value


def _write_(value: Any) -> Any:
    """The container of `value[key] = ...` and `del value[key]`, checked."""
    if type(value) not in VALUE_TYPES and _foreign(value):
        raise _refuse("item assignment", value)
    return value


def _inplacevar_(op: str, target: Any, value: Any) -> Any:
    """`target op= value` for a variable: the operator applied in place."""
    if type(target) not in VALUE_TYPES and _foreign(target):
        raise _refuse(f"{op!r}", target)
    return _INPLACE[op](target, value)


def _unpack_sequence_(value: Any, spec: UnpackSpec) -> Any:
    """The value of `a, (b, c) = value`, checked, nested parts of lists and tuples too.

    The value is handed back as it is, so Python unpacks it with its own errors; nested
    parts are checked only when the unpack will reach them and reading them consumes
    nothing (a list or tuple of a fitting length).
    """
    kind = type(value)
    if kind not in VALUE_TYPES and _foreign(value):
        raise _refuse("unpacking", value)
    children = spec[2]
    if children and (kind is list or kind is tuple):
        size = len(value)
        if size == spec[0] or (spec[1] and size > spec[0]):
            for index, child in children:
                _unpack_sequence_(value[index], child)
    return value


class _CheckedItems:
    """The items of a `for a, b in ...` loop, each checked as it is unpacked."""

    # `_` names: `items` is an allow-listed attribute, and nothing of this object may
    # be readable should a program ever hold it.
    __slots__ = ("_items", "_spec")

    def __init__(self, items: Iterator[Any], spec: UnpackSpec) -> None:
        self._items = items
        self._spec = spec

    def __iter__(self) -> _CheckedItems:
        return self

    def __next__(self) -> Any:
        return _unpack_sequence_(next(self._items), self._spec)


def _iter_unpack_sequence_(value: Any, spec: UnpackSpec) -> Any:
    """What `for a, b in value` iterates: the items of `value`, each checked."""
    kind = type(value)
    if kind not in VALUE_TYPES and _foreign(value):
        raise _refuse("iteration", value)
    if kind not in _ITERABLE_TYPES:
        return value  # not iterable: the loop raises Python's own TypeError
    return _CheckedItems(iter(value), spec)


_TABLE: Final[dict[str, Callable[..., Any]]] = {
    "_getattr_": _getattr_,
    "_getitem_": _getitem_,
    "_getiter_": _getiter_,
    "_write_": _write_,
    "_inplacevar_": _inplacevar_,
    "_unpack_sequence_": _unpack_sequence_,
    "_iter_unpack_sequence_": _iter_unpack_sequence_,
}


def guard_table() -> dict[str, Callable[..., Any]]:
    """The guards by the names the restricted code calls them, for the builtins table."""
    return dict(_TABLE)

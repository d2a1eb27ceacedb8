"""The SPy v1 language, as data: what a program may name, call and reach.

This module is the single definition the validator checks against and docs/language.md
describes. Three tables matter:

- `BUILTINS`: every name a program can use without defining it (safe Python builtins,
  exception types, and the runtime builtins Jarvis provides).
- `REFUSED_BUILTINS`: Python builtins that SPy leaves out, each with the reason.
- `ATTRIBUTES`: every attribute name a program may read. SPy has no classes, so the
  values a program holds are of a closed set of types; the allow-list is the union of
  their documented methods and the documented fields of exceptions. Knowing every
  reachable attribute at compile time is what lets later stages drop per-access guards.
"""

from __future__ import annotations

from typing import Final

LANGUAGE_VERSION: Final = 1

BOOKS_MODULE: Final = "books"
"""The one module a program may import from: `from books import crm`."""

RUNTIME_BUILTINS: Final[dict[str, str]] = {
    "inputs": "read-only mapping of the execution's inputs",
    "output": "output(name, value): record a named output of the execution",
    "print": "print(*values, sep=' ', end='\\n'): a line in the execution's log",
    "checkpoint": "checkpoint(): take a durable snapshot now",
    "sleep": "sleep(seconds): pause durably; the execution may be suspended meanwhile",
    "now": "now(): the current time as float seconds since the Unix epoch (UTC), journaled",
    "artifact": (
        "artifact(name, content, content_type='application/octet-stream'): store a file, "
        "return its URL"
    ),
    "BookError": "the exception a failed Book call raises",
}

SUSPENDING_BUILTINS: Final = frozenset({"checkpoint", "sleep", "artifact"})
"""Runtime builtins whose call is a suspension point (Book calls are the others)."""

SAFE_FUNCTIONS: Final[dict[str, str]] = {
    "abs": "absolute value",
    "all": "True if every item is true",
    "any": "True if some item is true",
    "ascii": "repr with non-ASCII characters escaped",
    "bin": "binary string of an int",
    "bool": "truth value",
    "callable": "True for functions",
    "chr": "the character with a code point",
    "dict": "a new dict",
    "divmod": "quotient and remainder",
    "enumerate": "pairs of index and item",
    "filter": "items for which a function is true",
    "float": "a float from a number or string",
    "frozenset": "an immutable set",
    "hex": "hexadecimal string of an int",
    "int": "an int from a number or string",
    "isinstance": "type test against the value types and exceptions named here",
    "iter": "an iterator over a value",
    "len": "the number of items",
    "list": "a new list",
    "map": "apply a function to every item",
    "max": "the largest item",
    "min": "the smallest item",
    "next": "the next item of an iterator",
    "oct": "octal string of an int",
    "ord": "the code point of a character",
    "pow": "power, with an optional modulus",
    "range": "a range of ints",
    "repr": "the printable representation",
    "reversed": "items in reverse order",
    "round": "round a number",
    "set": "a new set",
    "sorted": "a new sorted list",
    "str": "a string",
    "sum": "the sum of the items",
    "tuple": "a new tuple",
    "zip": "items of several iterables side by side",
}

EXCEPTIONS: Final[dict[str, str]] = {
    "Exception": "base of every exception a program can catch",
    "ArithmeticError": "base of arithmetic errors",
    "AssertionError": "a failed assert",
    "AttributeError": "a method that the value does not have",
    "IndexError": "a sequence index out of range",
    "KeyError": "a missing dict key",
    "LookupError": "base of IndexError and KeyError",
    "NotImplementedError": "an unimplemented branch",
    "OverflowError": "a number too large",
    "RuntimeError": "a generic error",
    "StopIteration": "an exhausted iterator",
    "TypeError": "an operation on a value of the wrong type",
    "UnicodeError": "a text encoding problem",
    "ValueError": "a value of the right type but wrong content",
    "ZeroDivisionError": "division by zero",
}

CONSTANTS: Final = frozenset({"True", "False", "None"})

BUILTINS: Final[frozenset[str]] = frozenset(RUNTIME_BUILTINS) | frozenset(
    SAFE_FUNCTIONS
) | frozenset(EXCEPTIONS)
"""Every name a program may use without defining it."""

REFUSED_BUILTINS: Final[dict[str, str]] = {
    "eval": "runs code built at run time, which the compiler cannot check",
    "exec": "runs code built at run time, which the compiler cannot check",
    "compile": "builds code objects at run time",
    "open": "reads and writes files of the host",
    "getattr": "reaches attributes by a name built at run time",
    "setattr": "changes attributes by a name built at run time",
    "delattr": "removes attributes by a name built at run time",
    "hasattr": "probes attributes by a name built at run time",
    "vars": "exposes a namespace as a dict",
    "globals": "exposes the program's namespace",
    "locals": "exposes a function's namespace",
    "type": "reaches classes and their internals",
    "object": "reaches the root of every class",
    "super": "reaches classes and their internals",
    "classmethod": "builds classes",
    "staticmethod": "builds classes",
    "property": "builds classes",
    "issubclass": "works on classes, which SPy does not have",
    "dir": "lists internal attributes",
    "id": "exposes memory addresses and differs between runs",
    "hash": "differs between runs, which breaks durable replay",
    "__import__": "imports modules of the host",
    "__build_class__": "builds classes",
    "input": "reads the worker's terminal",
    "breakpoint": "starts a debugger in the worker",
    "help": "starts an interactive help system",
    "memoryview": "exposes raw memory",
    "bytearray": "SPy values are text, not bytes",
    "bytes": "SPy values are text, not bytes",
    "format": "use an f-string with a format spec instead",
    "aiter": "async iteration is not part of SPy",
    "anext": "async iteration is not part of SPy",
    "slice": "use slice syntax: `xs[1:3]`",
    "complex": "complex numbers are not a SPy value type",
    "exit": "ends the worker process",
    "quit": "ends the worker process",
    "copyright": "interactive-shell helper",
    "credits": "interactive-shell helper",
    "license": "interactive-shell helper",
    "BaseException": "would catch the engine's own signals (limits, cancellation)",
    "GeneratorExit": "internal to generators",
    "KeyboardInterrupt": "internal to the worker",
    "SystemExit": "internal to the worker",
}

STR_METHODS: Final = frozenset({
    "capitalize", "casefold", "center", "count", "endswith", "expandtabs", "find",
    "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier",
    "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join",
    "ljust", "lower", "lstrip", "maketrans", "partition", "removeprefix", "removesuffix",
    "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip", "split",
    "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill",
})
LIST_METHODS: Final = frozenset({
    "append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove",
    "reverse", "sort",
})
DICT_METHODS: Final = frozenset({
    "clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem", "setdefault",
    "update", "values",
})
SET_METHODS: Final = frozenset({
    "add", "clear", "copy", "difference", "difference_update", "discard", "intersection",
    "intersection_update", "isdisjoint", "issubset", "issuperset", "pop", "remove",
    "symmetric_difference", "symmetric_difference_update", "union", "update",
})
FROZENSET_METHODS: Final = frozenset({
    "copy", "difference", "intersection", "isdisjoint", "issubset", "issuperset",
    "symmetric_difference", "union",
})
TUPLE_METHODS: Final = frozenset({"count", "index"})
INT_METHODS: Final = frozenset({
    "as_integer_ratio", "bit_count", "bit_length", "conjugate", "denominator", "imag",
    "numerator", "real",
})
FLOAT_METHODS: Final = frozenset({
    "as_integer_ratio", "conjugate", "fromhex", "hex", "imag", "is_integer", "real",
})
BOOL_METHODS: Final = INT_METHODS

EXCEPTION_FIELDS: Final = frozenset({"args"})
"""Fields every exception has: `args`, the tuple it was raised with."""

BOOK_ERROR_FIELDS: Final = frozenset({"book", "procedure", "error_type", "message", "status"})
"""Fields of BookError: which Book and procedure failed, the error's type name as the
Book reported it, its message, and the HTTP status (None for in-process Books)."""

METHODS_BY_TYPE: Final[dict[str, frozenset[str]]] = {
    "str": STR_METHODS,
    "list": LIST_METHODS,
    "dict": DICT_METHODS,
    "set": SET_METHODS,
    "frozenset": FROZENSET_METHODS,
    "tuple": TUPLE_METHODS,
    "int": INT_METHODS,
    "float": FLOAT_METHODS,
    "bool": BOOL_METHODS,
    "exceptions": EXCEPTION_FIELDS,
    "BookError": BOOK_ERROR_FIELDS,
}

ATTRIBUTES: Final[frozenset[str]] = frozenset().union(*METHODS_BY_TYPE.values())
"""Every attribute name a SPy program may read."""

REFUSED_ATTRIBUTES: Final[dict[str, str]] = {
    "format": "str.format reaches attributes and items through its field names; use an f-string",
    "format_map": (
        "str.format_map reaches attributes and items through its field names; use an f-string"
    ),
    "encode": "bytes are not a SPy value type",
    "mro": "classes are not part of SPy",
    "to_bytes": "bytes are not a SPy value type",
    "from_bytes": "bytes are not a SPy value type",
    "gi_frame": "generator internals expose interpreter frames",
    "gi_code": "generator internals expose code objects",
    "f_globals": "frame internals expose the runtime's globals",
    "f_locals": "frame internals expose the runtime's locals",
    "f_back": "frame internals expose callers' frames",
    "tb_frame": "traceback internals expose interpreter frames",
    "with_traceback": "tracebacks expose interpreter frames",
    "send": "generators are driven by for loops and next() only",
    "throw": "generators are driven by for loops and next() only",
    "close": "generators are driven by for loops and next() only",
}
"""Attributes worth a specific reason in diagnostics (any name outside ATTRIBUTES is
refused; these just get a better message)."""

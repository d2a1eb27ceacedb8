"""A compiled program as bytes, from the host (which compiles) to a child (which runs).

The host compiles each program once (`Compilation` caches by digest) and a child gets
the result in its start message, so no child parses or compiles anything. The whole
program travels as one `marshal` value (what `.pyc` files hold): the code object, and
the tables as plain tuples of strings and ints, rebuilt into their records on arrival.
The code object is sent with the local functions of its steps named as a Namespace
names them (`jarvis.runtime.namespace.named_module_code`), so that a child does not.
Only the host encodes and only a child decodes: the direction of trust is host to
child, never back (the host decodes nothing a child sends).

`marshal` rather than `pickle`: a child decodes its program once, right after it was
forked, and every object the decoding touches costs it a copied page of the zygote's
memory. `marshal` builds tuples, strings and the code in one C pass; a pickle would
also look its classes up and run their reconstruction protocol.

The encoding of a program is cached by digest, so a worker that runs one program many
times encodes it once.
"""

from __future__ import annotations

import marshal
import threading
from collections import OrderedDict
from types import CodeType
from typing import Any

from jarvis.compiler.compiled import CompiledProgram, all_codes
from jarvis.compiler.source import Source
from jarvis.compiler.tables import FunctionInfo, Site, SuspensionSite
from jarvis.runtime.namespace import LOCAL_NAMES_DONE, named_module_code

_FORMAT = "jarvis-program-1"
"""The first item of every encoding: bytes of another layout are refused, not misread."""

_CACHE_SIZE = 64
_cache: OrderedDict[str, bytes] = OrderedDict()
_lock = threading.Lock()


def encode_program(program: CompiledProgram) -> bytes:
    """The bytes `decode_program` turns back into `program` (cached by digest)."""
    with _lock:
        found = _cache.get(program.digest)
        if found is not None:
            _cache.move_to_end(program.digest)
            return found
    # The generated Python text is for people (`jarvis-compile --emit`), not sent. The
    # code goes with its local functions named, when it can: then no child does that.
    named = named_module_code(program)
    data = marshal.dumps((
        _FORMAT, program.digest, program.source.path, program.source.text,
        program.trace_level, program.code if named is None else named, named is not None,
        tuple((info.fid, info.name, info.qualname, tuple(info.cells))
              for info in program.functions.values()),
        tuple((site.line, site.col, site.end_line, site.end_col)
              for site in program.suspension_sites),
        tuple((site.kind, site.line, site.col, site.end_line, site.end_col, site.text,
               site.summarize) for site in program.trace_sites),
        tuple(program.books),
    ))
    with _lock:
        _cache[program.digest] = data
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return data


def decode_program(data: bytes) -> CompiledProgram:
    """The program the host encoded (in a child: the host is trusted, the child is not)."""
    fields: Any = marshal.loads(data)  # written by the trusted host
    if type(fields) is not tuple or len(fields) != 11 or fields[0] != _FORMAT:
        raise ValueError("not a program encoded by this version of encode_program")
    (_, digest, path, text, trace_level, code, named, function_rows, suspension_sites,
     trace_sites, books) = fields
    functions = {}
    for row in function_rows:
        functions[row[0]] = FunctionInfo(*row)
    program = DecodedProgram(
        digest, path, text, trace_level, code, functions,
        [SuspensionSite(*row) for row in suspension_sites] if suspension_sites else [],
        tuple([Site(*row) for row in trace_sites]) if trace_sites else (), books,
    )
    if named:
        program.__dict__[LOCAL_NAMES_DONE] = True
    return program


class DecodedProgram(CompiledProgram):
    """A `CompiledProgram` as `decode_program` makes it: the same fields, but its
    `Source` (the text split into lines, for reports) is made only if asked for; a run
    needs only the path, and a child decodes its program right after it was forked,
    where every object made or touched costs a copied page of the zygote's memory."""

    def __init__(self, digest: str, path: str, text: str, trace_level: str, code: CodeType,
                 functions: dict[int, FunctionInfo], suspension_sites: list[SuspensionSite],
                 trace_sites: tuple[Site, ...], books: tuple[str, ...]) -> None:
        # CompiledProgram.__init__'s fields, set here without making the Source.
        self.digest = digest
        self._path = path
        self._text = text
        self._source: Source | None = None
        self.trace_level = trace_level
        self.code = code
        self.functions = functions
        self.suspension_sites = suspension_sites
        self.trace_sites = trace_sites
        self.books = books
        self.codes = tuple(all_codes(code))
        self._python = ""  # not sent: see `encode_program`
        self._render = None
        self._lock = _NO_RENDER_LOCK

    @property
    def source(self) -> Source:
        if self._source is None:
            self._source = Source(self._path, self._text)
        return self._source

    @source.setter
    def source(self, value: Source) -> None:
        self._source = value
        self._path = value.path
        self._text = value.text

    @property
    def path(self) -> str:
        return self._path


_NO_RENDER_LOCK = threading.Lock()
"""The lock of `CompiledProgram.python` for decoded programs, which have their text
(empty) and never render it: nothing to guard, one lock for all."""

"""A compiled program as bytes, from the host (which compiles) to a child (which runs).

The host compiles each program once (`Compilation` caches by digest) and a child gets
the result in its start message, so no child parses or compiles anything. The code
object travels as `marshal` data (it is what `.pyc` files hold), the tables as a
pickle. Only the host encodes and only a child decodes: the direction of trust is
host to child, never back (the host unpickles nothing a child sends).

The encoding of a program is cached by digest, so a worker that runs one program many
times encodes it once.
"""

from __future__ import annotations

import marshal
import pickle
import threading
from collections import OrderedDict

from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.source import Source

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
    # The generated Python text is for people (`jarvis-compile --emit`), not sent.
    data = pickle.dumps((
        program.digest, program.source.path, program.source.text, program.trace_level,
        marshal.dumps(program.code), program.functions, program.suspension_sites,
        program.trace_sites, program.books,
    ), protocol=pickle.HIGHEST_PROTOCOL)
    with _lock:
        _cache[program.digest] = data
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return data


def decode_program(data: bytes) -> CompiledProgram:
    """The program the host encoded (in a child: the host is trusted, the child is not)."""
    (digest, path, text, trace_level, code, functions, suspension_sites, trace_sites,
     books) = pickle.loads(data)  # written by the trusted host
    return CompiledProgram(
        digest=digest, source=Source(path, text), trace_level=trace_level,
        code=marshal.loads(code), python="", functions=functions,
        suspension_sites=suspension_sites, trace_sites=trace_sites, books=books,
    )

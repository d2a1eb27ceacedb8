"""The worker keeps the programs it compiled lately: a start of one of them compiles
nothing, and the cache stays within its bounds."""

from __future__ import annotations

from typing import Any

from jarvis.compiler import Compilation
from jarvis.worker.programs import CompiledPrograms


def compiled(source: bytes, trace: str = "off") -> Any:
    return Compilation.of(source, "program.spy").program(trace)  # type: ignore[arg-type]


def test_a_program_is_found_by_its_source_path_and_trace_level() -> None:
    cache = CompiledPrograms()
    source = b'output("ok", 1)\n'
    program = compiled(source)
    cache.put(source, "program.spy", "off", program)
    assert cache.get(source, "program.spy", "off") is program
    assert cache.get(bytes(bytearray(source)), "program.spy", "off") is program  # by value
    assert cache.get(source, "program.spy", "full") is None
    assert cache.get(source, "other.spy", "off") is None
    assert cache.get(b'output("ok", 2)\n', "program.spy", "off") is None


def test_the_least_recently_used_go_first_past_the_count() -> None:
    cache = CompiledPrograms(max_programs=2)
    sources = [f'output("ok", {n})\n'.encode() for n in range(3)]
    programs = [compiled(source) for source in sources]
    cache.put(sources[0], "p", "off", programs[0])
    cache.put(sources[1], "p", "off", programs[1])
    assert cache.get(sources[0], "p", "off") is programs[0]  # now the most recent
    cache.put(sources[2], "p", "off", programs[2])
    assert cache.get(sources[1], "p", "off") is None
    assert cache.get(sources[0], "p", "off") is programs[0]
    assert cache.get(sources[2], "p", "off") is programs[2]
    assert cache.bytes == len(sources[0]) + len(sources[2])


def test_the_sources_kept_stay_within_their_bytes() -> None:
    source = b'output("ok", 1)\n'
    cache = CompiledPrograms(max_bytes=2 * len(source) + 1)
    padded = [source + b"#" * n + b"\n" for n in range(3)]
    for text in padded:
        cache.put(text, "p", "off", compiled(text))
    assert len(cache.programs) == 1 and cache.get(padded[2], "p", "off") is not None
    assert cache.bytes == len(padded[2])
    huge = source + b"#" * (3 * len(source)) + b"\n"
    cache.put(huge, "p", "off", compiled(huge))  # larger than all it may keep: not kept
    assert cache.get(huge, "p", "off") is None and cache.bytes == len(padded[2])

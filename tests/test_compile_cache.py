"""The program cache: a new Compilation of a text already compiled is a digest lookup
(nothing is parsed), and a cold compile at trace level `off` lowers the program once."""

from __future__ import annotations

import pytest

from jarvis.compiler import Compilation, CompileError, compile_program, phases

SOURCE = """\
from books import crm
def score(x):
    return x * x + 1
total = 0
for i in range(inputs["n"]):
    total += score(i)
crm.report(total)
output("total", total)
"""


def _count(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(phases, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(phases, name, counted)
    return calls


def test_a_cold_compile_at_trace_off_lowers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    lowerings = _count(monkeypatch, "lower_program")
    compilation = Compilation.of(SOURCE + "# cold once\n", "cache.spy")
    assert compilation.ok
    program = compilation.program("off")
    assert lowerings == [1]
    assert program.trace_level == "off"
    # The Python text is written only when asked for (compiled again: the program
    # keeps no syntax tree for it), and then kept.
    assert "_jv_step_0" in program.python
    assert lowerings == [1, 1]
    assert "def score(x):" in compilation.python
    assert compilation.python.endswith(program.python + "\n")
    assert lowerings == [1, 1]


def test_a_new_compilation_of_a_compiled_text_parses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = SOURCE + "# cached\n"
    first = Compilation.of(text, "cache.spy").program("statements")

    def refuse(*args: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(phases, "parse", refuse)
    monkeypatch.setattr(phases, "lower_program", refuse)
    again = Compilation.of(text, "cache.spy")
    assert again.ok  # known clean: no analysis
    assert again.diagnostics == ()
    assert again.program("statements") is first


def test_the_cache_key_includes_the_path_and_trace_level() -> None:
    text = SOURCE + "# keyed\n"
    off = Compilation.of(text, "a.spy").program("off")
    assert Compilation.of(text, "b.spy").program("off") is not off
    assert Compilation.of(text, "a.spy").program("full") is not off
    assert Compilation.of(text, "a.spy").program("off") is off


def test_a_program_with_diagnostics_is_never_cached() -> None:
    bad = "x = eval('1')\n"
    for _ in range(2):
        compilation = Compilation.of(bad, "bad.spy")
        assert not compilation.ok
        with pytest.raises(CompileError):
            compilation.program("off")


def test_compile_program_finds_a_text_compiled_lately_without_loading_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's way in: by (text, path, trace level), the text neither decoded nor
    hashed again; another path, trace level or text is another program."""
    source = b'output("ok", 1)\n# by text\n'
    program = compile_program(source, "program.spy", "off")
    loads = _count(monkeypatch, "load_source")
    assert compile_program(source, "program.spy", "off") is program
    assert compile_program(bytes(bytearray(source)), "program.spy", "off") is program
    assert loads == []
    assert compile_program(source, "program.spy", "full").trace_level == "full"
    assert compile_program(source, "other.spy", "off") is not program
    assert compile_program(b'output("ok", 2)\n# by text\n', "program.spy", "off") \
        is not program
    assert len(loads) == 3


def test_compile_program_raises_on_diagnostics_and_keeps_nothing() -> None:
    bad = b"x = (\n"
    with pytest.raises(CompileError) as raised:
        compile_program(bad, "bad.spy")
    assert raised.value.diagnostics and raised.value.diagnostics[0].code.startswith("SPY")
    assert not any(key[0] == bad for key in phases._BY_TEXT)


def test_compile_program_keeps_as_many_programs_as_the_program_cache() -> None:
    sources = [f'output("ok", {n})\n# bounded\n'.encode() for n in range(
        phases._PROGRAM_CACHE_SIZE + 3)]
    for source in sources:
        compile_program(source, "bounded.spy")
    assert len(phases._BY_TEXT) <= phases._PROGRAM_CACHE_SIZE
    assert not any(key[0] == sources[0] for key in phases._BY_TEXT)  # the oldest went
    assert compile_program(sources[-1], "bounded.spy") is phases._BY_TEXT[
        (sources[-1], "bounded.spy", "off")]

"""The compiler never fails inside: any input gets compiled or diagnosed.

For every input, `Compilation.of` must give either an accepted program whose Python
compiles, or diagnostics that each carry a known code and a position in the program;
never an exception, a warning on the terminal, or a hang. Inputs come from three
places: Python programs generated from the grammar (hypothesmith), valid SPy programs
broken by random edits, and hand-made pathological files.
"""

from __future__ import annotations

import re
import sys
import time
import unicodedata
import warnings

import hypothesmith
import libcst
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jarvis.compiler import RULES, Compilation, Diagnostic
from jarvis.compiler.source import MAX_SOURCE_BYTES, Source
from jarvis.compiler.syntax import MAX_DEPTH
from jarvis.runtime.reference import run_reference

TIME_LIMIT = 10.0
"""Seconds a pathological input may take: a guard against hangs, not a benchmark."""

GENERATED = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # The same examples on every run: a failure here is a bug to fix, never noise.
    # Wider random searches belong in a separate, longer run.
    derandomize=True,
    database=None,
)
# libcst-based generation takes a quarter of a second per program; fewer examples keep
# the file fast, and the grammar-based test covers volume.
GENERATED_FROM_NODES = settings(GENERATED, max_examples=40)


def compile_checked(data: bytes | str) -> Compilation:
    """Compile `data` and check the outcome: accepted and runnable, or diagnosed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compilation = Compilation.of(data, "fuzz.spy")
        diagnostics = compilation.diagnostics
        if compilation.ok:
            python = compilation.python
    assert [str(w.message) for w in caught] == []
    if compilation.ok:
        assert diagnostics == ()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(python, "fuzz.py", "exec", dont_inherit=True)
    else:
        assert diagnostics
        line_count = _line_count(data)
        for diagnostic in diagnostics:
            _check_diagnostic(diagnostic, line_count)
    return compilation


def _line_count(data: bytes | str) -> int:
    """How many lines `data` has, counted as Python does (\\n, \\r\\n and \\r end a line)."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    return len(re.split(rb"\r\n|\r|\n", raw))


def _check_diagnostic(diagnostic: Diagnostic, line_count: int) -> None:
    assert diagnostic.code in RULES, diagnostic
    assert diagnostic.path == "fuzz.spy"
    assert diagnostic.message
    assert diagnostic.hint
    assert 1 <= diagnostic.line <= line_count + 1, diagnostic
    assert diagnostic.col >= 1, diagnostic
    assert diagnostic.end_line >= diagnostic.line, diagnostic
    if diagnostic.end_line == diagnostic.line:
        assert diagnostic.end_col > diagnostic.col, diagnostic


def diagnose(data: bytes | str) -> tuple[Diagnostic, ...]:
    """Compile a pathological input within the time limit; return its diagnostics."""
    started = time.perf_counter()
    compilation = compile_checked(data)
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_LIMIT, f"took {elapsed:.1f}s"
    return compilation.diagnostics


def codes(found: tuple[Diagnostic, ...]) -> list[str]:
    return [d.code for d in found]


# -- generated Python programs ------------------------------------------------------

# hypothesmith checks its programs with compile(), whose SyntaxWarnings are its own.
generation_warnings = pytest.mark.filterwarnings("ignore::SyntaxWarning")


@generation_warnings
@GENERATED
@given(hypothesmith.from_grammar())
def test_programs_from_the_grammar(source: str) -> None:
    compile_checked(source)


@generation_warnings
@GENERATED_FROM_NODES
@given(hypothesmith.from_node())
def test_programs_from_syntax_trees(source: str) -> None:
    compile_checked(source)


@generation_warnings
@GENERATED_FROM_NODES
@given(hypothesmith.from_node(libcst.FunctionDef))
def test_functions_from_syntax_trees(source: str) -> None:
    compile_checked(source)


# -- valid SPy programs, broken at random --------------------------------------------

SEEDS = {
    "loops": (
        "total = 0\n"
        "for i in range(10):\n"
        "    if i % 3 == 0:\n"
        "        continue\n"
        "    total += i\n"
        "else:\n"
        "    print('done')\n"
        "while total > 0:\n"
        "    total -= 7\n"
        "    if total < 3:\n"
        "        break\n"
        "output('total', total)\n"
    ),
    "functions-and-closures": (
        "def counter(start, *, step=1):\n"
        "    state = {'n': start}\n"
        "    def bump():\n"
        "        state['n'] = state['n'] + step\n"
        "        return state['n']\n"
        "    return bump\n"
        "def apply(f, *args, **kwargs):\n"
        "    return f(*args, **kwargs)\n"
        "tick = counter(1, step=2)\n"
        "square = lambda x, power=2: x ** power\n"
        "print(tick(), apply(square, 3), apply(max, 1, 2))\n"
    ),
    "try-except-finally": (
        "def parse(text):\n"
        "    try:\n"
        "        value = int(text)\n"
        "    except ValueError as error:\n"
        "        print('bad', error.args)\n"
        "        value = 0\n"
        "    except (KeyError, IndexError):\n"
        "        raise\n"
        "    else:\n"
        "        value += 1\n"
        "    finally:\n"
        "        print('parsed', text)\n"
        "    return value\n"
        "assert parse('41') == 42, 'arithmetic'\n"
        "if parse('x') != 0:\n"
        "    raise RuntimeError('unreachable')\n"
    ),
    "strings-and-comprehensions": (
        "names = ['Ada', 'Grace', 'Édouard']\n"
        "greetings = [f'hello {name!r:>12}, {len(name)} letters' for name in names]\n"
        "initials = {name[0]: name.lower() for name in names if name}\n"
        "lengths = sorted({len(n) for n in names}, reverse=True)\n"
        "pairs = list(zip(names, range(3)))\n"
        "text = ', '.join(greetings) + f\"{'!' * 2}\"\n"
        "print(text[1:-1:2], initials, lengths, pairs, sep='\\n')\n"
    ),
    "books": (
        "from books import crm\n"
        "from books import erp as ledger\n"
        "lead = crm.create_lead(name=\"Ada\")\n"
        "try:\n"
        "    invoice = ledger.invoice(lead=lead['id'], amount=12.5)\n"
        "except BookError as failure:\n"
        "    print(failure.book, failure.procedure, failure.message)\n"
        "    invoice = None\n"
        "checkpoint()\n"
        "sleep(1)\n"
        "output('lead', lead)\n"
        "output('invoice', invoice)\n"
    ),
}


@pytest.mark.parametrize("source", SEEDS.values(), ids=SEEDS.keys())
def test_seed_programs_are_valid_spy(source: str) -> None:
    assert compile_checked(source.encode("utf-8")).ok


@st.composite
def mutated_programs(draw: st.DrawFn) -> bytes:
    """A seed program with one to four random edits: lines deleted, duplicated or
    swapped, random characters or bytes inserted, or the text cut short."""
    data = SEEDS[draw(st.sampled_from(sorted(SEEDS)))].encode("utf-8")
    for _ in range(draw(st.integers(1, 4))):
        lines = data.split(b"\n")
        edit = draw(st.sampled_from(
            ["delete", "duplicate", "swap", "characters", "bytes", "truncate"]
        ))
        at = draw(st.integers(0, len(lines) - 1))
        if edit == "delete":
            del lines[at]
        elif edit == "duplicate":
            lines.insert(at, lines[at])
        elif edit == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        else:
            data = b"\n".join(lines)
            cut = draw(st.integers(0, len(data)))
            if edit == "truncate":
                data = data[:cut]
                continue
            if edit == "characters":
                inserted = draw(st.text(min_size=1, max_size=8)).encode("utf-8", "surrogatepass")
            else:
                inserted = draw(st.binary(min_size=1, max_size=8))
            data = data[:cut] + inserted + data[cut:]
            continue
        data = b"\n".join(lines)
    return data


@settings(GENERATED, max_examples=300)
@given(mutated_programs())
def test_mutated_programs(data: bytes) -> None:
    compile_checked(data)


@settings(GENERATED, max_examples=100)
@given(mutated_programs())
def test_mutated_programs_as_text(data: bytes) -> None:
    compile_checked(data.decode("utf-8", errors="replace"))


# Raw in the source: a backslash escape there is a syntax error in Python 3.11 already.
@pytest.mark.parametrize("text", ["\x1f", "\x99", "\u2028", "\xad"])
def test_a_string_needing_escapes_inside_an_f_string(text: str) -> None:
    # Found by test_mutated_programs: CPython 3.11's ast.unparse cannot write this
    # f-string; the emitter writes an equivalent join instead, and it runs the same.
    source = f"label = f\"{{'{text}' * 2}}\"\noutput('label', label)\n"
    compile_checked(source)
    assert run_reference(source).outputs == {"label": text * 2}


def _positions(data: bytes) -> list[tuple[str, int, int, int, int]]:
    found = compile_checked(data).diagnostics
    return [(d.code, d.line, d.col, d.end_line, d.end_col) for d in found]


@settings(GENERATED, max_examples=150)
@given(mutated_programs(), st.sampled_from(["ä", "€", "😀", "\u0301"]))
def test_columns_do_not_depend_on_how_many_bytes_a_character_takes(
    data: bytes, wide: str
) -> None:
    # The same program after a string of two characters, ASCII or not: every
    # diagnostic stands at the same character position.
    narrow_prefix = b"zz = 'aa'; "
    wide_prefix = f"zz = '{wide * 2}'; ".encode()
    assert _positions(narrow_prefix + data) == _positions(wide_prefix + data)


@GENERATED
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")))
def test_char_col_maps_every_character_boundary(line: str) -> None:
    source = Source("line.spy", line)
    offset = 0
    for index, char in enumerate(line):
        width = len(char.encode("utf-8"))
        for inside in range(width):
            # An offset inside a character counts as that character's start.
            assert source.char_col(1, offset + inside) == index + 1
        offset += width
    assert source.char_col(1, offset) == len(line) + 1
    assert source.char_col(1, offset + 3) == len(line) + 4


# -- pathological files --------------------------------------------------------------


def test_a_thousand_nested_parentheses() -> None:
    found = diagnose("x = " + "(" * 1000 + "1" + ")" * 1000 + "\n")
    assert codes(found) == ["SPY005"]


def test_a_hundred_thousand_unary_minus_signs() -> None:
    found = diagnose("x = " + "-" * 100_000 + "1\n")
    assert codes(found) == ["SPY005"]


def test_a_hundred_thousand_additions() -> None:
    found = diagnose("x = " + "1+" * 100_000 + "1\n")
    assert codes(found) == ["SPY005"]


def test_a_ten_megabyte_file() -> None:
    data = b"x = 1\n" * (10_000_000 // 6 + 1)
    assert len(data) > 10_000_000
    found = diagnose(data)
    assert codes(found) == ["SPY004"]
    assert (found[0].line, found[0].col) == (1, 1)
    assert codes(diagnose(data.decode("ascii"))) == ["SPY004"]


def test_a_file_just_over_the_limit() -> None:
    data = b"#" * MAX_SOURCE_BYTES + b"\n"
    assert codes(diagnose(data)) == ["SPY004"]
    assert compile_checked(data[:-2] + b"\n").ok


def test_nul_bytes() -> None:
    found = diagnose(b"x = 1\ny = 'a\x00b'\n")
    assert codes(found) == ["SPY003"]
    assert (found[0].line, found[0].col) == (2, 7)


def test_nul_byte_after_non_ascii_text() -> None:
    found = diagnose("x = 1\ny = 'ä\x00'\n".encode())
    assert codes(found) == ["SPY003"]
    assert (found[0].line, found[0].col) == (2, 7)


def test_invalid_utf8() -> None:
    found = diagnose(b"x = 1\ny = 'caf\xe9'\n")
    assert codes(found) == ["SPY002"]
    assert (found[0].line, found[0].col) == (2, 9)


def test_truncated_utf8_sequence_at_the_end() -> None:
    assert codes(diagnose("x = 'é'".encode()[:-2])) == ["SPY002"]


def test_lone_surrogate_in_text() -> None:
    assert codes(diagnose("x = '\ud800'\n")) == ["SPY002"]


def test_byte_order_mark_is_accepted() -> None:
    assert diagnose(b"\xef\xbb\xbfx = 1\nprint(x)\n") == ()
    assert diagnose("\ufeffx = 1\n") == ()


def test_byte_order_mark_does_not_shift_columns() -> None:
    found = diagnose(b"\xef\xbb\xbf_x = 1\n")
    assert [(d.code, d.line, d.col) for d in found] == [("SPY201", 1, 1)]


def test_mixed_tabs_and_spaces_in_indentation() -> None:
    found = diagnose("x = 1\nif x:\n        y = 1\n\tz = 2\n")
    assert codes(found) == ["SPY001"]
    assert found[0].line == 4
    assert "tab" in found[0].message.lower()


def test_deeply_nested_lists() -> None:
    found = diagnose("x = " + "[" * (MAX_DEPTH + 50) + "]" * (MAX_DEPTH + 50) + "\n")
    assert codes(found) == ["SPY005"]


def test_deeply_nested_dicts() -> None:
    found = diagnose("x = " + "{'k': " * (MAX_DEPTH + 50) + "1" + "}" * (MAX_DEPTH + 50) + "\n")
    assert codes(found) == ["SPY005"]


def test_deeply_nested_lists_and_dicts_point_into_the_program() -> None:
    found = diagnose("x = " + "[{'a': " * 60 + "1" + "}]" * 60 + "\n")
    assert codes(found) == ["SPY005"]
    assert found[0].col > 1


def test_deeply_nested_functions() -> None:
    depth = 120
    source = "".join(f"{'    ' * i}def f{i}():\n" for i in range(depth))
    source += "    " * depth + "return 1\n"
    assert codes(diagnose(source)) == ["SPY005"]


def test_deeply_nested_blocks() -> None:
    source = "".join(f"{'    ' * i}if True:\n" for i in range(60)) + "    " * 60 + "pass\n"
    assert diagnose(source) == ()


def test_a_five_thousand_digit_int_literal() -> None:
    found = diagnose("x = 1\ny = " + "7" * 5000 + "\n")
    assert [(d.code, d.line, d.col, d.end_col) for d in found] == [("SPY001", 2, 5, 5005)]
    assert str(sys.get_int_max_str_digits()) in found[0].message


@pytest.mark.parametrize("prefix", ["0x", "0o", "0b"])
def test_a_non_decimal_int_literal_too_long_to_print(prefix: str) -> None:
    # Valid Python, but its decimal form exceeds the limit: `str` and `ast.unparse` fail.
    literal = prefix + "1" * 20_000
    found = diagnose(f"x = 1\ny = {literal}\n")
    assert [(d.code, d.line, d.col, d.end_col) for d in found] == [
        ("SPY001", 2, 5, 5 + len(literal))
    ]


def test_a_long_hex_literal_within_the_limit_is_accepted() -> None:
    # 3,500 hex digits are about 4,200 decimal ones.
    assert diagnose("x = 0x" + "f" * 3500 + "\n") == ()


def _one_character_per_category() -> str:
    """A character of every Unicode general category that may stand in a string
    literal: surrogates cannot be UTF-8, and NUL, line ends, quotes and backslashes
    would end or change the literal."""
    excluded = {"\0", "\n", "\r", '"', "\\"}
    found: dict[str, str] = {}
    for point in range(sys.maxunicode + 1):
        char = chr(point)
        category = unicodedata.category(char)
        if category not in found and category != "Cs" and char not in excluded:
            found[category] = char
    return "".join(found[category] for category in sorted(found))


def test_a_string_with_every_unicode_category() -> None:
    text = _one_character_per_category()
    assert len(text) == 29  # the 30 general categories but Cs
    assert diagnose(f'text = "{text}"\nprint(len(text))\n'.encode()) == ()


def test_columns_after_every_unicode_category() -> None:
    line = f'text = "{_one_character_per_category()}"; other = text.__class__'
    found = diagnose(line + "\n")
    assert [(d.code, d.line, d.col) for d in found] == [
        ("SPY202", 1, line.index("__class__") + 1)
    ]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x0c", "\x1c", "\x85"])
def test_unusual_line_separators_do_not_shift_lines(separator: str) -> None:
    # Python ends lines at \n, \r\n and \r only; other separators are ordinary text.
    found = diagnose(f"x = '{separator}'\ny = x.mro\n")
    assert [(d.code, d.line, d.col) for d in found] == [("SPY203", 2, 7)]


def test_carriage_return_line_ends() -> None:
    found = diagnose(b"x = 1\r\ny = 2\rz = x.mro\r\n")
    assert [(d.code, d.line, d.col) for d in found] == [("SPY203", 3, 7)]


def test_many_errors_on_one_long_line() -> None:
    line = "; ".join(f"v{i} = undefined{i}.__class__" for i in range(5000))
    found = diagnose(line + "\n")
    assert len(found) == 10_000
    assert set(codes(found)) == {"SPY202", "SPY205"}


def test_many_misspelled_names() -> None:
    source = "".join(f"value{i} = {i}\nprint(valeu{i})\n" for i in range(2000))
    found = diagnose(source)
    assert codes(found) == ["SPY205"] * 2000


@pytest.mark.parametrize(
    "source",
    ["", "\n", "\n\n\n", "   \n", "# only a comment", "# one\n# two\n\n# three\n",
     "#!/usr/bin/env spy\n# -*- coding: utf-8 -*-\n"],
    ids=["empty", "newline", "newlines", "blank", "comment", "comments", "shebang"],
)
def test_files_without_statements_are_accepted(source: str) -> None:
    assert diagnose(source) == ()
    assert diagnose(source.encode()) == ()


def test_a_line_continuation_with_nothing_after_it() -> None:
    assert codes(diagnose("\\\n")) == ["SPY001"]


def test_very_long_names_and_strings() -> None:
    name = "n" * 100_000
    assert diagnose(f"{name} = '{'s' * 100_000}'\nprint({name})\n") == ()
    found = diagnose(f"print({name}x)\n")
    assert codes(found) == ["SPY205"]


def test_an_unterminated_string_at_the_end() -> None:
    found = diagnose("x = 1\ny = '''never closed\n\n")
    assert codes(found) == ["SPY001"]
    assert found[0].line == 2

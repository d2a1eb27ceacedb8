"""Every construct SPy refuses, with the code and the position of its diagnostic.

Each case is a small program and the exact list of diagnostics it must produce, in
source order. An expected diagnostic names the offending text (`token`) instead of a
column: the column is where that text stands on its line, counted in characters, so
the tests read as the programs they check and non-ASCII lines need no arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from jarvis.compiler import RULES, Compilation, Diagnostic
from jarvis.compiler.language import REFUSED_ATTRIBUTES, REFUSED_BUILTINS


@dataclass(frozen=True)
class At:
    """An expected diagnostic: `code` on `line`, starting at `token`.

    `after` picks a later occurrence: the token is searched after that text. With
    `span`, the diagnostic must cover exactly the token; otherwise (a statement that
    runs over several lines) only its start is checked.
    """

    code: str
    line: int
    token: str
    after: str = ""
    span: bool = True


def _column(source: str, at: At) -> int:
    text = source.split("\n")[at.line - 1]
    start = text.index(at.after) + len(at.after) if at.after else 0
    return text.index(at.token, start) + 1


def diagnostics_of(source: str) -> tuple[Diagnostic, ...]:
    return Compilation.of(source.encode("utf-8"), "prog.spy").diagnostics


def check(source: str, *expected: At) -> tuple[Diagnostic, ...]:
    """Assert that `source` has exactly the `expected` diagnostics, in this order."""
    found = diagnostics_of(source)
    want = [(at.code, at.line, _column(source, at)) for at in expected]
    assert [(d.code, d.line, d.col) for d in found] == want, found
    for at, diagnostic in zip(expected, found, strict=True):
        if at.span:
            assert (diagnostic.end_line, diagnostic.end_col) == (
                at.line,
                diagnostic.col + len(at.token),
            ), diagnostic
        assert diagnostic.path == "prog.spy"
        assert diagnostic.hint, diagnostic
    return found


# -- refused statements and expressions (SPY1xx) ----------------------------------


def test_class() -> None:
    check(
        "def make():\n"
        "    return 1\n"
        "class Point:\n"
        "    size = 1\n",
        At("SPY101", 3, "class", span=False),
    )


def test_class_inside_a_function() -> None:
    check(
        "def make():\n"
        "    class Point:\n"
        "        pass\n"
        "    return 1\n",
        At("SPY101", 2, "class", span=False),
    )


@pytest.mark.parametrize(
    "statement",
    ["import os", "import os.path", "import os as system", "from os import path",
     "from os import path as joined", "from os.path import join"],
)
def test_import_of_a_module(statement: str) -> None:
    check(f"{statement}\n", At("SPY102", 1, statement))


def test_import_inside_a_function() -> None:
    check("def run():\n    import os\n    return 1\n", At("SPY102", 2, "import os"))


def test_with() -> None:
    check(
        "lock = [1]\n"
        "with lock as held:\n"
        "    print(held)\n",
        At("SPY103", 2, "with", span=False),
    )


def test_async_def_await_async_for_async_with() -> None:
    check(
        "async def fetch(items):\n"
        "    await items\n"
        "    async for item in items:\n"
        "        print(item)\n"
        "    async with items as lock:\n"
        "        print(lock)\n",
        At("SPY104", 1, "async def", span=False),
        At("SPY104", 2, "await items"),
        At("SPY104", 3, "async for", span=False),
        At("SPY104", 5, "async with", span=False),
    )


def test_await_at_top_level() -> None:
    # CPython's compiler calls this a syntax error; SPy names the construct.
    check("job = 1\nawait job\n", At("SPY104", 2, "await job"))


def test_yield_and_yield_from() -> None:
    check(
        "def numbers():\n"
        "    yield 1\n"
        "    yield from numbers()\n",
        At("SPY105", 2, "yield 1"),
        At("SPY105", 3, "yield from numbers()"),
    )


def test_global_and_nonlocal() -> None:
    check(
        "count = 0\n"
        "def bump():\n"
        "    global count\n"
        "def outer():\n"
        "    total = 0\n"
        "    def inner():\n"
        "        nonlocal total\n"
        "    return inner\n",
        At("SPY106", 3, "global count"),
        At("SPY106", 7, "nonlocal total"),
    )


def test_decorator() -> None:
    check(
        "def wrap(f):\n"
        "    return f\n"
        "@wrap\n"
        "def run():\n"
        "    pass\n",
        At("SPY107", 3, "wrap"),
    )


def test_match() -> None:
    check(
        "value = [1, 2]\n"
        "match value:\n"
        "    case [first, second]:\n"
        "        print(first, second)\n",
        At("SPY108", 2, "match", span=False),
    )


def test_except_star() -> None:
    check(
        "try:\n"
        "    pass\n"
        "except* ValueError:\n"
        "    pass\n",
        At("SPY109", 1, "try", span=False),
    )


def test_walrus() -> None:
    check("if (n := 10) > 5:\n    print(n)\n", At("SPY110", 1, "n := 10"))


def test_attribute_assignment_in_every_target_form() -> None:
    check(
        "point = {}\n"
        "point.x = 1\n"
        "point.x += 1\n"
        "point.x, other = 1, 2\n"
        "[point.y, more] = [1, 2]\n"
        "first, *point.tail = [1, 2]\n"
        "for point.z in [1]:\n"
        "    pass\n"
        "print(other, more, first)\n",
        At("SPY111", 2, "point.x"),
        At("SPY111", 3, "point.x"),
        At("SPY111", 4, "point.x"),
        At("SPY111", 5, "point.y"),
        At("SPY111", 6, "point.tail"),
        At("SPY111", 7, "point.z"),
    )


def test_del_of_a_name_or_an_attribute() -> None:
    check(
        "x = 1\n"
        "items = {'a': 1}\n"
        "del x\n"
        "del items.a\n"
        "del items['a']\n",
        At("SPY112", 3, "x"),
        At("SPY112", 4, "items.a"),
    )


def test_annotations_on_assignment_parameters_and_returns() -> None:
    check(
        "total: int = 1\n"
        "count: int\n"
        "def scale(a: int, *rest: int, b: int = 2, **more: int) -> int:\n"
        "    return a\n",
        At("SPY113", 1, "total: int = 1"),
        At("SPY113", 2, "count: int"),
        At("SPY113", 3, "int"),
        At("SPY113", 3, "int", after="*rest: "),
        At("SPY113", 3, "int", after="b: "),
        At("SPY113", 3, "int", after="**more: "),
        At("SPY113", 3, "int", after="-> "),
    )


def test_positional_only_parameters() -> None:
    check(
        "def area(width, height, /, scale):\n"
        "    return width * height * scale\n"
        "double = lambda x, /: x * 2\n",
        At("SPY114", 1, "width"),
        At("SPY114", 1, "height"),
        At("SPY114", 3, "x"),
    )


def test_bytes_complex_and_ellipsis_literals() -> None:
    found = check(
        'data = b"raw"\n'
        "z = 2j\n"
        "rest = [1, ...]\n",
        At("SPY115", 1, 'b"raw"'),
        At("SPY115", 2, "2j"),
        At("SPY115", 3, "..."),
    )
    assert [d.message.split()[0] for d in found] == ["bytes", "complex-number", "`...`"]


def test_matrix_multiplication() -> None:
    check(
        "a = [1]\n"
        "b = [2]\n"
        "c = a @ b\n"
        "a @= b\n",
        At("SPY116", 3, "a @ b"),
        At("SPY116", 4, "a @= b"),
    )


def test_async_comprehension() -> None:
    check(
        "items = [1]\n"
        "values = [x async for x in items]\n",
        At("SPY117", 2, "x", after="for "),
    )


def test_async_comprehension_in_async_def() -> None:
    check(
        "async def collect(xs):\n"
        "    return [x async for x in xs]\n",
        At("SPY104", 1, "async", span=False),
        At("SPY117", 2, "x", after="for "),
    )


# -- names and attributes (SPY2xx) ------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("_total = 1\n", [At("SPY201", 1, "_total")], id="assignment"),
        pytest.param("a, _b = 1, 2\n", [At("SPY201", 1, "_b")], id="tuple-assignment"),
        pytest.param("[a, *_rest] = [1, 2]\n", [At("SPY201", 1, "_rest")], id="starred"),
        pytest.param("_n = 0\n_n += 1\n", [At("SPY201", 1, "_n"), At("SPY201", 2, "_n")],
                     id="augmented"),
        pytest.param("for _i in range(3):\n    pass\n", [At("SPY201", 1, "_i")], id="for"),
        pytest.param("def f(_a):\n    pass\n", [At("SPY201", 1, "_a")], id="param"),
        pytest.param("def f(_a=1):\n    pass\n", [At("SPY201", 1, "_a")], id="param-default"),
        pytest.param(
            "def f(_a, /):\n    pass\n", [At("SPY114", 1, "_a"), At("SPY201", 1, "_a")],
            id="param-positional-only",
        ),
        pytest.param("def f(*_rest):\n    pass\n", [At("SPY201", 1, "_rest")], id="varargs"),
        pytest.param("def f(*, _k):\n    pass\n", [At("SPY201", 1, "_k")], id="keyword-only"),
        pytest.param("def f(**_kw):\n    pass\n", [At("SPY201", 1, "_kw")], id="kwargs"),
        pytest.param("f = lambda _v: 1\n", [At("SPY201", 1, "_v")], id="lambda-param"),
        pytest.param(
            "f = lambda *_a, _k=1, **_kw: 1\n",
            [At("SPY201", 1, "_a"), At("SPY201", 1, "_k"), At("SPY201", 1, "_kw")],
            id="lambda-params",
        ),
        pytest.param(
            "xs = [1]\nys = [_i for _i in xs]\n",
            [At("SPY201", 2, "_i"), At("SPY201", 2, "_i", after="for ")],
            id="comprehension",
        ),
        pytest.param(
            "xs = [1]\nys = {k: 1 for k, _v in xs}\n", [At("SPY201", 2, "_v")],
            id="dict-comprehension",
        ),
        pytest.param(
            "try:\n    pass\nexcept ValueError as _error:\n    pass\n",
            [At("SPY201", 3, "_error")], id="except-as",
        ),
        pytest.param(
            "try:\n    pass\nexcept (ValueError,\n        KeyError) as _error:\n    pass\n",
            [At("SPY201", 4, "_error")], id="except-as-multiline",
        ),
        pytest.param("def _helper():\n    pass\n", [At("SPY201", 1, "_helper")], id="def"),
        pytest.param("print(1, _end='')\n", [At("SPY201", 1, "_end")], id="keyword-argument"),
        pytest.param(
            "from books import crm as _crm\n", [At("SPY201", 1, "_crm")], id="import-alias"
        ),
        pytest.param("from books import _crm\n", [At("SPY201", 1, "_crm")], id="import-name"),
        pytest.param("print(_hidden)\n", [At("SPY201", 1, "_hidden")], id="use"),
    ],
)
def test_names_starting_with_underscore(source: str, expected: list[At]) -> None:
    check(source, *expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("x = 1\ny = x.__class__\n", [At("SPY202", 2, "__class__")], id="dunder"),
        pytest.param(
            "y = ().__class__.__bases__\n",
            [At("SPY202", 1, "__class__"), At("SPY202", 1, "__bases__")],
            id="chain",
        ),
        pytest.param(
            "x = 'a'\ny = x._private()\n", [At("SPY202", 2, "_private")], id="private-call"
        ),
        pytest.param(
            "x = 1\ny = f'{x.__class__}'\n", [At("SPY202", 2, "__class__")], id="in-f-string"
        ),
        pytest.param(
            "x = [1]\ny = (x\n     .__class__)\n", [At("SPY202", 3, "__class__")],
            id="multiline",
        ),
    ],
)
def test_attributes_starting_with_underscore(source: str, expected: list[At]) -> None:
    check(source, *expected)


@pytest.mark.parametrize(
    "attribute", ["gi_frame", "f_globals", "mro", "format", "format_map", "encode"]
)
def test_refused_attribute_has_its_reason(attribute: str) -> None:
    (found,) = check(
        f"text = 'a'\nresult = text.{attribute}\n", At("SPY203", 2, attribute)
    )
    assert found.hint == REFUSED_ATTRIBUTES[attribute]


def test_refused_method_call() -> None:
    (found,) = check("text = '{}'\nresult = text.format(1)\n", At("SPY203", 2, "format"))
    assert "f-string" in found.hint


def test_unknown_attribute() -> None:
    (found,) = check("text = 'a'\nresult = text.shout()\n", At("SPY203", 2, "shout"))
    assert found.hint == RULES["SPY203"].hint


@pytest.mark.parametrize("name", sorted(REFUSED_BUILTINS))
def test_refused_builtin_used_as_a_value(name: str) -> None:
    (found,) = check(f"value = {name}\n", At("SPY204", 1, name))
    assert REFUSED_BUILTINS[name] in found.message


def test_refused_builtin_called_inside_a_function() -> None:
    check("def run():\n    return eval('1')\n", At("SPY204", 2, "eval"))


def test_undefined_name_with_a_spelling_hint() -> None:
    (found,) = check("total = 1\nprint(totl)\n", At("SPY205", 2, "totl"))
    assert found.hint == "did you mean `total`?"


def test_undefined_builtin_spelling_hint() -> None:
    (found,) = check("prnt('hello')\n", At("SPY205", 1, "prnt"))
    assert found.hint == "did you mean `print`?"


def test_undefined_name_without_a_near_miss() -> None:
    (found,) = check("print(zqxwv)\n", At("SPY205", 1, "zqxwv"))
    assert found.hint == RULES["SPY205"].hint


def test_name_local_to_another_function_is_undefined() -> None:
    check(
        "def first():\n"
        "    secret = 1\n"
        "    return secret\n"
        "def second():\n"
        "    return secret\n",
        At("SPY205", 5, "secret"),
    )


def test_comprehension_variable_does_not_leak() -> None:
    check("xs = [i for i in range(3)]\nprint(i)\n", At("SPY205", 2, "i", after="("))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("print = 1\n", At("SPY206", 1, "print"), id="assignment"),
        pytest.param("def sleep():\n    pass\n", At("SPY206", 1, "sleep"), id="def"),
        pytest.param("for output in [1]:\n    pass\n", At("SPY206", 1, "output"), id="for"),
        pytest.param("def f(inputs):\n    pass\n", At("SPY206", 1, "inputs"), id="param"),
        pytest.param("f = lambda now: now\n", At("SPY206", 1, "now"), id="lambda-param"),
        pytest.param(
            "try:\n    pass\nexcept ValueError as checkpoint:\n    pass\n",
            At("SPY206", 3, "checkpoint"), id="except-as",
        ),
        pytest.param("a, BookError = 1, 2\n", At("SPY206", 1, "BookError"), id="tuple"),
    ],
)
def test_runtime_builtin_cannot_be_reassigned(source: str, expected: At) -> None:
    check(source, expected)


# -- Books (SPY3xx) ----------------------------------------------------------------


def test_book_used_as_a_value_passed_and_inspected() -> None:
    check(
        "from books import crm\n"
        "book = crm\n"
        "print(crm)\n"
        "create = crm.create_lead\n"
        "inside = crm.__dict__\n"
        "print(type(crm))\n"
        "pair = [crm, 1]\n",
        At("SPY301", 2, "crm"),
        At("SPY301", 3, "crm"),
        At("SPY301", 4, "crm.create_lead"),
        At("SPY301", 5, "crm.__dict__"),
        At("SPY202", 5, "__dict__"),
        At("SPY204", 6, "type"),
        At("SPY301", 6, "crm"),
        At("SPY301", 7, "crm"),
    )


def test_book_used_as_a_value_inside_a_function() -> None:
    check(
        "from books import crm\n"
        "def run():\n"
        "    return crm\n",
        At("SPY301", 3, "crm"),
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("crm = 1\n", At("SPY302", 2, "crm"), id="assignment"),
        pytest.param("crm += 1\n", At("SPY302", 2, "crm"), id="augmented"),
        pytest.param("def f(crm):\n    return crm\n", At("SPY302", 2, "crm"), id="param"),
        pytest.param("def f(*, crm=1):\n    pass\n", At("SPY302", 2, "crm"), id="kw-param"),
        pytest.param("f = lambda crm: crm\n", At("SPY302", 2, "crm"), id="lambda-param"),
        pytest.param(
            "def f():\n    for crm in []:\n        print(crm)\n", At("SPY302", 3, "crm"),
            id="for-in-def",
        ),
        pytest.param("for crm in []:\n    pass\n", At("SPY302", 2, "crm"), id="for"),
        pytest.param("xs = [crm for crm in []]\n", At("SPY302", 2, "crm", after="for "),
                     id="comprehension"),
        pytest.param("def crm():\n    pass\n", At("SPY302", 2, "crm"), id="def"),
        pytest.param(
            "try:\n    pass\nexcept ValueError as crm:\n    pass\n", At("SPY302", 4, "crm"),
            id="except-as",
        ),
    ],
)
def test_book_cannot_be_rebound_or_shadowed(source: str, expected: At) -> None:
    # Uses of a local that shadows the Book are the local's, not the Book's: no SPY301.
    check("from books import crm\n" + source, expected)


def test_a_name_cannot_stand_for_two_books() -> None:
    # Otherwise calls before the second import would be counted against the other Book.
    check(
        "from books import crm\n"
        "crm.find(1)\n"
        "from books import erp as crm\n",
        At("SPY302", 3, "erp as crm"),
    )


def test_importing_the_same_book_twice_is_harmless() -> None:
    compilation = Compilation.of("from books import crm\nfrom books import crm\ncrm.find(1)\n")
    assert compilation.ok
    assert compilation.books() == {"crm": ["find"]}


def test_book_import_inside_a_function() -> None:
    check(
        "def run():\n"
        "    from books import crm\n"
        "    return 1\n",
        At("SPY303", 2, "from books import crm"),
    )


def test_book_import_star() -> None:
    check("from books import *\n", At("SPY304", 1, "*"))


@pytest.mark.parametrize(
    "statement", ["from . import crm", "from .books import crm", "from ..books import crm"]
)
def test_relative_book_import(statement: str) -> None:
    check(f"{statement}\n", At("SPY304", 1, statement))


# -- rules CPython checks only when compiling (SPY001) -----------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("return 1\n", At("SPY001", 1, "return 1"), id="return"),
        pytest.param("x = 1\nif x:\n    return\n", At("SPY001", 3, "return"), id="return-in-if"),
        pytest.param("break\n", At("SPY001", 1, "break"), id="break"),
        pytest.param("continue\n", At("SPY001", 1, "continue"), id="continue"),
        pytest.param("def f():\n    break\n", At("SPY001", 2, "break"), id="break-in-def"),
        pytest.param(
            "for x in [1]:\n    def f():\n        continue\n",
            At("SPY001", 3, "continue"), id="continue-in-def-in-loop",
        ),
        pytest.param(
            "while True:\n    pass\nelse:\n    break\n", At("SPY001", 4, "break"),
            id="break-in-loop-else",
        ),
        pytest.param(
            "é = 1\nprint(a=1, a=2)\n", At("SPY001", 2, "a=2"), id="repeated-keyword"
        ),
    ],
)
def test_compile_time_errors(source: str, expected: At) -> None:
    check(source, expected)


def test_return_and_break_inside_their_blocks_are_fine() -> None:
    assert Compilation.of(
        "def f(xs):\n"
        "    for x in xs:\n"
        "        if x:\n"
        "            break\n"
        "        continue\n"
        "    return 1\n"
    ).ok


# -- whole files ----------------------------------------------------------------------


def test_the_issue_example_has_exactly_three_diagnostics() -> None:
    check(
        "class Ledger:\n"
        "    pass\n"
        "\n"
        "import os\n"
        "\n"
        "entry = {'amount': 1}\n"
        "print(entry.__class__)\n",
        At("SPY101", 1, "class", span=False),
        At("SPY102", 4, "import os"),
        At("SPY202", 7, "__class__"),
    )


def test_uses_of_refused_bindings_add_no_undefined_names() -> None:
    # The class and the module are reported once, not again at each use.
    check(
        "class Ledger:\n"
        "    pass\n"
        "import os\n"
        "entry = Ledger()\n"
        "print(os)\n"
        "async def fetch(page):\n"
        "    return page\n",
        At("SPY101", 1, "class", span=False),
        At("SPY102", 3, "import os"),
        At("SPY104", 6, "async", span=False),
    )


def test_problems_inside_refused_constructs_are_reported_too() -> None:
    check(
        "entry = 1\n"
        "class Ledger:\n"
        "    import os\n"
        "    size = entry.__class__\n"
        "    def _hidden(self):\n"
        "        return eval\n",
        At("SPY101", 2, "class", span=False),
        At("SPY102", 3, "import os"),
        At("SPY202", 4, "__class__"),
        At("SPY201", 5, "_hidden"),
        At("SPY204", 6, "eval"),
    )


def test_every_problem_of_a_file_is_reported_in_source_order() -> None:
    check(
        "import os\n"
        "from books import crm\n"
        "def _helper(a: int):\n"
        "    global counter\n"
        "    return a.__class__\n"
        "value = eval\n"
        "crm = 1\n"
        "print(valeu)\n"
        "data = b'raw'\n"
        "with value:\n"
        "    value.size = 2\n"
        "print = 3\n"
        "numbers = [x async for x in value]\n"
        "del value\n",
        At("SPY102", 1, "import os"),
        At("SPY201", 3, "_helper"),
        At("SPY113", 3, "int"),
        At("SPY106", 4, "global counter"),
        At("SPY202", 5, "__class__"),
        At("SPY204", 6, "eval"),
        At("SPY302", 7, "crm"),
        At("SPY205", 8, "valeu"),
        At("SPY115", 9, "b'raw'"),
        At("SPY103", 10, "with", span=False),
        At("SPY111", 11, "value.size"),
        At("SPY206", 12, "print"),
        At("SPY117", 13, "x", after="for "),
        At("SPY112", 14, "value"),
    )


# -- character columns --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            'naïve = "héllo wörld"; result = naïve.__class__\n',
            At("SPY202", 1, "__class__"), id="latin",
        ),
        pytest.param(
            's = "😀😀😀"; t = s.mro\n', At("SPY203", 1, "mro"), id="astral",
        ),
        pytest.param(
            'label = "日本語"; _x = 1\n', At("SPY201", 1, "_x"), id="cjk-name",
        ),
        pytest.param(
            'é = 1; print(ë)\n', At("SPY205", 1, "ë"), id="undefined-non-ascii",
        ),
        pytest.param(
            'label = "ü"; value = open\n', At("SPY204", 1, "open"), id="refused-builtin",
        ),
        pytest.param(
            "try:\n    pass\nexcept ValueError as _é:\n    pass\n",
            At("SPY201", 3, "_é"), id="except-as-non-ascii",
        ),
        pytest.param(
            'é = "ä"; from books import crm as _c\n', At("SPY201", 1, "_c"), id="alias",
        ),
        pytest.param(
            'x = "ß"; x.y = 1\n', At("SPY111", 1, "x.y"), id="attribute-assignment",
        ),
        pytest.param(
            'x = "€€"; y = f"{x.__class__}"\n', At("SPY202", 1, "__class__"), id="f-string",
        ),
        pytest.param("x = 'ä'; return x\n", At("SPY001", 1, "return x"), id="compile-error"),
        pytest.param("x = 'ä'; y = 007\n", At("SPY001", 1, "007", span=False),
                     id="syntax-error-reported-in-bytes"),
    ],
)
def test_columns_count_characters_not_bytes(source: str, expected: At) -> None:
    check(source, expected)


def test_positions_are_sane_for_every_diagnostic() -> None:
    for diagnostic in diagnostics_of(
        "import os\nclass A:\n    x = 'é'.__class__\n    def _f(): yield 1\n"
    ):
        assert diagnostic.code in RULES
        assert diagnostic.line >= 1 and diagnostic.col >= 1
        assert (diagnostic.end_line, diagnostic.end_col) > (diagnostic.line, diagnostic.col)

"""Name resolution: programs whose names all resolve are accepted, and the Book calls
a program makes are reported with their procedures and character positions."""

from __future__ import annotations

import pytest

from jarvis.compiler import BookCall, Compilation


def accepted(source: str) -> Compilation:
    compilation = Compilation.of(source.encode("utf-8"), "prog.spy")
    assert compilation.diagnostics == ()
    assert compilation.ok
    compile(compilation.python, "prog.py", "exec", dont_inherit=True)
    return compilation


ACCEPTED = {
    "closure": (
        "def counter(start):\n"
        "    total = [start]\n"
        "    def bump(step):\n"
        "        total[0] = total[0] + step\n"
        "        return total[0]\n"
        "    return bump\n"
        "bump = counter(1)\n"
        "print(bump(2))\n"
    ),
    "closure-over-a-parameter-of-an-outer-lambda": (
        "adder = lambda a: lambda b: a + b\n"
        "print(adder(1)(2))\n"
    ),
    "later-module-level-definitions": (
        "def main():\n"
        "    return helper(LIMIT)\n"
        "def helper(n):\n"
        "    return [scale(i) for i in range(n)]\n"
        "def scale(i):\n"
        "    return i * FACTOR\n"
        "LIMIT = 3\n"
        "FACTOR = 2\n"
        "output('result', main())\n"
    ),
    "recursion-and-mutual-recursion": (
        "def is_even(n):\n"
        "    return True if n == 0 else is_odd(n - 1)\n"
        "def is_odd(n):\n"
        "    return False if n == 0 else is_even(n - 1)\n"
        "def fact(n):\n"
        "    return 1 if n <= 1 else n * fact(n - 1)\n"
        "print(is_even(4), fact(5))\n"
    ),
    "comprehension-variables": (
        "pairs = [(i, j) for i in range(3) for j in range(i) if i + j > 1]\n"
        "squares = {n: n * n for n in range(4)}\n"
        "evens = {n for n in range(9) if n % 2 == 0}\n"
        "total = sum(x for row in [[1, 2], [3]] for x in row)\n"
        "print(pairs, squares, evens, total)\n"
    ),
    "comprehension-reads-enclosing-names": (
        "def tagged(items, tag):\n"
        "    return [f'{tag}:{item}' for item in items if item != tag]\n"
        "print(tagged(['a', 'b'], 'a'))\n"
    ),
    "lambda-defaults-read-the-enclosing-scope": (
        "base = 10\n"
        "def make():\n"
        "    offset = 2\n"
        "    return lambda x, step=offset, start=base: x + step + start\n"
        "print(make()(1))\n"
    ),
    "function-defaults": (
        "DEFAULT = 5\n"
        "def pick(value=DEFAULT, *, fallback=None):\n"
        "    return value if value is not None else fallback\n"
        "print(pick())\n"
    ),
    "except-as-names": (
        "def safe(d, key):\n"
        "    try:\n"
        "        return d[key]\n"
        "    except KeyError as missing:\n"
        "        return f'missing {missing.args}'\n"
        "    except (ValueError, TypeError) as problem:\n"
        "        raise RuntimeError('bad') from problem\n"
        "try:\n"
        "    safe({}, 'a')\n"
        "except BookError as failure:\n"
        "    print(failure.procedure, failure.status)\n"
        "except Exception as other:\n"
        "    print(other)\n"
    ),
    "tuple-and-starred-unpacking": (
        "first, *middle, last = [1, 2, 3, 4]\n"
        "(a, b), c = (1, 2), 3\n"
        "[x, [y, *zs]] = [1, [2, 3, 4]]\n"
        "for index, (key, value) in enumerate({'k': 1}.items()):\n"
        "    print(index, key, value)\n"
        "print(first, middle, last, a, b, c, x, y, zs)\n"
    ),
    "keyword-only-args-and-varargs": (
        "def call(f, *args, retries=3, timeout, **kwargs):\n"
        "    return f(*args, retries=retries, timeout=timeout, **kwargs)\n"
        "def show(*values, **options):\n"
        "    return [values, sorted(options)]\n"
        "print(call(show, 1, 2, timeout=5, mode='x'))\n"
    ),
    "augmented-assignment-of-a-local": (
        "def total(xs):\n"
        "    acc = 0\n"
        "    for x in xs:\n"
        "        acc += x\n"
        "    return acc\n"
        "count = 0\n"
        "count += total([1, 2])\n"
    ),
    "loops-with-else-break-continue": (
        "found = None\n"
        "for n in range(10):\n"
        "    if n % 2:\n"
        "        continue\n"
        "    if n > 4:\n"
        "        found = n\n"
        "        break\n"
        "else:\n"
        "    found = -1\n"
        "while found:\n"
        "    found -= 1\n"
    ),
    "runtime-builtins": (
        "name = inputs['name']\n"
        "checkpoint()\n"
        "sleep(1)\n"
        "started = now()\n"
        "print(name, started, sep=' ')\n"
        "output('greeting', f'hello {name!r:>10}')\n"
    ),
    "allowed-methods-and-fields": (
        "text = ' Ada '.strip().lower()\n"
        "parts = text.split('a')\n"
        "parts.append('x')\n"
        "table = {}\n"
        "table.setdefault('k', []).append(1)\n"
        "print(text.startswith('a'), (7).bit_length(), (0.5).is_integer())\n"
        "del table['k']\n"
        "del parts[0]\n"
    ),
    "book-calls-in-nested-expressions": (
        "from books import crm, erp\n"
        "def lead_ids(names):\n"
        "    return [crm.create_lead(name=n)['id'] for n in names if erp.allowed(n)]\n"
        "total = sum([erp.price(item=i) * 2 for i in range(3)])\n"
        "label = f\"{crm.describe(id=lead_ids(['Ada'])[0])}\"\n"
        "pick = lambda x: crm.find(x) if x else erp.find(default=crm.first())\n"
        "print(pick(1), total, label, {'k': crm.count()}[\"k\"])\n"
    ),
    "book-error-handling": (
        "from books import crm\n"
        "try:\n"
        "    crm.create_lead(name='Ada')\n"
        "except BookError as error:\n"
        "    print(error.book, error.procedure, error.error_type, error.message)\n"
        "finally:\n"
        "    print('done')\n"
    ),
    "book-named-like-a-safe-function-argument": (
        "from books import crm\n"
        "def create(name):\n"
        "    return crm.create_lead(name=name)\n"
        "print(create(name='Ada'))\n"
    ),
    "names-with-non-ascii-letters": (
        "größe = 3\n"
        "def verdoppeln(zahl):\n"
        "    return zahl * 2\n"
        "print(verdoppeln(größe))\n"
    ),
    "safe-builtins": (
        "values = sorted(map(abs, [-2, 1]), reverse=True)\n"
        "print(isinstance(values, list), len(values), repr(values), min(values))\n"
    ),
}


@pytest.mark.parametrize("source", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted(source: str) -> None:
    accepted(source)


def test_shadowing_a_safe_function_is_allowed() -> None:
    # Only runtime builtins are protected from reassignment (SPY206).
    accepted("def f(len):\n    return len\nlist = [1]\nprint(f(list))\n")


def test_undefined_name_in_one_of_many_scopes() -> None:
    compilation = Compilation.of(
        "def outer():\n"
        "    kept = 1\n"
        "    return [lambda: kept + lost + i for i in range(1)]\n"
    )
    assert [(d.code, d.line, d.message) for d in compilation.diagnostics] == [
        ("SPY205", 3, "name `lost` is not defined")
    ]


# -- Book calls ------------------------------------------------------------------


def test_books_lists_each_book_with_its_sorted_procedures() -> None:
    compilation = accepted(
        "from books import crm, erp\n"
        "crm.update_lead(id=1)\n"
        "crm.create_lead(name='Ada')\n"
        "erp.invoice(1)\n"
        "crm.create_lead(name='Bob')\n"
    )
    assert compilation.books() == {
        "crm": ["create_lead", "update_lead"],
        "erp": ["invoice"],
    }
    assert list(compilation.books()) == ["crm", "erp"]
    assert compilation.book_calls == (
        BookCall("crm", "update_lead", 2, 1),
        BookCall("crm", "create_lead", 3, 1),
        BookCall("erp", "invoice", 4, 1),
        BookCall("crm", "create_lead", 5, 1),
    )


def test_an_aliased_book_is_reported_under_its_own_name() -> None:
    compilation = accepted(
        "from books import crm as c\n"
        "def run():\n"
        "    return c.create_lead(name='Ada')\n"
        "run()\n"
    )
    assert compilation.books() == {"crm": ["create_lead"]}
    assert compilation.book_calls == (BookCall("crm", "create_lead", 3, 12),)


def test_book_calls_in_nested_expressions_are_all_found() -> None:
    compilation = accepted(ACCEPTED["book-calls-in-nested-expressions"])
    assert compilation.books() == {
        "crm": ["count", "create_lead", "describe", "find", "first"],
        "erp": ["allowed", "find", "price"],
    }
    lines = [call.line for call in compilation.book_calls]
    assert sorted(lines) == [3, 3, 4, 5, 6, 6, 6, 7]


def test_book_call_columns_count_characters() -> None:
    source = (
        "from books import crm\n"
        'greeting = "grüß dich 😀"; crm.create_lead(name="Zoë")\n'
        'label = "日本"; result = [crm.find(label), crm.count()]\n'
    )
    compilation = accepted(source)
    lines = source.split("\n")
    assert compilation.book_calls == (
        BookCall("crm", "create_lead", 2, lines[1].index("crm.") + 1),
        BookCall("crm", "find", 3, lines[2].index("crm.find") + 1),
        BookCall("crm", "count", 3, lines[2].index("crm.count") + 1),
    )
    # The byte offsets differ: a column must not be one.
    assert compilation.book_calls[0].col != lines[1].encode().index(b"crm.") + 1


def test_a_program_without_books_calls_none() -> None:
    compilation = accepted("print('hello')\n")
    assert compilation.books() == {}
    assert compilation.book_calls == ()


def test_an_imported_book_that_is_never_called_is_not_listed() -> None:
    assert accepted("from books import crm, erp\nerp.ping()\n").books() == {"erp": ["ping"]}


def test_refused_programs_still_report_their_book_calls() -> None:
    compilation = Compilation.of("from books import crm\ncrm.create_lead(name='Ada')\nx = eval\n")
    assert not compilation.ok
    assert compilation.books() == {"crm": ["create_lead"]}


def test_emitted_python_reaches_books_through_the_runtime_table() -> None:
    python = accepted("from books import crm as c\nc.ping()\n").python
    assert "from books" not in python
    assert "c = _jv_books['crm']" in python

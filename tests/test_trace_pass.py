"""The trace pass: which expressions and statements get hooks, where their sites are,
and that an instrumented program behaves exactly like the original.

The differential test at the end runs every spec program, every example and the
programs below under the plain reference interpreter and instrumented at each trace
level, and compares what they printed, output, raised and asked of their Books.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jarvis.compiler import Compilation
from jarvis.compiler.trace import (
    EXPR_HOOK,
    FIRST_EXPR_HOOK,
    LOOP_EXPR_HOOK,
    MAX_SITE_TEXT,
    STMT_HOOK,
    Site,
    TraceLevel,
    instrument,
)
from jarvis.compiler.validate import book_imports
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.builtins import books_importer, make_builtins, set_inputs
from jarvis.runtime.reference import ReferenceEffects, run_reference
from jarvis.runtime.sinks import MemorySink
from jarvis.runtime.trace import TraceEvent, Tracer

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tests" / "spec"
EXAMPLES = ROOT / "examples"
LEVELS: tuple[TraceLevel, ...] = ("statements", "full")


def compiled(text: str) -> Compilation:
    compilation = Compilation.of(text, "<test>")
    assert compilation.ok, compilation.diagnostics
    return compilation


def sites_of(text: str, level: TraceLevel = "full") -> tuple[Site, ...]:
    compilation = compiled(text)
    assert compilation.tree is not None and compilation.source is not None
    return instrument(compilation.tree, compilation.source, level)[1]


def traced(text: str) -> list[str]:
    """The texts of the expression sites of a program, in site order."""
    return [site.text for site in sites_of(text) if site.kind == "expr"]


def hook_calls(tree: ast.AST) -> list[tuple[str, int]]:
    """(hook name, K) of every hook call in a tree."""
    calls: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        name = node.func.id
        if name in (EXPR_HOOK, LOOP_EXPR_HOOK, STMT_HOOK, FIRST_EXPR_HOOK):
            ks = node.args[:2] if name == FIRST_EXPR_HOOK else node.args[:1]
            for k, hook in zip(ks, (name,) if len(ks) == 1 else (STMT_HOOK, EXPR_HOOK),
                               strict=True):
                assert isinstance(k, ast.Constant) and isinstance(k.value, int)
                calls.append((hook, k.value))
    return calls


# -- running ----------------------------------------------------------------------------


@dataclass
class Run:
    """What a program did: the reference's record, plus the trace when instrumented."""

    prints: list[str]
    outputs: dict[str, Any]
    book_calls: list[tuple[str, str, list[Any], dict[str, Any]]]
    error: str | None
    events: list[TraceEvent] = field(default_factory=list)


def run_instrumented(
    source: str | bytes,
    level: TraceLevel,
    *,
    inputs: dict[str, Any] | None = None,
    books: BookRegistry | None = None,
    path: str = "<spy>",
    batch_size: int = 64,
) -> Run:
    """Run the instrumented program the way `run_reference` runs the original: same
    builtins, inputs and Books, with the hooks of a real Tracer bound."""
    compilation = Compilation.of(source, path)
    assert compilation.ok, compilation.diagnostics
    assert compilation.tree is not None and compilation.source is not None
    tree, sites = instrument(compilation.tree, compilation.source, level)
    registry = books or BookRegistry()
    imported = sorted(set(book_imports(compilation.tree).values()))
    effects = ReferenceEffects(registry)
    table = make_builtins(effects, imported)
    set_inputs(table, inputs or {})
    table["__import__"] = books_importer(table.pop("_jv_book_table"))
    sink = MemorySink()
    tracer = Tracer("test", sites, sink, batch_size=batch_size)
    namespace: dict[str, Any] = {"__builtins__": table, "__name__": "__spy__"}
    namespace.update(tracer.hooks())
    error: str | None = None
    try:
        exec(compile(tree, path, "exec", dont_inherit=True), namespace)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    tracer.flush()
    calls = [(c.book, c.procedure, c.args, c.kwargs) for c in effects.book_calls]
    return Run(effects.prints, effects.outputs, calls, error, sink.events)


def run_plain(
    source: str | bytes,
    *,
    inputs: dict[str, Any] | None = None,
    books: BookRegistry | None = None,
    path: str = "<spy>",
) -> Run:
    result = run_reference(source, inputs=inputs, books=books, path=path)
    error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
    calls = [(c.book, c.procedure, c.args, c.kwargs) for c in result.book_calls]
    return Run(result.prints, result.outputs, calls, error)


def expr_values(run: Run) -> list[tuple[str, str]]:
    return [(e.expr, e.value) for e in run.events if e.kind == "expr"]


# -- levels and the tree ----------------------------------------------------------------


def test_off_returns_the_tree_unchanged_and_no_sites() -> None:
    compilation = compiled("x = 1 + 2\n")
    assert compilation.tree is not None and compilation.source is not None
    tree, sites = instrument(compilation.tree, compilation.source, "off")
    assert tree is compilation.tree
    assert sites == ()


@pytest.mark.parametrize("level", LEVELS)
def test_the_input_tree_is_not_modified(level: TraceLevel) -> None:
    compilation = compiled(
        "def f(a, b=[1]):\n    return [x * a for x in b if x]\n"
        "d = {}\nd['k'] = f(2)\nprint(d['k'])\n"
    )
    assert compilation.tree is not None and compilation.source is not None
    before = ast.dump(compilation.tree, include_attributes=True)
    tree, _ = instrument(compilation.tree, compilation.source, level)
    assert ast.dump(compilation.tree, include_attributes=True) == before
    assert tree is not compilation.tree


def test_an_unknown_level_is_refused() -> None:
    compilation = compiled("x = 1\n")
    assert compilation.tree is not None and compilation.source is not None
    with pytest.raises(ValueError, match="unknown trace level"):
        instrument(compilation.tree, compilation.source, "verbose")  # type: ignore[arg-type]


@pytest.mark.parametrize("level", LEVELS)
def test_every_k_is_an_index_of_the_site_table_of_the_right_kind(level: TraceLevel) -> None:
    compilation = compiled((SPEC / "functions.spy").read_text(encoding="utf-8"))
    assert compilation.tree is not None and compilation.source is not None
    tree, sites = instrument(compilation.tree, compilation.source, level)
    calls = hook_calls(tree)
    assert sorted(k for _, k in calls) == list(range(len(sites)))
    for name, k in calls:
        assert sites[k].kind == ("stmt" if name == STMT_HOOK else "expr")
    if level == "statements":
        assert {name for name, _ in calls} == {STMT_HOOK}
    compile(tree, "<test>", "exec")


# -- which expressions are traced -------------------------------------------------------

WRAPPING: list[tuple[str, str, list[str]]] = [
    ("names and operators", "a = 1\nb = 2\nx = a + b * -a\n",
     ["a + b * -a", "a", "b * -a", "b", "-a", "a"]),
    ("literals are not traced", "x = 1\ny = -2.5\nz = 'text'\nw = None\n", []),
    ("displays are", "a = 1\nx = [a, 2]\ny = (a,)\nz = {a: 'v'}\nw = {a}\n",
     ["[a, 2]", "a", "(a,)", "a", "{a: 'v'}", "a", "{a}", "a"]),
    ("the callee is not, the call and arguments are", "def f(v):\n    return v\nx = f(3)\n",
     ["v", "f(3)"]),
    ("the receiver of a method call is", "xs = []\nxs.append(len(xs))\n",
     ["[]", "xs.append(len(xs))", "xs", "len(xs)", "xs"]),
    ("an attribute that is not called is", "try:\n    raise ValueError('x')\n"
     "except ValueError as e:\n    m = e.args\n",
     ["ValueError('x')", "ValueError", "e.args", "e"]),
    ("keywords and starred arguments", "def f(*a, **k):\n    return a\nxs = [1]\nkw = {}\n"
     "f(*xs, x=xs, **kw)\n",
     ["a", "[1]", "{}", "f(*xs, x=xs, **kw)", "xs", "xs", "kw"]),
    ("assignment targets are not, subscript parts are",
     "d = {}\nk = 'a'\nd[k] = 1\nd[k] += 2\ndel d[k]\na, *b = [1, 2]\n",
     ["{}", "d", "k", "d", "k", "d", "k", "[1, 2]"]),
    ("subscripts and slices", "xs = [1, 2, 3]\nn = 2\ny = xs[n]\nz = xs[1:n]\nw = xs[::2]\n",
     ["[1, 2, 3]", "xs[n]", "xs", "n", "xs[1:n]", "xs", "n", "xs[::2]", "xs"]),
    ("boolean operators, conditional expressions, comparisons",
     "a = 1\nb = 0\nx = a and b or not a\ny = a if b else b\nz = a < b <= a\n",
     ["a and b or not a", "a and b", "a", "b", "not a", "a",
      "a if b else b", "b", "a", "b",
      "a < b <= a", "a", "b", "a"]),
    ("lambdas: the body, not the lambda", "f = lambda x, y=len([]): x + y\n",
     ["len([])", "[]", "x + y", "x", "y"]),
    ("comprehensions: their parts, not the comprehension",
     "xs = [1, 2]\nys = [x * 2 for x in xs if x]\nd = {x: x for x in xs}\n"
     "s = sum(x for x in xs)\n",
     ["[1, 2]", "xs", "x", "x * 2", "x", "xs", "x", "x", "sum(x for x in xs)", "xs", "x"]),
    ("f-strings: the string and its fields, not the text parts",
     "a = 1\nw = 5\ns = f'{a}-{a!r:>{w}}'\n",
     ["f'{a}-{a!r:>{w}}'", "a", "a", "w"]),
    ("statements' expressions", "def f(a=[]):\n    assert a == [], 'no'\n    return a\n"
     "for x in f():\n    pass\nwhile f():\n    break\nif f():\n    pass\n",
     ["[]", "a == []", "a", "[]", "a", "f()", "f()", "f()"]),
    ("raise and except", "try:\n    raise KeyError('k') from None\n"
     "except (KeyError, ValueError):\n    pass\n",
     ["KeyError('k')", "(KeyError, ValueError)", "KeyError", "ValueError"]),
]


@pytest.mark.parametrize(("name", "program", "expected"), WRAPPING, ids=[w[0] for w in WRAPPING])
def test_traced_expressions(name: str, program: str, expected: list[str]) -> None:
    assert traced(program) == expected


def test_book_names_and_procedures_are_not_traced_their_arguments_are() -> None:
    program = "from books import crm\nname = 'Ada'\nlead = crm.create_lead(name=name)\n"
    assert traced(program) == ["crm.create_lead(name=name)", "name"]


def test_summarized_sites_are_subscript_containers_membership_and_receivers() -> None:
    program = (
        "d = {'k': [1]}\nxs = [1]\n"
        "a = d['k']\nd['j'] = 2\nb = 'k' in d\nc = 1 not in xs\nxs.append(3)\n"
        "e = len(xs)\nf = xs == xs\n"
    )
    flags = {(site.text, site.line): site.summarize for site in sites_of(program)
             if site.kind == "expr"}
    assert flags[("d", 3)] and flags[("d", 4)] and flags[("d", 5)] and flags[("xs", 6)]
    assert flags[("xs", 7)]
    assert not flags[("xs", 8)] and not flags[("xs", 9)]
    assert not flags[("'k' in d", 5)]


def test_repeated_expressions_use_the_checked_hook() -> None:
    program = (
        "xs = [1, 2]\n"
        "ys = [x + 1 for x in xs if x for y in [x]]\n"
        "f = lambda v=len(xs): v * 2\n"
    )
    compilation = compiled(program)
    assert compilation.tree is not None and compilation.source is not None
    tree, sites = instrument(compilation.tree, compilation.source, "full")
    hooks = {sites[k].text + f"@{sites[k].line}": name for name, k in hook_calls(tree)
             if sites[k].kind == "expr"}
    assert hooks["xs@2"] == EXPR_HOOK  # the first iterable runs once
    assert hooks["x + 1@2"] == hooks["x@2"] == hooks["[x]@2"] == LOOP_EXPR_HOOK
    assert hooks["len(xs)@3"] == EXPR_HOOK  # a default runs once
    assert hooks["v * 2@3"] == LOOP_EXPR_HOOK


# -- statements -------------------------------------------------------------------------


def statement_texts(program: str, level: TraceLevel = "statements") -> list[str]:
    return [site.text for site in sites_of(program, level) if site.kind == "stmt"]


def test_every_statement_gets_a_hook_at_every_depth() -> None:
    program = (
        '"""A docstring is not a statement that runs."""\n'
        "from books import echo\n"
        "def f(n):\n"
        '    """Nor here."""\n'
        "    total = 0\n"
        "    for i in range(n):\n"
        "        if i % 2:\n"
        "            continue\n"
        "        elif i > 5:\n"
        "            break\n"
        "        else:\n"
        "            total += i\n"
        "    else:\n"
        "        pass\n"
        "    while total > 100:\n"
        "        total -= 1\n"
        "    try:\n"
        "        del [1][0]\n"
        "    except IndexError as e:\n"
        "        raise\n"
        "    else:\n"
        "        assert total\n"
        "    finally:\n"
        "        n = 0\n"
        "    return total\n"
        "print(f(10))\n"
    )
    assert statement_texts(program) == [
        "from books import echo",
        "def f(n):",
        "total = 0",
        "for i in range(n):",
        "if i % 2:",
        "continue",
        "elif i > 5:",
        "break",
        "total += i",
        "pass",
        "while total > 100:",
        "total -= 1",
        "try:",
        "del [1][0]",
        "raise",
        "assert total",
        "n = 0",
        "return total",
        "print(f(10))",
    ]
    assert statement_texts(program, "full") == statement_texts(program)
    run = run_instrumented(program, "statements", books=_echo_registry())
    assert run.prints == ["6\n"]


def _echo_registry() -> BookRegistry:
    return BookRegistry.load(SPEC / "books.toml")


def test_statement_hooks_come_first_in_the_emitted_code() -> None:
    compilation = compiled('def f():\n    """doc"""\n    return 1\n')
    assert compilation.tree is not None and compilation.source is not None
    tree, _ = instrument(compilation.tree, compilation.source, "statements")
    code = ast.unparse(tree)
    assert [line for line in code.splitlines() if line] == [
        "_jv_s(0)", "def f():", '    """doc"""', "    _jv_s(1)", "    return 1",
    ]


FOLDING: list[tuple[str, bool]] = [
    ("x = a + b", True),
    ("x = f(a)", True),  # loading `f` does nothing observable: `a` is the first hook
    ("x = f()", False),  # the call runs before any hook of the statement
    ("x = g() + a", False),
    ("x = a and f()", True),
    ("x = f() and a", False),
    ("x = [1, a]", True),
    ("x = [1, 2]", True),  # the display itself is the first hook
    ("x = 1", False),  # no expression hook at all
    ("d[a] += b", True),
    ("while a > b:\n    break", False),  # the test runs again at each iteration
    ("if a < b:\n    pass", True),
    ("for i in d:\n    pass", True),
    ("x = [i for i in d]", True),
    ("x = [i for i in f()]", False),
    ("x = lambda v=a: v", True),
    ("x = (lambda: 1)()", False),
    ("x = f'{a}'", True),
    ("x = a if f() else b", False),  # the test runs first
    ("x = f() if a else b", True),
]


@pytest.mark.parametrize(("statement", "folded"), FOLDING, ids=[f[0] for f in FOLDING])
def test_the_statement_hook_folds_into_a_first_expression_without_effects(
    statement: str, folded: bool
) -> None:
    program = (
        "def f():\n    return 1\ndef g():\n    return 2\na = 1\nb = 2\nd = {1: 2}\n"
        + statement + "\n"
    )
    compilation = compiled(program)
    assert compilation.tree is not None and compilation.source is not None
    tree, sites = instrument(compilation.tree, compilation.source, "full")
    last = tree.body[-1] if folded else tree.body[-2]
    calls = hook_calls(last)
    first_names = {node.func.id for node in ast.walk(tree.body[-1])
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    if folded:
        assert FIRST_EXPR_HOOK in first_names
        assert not (isinstance(tree.body[-2], ast.Expr) and hook_calls(tree.body[-2])
                    and sites[hook_calls(tree.body[-2])[0][1]].line == 8)
    else:
        assert FIRST_EXPR_HOOK not in first_names
        assert calls == [(STMT_HOOK, calls[0][1])] and sites[calls[0][1]].line == 8
    # Folded or not, the events are the same: the statement's first.
    events = run_instrumented(program, "full").events
    here = [(e.kind, e.expr) for e in events if e.line == 8]
    assert here[0] == ("stmt", statement.split("\n")[0])


def test_a_folded_statement_whose_first_name_is_unbound_has_no_statement_event() -> None:
    run = run_instrumented("def f():\n    return y\nf()\ny = 1\n", "full")
    assert run.error == "NameError: name 'y' is not defined"
    assert [(e.kind, e.expr) for e in run.events if e.line == 2] == []


# -- site positions ---------------------------------------------------------------------


def site_at(program: str, text: str, kind: str = "expr") -> Site:
    matches = [s for s in sites_of(program) if s.text == text and s.kind == kind]
    assert matches, f"no {kind} site {text!r}"
    return matches[0]


def test_positions_are_one_based_character_columns_with_an_exclusive_end() -> None:
    program = "total = 0\nx = 5\ntotal = total + x\n"
    site = site_at(program, "total + x")
    assert (site.line, site.col, site.end_line, site.end_col) == (3, 9, 3, 18)
    assert program.splitlines()[2][site.col - 1 : site.end_col - 1] == "total + x"


def test_positions_count_characters_on_non_ascii_lines() -> None:
    program = "naïve = 'żółw'\nwynik = 'ąę' + naïve + '😀' + naïve\n"
    sites = [s for s in sites_of(program) if s.text == "naïve"]
    line = program.splitlines()[1]
    assert [(s.line, s.col, s.end_col) for s in sites] == [(2, 16, 21), (2, 30, 35)]
    for site in sites:
        assert line[site.col - 1 : site.end_col - 1] == "naïve"
    whole = site_at(program, "'ąę' + naïve + '😀' + naïve")
    assert (whole.col, whole.end_col) == (9, len(line) + 1)


def test_multi_line_expressions_keep_their_text_and_span() -> None:
    program = "a = 1\nb = 2\nx = (a +\n     b)\n"
    site = site_at(program, "a +\n     b")
    assert (site.line, site.col, site.end_line, site.end_col) == (3, 6, 4, 7)
    statement = site_at(program, "x = (a +\n     b)", "stmt")
    assert (statement.line, statement.col, statement.end_line, statement.end_col) == (3, 1, 4, 8)


def test_compound_statements_span_their_header() -> None:
    program = (
        "xs = [1]\n"
        "for x in xs:  # a comment: with a colon\n"
        "    pass\n"
        "if (x >\n"
        "        0):\n"
        "    pass\n"
        "def f(a=lambda: 1, b={'k': 2}): return a\n"
        "try: pass\n"
        "finally: pass\n"
    )
    header = site_at(program, "for x in xs:", "stmt")
    assert (header.line, header.col, header.end_line, header.end_col) == (2, 1, 2, 13)
    header = site_at(program, "if (x >\n        0):", "stmt")
    assert (header.line, header.end_line, header.end_col) == (4, 5, 12)
    header = site_at(program, "def f(a=lambda: 1, b={'k': 2}):", "stmt")
    assert (header.line, header.col, header.end_col) == (7, 1, 32)
    assert site_at(program, "try:", "stmt").end_col == 5


def test_long_site_texts_are_clipped() -> None:
    long_list = "[" + ", ".join(str(i) for i in range(200)) + "]"
    program = f"x = {long_list}\n"
    site = next(s for s in sites_of(program) if s.kind == "expr")
    assert len(site.text) == MAX_SITE_TEXT
    assert site.text.endswith("…")
    assert long_list.startswith(site.text[:-1])
    assert site.end_col == len(program.splitlines()[0]) + 1


# -- behaviour --------------------------------------------------------------------------


def test_evaluation_order_is_kept() -> None:
    program = (
        "def f(tag, value):\n"
        "    print(tag)\n"
        "    return value\n"
        "d = {}\n"
        "d[f('key', 'k')] = f('value', 1) + f('right', 2) * f('far', 3)\n"
        "x = f('a', 0) and f('never', 1) or f('c', [1])[f('i', 0)]\n"
        "y = f('lo', 1) < f('mid', 0) < f('never', 2)\n"
        "z = [f('elt', i) for i in f('iter', [1, 2]) if f('cond', i)]\n"
        "w = f(f('inner', 'outer'), 0) if f('test', True) else f('never', 0)\n"
        "print(f'{f(\"fmt\", 1)}{f(\"fmt2\", 2)}')\n"
    )
    plain = run_plain(program)
    order = [
        "value", "right", "far", "key", "a", "c", "i", "lo", "mid", "iter", "cond", "elt",
        "cond", "elt", "test", "inner", "outer", "fmt", "fmt2", "12",
    ]
    assert [line.strip() for line in plain.prints] == order
    for level in LEVELS:
        assert run_instrumented(program, level).prints == plain.prints


def test_values_are_recorded_after_each_evaluation_in_order() -> None:
    run = run_instrumented("a = 2\nb = 3\nc = a * b + 1\n", "full")
    assert expr_values(run) == [("a", "2"), ("b", "3"), ("a * b", "6"), ("a * b + 1", "7")]
    kinds = [e.kind for e in run.events]
    assert kinds == ["stmt", "stmt", "stmt", "expr", "expr", "expr", "expr"]
    assert [e.seq for e in run.events] == list(range(1, 8))


def test_short_circuits_leave_no_event_for_what_did_not_run() -> None:
    run = run_instrumented("a = 0\nb = a and 1 / a\nc = 3 < a < 1 / a\n", "full")
    assert expr_values(run) == [
        ("a", "0"), ("a and 1 / a", "0"),
        ("a", "0"), ("3 < a < 1 / a", "False"),
    ]


def test_an_exception_inside_an_expression_is_the_same_and_earlier_events_remain() -> None:
    program = "xs = [1]\ny = 5\nz = y + xs[y]\n"
    plain = run_plain(program)
    run = run_instrumented(program, "full")
    assert plain.error == run.error == "IndexError: list index out of range"
    assert expr_values(run)[-3:] == [("y", "5"), ("xs", "[… (1 item)]"), ("y", "5")]


def test_identity_is_kept() -> None:
    program = (
        "xs = []\nys = xs\nassert (xs if True else None) is ys\n"
        "xs.append(1)\nassert ys == [1]\n"
    )
    assert run_instrumented(program, "full").error is None


# -- differential: instrumented programs behave like the original ------------------------

OWN_PROGRAMS: dict[str, str] = {
    "closures_and_recursion": (
        "def make(n):\n"
        "    def add(x):\n"
        "        return x + n\n"
        "    return add\n"
        "def fact(n):\n"
        "    return 1 if n <= 1 else n * fact(n - 1)\n"
        "print(make(3)(4), fact(10), sorted([3, 1, 2], key=lambda v: -v))\n"
        "output('r', [make(i)(i) for i in range(5)])\n"
    ),
    "mutation_through_aliases": (
        "a = {'xs': []}\n"
        "b = a['xs']\n"
        "for i in range(5):\n"
        "    b.append(i)\n"
        "    a['xs'][0] += i\n"
        "del a['xs'][1]\n"
        "output('a', a)\n"
    ),
    "exceptions_everywhere": (
        "def risky(x):\n"
        "    if x > 2:\n"
        "        raise ValueError(f'too big: {x}')\n"
        "    return x\n"
        "total = 0\n"
        "for i in range(5):\n"
        "    try:\n"
        "        total += risky(i)\n"
        "    except ValueError as e:\n"
        "        print('caught', e)\n"
        "    finally:\n"
        "        total += 100\n"
        "output('total', total)\n"
        "risky(total)\n"
    ),
    "generators_consumed_later": (
        "g = (x * x for x in range(4))\n"
        "print(next(g))\n"
        "print(list(g), any(x > 2 for x in [1, 5]), dict(zip('ab', [1, 2])))\n"
    ),
    "name_used_before_it_is_bound": "def f():\n    return y\nprint(f())\ny = 1\n",
}


def _cases() -> list[tuple[str, Path | str]]:
    cases: list[tuple[str, Path | str]] = [
        (path.name, path) for path in sorted([*SPEC.glob("*.spy"), *EXAMPLES.glob("*.spy")])
    ]
    cases += list(OWN_PROGRAMS.items())
    return cases


@pytest.mark.parametrize(("name", "program"), _cases(), ids=[c[0] for c in _cases()])
def test_instrumented_programs_behave_like_the_original(name: str, program: Path | str) -> None:
    if isinstance(program, Path):
        source: str | bytes = program.read_bytes()
        inputs_file = program.with_suffix(".inputs.json")
        inputs = json.loads(inputs_file.read_text()) if inputs_file.exists() else {}
        registry_file = program.parent / "books.toml"
        path = str(program)
    else:
        source, inputs, registry_file, path = program, {}, SPEC / "books.toml", f"<{name}>"
    plain = run_plain(source, inputs=inputs, books=BookRegistry.load(registry_file), path=path)
    for level in LEVELS:
        run = run_instrumented(source, level, inputs=inputs,
                               books=BookRegistry.load(registry_file), path=path)
        assert (run.prints, run.outputs, run.book_calls, run.error) == (
            plain.prints, plain.outputs, plain.book_calls, plain.error
        ), level
        assert [e.seq for e in run.events] == list(range(1, len(run.events) + 1))

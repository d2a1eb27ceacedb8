"""Fuzzing the front end for escapes: whatever the compiler accepts reaches only SPy's surface.

The property: for any source text the validator and resolver accept, the code the
compiler generates names nothing outside the allow-lists. Every name it reads or binds
is the program's own (checked by the validator: no `_` prefix), a SPy builtin, one of
the compiler's `_jv_` names or one of RestrictedPython's guard names; every attribute
it reads is in `language.ATTRIBUTES`, one of the compiler's own attributes on its own
objects, or a procedure of an imported Book; the code objects hold no other names.
A source that reaches anything else (a dunder, a frame attribute, `format`, a refused
builtin) must have been refused.

Inputs come from three places: programs drawn from a small grammar of attack shapes
(attribute walks, guard-name bindings, format strings, unicode look-alikes, refused
constructs) that the compiler mostly refuses; valid programs from `spygen`; and Python
programs from the grammar (hypothesmith), of which the few that are accepted count.

The run is bounded (about half a minute). `JARVIS_FUZZ_EXAMPLES=N` asks for N examples
of each test instead, with a random seed each run: the longer nightly search that
docs/testing.md describes.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path

import hypothesmith
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from spygen import spy_programs
from test_restrict import compile_program

from jarvis.compiler import Compilation
from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.language import ATTRIBUTES, BUILTINS, CONSTANTS, REFUSED_BUILTINS
from jarvis.compiler.validate import book_imports
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.execution import Execution, error_type_name
from jarvis.runtime.guards import guard_table
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import Limits, load_settings

EXAMPLES_VARIABLE = "JARVIS_FUZZ_EXAMPLES"
NIGHTLY = EXAMPLES_VARIABLE in os.environ


def _examples(bounded: int) -> int:
    return int(os.environ[EXAMPLES_VARIABLE]) if NIGHTLY else bounded


def fuzz_settings(bounded: int) -> settings:
    """`bounded` examples in the test command, the same ones every run; the nightly
    number, drawn afresh, when JARVIS_FUZZ_EXAMPLES is set."""
    return settings(
        max_examples=_examples(bounded),
        deadline=None,
        derandomize=not NIGHTLY,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture],
    )


GUARDS = frozenset(guard_table())
INTERNAL_PREFIX = "_jv_"
INTERNAL_ATTRIBUTES = frozenset({"pc", "locals", "value", "free", "get", "append", "add"})
"""What the generated code reads on the compiler's own objects (restrict.py)."""
_INTERNAL_OWNER = re.compile(r"_jv_(F|b_\w+|H_\d+|acc)\Z")


# -- the property ----------------------------------------------------------------------


def program_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """The names a program binds or uses, and the procedures it calls on its Books."""
    names: set[str] = set()
    procedures: set[str] = set()
    books = set(book_imports(tree))
    for node in ast.walk(tree):
        bound = _bound_name(node)
        if bound is not None:
            names.add(bound)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in books):
            procedures.add(node.attr)
    return names, procedures


def _bound_name(node: ast.AST) -> str | None:
    """The name `node` binds or reads, if it is a name, parameter, def, handler or alias."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.arg):
        return node.arg
    if isinstance(node, (ast.FunctionDef, ast.ExceptHandler)):
        return node.name
    if isinstance(node, ast.alias):
        return node.asname or node.name
    return None


def outside_the_allow_lists(compilation: Compilation, program: CompiledProgram) -> list[str]:
    """Every name and attribute of the generated code that the allow-lists do not cover."""
    tree = compilation.tree
    assert tree is not None
    own, procedures = program_names(tree)
    assert not any(name.startswith("_") for name in own), "the validator let a `_` name in"
    books = set(book_imports(tree))

    def name_ok(name: str) -> bool:
        if name.startswith(INTERNAL_PREFIX) or name in GUARDS:
            return True
        if name.startswith("_"):
            return False
        return name in own or name in BUILTINS or name in CONSTANTS

    found: list[str] = []
    generated = ast.parse(program.python)
    for node in ast.walk(generated):
        if isinstance(node, ast.Name) and not name_ok(node.id):
            found.append(f"name {node.id!r}")
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if node.attr in ATTRIBUTES:
                continue
            if owner is not None and _INTERNAL_OWNER.match(owner) and (
                    node.attr in INTERNAL_ATTRIBUTES):
                continue
            if owner in books and node.attr in procedures and not node.attr.startswith("_"):
                continue
            found.append(f"attribute {node.attr!r}")
    allowed_attributes = ATTRIBUTES | INTERNAL_ATTRIBUTES | procedures
    for code in program.codes:
        found += [f"code name {name!r} in {code.co_name}" for name in code.co_names
                  if not (name_ok(name) or name in allowed_attributes)]
    return found


def check_accepted(source: str, trace: str = "statements") -> bool:
    """Compile `source`; if the front end accepts it, check the property. True if accepted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compilation = Compilation.of(source, "fuzz.spy")
        if not compilation.ok:
            return False
        program = compilation.program(trace)  # type: ignore[arg-type]
    assert outside_the_allow_lists(compilation, program) == [], source
    return True


# -- attack shapes -----------------------------------------------------------------------

SAFE_NAMES = ["x", "items", "total", "value", "helper", "host"]
DANGEROUS_NAMES = [
    "_", "_x", "__builtins__", "__import__", "__class__", "__name__", "_getattr_",
    "_getitem_", "_getiter_", "_write_", "_print_", "_inplacevar_", "_apply_",
    "_unpack_sequence_", "_jv_books", "_jv_mkfn", "_jv_F", "_jv_format", "printed",
]
BUILTIN_NAMES = sorted(BUILTINS)
REFUSED_NAMES = sorted(REFUSED_BUILTINS)
DANGEROUS_ATTRIBUTES = [
    "__class__", "__bases__", "__base__", "__subclasses__", "__globals__", "__builtins__",
    "__code__", "__dict__", "__reduce__", "__reduce_ex__", "__self__", "__getattribute__",
    "__traceback__", "__context__", "__cause__", "__init__", "__mro__", "mro", "format",
    "format_map", "gi_frame", "gi_code", "f_back", "f_globals", "f_locals", "f_builtins",
    "tb_frame", "tb_next", "cr_frame", "ag_frame", "obj", "name", "value", "with_traceback",
    "encode", "send", "throw", "close", "_jv_effects", "_jv_book", "binder", "cells",
    "pc", "locals", "free", "__call__",
]
SAFE_ATTRIBUTES = ["upper", "join", "get", "keys", "items", "copy", "append", "args",
                   "real", "split", "count"]


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and c != "_" else c for c in text)


def _math_bold(text: str) -> str:
    def bold(c: str) -> str:
        if "a" <= c <= "z":
            return chr(0x1D41A + ord(c) - ord("a"))
        if "A" <= c <= "Z":
            return chr(0x1D400 + ord(c) - ord("A"))
        return c
    return "".join(bold(c) for c in text)


def _ligatures(text: str) -> str:
    return text.replace("fi", "\ufb01").replace("ff", "\ufb00")


def _spellings(word: str) -> st.SearchStrategy[str]:
    """`word`, or a compatibility spelling that NFKC turns back into it."""
    variants = {word, _fullwidth(word), _math_bold(word), _ligatures(word)}
    usable = sorted(v for v in variants if unicodedata.normalize("NFKC", v) == word
                    and (v.isidentifier() or v == word))
    return st.sampled_from(usable)


# Safe words are drawn more often than dangerous ones, so that a fair share of the
# programs is accepted and the property has something to check.
names = st.one_of(
    st.sampled_from(SAFE_NAMES), st.sampled_from(SAFE_NAMES), st.sampled_from(SAFE_NAMES),
    st.sampled_from(BUILTIN_NAMES), st.sampled_from(DANGEROUS_NAMES + REFUSED_NAMES),
).flatmap(_spellings)
attributes = st.one_of(
    st.sampled_from(SAFE_ATTRIBUTES), st.sampled_from(SAFE_ATTRIBUTES),
    st.sampled_from(DANGEROUS_ATTRIBUTES),
).flatmap(_spellings)
strings = st.sampled_from([
    "'x'", "'{0.__class__}'", "'{x.__init__.__globals__}'", "'%(__class__)s'", "''",
    f"'__{_fullwidth('class')}__'", "inputs['canary']",
])


def expressions(depth: int = 3) -> st.SearchStrategy[str]:
    leaves = st.one_of(names, strings, st.integers(-3, 10**6).map(str),
                       st.just("()"), st.just("[]"), st.just("{}"))
    if depth == 0:
        return leaves
    inner = expressions(depth - 1)
    return st.one_of(
        leaves,
        st.tuples(inner, attributes).map(lambda p: f"{p[0]}.{p[1]}"),
        st.tuples(inner, st.lists(inner, max_size=2)).map(
            lambda p: f"{p[0]}({', '.join(p[1])})"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}[{p[1]}]"),
        st.tuples(inner, st.sampled_from(["r", "s", "a"]), inner).map(
            lambda p: f"f'{{{p[0]}!{p[1]}:{{{p[2]}}}}}'"),
        st.tuples(strings, inner).map(lambda p: f"({p[0]} % {p[1]})"),
        st.tuples(names, inner, inner).map(lambda p: f"(lambda {p[0]}={p[1]}: {p[2]})"),
        st.tuples(inner, names, inner).map(lambda p: f"[{p[0]} for {p[1]} in {p[2]}]"),
        st.tuples(inner, names, inner).map(lambda p: f"({p[0]} for {p[1]} in {p[2]})"),
        st.tuples(names, inner).map(lambda p: f"({p[0]} := {p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]} + {p[1]})"),
    )


def _parameters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(names, max_size=3, unique=True))
    if parts and draw(st.booleans()):
        parts.insert(draw(st.integers(1, len(parts))), "/")
    if draw(st.booleans()):
        parts.append(f"*{draw(names)}")
    if draw(st.booleans()):
        parts.append(f"{draw(names)}={draw(expressions(1))}")
    if draw(st.booleans()):
        parts.append(f"**{draw(names)}")
    return ", ".join(parts)


@st.composite
def statements(draw: st.DrawFn) -> str:
    expression = draw(expressions())
    name = draw(names)
    kind = draw(st.sampled_from(
        ["assign", "assign", "def", "def", "try", "for", "print", "output", "books",
         "import", "global", "setattr", "del", "class"]))
    if kind == "assign":
        return f"{name} = {expression}"
    if kind == "def":
        return f"def {name}({_parameters(draw)}):\n    return {expression}"
    if kind == "try":
        return (f"try:\n    {expression}\nexcept {draw(names)} as {name}:\n"
                f"    {draw(expressions(2))}")
    if kind == "for":
        return f"for {name} in {expression}:\n    pass"
    if kind == "print":
        return f"print({expression})"
    if kind == "output":
        return f"output('r', {expression})"
    if kind == "books":
        alias = draw(st.one_of(st.none(), names))
        return f"from books import {name}" + (f" as {alias}" if alias else "")
    if kind == "import":
        return draw(st.sampled_from([f"import {name}", f"from {name} import {draw(names)}"]))
    if kind == "global":
        return f"def outer():\n    global {name}\n    {name} = {expression}"
    if kind == "setattr":
        return f"{expression}.{draw(attributes)} = {draw(expressions(1))}"
    if kind == "del":
        return f"del {expression}"
    return f"class {name}:\n    {draw(attributes)} = {expression}"


PRELUDE = (
    "from books import host\n"
    "x = 1\nitems = [1, 2]\ntotal = 0\nvalue = 'v'\n"
    "def helper(*args, **kwargs):\n    return args\n"
)
"""Defines the safe names, so that programs fail for what they attempt, not for an
undefined name."""


@st.composite
def attack_programs(draw: st.DrawFn) -> str:
    body = draw(st.lists(statements(), min_size=1, max_size=4))
    return PRELUDE + "\n".join(body) + "\n"


# -- the tests ---------------------------------------------------------------------------


@fuzz_settings(150)
@given(attack_programs())
def test_attack_shapes_accepted_only_within_the_allow_lists(source: str) -> None:
    check_accepted(source)


def test_attack_shapes_are_sometimes_accepted() -> None:
    """The grammar of attack shapes also yields programs the compiler accepts (so the
    property above is exercised): the dangerous words used as SPy allows, as strings,
    keys and shadowed names, and the safe ones around them."""
    accepted: list[str] = []
    drawn: list[str] = []

    @fuzz_settings(60)
    @given(attack_programs())
    def collect(source: str) -> None:
        drawn.append(source)
        if check_accepted(source):
            accepted.append(source)

    collect()
    assert len(accepted) >= max(5, len(drawn) // 20), (len(accepted), len(drawn))


@fuzz_settings(25)
@given(spy_programs(statements=25), st.sampled_from(["off", "statements", "full"]))
def test_valid_programs_reach_only_the_allow_lists(source: str, trace: str) -> None:
    assert check_accepted(source, trace)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@fuzz_settings(40)
@given(hypothesmith.from_grammar())
def test_python_from_the_grammar_is_refused_or_within_the_allow_lists(source: str) -> None:
    check_accepted(source)


CORPUS_BOOKS = Path(__file__).resolve().parent / "security" / "books.toml"
CONFINED = Limits(max_steps=20_000, max_seconds=2.0, max_cpu_seconds=2.0,
                  max_memory_bytes=256 << 20, max_book_calls=20)
"""What an accepted attack program may use when it runs: a drawn program may loop over
`iter(int, 1)` or build a list from it."""


@pytest.fixture(scope="module")
def pool() -> Iterator[ChildPool]:
    children = ChildPool(size=1)
    yield children
    children.close()


@fuzz_settings(25)
@given(source=attack_programs())
def test_accepted_attack_shapes_run_without_a_guard_refusing(source: str,
                                                             pool: ChildPool) -> None:
    """Compiled with every access guarded (no static proofs) and run in a confined child,
    an accepted program only ever meets values of the closed set the static proofs rest
    on: no guard refuses (`SandboxViolation`); it completes or fails like any program."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assume(Compilation.of(source, "fuzz.spy").ok)
        program, _ = compile_program(source, "fuzz.spy", static_proofs=False,
                                     trace="statements")
    with tempfile.TemporaryDirectory() as state, BookRegistry.load(CORPUS_BOOKS) as books:
        settings_ = load_settings(state_dir=Path(state), journal_fsync=False, limits=CONFINED)
        outcome = Execution(program, execution_id="fuzz", inputs={"canary": "c"},
                            books=books, settings=settings_, sink=MemorySink(),
                            isolation=pool).run()
    assert outcome.status in ("completed", "failed"), outcome
    if outcome.error is not None:
        assert error_type_name(outcome.error) != "SandboxViolation", (source, outcome.error)


@pytest.mark.parametrize("source", [
    "x = ().__class__\n",
    "f = lambda _getattr_=len: 0\n",
    "t = type(1)\n",
    f"s = '{{}}'.{_fullwidth('format')}(1)\n",
    "g = (n for n in [1]).gi_frame\n",
])
def test_dangerous_programs_are_refused(source: str) -> None:
    """The property is vacuous for these: the front end refuses them outright."""
    assert not check_accepted(source)


def test_the_check_notices_a_name_outside_the_allow_lists() -> None:
    """If a phase after the validator let a refused name through, the check would see it."""
    compilation = Compilation.of("x = 1\nprint(x)\n", "fuzz.spy")
    program = compilation.program("statements")
    forged = program.python.replace("print", "getattr") + "\nx.__class__\n"
    tampered = CompiledProgram(
        digest=program.digest, source=program.source, trace_level=program.trace_level,
        code=compile(forged, "fuzz.py", "exec"), functions=program.functions,
        suspension_sites=program.suspension_sites, trace_sites=program.trace_sites,
        books=program.books, python=forged)
    found = outside_the_allow_lists(compilation, tampered)
    assert "name 'getattr'" in found
    assert "attribute '__class__'" in found
    assert any(item.startswith("code name '__class__'") for item in found)

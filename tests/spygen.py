"""Random valid SPy programs, and the fake Book they call, for tests that compare runs.

`spy_programs()` is a hypothesis strategy of SPy source texts. Every program it draws
compiles cleanly (`Compilation.of(src).ok`), terminates quickly (loops are bounded,
recursion is bounded, a function only calls functions defined before it) and reports
what it computes with `print(...)` and `output(name, value)`, so that two runs of it
can be compared: under the reference interpreter and under the Machine, or a run that
was stopped and resumed and one that was not. A program may end with an uncaught error.

The programs mix integer, list and dict variables; arithmetic; `if`/`elif`/`else`;
`for` loops over ranges, lists and dict items and bounded `while` loops, with `break`,
`continue` and `else`; `try`/`except`/`else`/`finally` with returns and jumps inside
handlers and finally blocks, re-raises, `except E as e`; nested functions and closures
that read variables their defining function changes later; lambdas; list, dict and set
comprehensions; bounded recursion; default, `*args`, keyword-only and `**kwargs`
parameters; and calls of the Book `svc` anywhere an expression may stand (arguments,
operands of `and`/`or`/`if`-`else`/comparison chains, subscripts, f-strings, displays
with `*` and `**`, comprehensions), plus `sleep(0)` and `checkpoint()`. With
`generators=True`, programs also keep generator expressions in variables across Book
calls, sleeps and checkpoints, and consume them bit by bit (`next`, `for`, `list`, `zip`).

The Book is a Python file, `BOOK_SOURCE`; `write_book_registry(directory)` writes it
and a registry that names it. Every procedure counts the calls made so far, and
`svc.mark(label)` returns that count, so a call made twice, missed or reordered shows
in the program's results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import strategies as st

__all__ = [
    "BOOK_NAME",
    "BOOK_SOURCE",
    "ProgramShape",
    "spy_programs",
    "write_book_registry",
]

BOOK_NAME = "svc"
"""The name generated programs import their Book under: `from books import svc`."""

BOOK_SOURCE = '''\
"""The fake Book `svc` of generated SPy programs: every call is counted."""

CALLS = []


def _count(name):
    CALLS.append(name)
    return len(CALLS)


def inc(x):
    _count("inc")
    return x + 1


def add(a, b):
    _count("add")
    return a + b


def pair(a, b):
    _count("pair")
    return [a, b]


def echo(value):
    _count("echo")
    return value


def scale(x, by=2):
    _count("scale")
    return x * by


def keys(mapping):
    _count("keys")
    return sorted(mapping)


def mark(label):
    return _count(label)


def fail(kind):
    number = _count("fail")
    errors = {"ValueError": ValueError, "KeyError": KeyError, "RuntimeError": RuntimeError}
    raise errors[kind](f"svc refused call {number}")
'''
"""The Book's procedures: inc, add, pair, echo, scale, keys, mark and fail."""


def write_book_registry(directory: Path) -> Path:
    """Write the Book and a registry naming it into `directory`; return the registry."""
    (directory / f"{BOOK_NAME}.py").write_text(BOOK_SOURCE, encoding="utf-8")
    registry = directory / "books.toml"
    registry.write_text(f'[books.{BOOK_NAME}]\npython = "{BOOK_NAME}.py"\n', encoding="utf-8")
    return registry


@dataclass(frozen=True)
class ProgramShape:
    """How big and how effectful the drawn programs are."""

    statements: int = 40
    """The most statements a program has, all blocks together (roughly)."""
    depth: int = 3
    """How deeply blocks nest."""
    functions: int = 4
    """The most functions defined at the top level."""
    books: bool = True
    """Whether programs call the Book (and sleep and checkpoint)."""
    errors: bool = True
    """Whether programs may raise, and fail, on purpose."""
    generators: bool = False
    """Whether programs keep generator expressions alive across suspension points (off
    by default, so that the programs drawn without it stay what they were)."""


def spy_programs(
    *,
    statements: int = 40,
    depth: int = 3,
    functions: int = 4,
    books: bool = True,
    errors: bool = True,
    generators: bool = False,
) -> st.SearchStrategy[str]:
    """Source texts of valid, quickly terminating SPy programs (see the module doc)."""
    shape = ProgramShape(statements, depth, functions, books, errors, generators)
    return _programs(shape)


@st.composite
def _programs(draw: st.DrawFn, shape: ProgramShape) -> str:
    return _Writer(draw, shape).program()


# -- what a block of code can see ------------------------------------------------------

INT, LIST, DICT, STR = "int", "list", "dict", "str"

_KEYS = ('"a"', '"b"', '"c"')
_EXCEPTIONS = ("ValueError", "KeyError", "RuntimeError")
_HANDLED = (
    "ValueError", "KeyError", "BookError", "Exception", "LookupError", "ZeroDivisionError",
    "(KeyError, ValueError)", "(IndexError, ZeroDivisionError)", "RuntimeError",
    "(BookError, RuntimeError)",
)


@dataclass(frozen=True)
class _Var:
    name: str
    kind: str
    writable: bool


@dataclass(frozen=True)
class _Function:
    name: str
    params: tuple[str, ...]
    defaults: int = 0
    """How many of the trailing `params` have defaults."""
    keyword_only: tuple[str, ...] = ()
    """Keyword-only parameters; all have defaults."""
    star: bool = False
    double_star: bool = False
    recursive: bool = False

    @property
    def required(self) -> tuple[str, ...]:
        return self.params[: len(self.params) - self.defaults]


@dataclass
class _Env:
    """The names a block can use, and what it may do there."""

    variables: list[_Var] = field(default_factory=list)
    functions: list[_Function] = field(default_factory=list)
    in_function: bool = False
    in_loop: bool = False
    in_handler: bool = False
    depth: int = 0
    frozen: frozenset[str] = frozenset()
    """Dicts being iterated: the block must not add or remove their keys."""
    current_keys: tuple[tuple[str, str], ...] = ()
    """(dict, key variable) of the dicts being iterated: the item may change."""

    def child(self, **changes: object) -> _Env:
        """A copy for a nested block: what the block adds is not seen after it."""
        copy = replace(self, **changes)  # type: ignore[arg-type]
        copy.variables = list(copy.variables)
        copy.functions = list(copy.functions)
        return copy

    def of(self, kind: str, writable: bool = False) -> list[str]:
        return [v.name for v in self.variables if v.kind == kind and (v.writable or not writable)]


class _Writer:
    """Draws one program, statement by statement, as lines of text."""

    def __init__(self, draw: st.DrawFn, shape: ProgramShape) -> None:
        self.draw = draw
        self.shape = shape
        self.lines: list[str] = []
        self.budget = shape.statements
        self.counter = 0
        self.labels = 0

    # -- drawing helpers ------------------------------------------------------------

    def below(self, n: int) -> int:
        """A number in [0, n): 0 is where hypothesis shrinks to, so put the plain case first."""
        return self.draw(st.integers(0, n - 1))

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def pick(self, options: list[str] | tuple[str, ...]) -> str:
        return self.draw(st.sampled_from(options))

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def choose(self, weighted: list[tuple[int, Callable[[], str]]]) -> str:
        """Call one of the options, drawn by weight."""
        total = sum(weight for weight, _ in weighted if weight > 0)
        point = self.draw(st.integers(0, total - 1))
        for weight, option in weighted:
            if weight <= 0:
                continue
            if point < weight:
                return option()
            point -= weight
        raise AssertionError("unreachable")

    def label(self) -> str:
        self.labels += 1
        return f'"m{self.labels}"'

    @property
    def books(self) -> bool:
        return self.shape.books

    # -- the program ----------------------------------------------------------------

    def program(self) -> str:
        env = _Env()
        if self.books:
            self.emit(0, f"from books import {BOOK_NAME}")
        self.declare(env, 0, ints=2, lists=1, dicts=1, writable=True)
        top = self.shape.functions
        while self.budget > 0:
            if top > 0 and self.chance(30):
                top -= 1
                self.top_function(env)
            else:
                self.statement(env, 0)
        summary = ", ".join(v.name for v in env.variables)
        self.emit(0, f"print({summary})")
        self.emit(0, f'output("final", [{summary}])')
        return "\n".join(self.lines) + "\n"

    def declare(self, env: _Env, indent: int, *, ints: int, lists: int, dicts: int,
                writable: bool) -> None:
        for _ in range(ints):
            name = self.fresh("x")
            self.emit(indent, f"{name} = {self.int_expr(env, 1)}")
            env.variables.append(_Var(name, INT, writable))
        for _ in range(lists):
            name = self.fresh("l")
            self.emit(indent, f"{name} = {self.list_literal(env)}")
            env.variables.append(_Var(name, LIST, writable))
        for _ in range(dicts):
            name = self.fresh("d")
            self.emit(indent, f"{name} = {self.dict_literal(env)}")
            env.variables.append(_Var(name, DICT, writable))

    # -- functions ------------------------------------------------------------------

    def top_function(self, env: _Env) -> None:
        if self.chance(20):
            self.recursive_function(env)
        else:
            self.function(env, 0)

    def signature(self, env: _Env) -> tuple[_Function, str, list[_Var]]:
        """A fresh function's signature: its `_Function`, parameter text, parameters."""
        name = self.fresh("f")
        params = tuple(self.fresh("p") for _ in range(1 + self.below(3)))
        defaults = self.below(len(params) + 1) if self.chance(40) else 0
        keyword_only: tuple[str, ...] = ()
        star = self.chance(15)
        double_star = self.chance(15)
        if not star and self.chance(15):
            keyword_only = (self.fresh("k"),)
        parts = [
            f"{p}={self.int_expr(env, 1)}" if i >= len(params) - defaults else p
            for i, p in enumerate(params)
        ]
        rest = self.fresh("rest") if star else ""
        if star:
            parts.append(f"*{rest}")
        elif keyword_only:
            parts.append("*")
        parts += [f"{k}={self.int_expr(env, 1)}" for k in keyword_only]
        extra = self.fresh("kw") if double_star else ""
        if double_star:
            parts.append(f"**{extra}")
        variables = [_Var(p, INT, True) for p in (*params, *keyword_only)]
        if star:
            variables.append(_Var(rest, "tuple", False))
        if double_star:
            variables.append(_Var(extra, "kwargs", False))
        function = _Function(name, params, defaults, keyword_only, star, double_star)
        return function, ", ".join(parts), variables

    def function(self, env: _Env, indent: int) -> _Function:
        """`def f(...):` with locals, maybe closures, statements and a final return."""
        function, text, params = self.signature(env)
        self.emit(indent, f"def {function.name}({text}):")
        inner = env.child(
            variables=[replace(v, writable=False) for v in env.variables] + params,
            in_function=True, in_loop=False, in_handler=False, depth=env.depth + 1,
            frozen=frozenset(), current_keys=(),
        )
        self.function_body(inner, indent + 1, params)
        env.functions.append(function)
        return function

    def function_body(self, env: _Env, indent: int, params: list[_Var]) -> None:
        for param in params:
            if param.kind == "tuple":
                name = self.fresh("l")
                self.emit(indent, f"{name} = list({param.name})[:4]")
                env.variables.append(_Var(name, LIST, True))
            elif param.kind == "kwargs":
                name = self.fresh("d")
                self.emit(indent, f"{name} = dict({param.name})")
                env.variables.append(_Var(name, DICT, True))
        self.declare(env, indent, ints=1 + self.below(2), lists=self.below(2),
                     dicts=self.below(2), writable=True)
        if env.depth < self.shape.depth and self.chance(35):
            self.closure(env, indent)
        self.block(env, indent, at_least=1)
        self.emit(indent, f"return {self.int_expr(env, 2)}")

    def closure(self, env: _Env, indent: int) -> bool:
        """A nested def that reads its function's variables; they change after it."""
        self.budget -= 1
        self.function(env, indent)
        return False

    def recursive_function(self, env: _Env) -> None:
        self.budget -= 1
        name = self.fresh("r")
        depth, total = self.fresh("n"), self.fresh("acc")
        self.emit(0, f"def {name}({depth}, {total}):")
        inner = env.child(
            variables=[replace(v, writable=False) for v in env.variables]
            + [_Var(depth, INT, False), _Var(total, INT, True)],
            in_function=True, depth=env.depth + 1,
        )
        if self.chance(50):
            self.statement(inner, 1)
        self.emit(1, f"if {depth} <= 0:")
        self.emit(2, f"return {total} + {self.int_expr(inner, 1)}")
        call = f"{name}({depth} - 1, {self.int_expr(inner, 1)})"
        if self.chance(40):
            self.emit(1, "try:")
            self.emit(2, f"{total} = {call} + {self.int_expr(inner, 1)}")
            self.emit(1, "finally:")
            self.emit(2, f"print({depth}, {total})")
            self.emit(1, f"return {total}")
        else:
            self.emit(1, f"return {self.pick(['', '1 + ', 'abs(' + total + ') + '])}{call}")
        env.functions.append(_Function(name, (depth, total), recursive=True))

    def call(self, env: _Env, function: _Function, depth: int) -> str:
        """A call that binds: required arguments, some defaults, extras, keywords."""
        if function.recursive:
            return f"{function.name}({self.below(4)}, {self.int_expr(env, depth)})"
        positional: list[str] = []
        keywords: list[str] = []
        given = len(function.required) + self.below(function.defaults + 1)
        by_keyword = self.below(given + 1) if self.chance(30) and not function.star else 0
        for index, param in enumerate(function.params[:given]):
            value = self.int_expr(env, depth)
            if index >= given - by_keyword:
                keywords.append(f"{param}={value}")
            else:
                positional.append(value)
        if function.star and given == len(function.params):
            positional += [self.int_expr(env, depth) for _ in range(self.below(3))]
        for param in function.keyword_only:
            if self.chance(50):
                keywords.append(f"{param}={self.int_expr(env, depth)}")
        if function.double_star and self.chance(60):
            keywords.append(f"{self.fresh('z')}={self.int_expr(env, depth)}")
        if positional and self.chance(15):
            positional = [f"*[{', '.join(positional)}]"]
        if keywords and self.chance(15):
            pairs = ", ".join(f'"{k.split("=", 1)[0]}": {k.split("=", 1)[1]}' for k in keywords)
            keywords = [f"**{{{pairs}}}"]
        if self.shape.errors and self.chance(3):
            # A call that does not bind: Python's TypeError, word for word.
            if function.double_star or (positional and self.chance(50)):
                positional = positional[:-1]
            else:
                keywords.append(f"{self.fresh('bad')}=0")
        return f"{function.name}({', '.join([*positional, *keywords])})"

    # -- blocks and statements ------------------------------------------------------

    def block(self, env: _Env, indent: int, at_least: int = 1) -> None:
        count = at_least + self.below(3)
        for index in range(count):
            if self.budget <= 0 and index >= at_least:
                break
            if self.statement(env, indent):
                break  # what would follow a jump is never run

    @contextmanager
    def nested(self, env: _Env, **changes: object) -> Iterator[_Env]:
        yield env.child(depth=env.depth + 1, **changes)

    def statement(self, env: _Env, indent: int) -> bool:
        """Write one statement; True if it always jumps away (return, raise, ...)."""
        self.budget -= 1
        if self.budget < 0 or env.depth >= self.shape.depth:
            return self.simple_statement(env, indent)
        options: list[tuple[int, Callable[[], bool]]] = [
            (30, lambda: self.simple_statement(env, indent)),
            (8, lambda: self.if_statement(env, indent)),
            (8, lambda: self.for_statement(env, indent)),
            (5, lambda: self.while_statement(env, indent)),
            (10, lambda: self.try_statement(env, indent)),
            (4 if env.in_function else 0, lambda: self.closure(env, indent)),
            (3, lambda: self.lambda_statement(env, indent)),
            (12 if self.shape.generators else 0, lambda: self.generator_statement(env, indent)),
        ]
        total = sum(weight for weight, _ in options)
        point = self.draw(st.integers(0, total - 1))
        for weight, option in options:
            if point < weight:
                return option()
            point -= weight
        raise AssertionError("unreachable")

    def simple_statement(self, env: _Env, indent: int) -> bool:
        ints, lists, dicts = env.of(INT, True), env.of(LIST, True), env.of(DICT, True)
        mutable_dicts = [d for d in dicts if d not in env.frozen]
        options: list[tuple[int, Callable[[], str]]] = [
            (10, lambda: f"print({self.print_args(env)})"),
            (6, lambda: f'output("o{self.below(4)}", {self.any_expr(env, 2)})'),
            (12 if ints else 0, lambda: f"{self.pick(ints)} = {self.int_expr(env, 2)}"),
            (6 if ints else 0, lambda: f"{self.pick(ints)} {self.pick(['+=', '-='])} "
                                       f"{self.int_expr(env, 2)}"),
            (5 if lists else 0, lambda: f"{self.pick(lists)} = {self.list_expr(env, 2)}"),
            (3 if len(ints) > 1 else 0, lambda: self.unpacking(env, ints, lists)),
            (5 if lists else 0, lambda: self.list_mutation(env, self.pick(lists))),
            (4 if dicts else 0, lambda: f"{self.pick(dicts)} = {self.dict_expr(env, 2)}"),
            (5 if mutable_dicts else 0, lambda: self.dict_mutation(env, self.pick(mutable_dicts))),
            (4 if env.current_keys else 0, lambda: self.item_update(env)),
            (4 if self.books else 0, lambda: self.pick(["sleep(0)", "checkpoint()"])),
            (4 if self.books else 0, lambda: f"{BOOK_NAME}.mark({self.label()})"),
            (3 if env.functions else 0, lambda: self.call(env, self.pick_function(env), 2)),
            (2 if env.in_function else 0, lambda: f"return {self.int_expr(env, 2)}"),
            (4 if env.in_loop else 0, lambda: self.pick(["break", "continue"])),
            (3 if env.in_handler else 0, lambda: "raise"),
            (3 if self.shape.errors else 0, lambda: self.raise_statement(env)),
            (2 if self.shape.errors else 0, lambda: f"assert {self.condition(env, 2)}, "
                                                   f"{self.int_expr(env, 1)}"),
        ]
        text = self.choose(options)
        self.emit(indent, text)
        return text.split(" ", 1)[0] in ("return", "break", "continue", "raise")

    def unpacking(self, env: _Env, ints: list[str], lists: list[str]) -> str:
        """`a, b = ...`, maybe with a starred list target or an item target."""
        first, second = self.draw(st.permutations(ints))[:2]
        if lists and self.shape.errors and self.chance(30):
            return f"{first}, *{self.pick(lists)}, {second} = {self.list_expr(env, 2)}"
        if lists and self.chance(20):
            target = self.pick(lists)
            second = f"{target}[{self.int_expr(env, 1)} % len({target})]"
        source = self.choose([
            (3, lambda: f"{BOOK_NAME}.pair({self.int_expr(env, 1)}, {self.int_expr(env, 1)})"
             if self.books else f"[{self.int_expr(env, 1)}, {self.int_expr(env, 1)}]"),
            (2, lambda: f"{self.int_expr(env, 1)}, {self.int_expr(env, 1)}"),
            (1, lambda: f"{second}, {first}"),
        ])
        return f"{first}, {second} = {source}"

    def pick_function(self, env: _Env) -> _Function:
        return env.functions[self.below(len(env.functions))]

    def raise_statement(self, env: _Env) -> str:
        if self.books and self.chance(40):
            return f'{BOOK_NAME}.fail("{self.pick(_EXCEPTIONS)}")'
        kind = self.pick(_EXCEPTIONS)
        argument = f'"k{self.below(3)}"' if kind == "KeyError" else self.int_expr(env, 2)
        return f"raise {kind}({argument})"

    def list_mutation(self, env: _Env, target: str) -> str:
        return self.choose([
            (6, lambda: f"{target}.append({self.int_expr(env, 2)})"),
            (2, lambda: f"{target}.extend({self.list_expr(env, 1)}[:2])"),
            (2, lambda: f"{target}.insert({self.below(3)}, {self.int_expr(env, 2)})"),
            (2, lambda: f"{target}.sort()"),
            (1, lambda: f"{target}.reverse()"),
            (2, lambda: f"{target}.pop()" if self.shape.errors else f"{target}.clear()"),
            (3, lambda: f"{target}[{self.int_expr(env, 1)} % len({target})] = "
                        f"{self.int_expr(env, 2)}"),
            (2, lambda: f"{target}[{self.int_expr(env, 1)} % len({target})] += "
                        f"{self.int_expr(env, 2)}"),
            (1, lambda: f"del {target}[:{self.below(3)}]"),
        ])

    def item_update(self, env: _Env) -> str:
        """Change the value of a dict being iterated, for an item not reached yet."""
        mapping, key = env.current_keys[self.below(len(env.current_keys))]
        return f"{mapping}[{self.pick(_KEYS)} if {self.pick(_KEYS)} in {mapping} else {key}] " \
               f"= {self.int_expr(env, 2)}"

    def dict_mutation(self, env: _Env, target: str) -> str:
        return self.choose([
            (6, lambda: f"{target}[{self.key_expr(env, 1)}] = {self.int_expr(env, 2)}"),
            (3, lambda: f"{target}[{self.key_expr(env, 1)}] = "
                        f"{target}.get({self.key_expr(env, 0)}, 0) + {self.int_expr(env, 2)}"),
            (2, lambda: f"{target}.pop({self.key_expr(env, 0)}, None)"),
            (2, lambda: f"{target}.update({self.dict_expr(env, 1)})"),
            (1 if self.shape.errors else 0, lambda: f"del {target}[{self.key_expr(env, 0)}]"),
            (1, lambda: f"{target}.setdefault({self.key_expr(env, 0)}, {self.int_expr(env, 1)})"),
        ])

    def if_statement(self, env: _Env, indent: int) -> bool:
        self.emit(indent, f"if {self.condition(env, 2)}:")
        with self.nested(env) as inner:
            self.block(inner, indent + 1)
        for _ in range(self.below(3)):
            self.emit(indent, f"elif {self.condition(env, 2)}:")
            with self.nested(env) as inner:
                self.block(inner, indent + 1)
        if self.chance(50):
            self.emit(indent, "else:")
            with self.nested(env) as inner:
                self.block(inner, indent + 1)
        return False

    def for_statement(self, env: _Env, indent: int) -> bool:
        frozen = env.frozen
        current_keys = env.current_keys
        variables: list[_Var] = []
        kind = self.below(4)
        if kind == 0:
            target = self.fresh("i")
            self.emit(indent, f"for {target} in range({self.loop_bound(env)}):")
            variables.append(_Var(target, INT, True))
        elif kind == 1 and env.of(LIST):
            target = self.fresh("i")
            source = self.pick(env.of(LIST))
            self.emit(indent, f"for {target} in {source}[:{1 + self.below(3)}]:")
            variables.append(_Var(target, INT, True))
        elif kind == 2 and env.of(DICT):
            key, value = self.fresh("k"), self.fresh("v")
            source = self.pick(env.of(DICT))
            if self.chance(50):
                self.emit(indent, f"for {key}, {value} in {source}.items():")
                frozen = frozen | {source}
                current_keys = (*current_keys, (source, key))
            else:
                self.emit(indent, f"for {key}, {value} in sorted({source}.items())[:3]:")
            variables += [_Var(key, STR, True), _Var(value, INT, True)]
        else:
            first, second = self.fresh("i"), self.fresh("j")
            self.emit(indent, f"for {first}, {second} in enumerate("
                              f"{self.list_expr(env, 2)}[:3]):")
            variables += [_Var(first, INT, True), _Var(second, INT, True)]
        with self.nested(env, in_loop=True, frozen=frozen,
                         current_keys=current_keys) as inner:
            inner.variables += variables
            self.block(inner, indent + 1)
        if self.chance(35):
            self.emit(indent, "else:")
            with self.nested(env) as inner:
                self.block(inner, indent + 1)
        return False

    def loop_bound(self, env: _Env) -> str:
        if self.chance(70):
            return str(self.below(4))
        return f"{self.int_expr(env, 1)} % 3"

    def while_statement(self, env: _Env, indent: int) -> bool:
        counter = self.fresh("w")
        self.emit(indent, f"{counter} = 0")
        env.variables.append(_Var(counter, INT, False))
        if self.chance(50):
            extra = f" and {self.condition(env, 1)}" if self.chance(40) else ""
            self.emit(indent, f"while {counter} < {self.below(4)}{extra}:")
            self.emit(indent + 1, f"{counter} += 1")
        else:
            self.emit(indent, "while True:")
            self.emit(indent + 1, f"{counter} += 1")
            self.emit(indent + 1, f"if {counter} > {self.below(4)}:")
            self.emit(indent + 2, "break")
        with self.nested(env, in_loop=True) as inner:
            self.block(inner, indent + 1)
        if self.chance(35):
            self.emit(indent, "else:")
            with self.nested(env) as inner:
                self.block(inner, indent + 1)
        return False

    def try_statement(self, env: _Env, indent: int) -> bool:
        self.emit(indent, "try:")
        with self.nested(env) as inner:
            self.block(inner, indent + 1)
            if self.shape.errors and self.chance(40):
                self.emit(indent + 1, self.raise_statement(inner))
        handlers = self.below(3)
        finally_ = handlers == 0 or self.chance(50)
        for _ in range(handlers):
            kind = self.pick(_HANDLED)
            variables: list[_Var] = []
            if self.chance(60):
                name = self.fresh("e")
                self.emit(indent, f"except {kind} as {name}:")
                variables.append(_Var(name, "exception", False))
                if "BookError" in kind and "(" not in kind:
                    self.emit(indent + 1, f"print({name}.error_type, {name}.message, "
                                          f"{name}.book, {name}.procedure, {name}.status)")
                else:
                    self.emit(indent + 1, f"print({self.pick(_EXCEPTION_VIEWS).format(name)})")
            else:
                self.emit(indent, f"except {kind}:")
            with self.nested(env, in_handler=True) as inner:
                inner.variables += variables
                self.block(inner, indent + 1)
        if handlers and self.chance(30):
            self.emit(indent, "else:")
            with self.nested(env) as inner:
                self.block(inner, indent + 1)
        if finally_:
            self.emit(indent, "finally:")
            with self.nested(env) as inner:
                self.block(inner, indent + 1)
        return False

    def lambda_statement(self, env: _Env, indent: int) -> bool:
        name = self.fresh("g")
        params = tuple(self.fresh("q") for _ in range(1 + self.below(2)))
        defaults = self.below(2) if len(params) > 1 else 0
        parts = [
            f"{p}={self.int_expr(env, 1)}" if i >= len(params) - defaults else p
            for i, p in enumerate(params)
        ]
        inner = env.child(variables=[replace(v, writable=False) for v in env.variables]
                          + [_Var(p, INT, False) for p in params])
        self.emit(indent, f"{name} = lambda {', '.join(parts)}: {self.int_expr(inner, 2)}")
        env.functions.append(_Function(name, params, defaults))

    # -- expressions ----------------------------------------------------------------
        return False

    def generator_statement(self, env: _Env, indent: int) -> bool:
        """A generator expression kept in a variable, consumed a bit at a time with
        suspension points (or other statements) in between."""
        self.budget -= 2
        name = self.fresh("gen")
        inner = env.child()
        clauses = self.generator_clauses(env, inner)
        if self.chance(30):
            clauses += f" if {self.condition(inner, 1, native=True)}"
        self.emit(indent, f"{name} = ({self.int_expr(inner, 2, native=True)} {clauses})")
        for _ in range(1 + self.below(3)):
            self.emit(indent, self.pause(env))
            self.emit(indent, f"print(next({name}, -1))" if self.chance(80)
                      else f"print(list({name}))")
        self.emit(indent, self.pause(env))
        kind = self.below(4)
        if kind == 0:
            item = self.fresh("v")
            self.emit(indent, f"for {item} in {name}:")
            self.emit(indent + 1, f"print({item}, {self.pause(env)})")
        elif kind == 1:
            zipped = self.fresh("z")
            self.emit(indent, f"{zipped} = zip({name}, range({self.below(4)}))")
            self.emit(indent, self.pause(env))
            self.emit(indent, f"print(list({zipped}))")
        elif kind == 2:
            self.emit(indent, f"print(sum({name}), next({name}, None))")
        else:
            self.emit(indent, f"print(list({name}))")
        return False

    def generator_clauses(self, env: _Env, inner: _Env) -> str:
        """The `for` clauses of a generator expression; their variables join `inner`."""
        variable = self.fresh("c")
        lists = env.of(LIST)
        if lists and self.chance(30):
            index = self.fresh("c")
            text = f"for {index}, {variable} in enumerate({self.pick(lists)})"
            inner.variables.append(_Var(index, INT, False))
        else:
            source = self.pick(lists) if lists and self.chance(50) else \
                f"range({self.below(5)})"
            text = f"for {variable} in {source}"
        inner.variables.append(_Var(variable, INT, False))
        if self.chance(30):
            second = self.fresh("c")
            text += f" for {second} in range({variable} % 3)"
            inner.variables.append(_Var(second, INT, False))
        return text

    def pause(self, env: _Env) -> str:
        """A suspension point (or, without the Book, an ordinary expression)."""
        if not self.books:
            return self.int_expr(env, 1, native=True)
        return self.choose([
            (4, lambda: f"{BOOK_NAME}.mark({self.label()})"),
            (1, lambda: "sleep(0)"),
            (1, lambda: "checkpoint()"),
        ])

    def int_atom(self, env: _Env) -> str:
        ints = env.of(INT)
        if ints and self.chance(70):
            return self.pick(ints)
        return str(self.below(10) - 2)

    def book_int(self, env: _Env, depth: int) -> str:
        return self.choose([
            (5, lambda: f"{BOOK_NAME}.inc({self.int_expr(env, depth - 1)})"),
            (3, lambda: f"{BOOK_NAME}.add({self.int_expr(env, depth - 1)}, "
                        f"{self.int_expr(env, depth - 1)})"),
            (2, lambda: f"{BOOK_NAME}.mark({self.label()})"),
            (2, lambda: f"{BOOK_NAME}.scale({self.int_expr(env, depth - 1)}, "
                        f"by={self.int_expr(env, depth - 1)} % 3)"),
            (1, lambda: f"{BOOK_NAME}.echo({self.int_expr(env, depth - 1)})"),
            (1, lambda: f"len({BOOK_NAME}.keys({self.dict_expr(env, depth - 1)}))"),
            (1, lambda: f"({self.pick(['sleep(0)', 'checkpoint()'])} or "
                        f"{self.int_expr(env, depth - 1)})"),
        ])

    def int_expr(self, env: _Env, depth: int, native: bool = False) -> str:
        """An int-valued expression; `native` ones call nothing that may suspend."""
        if depth <= 0:
            return self.int_atom(env)
        lists, dicts = env.of(LIST), env.of(DICT)
        sub = depth - 1

        def operand() -> str:
            return self.int_expr(env, sub, native)

        effectful = not native
        options: list[tuple[int, Callable[[], str]]] = [
            (12, lambda: self.int_atom(env)),
            (8, lambda: f"({operand()} {self.pick(['+', '-'])} {operand()})"),
            (3, lambda: f"({operand()} * {operand()} % 97)"),
            (2, lambda: f"({operand()} {self.pick(['//', '%'])} {1 + self.below(4)})"),
            (2, lambda: f"{self.pick(['-', 'abs', '~'])}({operand()})"),
            (3, lambda: f"({operand()} if {self.condition(env, sub, native)} else {operand()})"),
            (2, lambda: f"({operand()} {self.pick(['and', 'or'])} {operand()})"),
            (2, lambda: f"{self.pick(['max', 'min'])}({operand()}, {operand()})"),
            (3 if lists else 0, lambda: f"{self.pick(['len', 'sum'])}({self.pick(lists)})"),
            (2 if lists else 0, lambda: self.list_item(env, self.pick(lists), sub, native)),
            (3 if dicts else 0, lambda: f"{self.pick(dicts)}.get("
                                        f"{self.key_expr(env, sub, native)}, {operand()})"),
            (1 if dicts and self.shape.errors else 0,
             lambda: f"{self.pick(dicts)}[{self.key_expr(env, sub, native)}]"),
            (1 if self.shape.errors else 0,
             lambda: f"({operand()} // ({operand()} - {operand()}))"),
            (2 if lists else 0, lambda: self.generator_sum(env, self.pick(lists))),
            (2 if lists and effectful else 0, lambda: f"sum({self.list_comprehension(env, sub)})"),
            (1 if effectful else 0, lambda: f"len({self.set_comprehension(env, sub)})"),
            (6 if self.books and effectful else 0, lambda: self.book_int(env, depth)),
            (4 if env.functions and effectful else 0,
             lambda: self.call(env, self.pick_function(env), sub)),
            (1 if effectful else 0, lambda: self.immediate_lambda(env, sub)),
            (1 if lists else 0, lambda: self.sorted_first(env, self.pick(lists), operand())),
            (1, lambda: f'int(str({operand()}) + "{self.below(10)}")'),
        ]
        return self.choose(options)

    def sorted_first(self, env: _Env, source: str, extra: str) -> str:
        variable = self.fresh("s")
        return f"sorted({source} + [{extra}], key=lambda {variable}: -{variable})[0]"

    def generator_sum(self, env: _Env, source: str) -> str:
        variable = self.fresh("c")
        inner = env.child(variables=[*env.variables, _Var(variable, INT, False)])
        return f"sum({self.int_expr(inner, 1, native=True)} for {variable} in {source})"

    def list_item(self, env: _Env, source: str, depth: int, native: bool) -> str:
        if self.shape.errors and self.chance(20):
            return f"{source}[{self.int_expr(env, depth, native)}]"
        return f"({source} + [0])[{self.int_expr(env, depth, native)} % (len({source}) + 1)]"

    def immediate_lambda(self, env: _Env, depth: int) -> str:
        param = self.fresh("q")
        inner = env.child(variables=[*env.variables, _Var(param, INT, False)])
        return f"(lambda {param}: {self.int_expr(inner, depth)})({self.int_expr(env, depth)})"

    def condition(self, env: _Env, depth: int, native: bool = False) -> str:
        sub = max(depth - 1, 0)

        def operand() -> str:
            return self.int_expr(env, sub, native)

        lists, dicts = env.of(LIST), env.of(DICT)
        options: list[tuple[int, Callable[[], str]]] = [
            (10, lambda: f"{operand()} {self.pick(_COMPARISONS)} {operand()}"),
            (4, lambda: f"{operand()} {self.pick(_COMPARISONS)} {operand()} "
                        f"{self.pick(_COMPARISONS)} {operand()}"),
            (3 if depth > 0 else 0, lambda: f"not ({self.condition(env, sub, native)})"),
            (4 if depth > 0 else 0, lambda: f"({self.condition(env, sub, native)} "
                                            f"{self.pick(['and', 'or'])} "
                                            f"{self.condition(env, sub, native)})"),
            (2 if lists else 0, lambda: f"{operand()} {self.pick(['in', 'not in'])} "
                                        f"{self.pick(lists)}"),
            (2 if dicts else 0, lambda: f"{self.key_expr(env, sub, native)} in "
                                        f"{self.pick(dicts)}"),
            (2, lambda: operand()),
        ]
        return self.choose(options)

    def key_expr(self, env: _Env, depth: int, native: bool = False) -> str:
        strs = env.of(STR)
        return self.choose([
            (6, lambda: self.pick(_KEYS)),
            (2 if strs else 0, lambda: self.pick(strs)),
            (2 if depth > 0 else 0,
             lambda: f'"k" + str({self.int_expr(env, depth - 1, native)} % 3)'),
        ])

    def list_literal(self, env: _Env) -> str:
        return f"[{', '.join(self.int_expr(env, 1) for _ in range(self.below(4)))}]"

    def dict_literal(self, env: _Env) -> str:
        keys = _KEYS[: self.below(4)]
        return "{" + ", ".join(f"{k}: {self.int_expr(env, 1)}" for k in keys) + "}"

    def list_expr(self, env: _Env, depth: int) -> str:
        lists, dicts = env.of(LIST), env.of(DICT)
        sub = max(depth - 1, 0)
        options: list[tuple[int, Callable[[], str]]] = [
            (5 if lists else 0, lambda: self.pick(lists)),
            (5, lambda: self.list_literal(env)),
            (4 if lists else 0, lambda: f"[*{self.pick(lists)}[:2], {self.int_expr(env, sub)}, "
                                        f"*{self.list_expr(env, sub)}[:2]]"),
            (5 if lists else 0, lambda: self.list_comprehension(env, sub)),
            (3 if self.books else 0, lambda: f"{BOOK_NAME}.pair({self.int_expr(env, sub)}, "
                                             f"{self.int_expr(env, sub)})"),
            (2 if self.books and lists else 0,
             lambda: f"{BOOK_NAME}.echo({self.pick(lists)}[:3])"),
            (2 if lists else 0, lambda: f"sorted({self.pick(lists)})"),
            (1 if lists else 0, lambda: self.sorted_by_key(self.pick(lists))),
            (2 if lists else 0, lambda: f"{self.pick(lists)}[{self.pick(_SLICES)}]"),
            (1, lambda: f"list(range({self.below(4)}))"),
            (2 if dicts else 0, lambda: f"list({self.pick(dicts)}.values())"),
            (1 if lists else 0, lambda: f"({self.pick(lists)} + {self.list_literal(env)})[:5]"),
        ]
        return self.choose(options)

    def sorted_by_key(self, source: str) -> str:
        variable = self.fresh("s")
        return f"sorted({source}, key=lambda {variable}: ({variable} % 3, -{variable}))"

    def list_comprehension(self, env: _Env, depth: int) -> str:
        variable = self.fresh("c")
        source = self.comprehension_source(env, depth)
        inner = env.child(variables=[*env.variables, _Var(variable, INT, False)])
        element = self.int_expr(inner, max(depth, 1))
        text = f"[{element} for {variable} in {source}"
        if self.chance(40):
            second = self.fresh("c")
            inner.variables.append(_Var(second, INT, False))
            text += f" for {second} in range({self.below(3)})"
            element = self.int_expr(inner, max(depth, 1))
            text = f"[{element} for {variable} in {source} for {second} in range({self.below(3)})"
        if self.chance(40):
            text += f" if {self.condition(inner, max(depth, 1))}"
        return text + "]"

    def comprehension_source(self, env: _Env, depth: int) -> str:
        lists = env.of(LIST)
        if lists and self.chance(60):
            return f"{self.pick(lists)}[:4]"
        if self.books and self.chance(30):
            return f"{BOOK_NAME}.pair({self.int_expr(env, depth)}, {self.int_expr(env, depth)})"
        return f"range({self.below(4)})"

    def set_comprehension(self, env: _Env, depth: int) -> str:
        variable = self.fresh("c")
        source = self.comprehension_source(env, depth)
        inner = env.child(variables=[*env.variables, _Var(variable, INT, False)])
        return f"{{{self.int_expr(inner, max(depth, 1))} % 4 for {variable} in {source}}}"

    def dict_expr(self, env: _Env, depth: int) -> str:
        dicts = env.of(DICT)
        sub = max(depth - 1, 0)
        options: list[tuple[int, Callable[[], str]]] = [
            (5 if dicts else 0, lambda: self.pick(dicts)),
            (4, lambda: self.dict_literal(env)),
            (4 if dicts else 0, lambda: f"{{**{self.pick(dicts)}, {self.pick(_KEYS)}: "
                                        f"{self.int_expr(env, sub)}, "
                                        f"**{self.dict_expr(env, sub)}}}"),
            (4 if dicts else 0, lambda: self.dict_comprehension(env, sub)),
            (3, lambda: self.keyed_comprehension(env, sub)),
            (2 if self.books and dicts else 0,
             lambda: f"{BOOK_NAME}.echo({self.pick(dicts)})"),
            (1 if dicts else 0, lambda: f"dict({self.pick(dicts)})"),
        ]
        return self.choose(options)

    def dict_comprehension(self, env: _Env, depth: int) -> str:
        key, value = self.fresh("k"), self.fresh("v")
        source = self.pick(env.of(DICT))
        inner = env.child(variables=[*env.variables, _Var(key, STR, False),
                                     _Var(value, INT, False)])
        text = f"{{{key}: {self.int_expr(inner, max(depth, 1))} for {key}, {value} in " \
               f"{source}.items()"
        if self.chance(30):
            text += f" if {self.condition(inner, 1)}"
        return text + "}"

    def keyed_comprehension(self, env: _Env, depth: int) -> str:
        variable = self.fresh("c")
        inner = env.child(variables=[*env.variables, _Var(variable, INT, False)])
        key = f'f"k{{{variable}}}"'
        if self.books and self.chance(40):
            key = f'{BOOK_NAME}.echo("k" + str({variable}))'
        return (f"{{{key}: {self.int_expr(inner, max(depth, 1))} "
                f"for {variable} in range({self.below(4)})}}")

    def any_expr(self, env: _Env, depth: int) -> str:
        return self.choose([
            (4, lambda: self.int_expr(env, depth)),
            (2, lambda: self.list_expr(env, depth)),
            (2, lambda: self.dict_expr(env, depth)),
            (2, lambda: self.fstring(env, depth)),
        ])

    def fstring(self, env: _Env, depth: int) -> str:
        parts: list[str] = []
        for _ in range(1 + self.below(3)):
            parts.append(self.pick(["", "=", " ", "-"]))
            parts.append(self.choose([
                (4, lambda: f"{{({self.int_expr(env, depth)})"
                            f"{self.pick(['', ':>4', ':03d', '!r'])}}}"),
                (1, lambda: f"{{({self.list_expr(env, depth - 1)}){self.pick(['', '!r'])}}}"),
                (1, lambda: f"{{({self.dict_expr(env, depth - 1)})}}"),
            ]))
        # Strings inside the replacement fields take the other quote (Python 3.11).
        return 'f"' + "".join(parts).replace('"', "'") + '"'

    def print_args(self, env: _Env) -> str:
        args = [self.any_expr(env, 2) for _ in range(1 + self.below(3))]
        if self.chance(20):
            args.append(f'sep="{self.pick([", ", "|", ""])}"')
        if self.chance(10):
            args.append(f'end="{self.pick([";", "!"])}\\n"')
        return ", ".join(args)


_COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
_SLICES = ("1:", ":2", "::-1", "1:3", "-2:")
_EXCEPTION_VIEWS = ("{0}.args", "str({0})", "repr({0})", "{0}")

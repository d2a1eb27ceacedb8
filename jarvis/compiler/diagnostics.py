"""Diagnostics: what the compiler tells a person about their program.

Every problem the front end finds is a `Diagnostic` with a stable code, a position
(1-based lines and columns, as editors and SARIF count them) and a hint that says what to do
instead. The catalogue of codes lives here so the docs, the SARIF rules and the tests
all read one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """One kind of diagnostic: its code, a short name and the default hint."""

    code: str
    name: str
    summary: str
    hint: str


def _rules(*rules: Rule) -> dict[str, Rule]:
    return {rule.code: rule for rule in rules}


RULES: dict[str, Rule] = _rules(
    # Source and syntax.
    Rule("SPY001", "syntax-error", "the program is not valid Python syntax",
         "fix the syntax at the marked position"),
    Rule("SPY002", "invalid-encoding", "the program is not valid UTF-8",
         "save the file as UTF-8"),
    Rule("SPY003", "null-byte", "the program contains a NUL byte",
         "remove the NUL byte; SPy programs are text"),
    Rule("SPY004", "program-too-large", "the program is larger than the compiler accepts",
         "split the work into smaller programs"),
    Rule("SPY005", "nesting-too-deep", "the program nests expressions or blocks too deeply",
         "move inner parts into variables or functions"),
    # Refused constructs.
    Rule("SPY101", "class", "classes are not part of SPy",
         "use dicts and functions"),
    Rule("SPY102", "import", "only `from books import NAME` is allowed",
         "call a Book for what a module would do; declare it with `from books import NAME`"),
    Rule("SPY103", "with", "`with` statements are not part of SPy",
         "use try/finally"),
    Rule("SPY104", "async", "async and await are not part of SPy",
         "call Books directly; Jarvis suspends and resumes the program for you"),
    Rule("SPY105", "yield", "generators (`yield`) are not part of SPy",
         "build and return a list, or use a generator expression"),
    Rule("SPY106", "global", "`global` and `nonlocal` are not part of SPy",
         "return new values from functions, or keep state in a dict or list"),
    Rule("SPY107", "decorator", "decorators are not part of SPy",
         "call the wrapping function explicitly"),
    Rule("SPY108", "match", "`match` statements are not part of SPy",
         "use if/elif/else"),
    Rule("SPY109", "except-star", "`try`/`except*` is not part of SPy",
         "use a plain `except`"),
    Rule("SPY110", "walrus", "assignment expressions (`:=`) are not part of SPy",
         "assign in a statement before the expression"),
    Rule("SPY111", "attribute-assignment", "assignment to attributes is not part of SPy",
         "keep data in a dict and assign to a key: `d['name'] = value`"),
    Rule("SPY112", "delete-target", "`del` only removes items: `del d[key]` or `del xs[i]`",
         "delete an item of a dict or list; names go out of scope by themselves"),
    Rule("SPY113", "annotation", "type annotations are not part of SPy v1",
         "remove the annotation"),
    Rule("SPY114", "positional-only", "positional-only parameters (`/`) are not part of SPy",
         "remove the `/`; ordinary parameters can be passed by position"),
    Rule("SPY115", "literal", "this kind of literal is not part of SPy",
         "use str, int, float, bool, None, list, dict, set or tuple values"),
    Rule("SPY116", "operator", "this operator is not part of SPy",
         "no SPy value supports it; call a function instead"),
    Rule("SPY117", "async-comprehension", "async comprehensions are not part of SPy",
         "use an ordinary comprehension"),
    Rule("SPY119", "construct", "this construct is not part of SPy",
         "see docs/language.md for what SPy allows"),
    # Names and attributes.
    Rule("SPY201", "private-name", "names starting with `_` are reserved",
         "choose a name that starts with a letter"),
    Rule("SPY202", "private-attribute", "attributes starting with `_` are not accessible",
         "SPy values expose only their documented methods"),
    Rule("SPY203", "unknown-attribute", "this attribute is not one SPy values have",
         "see docs/language.md for the methods of each value type"),
    Rule("SPY204", "refused-builtin", "this builtin reaches outside the program",
         "see docs/language.md for the builtins SPy provides"),
    Rule("SPY205", "undefined-name", "this name is not defined",
         "define it before use, import it with `from books import NAME`, or check the spelling"),
    Rule("SPY206", "builtin-rebound", "the names of builtins cannot be reassigned",
         "choose another name"),
    # Books.
    Rule("SPY301", "book-as-value", "a Book can only be called: `BOOK.procedure(...)`",
         "call a procedure of the Book; Books are not values"),
    Rule("SPY302", "book-rebound", "a Book name cannot be reassigned or shadowed",
         "choose another name for the variable or parameter"),
    Rule("SPY303", "book-import-placement", "`from books import ...` belongs at the top level",
         "move the import to the top of the program"),
    Rule("SPY304", "book-import-form", "`from books import *` and relative imports are not allowed",
         "name each Book: `from books import crm, erp`"),
    # Suspension: where a program may call Books.
    Rule("SPY401", "suspending-callback", "a function that calls Books is given to a builtin",
         "builtins call their callbacks where the program cannot suspend; "
         "use a for loop that calls the function"),
    Rule("SPY402", "suspending-generator", "a generator expression calls a Book",
         "use a list comprehension, which runs to completion where it stands"),
    Rule("SPY403", "suspending-function-in-comprehension",
         "a function that calls Books is created inside a comprehension",
         "use a for loop instead of the comprehension"),
)


@dataclass(frozen=True)
class Diagnostic:
    """A problem in a SPy program, with where it is and what to do about it.

    Lines and columns are 1-based and count characters (not bytes); `end_col` is the
    column just past the last character of the offending code.
    """

    code: str
    message: str
    path: str
    line: int
    col: int
    end_line: int
    end_col: int
    hint: str = ""
    severity: str = field(default="error")

    @property
    def rule(self) -> Rule:
        return RULES[self.code]

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.line, self.col, self.code)

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.rule.name,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "end_line": self.end_line,
            "end_col": self.end_col,
        }


class CompileError(Exception):
    """Raised when a program has diagnostics and a compiled form was asked for."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        first = diagnostics[0] if diagnostics else None
        where = (
            f"{first.path}:{first.line}:{first.col}: {first.code} {first.message}" if first else ""
        )
        super().__init__(f"{len(diagnostics)} diagnostic(s); first: {where}")

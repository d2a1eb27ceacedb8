"""The restriction policy's rules, and the one-walk pass that applies them with static proofs.

`restrict.py` describes the policy and the proofs. With the proofs on (every compile
of a program), the policy rewrites nothing but the reads of attributes outside the
allow-list, so it is applied here by one walk of the generated module, not by
RestrictedPython's generic transformer (a method call per node, most of which only
visit their children). The walk refuses, as a `RestrictionError`:

- any node of a type the generated code does not use (`GENERATED_NODES`): classes,
  imports, `with`, `async`, `yield`, `nonlocal`, `except*`, assignment expressions ...;
  RestrictedPython refuses some of these and rewrites others, the walk refuses all;
- a name, parameter, `def`, `except ... as` or `global` name that starts with `_` and
  is not the compiler's (`_jv_`);
- an attribute that starts with `_` or is one of the frame, code and generator
  attributes `inspect` documents (`INSPECT_ATTRIBUTES`); an attribute of the compiler's
  own objects that the compiler does not use; an assignment to or deletion of an
  attribute of a program value;
- a call of `exec` or `eval` by name, and unpacking in a comprehension's element.

What it cannot prove safe, an attribute read outside `language.ATTRIBUTES`, it guards:
`x.name` becomes `_getattr_(x, 'name')` at the position of `x.name`.
`tests/test_restrict_differential.py` holds the walk to RestrictedPython's verdicts on
the generated code of the spec programs and on trees broken on purpose.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from RestrictedPython.transformer import INSPECT_ATTRIBUTES

from jarvis.compiler.language import ATTRIBUTES
from jarvis.compiler.validate import ALLOWED_NODES

INTERNAL_PREFIX = "_jv_"
"""Every name the compiler makes starts with it; no program name can (SPY201)."""

INTERNAL_ATTRIBUTES: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = (
    # The Frame a step function runs: its program counter and saved locals.
    (re.compile(r"_jv_F\Z"), frozenset({"pc", "locals"})),
    # A Cell holding a variable that a frame shares with its closures: the defining
    # function reads `.value`, the closures `.free` (they differ in the error raised
    # when the variable is unbound).
    (re.compile(r"_jv_b_\w+\Z"), frozenset({"value", "free"})),
    # A step function's table of exception handlers (a dict: pc -> handler pc).
    (re.compile(r"_jv_H_\d+\Z"), frozenset({"get"})),
    # The list or set a hoisted comprehension builds.
    (re.compile(r"_jv_acc\Z"), frozenset({"append", "add"})),
)
"""The attributes the generated code reads and writes on the compiler's own objects,
by the name the object has in the generated code. Any other attribute of these objects
is refused as a compiler bug. Temporaries such as `_jv_r1` hold program values and get
no exemption."""

INTERNAL_CONTAINERS = frozenset({
    "_jv_D",  # the saved locals of a frame, read on entry to a step function
    "_jv_books",  # the execution's Book proxies by name, read by `from books import`
    "_jv_acc",  # the dict a hoisted dict comprehension builds
})
"""The compiler's own dicts, whose items the generated code reads and writes."""

GENERATED_NODES: frozenset[type[ast.AST]] = (
    ALLOWED_NODES - {ast.ImportFrom, ast.alias}) | {ast.Global}
"""The node types of generated code: SPy's (the validator's allow-list) without its
imports, which the lowering turns into lookups in `_jv_books`, and with the `global`
statement the step function of the top level declares."""

_REFUSED_CALLS = frozenset({"exec", "eval"})
_ELEMENT_SCOPES = (ast.ListComp, ast.SetComp, ast.GeneratorExp)


class RestrictionError(Exception):
    """The generated code broke the restriction policy: a compiler bug, not a program's."""


def name_problem(name: str | None) -> str | None:
    """Why the policy refuses `name` in generated code; None if it does not."""
    if name is None or name.startswith(INTERNAL_PREFIX) or not name.startswith("_"):
        return None
    return f"name {name!r} starts with '_' but is not the compiler's"


def internal_attributes(node: ast.Attribute) -> frozenset[str] | None:
    """The attributes of the compiler's object `node` is read from; None if it is none."""
    base = node.value
    if isinstance(base, ast.Name) and base.id.startswith(INTERNAL_PREFIX):
        for pattern, names in INTERNAL_ATTRIBUTES:
            if pattern.match(base.id):
                return names
    return None


def attribute_problem(node: ast.Attribute) -> str | None:
    """Why the policy refuses the attribute `node` whatever its proofs; None if it
    does not (it may still need a guard: see `_unproven`)."""
    name = node.attr
    if name.startswith("_") or name in INSPECT_ATTRIBUTES:
        return f"attribute {name!r} is not accessible"
    internal = internal_attributes(node)
    if internal is not None:
        if name not in internal:
            return f"attribute {name!r} is not one the compiler's objects have"
        return None
    if not isinstance(node.ctx, ast.Load):
        return f"assignment to attribute {name!r} of a program value"
    return None


def _guarded(node: ast.Attribute, where: dict[str, int]) -> tuple[ast.Call, dict[str, int]]:
    """`_getattr_(value, 'name')` at the position of `node` (completed from `where`,
    its nearest placed ancestor's, if the lowering made it), every new node placed;
    and that position."""
    position = _place(node.__dict__, where)
    func = ast.copy_location(ast.Name(id="_getattr_", ctx=ast.Load()), node)
    name = ast.copy_location(ast.Constant(node.attr), node)
    call = ast.Call(func=func, args=[node.value, name], keywords=[])
    return ast.copy_location(call, node), position


def _unproven(node: ast.Attribute) -> bool:
    """Whether `node` is an attribute read the proofs leave to the `_getattr_` guard:
    a permitted read of a program value's attribute outside the allow-list."""
    return (node.attr not in ATTRIBUTES and isinstance(node.ctx, ast.Load)
            and attribute_problem(node) is None and internal_attributes(node) is None)


def _problems(node: ast.AST) -> list[str]:
    """What the policy refuses in `node` itself (not in its children)."""
    if type(node) not in GENERATED_NODES:
        return [f"{type(node).__name__} nodes are not part of the generated code"]
    problem: str | None = None
    if isinstance(node, ast.Name):
        problem = name_problem(node.id)
    elif isinstance(node, ast.Attribute):
        problem = attribute_problem(node)
    elif isinstance(node, ast.arg):
        problem = name_problem(node.arg)
    elif isinstance(node, (ast.FunctionDef, ast.ExceptHandler)):
        problem = name_problem(node.name)
    elif isinstance(node, ast.Global):
        return [p for p in map(name_problem, node.names) if p is not None]
    elif isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in _REFUSED_CALLS:
            problem = f"{node.func.id}() calls are not allowed"
    elif isinstance(node, _ELEMENT_SCOPES):
        if isinstance(node.elt, ast.Starred):
            problem = "unpacking in a comprehension is not allowed"
    elif isinstance(node, ast.DictComp):
        value: ast.expr | None = node.value  # None only from Python 3.15 on
        if value is None:
            problem = "unpacking in a comprehension is not allowed"
    return [] if problem is None else [problem]


_CHECKED: frozenset[type[ast.AST]] = frozenset({
    ast.Name, ast.Attribute, ast.arg, ast.FunctionDef, ast.ExceptHandler, ast.Global,
    ast.Call, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp,
})
"""The node types with a rule of their own; the rest need only be generated ones."""

_SCALAR_FIELDS = frozenset({
    "id", "attr", "arg", "name", "names", "kind", "type_comment", "is_async", "level",
    "module", "conversion",
})
"""Fields that hold strings, numbers or flags, never nodes (`Constant.value` too)."""

def _node_fields(kind: type[ast.AST]) -> tuple[str, ...]:
    """The fields of `kind` the walk enters: those that may hold nodes, except the
    `ctx` of a name, attribute, item, starred value, tuple or list (`Load`, `Store` or
    `Del`, all of them generated nodes; CPython compiles nothing else there)."""
    if kind is ast.Constant:
        return ()
    # Reversed: the walk pushes the children on a stack, and so takes them in order.
    return tuple(reversed([f for f in kind._fields if f not in _SCALAR_FIELDS and f != "ctx"]))


_KINDS: dict[type[ast.AST], tuple[bool, tuple[str, ...], bool]] = {}
"""For each node class: whether its nodes have a source position, the fields the walk
enters, and whether the policy has a rule for its nodes (or refuses them)."""


def _kind(kind: type[ast.AST]) -> tuple[bool, tuple[str, ...], bool]:
    facts = _KINDS.get(kind)
    if facts is None:
        facts = _KINDS[kind] = ("lineno" in kind._attributes, _node_fields(kind),
                                kind in _CHECKED or kind not in GENERATED_NODES)
    return facts


_ORIGIN: dict[str, int] = {"lineno": 1, "col_offset": 0, "end_lineno": 1, "end_col_offset": 0}
"""Where the module starts: the position of a node with no placed ancestor."""


def check_proven(module: ast.Module) -> ast.Module:
    """Apply the policy with static proofs to `module`, in place, in one walk, which
    also places the nodes the lowering made: a node without a position takes its
    nearest placed ancestor's, as `ast.fix_missing_locations` would give it.

    Raises RestrictionError if the policy refuses the code.
    """
    errors: list[str] = []
    # Each node to visit, with the position (the four attributes) its nearest placed
    # ancestor has: the lowering makes most nodes without one.
    stack: list[tuple[ast.AST, dict[str, int]]] = [(module, _ORIGIN)]
    pop = stack.pop
    push = stack.append
    kinds = _KINDS
    prefix = INTERNAL_PREFIX
    while stack:
        node, where = pop()
        kind = type(node)
        facts = kinds.get(kind) or _kind(kind)
        fields = node.__dict__
        if facts[0]:  # a node with a position: complete it, and it places its children
            if ("lineno" not in fields and "col_offset" not in fields
                    and "end_lineno" not in fields and "end_col_offset" not in fields):
                fields.update(where)  # made by the lowering: its parent's position
            elif (facts[1] or fields.get("end_col_offset") is None
                  or fields.get("end_lineno") is None or "col_offset" not in fields):
                where = _place(fields, where)
        if facts[2]:
            if kind is ast.Name:
                identifier = fields["id"]
                if identifier[:1] != "_" or identifier.startswith(prefix):
                    continue  # the common case: a name, and nothing below it to check
            for problem in _problems(node):
                errors.append(f"Line {fields.get('lineno', where['lineno'])}: {problem}")
        for field in facts[1]:
            value: Any = fields.get(field)
            if type(value) is list:
                for index in range(len(value) - 1, -1, -1):
                    item = value[index]
                    if isinstance(item, ast.AST):
                        if isinstance(item, ast.Attribute) and _unproven(item):
                            guard, inner = _guarded(item, where)
                            value[index] = guard
                            push((item.value, inner))
                        else:
                            push((item, where))
            elif isinstance(value, ast.AST):
                if isinstance(value, ast.Attribute) and _unproven(value):
                    guard, inner = _guarded(value, where)
                    setattr(node, field, guard)
                    push((value.value, inner))
                else:
                    push((value, where))
    if errors:
        raise RestrictionError(
            "the generated code broke the restriction policy (a compiler bug):\n"
            + "\n".join(errors)
        )
    return module


def _place(fields: dict[str, Any], where: dict[str, int]) -> dict[str, int]:
    """Complete the position in a node's `fields` from `where` (its nearest placed
    ancestor's), as `trees.fix_missing_locations` does; return the position."""
    if "lineno" not in fields:
        fields["lineno"] = where["lineno"]
    if "col_offset" not in fields:
        fields["col_offset"] = where["col_offset"]
    if fields.get("end_lineno") is None:
        fields["end_lineno"] = where["end_lineno"]
    if fields.get("end_col_offset") is None:
        fields["end_col_offset"] = where["end_col_offset"]
    return {key: fields[key] for key in _ORIGIN}

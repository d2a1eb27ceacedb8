"""Restrict: the generated Python checked and guarded by our policy, then compiled.

The last compiler phase. The lowered module (step functions, binders, hoisted
comprehensions; see `jarvis.compiler.lower`) goes through the restriction policy, then
straight (as a tree) through CPython's `compile()`. With static proofs on, as for every
program, the policy is one walk of our own (`policy.check_proven`); with them off, it
is RestrictedPython's transformer with `RestrictionPolicy`, which guards every access.
Both apply the same rules:

- Names: the compiler's own names start with `_jv_` and are allowed; any other name
  starting with `_` is refused. The validator refused such names in the program
  already, so meeting one here is a compiler bug, raised as `RestrictionError`.
- Attributes, items and iteration of program values are rewritten into calls of the
  runtime guards (`jarvis.runtime.guards`: `_getattr_`, `_getitem_`, `_getiter_`,
  `_write_`, `_inplacevar_`, `_unpack_sequence_`, `_iter_unpack_sequence_`), except
  where the policy proves the access safe at compile time (`static_proofs`, on by
  default). The proofs rest on one fact the front end guarantees: SPy has no classes,
  so every value a program can reach is of a built-in type (None, bool, int, float,
  str, list, tuple, dict, set, frozenset, range, their views and iterators, the
  `inputs` mapping), an exception, a function, a class the builtins name, or a Book
  proxy. None of these runs program code when it is indexed or iterated, and each
  allow-listed attribute is a documented method or field of them (docs/security.md
  goes through them type by type). The proofs:

  (a) an attribute read whose name is in `language.ATTRIBUTES` needs no guard, nor
      do the compiler's own attributes on its own objects (`policy.INTERNAL_ATTRIBUTES`);
  (b) item reads and iteration of program values need no guard;
  (c) item assignment and deletion (`_write_`), in-place operators (`_inplacevar_`)
      and unpacking need no guard either, for the same reason as (b).

  What is not proven stays guarded: with proofs on, that is an attribute outside the
  allow-list, which the validator refuses, so no valid program has one.
- `print` stays the SPy runtime builtin (RestrictedPython would turn it into its own
  print collector), star-arguments stay plain calls (RestrictedPython's `_apply_`
  would change the callee named in Python's errors; with full guards the starred
  values go through `_getiter_` instead), and RestrictedPython's refusal of augmented
  assignment to items and attributes is lifted for `d[k] += 1` and the compiler's
  boxed variables (`_jv_b_x.value += 1`).

Every node the policy creates takes the position of the node it replaces, so errors
are located in the SPy source as without the policy.
"""

from __future__ import annotations

import ast
import copy
import warnings
from types import CodeType
from typing import Any

from RestrictedPython.transformer import (
    INSPECT_ATTRIBUTES,
    IOPERATOR_TO_STR,
    RestrictingNodeTransformer,
)

from jarvis.compiler.contract import UnpackSpec
from jarvis.compiler.language import ATTRIBUTES
from jarvis.compiler.policy import (
    INTERNAL_CONTAINERS,
    INTERNAL_PREFIX,
    RestrictionError,
    attribute_problem,
    check_proven,
    internal_attributes,
    name_problem,
)
from jarvis.compiler.trees import dispatch, fix_missing_locations, transform_children

__all__ = ["INTERNAL_PREFIX", "RestrictionError", "RestrictionPolicy", "UnpackSpec",
           "restrict", "restrict_with_restrictedpython", "restricted_compile", "unpack_spec"]

def _call(function: str, args: list[ast.expr], like: ast.AST) -> ast.Call:
    """`function(*args)` at the position of `like`."""
    call = ast.Call(func=ast.Name(id=function, ctx=ast.Load()), args=args, keywords=[])
    ast.copy_location(call, like)
    return ast.fix_missing_locations(call)


def _spec_constant(target: ast.Tuple | ast.List) -> ast.Constant:
    # A tuple of constants is a constant of the code object (typeshed knows only scalars).
    spec: Any = unpack_spec(target)
    return ast.Constant(spec)


def _internal_container(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in INTERNAL_CONTAINERS


def unpack_spec(target: ast.Tuple | ast.List) -> UnpackSpec:
    """The constant that tells the unpack guards the shape of `target`."""
    elements = target.elts
    plain = sum(1 for element in elements if not isinstance(element, ast.Starred))
    starred = plain != len(elements)
    children: list[tuple[int, Any]] = []
    after_star = False
    for index, element in enumerate(elements):
        if isinstance(element, ast.Starred):
            after_star = True
        elif isinstance(element, (ast.Tuple, ast.List)):
            position = index - len(elements) if after_star else index
            children.append((position, unpack_spec(element)))
    return (plain, starred, tuple(children))


class RestrictionPolicy(RestrictingNodeTransformer):
    """RestrictedPython's transformer with Jarvis's names and static proofs.

    `static_proofs=False` guards every access of a program value at run time, which is
    how the proofs are tested: a program must behave the same either way.
    """

    def __init__(
        self,
        errors: list[str] | None = None,
        warnings: list[str] | None = None,
        used_names: dict[str, bool] | None = None,
        *,
        static_proofs: bool = True,
    ) -> None:
        super().__init__(errors, warnings, used_names)
        self.static_proofs = static_proofs

    # The base class's walk, done by the faster helpers of `trees` (same behaviour:
    # `visit_<class>` or the base class's refusing `generic_visit`).
    def visit(self, node: ast.AST) -> Any:
        return dispatch(self, node)

    def node_contents_visit(self, node: Any) -> Any:
        return transform_children(self, node)

    def gen_tmp_name(self) -> str:
        # The base class's `_tmpN` would be refused by our own name check.
        name = f"{INTERNAL_PREFIX}rp{self._tmp_idx}"
        self._tmp_idx += 1
        return name

    # -- names ----------------------------------------------------------------------

    def check_name(self, node: Any, name: str | None, allow_magic_methods: bool = False) -> None:
        # The base class also refuses `print`, `printed` and `builtins` (its print
        # collector and Zope's conventions) and `*__roles__` (Zope's security
        # declarations); SPy's `print` is a runtime builtin and the rest mean nothing
        # here. Program names were checked by the validator and the resolver already.
        problem = name_problem(name)
        if problem is not None:
            self.error(node, problem)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        self.check_name(node, node.id)
        return node

    # -- attributes -----------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        name = node.attr
        if name.startswith("_") or name in INSPECT_ATTRIBUTES:
            self.error(node, f"attribute {name!r} is not accessible")
            return node
        node = self.node_contents_visit(node)
        problem = attribute_problem(node)
        if problem is not None:
            self.error(node, problem)
            return node
        if internal_attributes(node) is not None:
            return node
        if self.static_proofs and name in ATTRIBUTES:
            return node  # proof (a)
        return _call("_getattr_", [node.value, ast.Constant(name)], node)

    # -- items ----------------------------------------------------------------------

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        node = self.node_contents_visit(node)
        if self.static_proofs or _internal_container(node.value):
            return node  # proofs (b) and (c)
        if isinstance(node.ctx, ast.Load):
            # A slice stays an `ast.Slice`: CPython compiles it into a slice object.
            return _call("_getitem_", [node.value, node.slice], node)
        node.value = _call("_write_", [node.value], node.value)
        return node

    # -- iteration and unpacking ----------------------------------------------------

    def guard_iter(self, node: Any) -> Any:
        """`for` loops and comprehensions (the base class calls this for both)."""
        node = self.node_contents_visit(node)
        if self.static_proofs:
            return node  # proof (b)
        target = node.target
        if isinstance(target, (ast.Tuple, ast.List)):
            spec = _spec_constant(target)
            node.iter = _call("_iter_unpack_sequence_", [node.iter, spec], node.iter)
        else:
            node.iter = _call("_getiter_", [node.iter], node.iter)
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        # The base class splits `a, b = c = value` into one assignment per target,
        # each evaluating `value` again; the guards hand the value back instead.
        node = self.node_contents_visit(node)
        if self.static_proofs:
            return node  # proof (c)
        for target in node.targets:
            if isinstance(target, (ast.Tuple, ast.List)):
                spec = _spec_constant(target)
                node.value = _call("_unpack_sequence_", [node.value, spec], node.value)
        return node

    def visit_Starred(self, node: ast.Starred) -> ast.AST:
        node = self.node_contents_visit(node)
        if not self.static_proofs and isinstance(node.ctx, ast.Load):
            node.value = _call("_getiter_", [node.value], node.value)  # `f(*xs)`, `[*xs]`
        return node

    def visit_Dict(self, node: ast.Dict) -> ast.AST:
        node = self.node_contents_visit(node)
        if not self.static_proofs:
            node.values = [
                _call("_getiter_", [value], value) if key is None else value  # `{**d}`
                for key, value in zip(node.keys, node.values, strict=True)
            ]
        return node

    # -- calls and in-place operators -----------------------------------------------

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
            self.error(node, f"{node.func.id}() calls are not allowed")
        node = self.node_contents_visit(node)
        if self.static_proofs:
            return node
        for keyword in node.keywords:
            if keyword.arg is None:  # `f(**d)`: the mapping's keys are iterated
                keyword.value = _call("_getiter_", [keyword.value], keyword.value)
        func = node.func
        if (isinstance(func, ast.Name) and func.id == f"{INTERNAL_PREFIX}iter"
                and len(node.args) == 1 and not isinstance(node.args[0], ast.Starred)):
            # A lowered `for` loop that may suspend iterates through `_jv_iter`.
            node.args[0] = _call("_getiter_", [node.args[0]], node.args[0])
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        node = self.node_contents_visit(node)
        target = node.target
        if self.static_proofs or isinstance(target, ast.Subscript):
            # An item target's container went through `_write_` already (guarded mode);
            # the item it reads and the operator apply to program values.
            return node
        current: ast.expr
        if isinstance(target, ast.Name):
            current = ast.Name(id=target.id, ctx=ast.Load())
        elif isinstance(target, ast.Attribute):  # a boxed variable: `_jv_b_x.value`
            current = ast.Attribute(value=copy.copy(target.value), attr=target.attr,
                                    ctx=ast.Load())
        else:  # pragma: no cover - the grammar allows no other target
            self.error(node, f"augmented assignment to {type(target).__name__}")
            return node
        ast.copy_location(current, target)
        operator = ast.Constant(IOPERATOR_TO_STR[type(node.op)])
        value = _call("_inplacevar_", [operator, current, node.value], node)
        return ast.fix_missing_locations(
            ast.copy_location(ast.Assign(targets=[target], value=value), node))


def restrict(module: ast.Module, *, static_proofs: bool = True) -> ast.Module:
    """`module` restricted, in place (copying the tree would cost several times the rewrite).

    With static proofs (every program compile), one walk of our own applies the policy
    (`policy.check_proven`); without them, RestrictedPython's transformer with
    `RestrictionPolicy` guards every access. Raises RestrictionError if the policy
    refuses the code.
    """
    if static_proofs:
        return check_proven(module)  # places the lowering's nodes as it walks
    return restrict_with_restrictedpython(module, static_proofs=False)


def restrict_with_restrictedpython(module: ast.Module, *,
                                   static_proofs: bool = True) -> ast.Module:
    """`module` through RestrictedPython's transformer with `RestrictionPolicy`, in
    place: the guarded mode, and the reference the one-walk pass is tested against.
    The nodes the lowering made are placed first."""
    fix_missing_locations(module)
    errors: list[str] = []
    policy = RestrictionPolicy(errors, [], {}, static_proofs=static_proofs)
    restricted = policy.visit(module)
    if errors:
        raise RestrictionError(
            "the generated code broke the restriction policy (a compiler bug):\n"
            + "\n".join(errors)
        )
    assert isinstance(restricted, ast.Module)
    return restricted


def restricted_compile(
    module: ast.Module, filename: str, *, static_proofs: bool = True
) -> CodeType:
    """The code object of the lowered `module`, restricted in place; see `restrict`."""
    restricted = restrict(module, static_proofs=static_proofs)
    with warnings.catch_warnings():
        # SyntaxWarnings (`assert (x, y)`, `x is 1`) are about the program; the
        # front end's diagnostics speak for it, not the code generator.
        warnings.simplefilter("ignore")
        return compile(restricted, filename, "exec", dont_inherit=True)

"""The lowering pass: a validated (and instrumented) tree to a resumable program module.

Steps, in order:

1. Book imports become lookups in the runtime's Book table.
2. Scopes and suspension points are analysed; suspending lambdas and comprehensions are
   hoisted into `def`s, until nothing is left to hoist. Generator expressions whose
   generator may outlive their statement get a picklable form (genexp.py).
3. Variables that a frame must share with a closure across a suspension are boxed in
   explicit `Cell`s (`x` becomes `_jv_b_x.value`).
4. Every function that may suspend gets a number; its `def` becomes a call to
   `_jv_mkfn(...)`, and its body becomes a step function (see blocks.py). The top level
   of the program is always step function 0.
5. Functions that never suspend stay ordinary Python `def`s.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass, field

from jarvis.compiler.language import BOOKS_MODULE
from jarvis.compiler.lower.anf import FunctionContext, FunctionLowering, SuspensionSite
from jarvis.compiler.lower.blocks import (
    ARTIFACT,
    BOOK,
    CALL,
    CHECKPOINT,
    SLEEP,
    BlockBuilder,
    assemble,
    call,
    const,
    name,
)
from jarvis.compiler.lower.genexp import has_generator_expressions, lazy_generators
from jarvis.compiler.lower.hoist import hoist
from jarvis.compiler.lower.scopes import Scope, ScopeTable, analyse_scopes
from jarvis.compiler.lower.suspension import SuspensionInfo, analyse_suspension
from jarvis.compiler.trees import (
    FastTransformer,
    child_nodes,
    copy_tree,
    fix_missing_locations,
    walk,
)
from jarvis.compiler.validate import book_imports


@dataclass(frozen=True)
class FunctionInfo:
    """A resumable function of the program: what the runtime needs to call it."""

    fid: int
    name: str
    qualname: str
    cells: tuple[str, ...]


@dataclass
class LoweredProgram:
    """The lowered module and its tables."""

    module: ast.Module
    functions: dict[int, FunctionInfo]
    sites: list[SuspensionSite]
    problems: list[tuple[str, str, ast.AST]] = field(default_factory=list)


class _StatementTransformer(FastTransformer):
    """A transformer of statements only: it does not enter expressions, where no
    statement (an import, a `def`) can be."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.expr):
            return node
        return super().generic_visit(node)


class _BookImports(_StatementTransformer):
    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST | list[ast.stmt]:
        if node.module != BOOKS_MODULE:
            return node
        return [
            ast.copy_location(ast.Assign(
                targets=[name(alias.asname or alias.name, store=True)],
                value=ast.Subscript(value=name("_jv_books"), slice=const(alias.name),
                                    ctx=ast.Load()),
            ), node)
            for alias in node.names
        ]


def _anything_to_hoist(scopes: ScopeTable, info: SuspensionInfo) -> bool:
    """Whether the hoisting pass has work (or a problem to report): a lambda that may
    suspend, or a comprehension that holds a suspension point. Without one, it would
    walk the whole tree to change nothing."""
    for scope in scopes.module.function_scopes():
        node = scope.node
        if isinstance(node, ast.Lambda):
            if id(node) in info.resumable:
                return True
        elif not isinstance(node, (ast.Module, ast.FunctionDef)) and id(node) in info.contains:
            return True
    return False


def _box(name_: str) -> str:
    return f"_jv_b_{name_}"


class _Boxes:
    """Which variables live in explicit cells, and the rewrite that puts them there."""

    def __init__(self, scopes: ScopeTable, info: SuspensionInfo) -> None:
        self.scopes = scopes
        self.info = info
        self.boxed: set[tuple[int, str]] = set()
        self._tree: ast.Module | None = None
        self._names: dict[int, str] | None = None

    def resumable(self, scope: Scope) -> bool:
        return id(scope.node) in self.info.resumable

    def decide(self) -> None:
        capturers: dict[tuple[int, str], list[Scope]] = {}
        # For each Name resolving to an outer scope, every scope between its home and
        # the defining scope captures that variable.
        for node_id, defining in self.scopes.resolution.items():
            if defining is None:
                continue
            walker: Scope | None = self.scopes.home[node_id]
            variable = self._name_of(node_id)
            while walker is not None and walker is not defining:
                capturers.setdefault((id(defining.node), variable), []).append(walker)
                walker = walker.parent
        by_id = {id(s.node): s for s in self.scopes.module.function_scopes()}
        for (scope_id, variable), scopes in capturers.items():
            defining = by_id[scope_id]
            functions = [s for s in scopes if s.kind in ("function", "lambda")]
            if (self.resumable(defining) and functions) or any(
                self.resumable(s) for s in functions
            ):
                self.boxed.add((scope_id, variable))

    def _name_of(self, node_id: int) -> str:
        if self._names is None:  # only a program with closures asks
            assert self._tree is not None
            self._names = {id(n): n.id for n in walk(self._tree) if isinstance(n, ast.Name)}
        return self._names[node_id]

    def index_names(self, tree: ast.Module) -> None:
        """Name the Name nodes of `tree` (by their ids) when `decide` needs them."""
        self._tree = tree
        self._names = None


class _BoxRewriter(FastTransformer):
    def __init__(self, scopes: ScopeTable, boxed: set[tuple[int, str]]) -> None:
        self.scopes = scopes
        self.boxed = boxed
        self.functions: list[Scope] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.functions.append(self.scopes.by_node[id(node)])
        self.generic_visit(node)
        self.functions.pop()
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        """`except E as e` with `e` boxed: bind the cell, and empty it when the handler
        ends however it ends, as Python unbinds `e`."""
        self.generic_visit(node)
        if node.name is None or not self.functions:
            return node
        if (id(self.functions[-1].node), node.name) not in self.boxed:
            return node
        box = _box(node.name)
        caught = f"_jv_caught_{node.name}"

        def cell(ctx: ast.expr_context) -> ast.Attribute:
            return ast.Attribute(value=name(box), attr="value", ctx=ctx)

        body: list[ast.stmt] = [
            ast.Assign(targets=[cell(ast.Store())], value=name(caught)),
            ast.Try(body=node.body, handlers=[], orelse=[], finalbody=[
                ast.Assign(targets=[cell(ast.Store())], value=const(None)),
                ast.Delete(targets=[cell(ast.Del())]),
            ]),
        ]
        for statement in body:
            ast.copy_location(statement, node)
        node.name = caught
        node.body = body
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        defining = self.scopes.resolution.get(id(node))
        if defining is None or (id(defining.node), node.id) not in self.boxed:
            return node
        # A closure reads the variable as a free variable (another error when unbound).
        free = isinstance(node.ctx, ast.Load) and self.scopes.home[id(node)] is not defining
        return ast.copy_location(
            ast.Attribute(value=name(_box(node.id)), attr="free" if free else "value",
                          ctx=node.ctx), node)


@dataclass
class _DefJob:
    fid: int
    node: ast.FunctionDef
    scope: Scope
    qualname: str


class _Program:
    def __init__(self, tree: ast.Module, display_names: dict[str, str]) -> None:
        self.tree = tree
        self.display = display_names
        self.sites: list[SuspensionSite] = []
        self.functions: dict[int, FunctionInfo] = {}
        self.jobs: list[_DefJob] = []
        self.book_names = set(book_imports(tree))

    def analyse(self) -> tuple[ScopeTable, SuspensionInfo]:
        scopes = analyse_scopes(self.tree)
        return scopes, analyse_suspension(self.tree, scopes)


def lower_program(tree: ast.Module, *, copy: bool = True) -> LoweredProgram:
    """Lower a validated module into a resumable program module. The module is not
    modified, unless `copy=False` hands over a tree the caller will not use again."""
    if copy:
        tree = copy_tree(tree)
    books = book_imports(tree)
    counter = itertools.count(1)
    problems: list[tuple[str, str, ast.AST]] = []
    display: dict[str, str] = {}
    analysed = False  # whether `scopes` and `info` describe the tree as it is
    rewritten = False  # whether a pass before `_Defs` changed the tree
    for _ in range(10):
        scopes = analyse_scopes(tree)
        info = analyse_suspension(tree, scopes)
        if not _anything_to_hoist(scopes, info):
            analysed = True  # the common case: no lambda or comprehension suspends
            break
        result = hoist(tree, info, counter)
        problems.extend(result.problems)
        display.update(result.display_names)
        rewritten = rewritten or result.changed
        if not result.changed:
            analysed = True  # nothing was hoisted: the analysis still holds
            break
    if problems:
        # What cannot be hoisted cannot be lowered; report it and stop here.
        empty = ast.Module(body=[], type_ignores=[])
        return LoweredProgram(empty, {}, [], problems)
    if (any(isinstance(scope.node, ast.GeneratorExp)
            for scope in scopes.module.function_scopes())
            if analysed else has_generator_expressions(tree)):
        # Generator expressions that may outlive their statement become picklable.
        scopes = analyse_scopes(tree)
        rewritten = lazy_generators(tree, scopes, analyse_suspension(tree, scopes),
                                    set(books)) or rewritten
        analysed = False
    if not analysed:
        scopes = analyse_scopes(tree)
        info = analyse_suspension(tree, scopes)
    for call_node, argument in info.callback_misuse:
        callee = call_node.func.id if isinstance(call_node.func, ast.Name) else "a builtin"
        problems.append((
            "SPY401",
            f"a function that calls Books is passed to {callee}(), which would call it "
            "where the program cannot suspend",
            argument,
        ))

    if problems:
        return LoweredProgram(ast.Module(body=[], type_ignores=[]), {}, [], problems)
    boxes = _Boxes(scopes, info)
    boxes.index_names(tree)
    boxes.decide()

    # Remember what each def is before the rewrite replaces nodes.
    def_scopes: dict[int, Scope] = {
        id(scope.node): scope for scope in scopes.module.function_scopes()
        if isinstance(scope.node, ast.FunctionDef)
    }
    if boxes.boxed:
        tree = _BoxRewriter(scopes, boxes.boxed).visit(tree)
        rewritten = True
    if rewritten:
        # Before `_Defs` takes the bodies of resumable functions out of the tree.
        fix_missing_locations(tree)
    # The Book imports (top-level statements, which stay in the tree) get their
    # positions with the nodes `_Defs` makes.
    tree = _BookImports().visit(tree)

    jobs: list[_DefJob] = []
    functions: dict[int, FunctionInfo] = {}
    fids = itertools.count(1)

    def qualname_of(node: ast.FunctionDef, scope: Scope) -> str:
        own = display.get(node.name, node.name)
        parts = [own]
        walker = scope.parent
        while walker is not None and walker.kind != "module":
            if isinstance(walker.node, ast.FunctionDef):
                parts.append("<locals>")
                parts.append(display.get(walker.node.name, walker.node.name))
            walker = walker.parent
        return ".".join(reversed(parts))

    def scope_boxes(scope: Scope) -> list[str]:
        return sorted(v for (sid, v) in boxes.boxed if sid == id(scope.node))

    class _Defs(_StatementTransformer):
        """Resumable defs become `_jv_mkfn(...)`; boxed names get their cells."""

        changes = 0  # `def`s this pass rewrote or gave cells to, so far

        def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST | list[ast.stmt]:
            scope = def_scopes[id(node)]
            changes_before = self.changes
            self.generic_visit(node)
            own_boxes = scope_boxes(scope)
            params = set(scope.params)
            inits: list[ast.stmt] = [
                ast.Assign(targets=[name(_box(v), store=True)],
                           value=call("_jv_Cell", const(v), name(v)) if v in params
                           else call("_jv_Cell", const(v)))
                for v in own_boxes
            ]
            defining = scope.parent
            binds_boxed = defining is not None and (id(defining.node), node.name) in boxes.boxed
            after: list[ast.stmt] = []
            if binds_boxed:
                after.append(ast.Assign(
                    targets=[ast.Attribute(value=name(_box(node.name)), attr="value",
                                           ctx=ast.Store())],
                    value=name(node.name)))
            if inits or after:
                self.changes += 1
            if id(node) not in info.resumable:
                node.body = [*inits, *node.body]
                if self.changes == changes_before and not any(
                        d is not None and id(d) in info.contains
                        for d in [*node.args.defaults, *node.args.kw_defaults]):
                    # As parsed (with positions everywhere), and left so: nothing
                    # below it was rewritten, and its defaults do not suspend.
                    native.add(id(node))
                return [node, *after] if after else node
            self.changes += 1
            fid = next(fids)
            free = sorted(scope.free)
            cells = tuple(_box(v) for v in free)
            qualname = qualname_of(node, scope)
            functions[fid] = FunctionInfo(fid, display.get(node.name, node.name), qualname, cells)
            node.body = [*inits, *node.body]
            jobs.append(_DefJob(fid, node, scope, qualname))
            defaults = ast.Tuple(elts=list(node.args.defaults), ctx=ast.Load())
            kw_defaults = ast.Dict(
                keys=[const(a.arg) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults,
                                                   strict=True) if d is not None],
                values=[d for d in node.args.kw_defaults if d is not None],
            )
            maker = ast.Call(func=name("_jv_mkfn"), args=[
                const(fid),
                ast.Tuple(elts=[name(c) for c in cells], ctx=ast.Load()),
                defaults,
                kw_defaults,
            ], keywords=[])
            statement = ast.copy_location(
                ast.Assign(targets=[name(node.name, store=True)], value=maker), node)
            return [statement, *after]

    native: set[int] = set()  # the `def`s that stay native, untouched by the lowering
    tree = _Defs().visit(tree)
    fix_missing_locations(tree)

    def kind_of(node: ast.Call) -> int:
        func = node.func
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id in books):
            return BOOK
        if isinstance(func, ast.Name) and func.id == "sleep":
            return SLEEP
        if isinstance(func, ast.Name) and func.id == "checkpoint":
            return CHECKPOINT
        if isinstance(func, ast.Name) and func.id == "artifact":
            return ARTIFACT
        return CALL

    context = FunctionContext(info.sites, books, [], kind_of)
    module_names = sorted(scopes.module.bound)
    out: list[ast.stmt] = []

    main = FunctionLowering(context)
    main.body(tree.body)
    out += assemble(main.builder, "_jv_step_0", "_jv_H_0",
                    _assigned_locals(main.builder, []), module_names)

    for job in jobs:
        lowering = FunctionLowering(context)
        lowering.body(job.node.body)
        params = list(job.scope.params)
        cells = list(functions[job.fid].cells)
        out += assemble(lowering.builder, f"_jv_step_{job.fid}", f"_jv_H_{job.fid}",
                        _assigned_locals(lowering.builder, params + cells), [])
        out.append(_binder(job))

    module = ast.Module(body=out, type_ignores=[])
    fix_missing_locations(module, frozenset(native))
    functions[0] = FunctionInfo(0, "<module>", "<module>", ())
    return LoweredProgram(module, functions, context.site_table, problems)


def _binder(job: _DefJob) -> ast.FunctionDef:
    """`_jv_bind_N(params...)`: Python's own argument binding, returning the locals.

    Defaults here are placeholders; the runtime gives each function object the values
    its `def` evaluated.
    """
    args = job.node.args
    arguments = ast.arguments(
        posonlyargs=[], args=[ast.arg(arg=a.arg) for a in args.args],
        vararg=ast.arg(arg=args.vararg.arg) if args.vararg else None,
        kwonlyargs=[ast.arg(arg=a.arg) for a in args.kwonlyargs],
        kw_defaults=[const(None) if d is not None else None for d in args.kw_defaults],
        kwarg=ast.arg(arg=args.kwarg.arg) if args.kwarg else None,
        defaults=[const(None) for _ in args.defaults],
    )
    return ast.FunctionDef(
        name=f"_jv_bind_{job.fid}", args=arguments,
        body=[ast.Return(value=call("_jv_locals"))],
        decorator_list=[], returns=None, type_comment=None,
    )


def _assigned_locals(builder: BlockBuilder, extra: list[str]) -> set[str]:
    """Names a step function binds: its parameters, cells, temporaries and variables."""
    names = set(extra)
    for statements in builder.blocks.values():
        for statement in statements:
            for node in _walk_same_scope(statement):
                if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                    names.add(node.id)
                elif isinstance(node, (ast.FunctionDef, ast.ExceptHandler)) and node.name:
                    names.add(node.name)
    return names


def _walk_same_scope(node: ast.AST) -> list[ast.AST]:
    out: list[ast.AST] = []
    stack = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        if isinstance(
            current, (ast.FunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                      ast.GeneratorExp)
        ):
            # A nested scope: only its defaults (and first iterable) run here.
            if isinstance(current, (ast.FunctionDef, ast.Lambda)):
                stack.extend(current.args.defaults)
                stack.extend(d for d in current.args.kw_defaults if d is not None)
            else:
                stack.append(current.generators[0].iter)
            continue
        stack.extend(child_nodes(current))
    return out

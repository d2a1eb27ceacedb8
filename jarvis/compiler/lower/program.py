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
from jarvis.compiler.lower.anf import FunctionContext, FunctionLowering
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
from jarvis.compiler.tables import FunctionInfo as FunctionInfo
from jarvis.compiler.tables import SuspensionSite
from jarvis.compiler.trees import (
    FastTransformer,
    child_nodes,
    copy_tree,
    fix_missing_locations,
)
from jarvis.compiler.validate import book_imports


@dataclass
class LoweredProgram:
    """The lowered module and its tables.

    The nodes the lowering makes have no source positions yet: the restriction pass
    (`restrict.restrict`), which walks the whole module anyway, gives each the
    position of its nearest placed ancestor."""

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


def _lower_book_imports(tree: ast.Module) -> None:
    """`from books import crm as c` becomes `c = _jv_books['crm']`, in place, every new
    node at the import's position (the validator keeps Book imports at the top level)."""
    if not any(isinstance(statement, ast.ImportFrom) for statement in tree.body):
        return
    body: list[ast.stmt] = []
    for statement in tree.body:
        if not (isinstance(statement, ast.ImportFrom) and statement.module == BOOKS_MODULE):
            body.append(statement)
            continue
        for alias in statement.names:
            lookup = ast.Assign(
                targets=[name(alias.asname or alias.name, store=True)],
                value=ast.Subscript(value=name("_jv_books"), slice=const(alias.name),
                                    ctx=ast.Load()),
            )
            body.append(_placed(lookup, statement))
    tree.body = body


_BLOCK_FIELDS = ("body", "orelse", "finalbody")
_ORIGIN = ast.Pass(lineno=1, col_offset=0, end_lineno=1, end_col_offset=0)
"""Where a node placed at the top level of a module stands: its first line."""


def _placed(statement: ast.stmt, like: ast.AST) -> ast.stmt:
    """`statement`, made here, with the position of `like` wherever it has none."""
    ast.copy_location(statement, like)
    return fix_missing_locations(statement)


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

    def resumable(self, scope: Scope) -> bool:
        return id(scope.node) in self.info.resumable

    def decide(self) -> None:
        capturers: dict[tuple[int, str], list[Scope]] = {}
        # For each Name resolving to an outer scope, every scope between its home and
        # the defining scope captures that variable.
        home = self.scopes.home
        names = self.scopes.names
        for node_id, defining in self.scopes.resolution.items():
            if defining is None:
                continue
            walker: Scope | None = home[node_id]
            if walker is defining:
                continue  # a local of its own scope: nothing captures it
            variable = names[node_id]
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
        if not analysed:
            scopes = analyse_scopes(tree)
            info = analyse_suspension(tree, scopes)
        changed = lazy_generators(tree, scopes, info, set(books))
        rewritten = rewritten or changed
        analysed = not changed  # the analysis holds if no expression was rewritten
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
    _lower_book_imports(tree)

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
        """Resumable defs become `_jv_mkfn(...)`; boxed names get their cells.

        The statements made here are placed once the pass is done, each where the
        node that holds it stands, but only those left in the tree: the ones in the
        body of a resumable function are placed with the code its lowering makes."""

        def __init__(self) -> None:
            # For each function being visited (the module first): the statements made
            # in it so far, each with the node whose position it takes.
            self.unplaced: list[list[tuple[ast.stmt, ast.AST]]] = [[]]

        def generic_visit(self, node: ast.AST) -> ast.AST:
            node = super().generic_visit(node)
            if isinstance(node, (ast.stmt, ast.excepthandler, ast.Module)):
                # A statement a nested def left here (storing it in its cell) stands
                # where the statement that holds it does (the module's start at the top).
                like = _ORIGIN if isinstance(node, ast.Module) else node
                for block in _BLOCK_FIELDS:
                    for statement in getattr(node, block, ()):
                        if isinstance(statement, ast.stmt) and "lineno" not in statement.__dict__:
                            self.unplaced[-1].append((statement, like))
            return node

        def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST | list[ast.stmt]:
            scope = def_scopes[id(node)]
            self.unplaced.append([])
            self.generic_visit(node)
            inner = self.unplaced.pop()
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
            if id(node) not in info.resumable:
                # A native def keeps its body: the cells it makes stand at the `def`.
                node.body = [*inits, *node.body]
                self.unplaced[-1] += inner
                self.unplaced[-1] += ((init, node) for init in inits)
                return [node, *after] if after else node
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
            self.unplaced[-1].append((statement, node))
            return [statement, *after]

    defs = _Defs()
    tree = defs.visit(tree)
    for statement, like in defs.unplaced[0]:
        _placed(statement, like)

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
        _bound_by(statements, names)
    return names


_BINDS_NOTHING: tuple[type[ast.AST], ...] = (
    ast.Expr, ast.Return, ast.Raise, ast.Assert, ast.Pass, ast.Break, ast.Continue, ast.Global)
"""Statements that bind no name of their scope: SPy has no assignment expressions, so
only a statement's targets (and a nested scope's own parts) bind names."""


def _bound_by(statements: list[ast.stmt], names: set[str]) -> None:
    """Add the names `statements` bind in their own scope to `names`: a walk of the
    statements and their targets, not of every expression."""
    stack: list[ast.AST] = list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Assign):
            stack.extend(node.targets)
        elif isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                names.add(node.id)
        elif isinstance(node, (ast.Tuple, ast.List)):
            stack.extend(node.elts)
        elif isinstance(node, (ast.Subscript, ast.Attribute, *_BINDS_NOTHING)):
            continue  # an item or attribute target binds no name
        elif isinstance(node, ast.Starred):
            stack.append(node.value)
        elif isinstance(node, ast.AugAssign):
            stack.append(node.target)
        elif isinstance(node, ast.Delete):
            stack.extend(node.targets)
        elif isinstance(node, (ast.If, ast.While)):
            stack.extend(node.body)
            stack.extend(node.orelse)
        elif isinstance(node, ast.For):
            stack.append(node.target)
            stack.extend(node.body)
            stack.extend(node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body)
            stack.extend(node.handlers)
            stack.extend(node.orelse)
            stack.extend(node.finalbody)
        elif isinstance(node, ast.ExceptHandler):
            if node.name:
                names.add(node.name)
            stack.extend(node.body)
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
        else:
            # Anything else: every Name it stores in its own scope, the slow way.
            for inner in _walk_same_scope(node):
                if isinstance(inner, ast.Name) and isinstance(inner.ctx, (ast.Store, ast.Del)):
                    names.add(inner.id)
                elif isinstance(inner, (ast.FunctionDef, ast.ExceptHandler)) and inner.name:
                    names.add(inner.name)


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

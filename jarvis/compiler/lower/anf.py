"""Statements and expressions of one resumable function, lowered into blocks.

Statements that hold no suspension point (and no jump out of themselves) are copied
as they are: native Python. The rest are taken apart:

- expressions holding a suspension point go into A-normal form: every value computed
  before the suspension is kept in a temporary, in Python's evaluation order, so the
  suspension happens exactly where CPython would make the call;
- `if`, `while`, `for`, `try` and the jumps between them become blocks and jumps, with
  try-regions for exception handlers and completion records for `finally`.

"Exactly where CPython would" covers what can fail, too: a name that is not bound yet,
a method the value lacks, a `**` operand that is not a mapping fail before a later part
of the expression calls a Book, as in CPython. tests/test_lowering_cases.py holds the
cases, and tests/test_lowering_differential.py compares whole programs with CPython.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeGuard

from jarvis.compiler.lower.blocks import (
    ARTIFACT,
    BOOK,
    CHECKPOINT,
    RETURN,
    SLEEP,
    BlockBuilder,
    assign,
    call,
    const,
    name,
)
from jarvis.compiler.tables import SuspensionSite as SuspensionSite
from jarvis.compiler.trees import FastTransformer, child_nodes, walk

# Completion records of a `finally`: None (fell through), or one of these tuples.
RAISING = 1  # (RAISING, exception)
RETURNING = 2  # (RETURNING, value)
JUMPING = 3  # (JUMPING, target pc, finallys still to run)


@dataclass
class FunctionContext:
    """What the lowering of one function needs to know about the program."""

    sites: set[int]
    book_names: dict[str, str]
    site_table: list[SuspensionSite]
    # Classifies a suspension-point call: BOOK, SLEEP, CHECKPOINT or CALL.
    kind_of: Callable[[ast.Call], int]


@dataclass
class _Finally:
    index: int
    start: int
    parent: _Finally | None


@dataclass
class _Loop:
    head: int
    after: int
    finally_depth: int


@dataclass
class _State:
    finallys: list[_Finally] = field(default_factory=list)
    loops: list[_Loop] = field(default_factory=list)
    # The lowered handlers and finally bodies around the current statement, innermost
    # last: ("handler", the variable holding the caught exception) or ("finally", the
    # variable holding the completion record). A bare `raise` re-raises from them.
    handling: list[tuple[str, str]] = field(default_factory=list)


def _stable(expr: ast.expr) -> bool:
    """An expression whose value cannot change between now and later in the statement.

    SPy has no `global`, `nonlocal` or walrus, so nothing inside an expression can rebind
    a name; boxed variables (`_jv_b_x.value`) are only assigned by statements too.
    """
    if isinstance(expr, (ast.Constant, ast.Name)):
        return True
    return (
        isinstance(expr, ast.Attribute)
        and isinstance(expr.value, ast.Name)
        and expr.value.id.startswith("_jv_b_")
    )


class FunctionLowering:
    """Lower the body of one resumable function into a BlockBuilder."""

    def __init__(self, context: FunctionContext) -> None:
        self.context = context
        self.builder = BlockBuilder()
        self.builder.start(self.builder.new_block())  # pc 0: where every frame starts
        self.state = _State()
        self._has: dict[int, bool] = {}
        self._finally_count = 0

    # -- what holds a suspension point ------------------------------------------------

    def has(self, node: ast.AST | None) -> bool:
        if node is None:
            return False
        key = id(node)
        cached = self._has.get(key)
        if cached is not None:
            return cached
        found = key in self.context.sites
        if not found and isinstance(node, ast.FunctionDef):
            # A `def` left here runs natively: only its defaults are evaluated here.
            found = any(self.has(d) for d in [*node.args.defaults, *node.args.kw_defaults])
        elif not found:
            for child in child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.Lambda)):
                    found = any(self.has(d) for d in [*child.args.defaults,
                                                       *child.args.kw_defaults])
                else:
                    found = self.has(child)
                if found:
                    break
        self._has[key] = found
        return found

    def needs_lowering(self, statement: ast.stmt) -> bool:
        if self.has(statement):
            return True
        if isinstance(statement, (ast.Break, ast.Continue, ast.Return)):
            return True
        if isinstance(statement, (ast.If, ast.While, ast.For, ast.Try)):
            return _escapes_statement(statement) or (
                bool(self.state.finallys) and _returns(statement)
            )
        return False

    # -- statements -----------------------------------------------------------------

    def body(self, statements: list[ast.stmt]) -> None:
        for statement in statements:
            if self.needs_lowering(statement):
                self.statement(statement)
            elif self.state.handling:
                self.builder.emit(*_BareRaises(self.reraise).visit_block(
                    _native_returns(statement)))
            else:
                self.builder.emit(_native_returns(statement))

    def statement(self, node: ast.stmt) -> None:
        handler = getattr(self, f"stmt_{type(node).__name__}", None)
        if handler is None:
            raise NotImplementedError(f"cannot lower {type(node).__name__}")
        handler(node)

    def stmt_Expr(self, node: ast.Expr) -> None:
        value = self.expr(node.value)
        if not _stable(value):
            self.builder.emit(ast.copy_location(ast.Expr(value=value), node))

    def stmt_Assign(self, node: ast.Assign) -> None:
        value = self.expr(node.value)
        if not any(self.has(t) for t in node.targets):
            self.builder.emit(ast.copy_location(ast.Assign(targets=node.targets, value=value),
                                                node))
            return
        # Python stores into the targets one by one, left to right, evaluating each
        # target's parts just before its store.
        value = self.spill(value, force=len(node.targets) > 1)
        for target in node.targets:
            self.store(target, value, node)

    def store(self, target: ast.expr, value: ast.expr, where: ast.AST) -> None:
        """`target = value` (`value` a name or constant), the target's parts evaluated
        where Python evaluates them: a tuple target is unpacked first, then each of its
        elements is stored in order."""
        if not self.has(target):
            self.builder.emit(ast.copy_location(ast.Assign(targets=[target], value=value),
                                                where))
            return
        if isinstance(target, (ast.Tuple, ast.List)):
            parts: list[tuple[ast.expr, str]] = []
            unpacked: list[ast.expr] = []
            for element in target.elts:
                temp = self.builder.temp()
                if isinstance(element, ast.Starred):
                    parts.append((element.value, temp))
                    unpacked.append(ast.Starred(value=name(temp, store=True), ctx=ast.Store()))
                else:
                    parts.append((element, temp))
                    unpacked.append(name(temp, store=True))
            self.builder.emit(ast.copy_location(ast.Assign(
                targets=[ast.Tuple(elts=unpacked, ctx=ast.Store())], value=value), where))
            for element, temp in parts:
                self.store(element, name(temp), where)
            return
        self.builder.emit(ast.copy_location(ast.Assign(targets=[self.target(target)],
                                                       value=value), where))

    def stmt_AugAssign(self, node: ast.AugAssign) -> None:
        target = node.target
        if isinstance(target, ast.Subscript):
            container = self.spill(self.expr(target.value), force=True)
            key = self.spill(self.expr(target.slice), force=True)
            old = self.builder.temp()
            self.builder.emit(assign(old, ast.Subscript(value=container, slice=key,
                                                        ctx=ast.Load())))
            value = self.expr(node.value)
            self.builder.emit(
                ast.copy_location(ast.AugAssign(target=name(old, store=True), op=node.op,
                                                value=value), node),
                ast.Assign(targets=[ast.Subscript(value=container, slice=key, ctx=ast.Store())],
                           value=name(old)),
            )
            return
        if self.has(node.value):
            # Python reads the target before the value: an unbound one fails first.
            loaded = copy.copy(target)
            loaded.ctx = ast.Load()
            self.spill(loaded)
        value = self.expr(node.value)
        self.builder.emit(ast.copy_location(
            ast.AugAssign(target=target, op=node.op, value=value), node))

    def stmt_Return(self, node: ast.Return) -> None:
        value = self.expr(node.value) if node.value is not None else const(None)
        self.do_return(value)

    def do_return(self, value: ast.expr) -> None:
        if not self.state.finallys:
            self.builder.terminate(ast.Return(value=ast.Tuple(elts=[const(RETURN), value],
                                                              ctx=ast.Load())))
            return
        innermost = self.state.finallys[-1]
        record = ast.Tuple(elts=[const(RETURNING), value], ctx=ast.Load())
        self.builder.emit(assign(f"_jv_c{innermost.index}", record))
        self.builder.jump(innermost.start)

    def stmt_Raise(self, node: ast.Raise) -> None:
        if node.exc is None:
            *checks, final = [ast.copy_location(s, node) for s in self.reraise()]
            self.builder.emit(*checks)
            self.builder.terminate(final)
            return
        exc, cause = self.sequence([node.exc, node.cause])
        self.builder.terminate(ast.copy_location(ast.Raise(exc=exc, cause=cause), node))

    def reraise(self) -> list[ast.stmt]:
        """A bare `raise`: the lowered handler or finally it stands in is not a Python
        `except` block, so name the exception being handled explicitly."""
        out: list[ast.stmt] = []
        for kind, variable in reversed(self.state.handling):
            if kind == "handler":
                out.append(ast.Raise(exc=name(variable), cause=None))
                return out
            # A finally re-raises the exception it runs for, if it runs for one.
            record = name(variable)
            out.append(ast.If(
                test=ast.BoolOp(op=ast.And(), values=[
                    ast.Compare(left=record, ops=[ast.IsNot()], comparators=[const(None)]),
                    ast.Compare(left=ast.Subscript(value=record, slice=const(0), ctx=ast.Load()),
                                ops=[ast.Eq()], comparators=[const(RAISING)]),
                ]),
                body=[ast.Raise(exc=ast.Subscript(value=record, slice=const(1), ctx=ast.Load()),
                                cause=None)],
                orelse=[],
            ))
        out.append(ast.Raise(exc=None, cause=None))
        return out

    def stmt_Assert(self, node: ast.Assert) -> None:
        test = self.expr(node.test)
        if not self.has(node.msg):
            self.builder.emit(ast.copy_location(ast.Assert(test=test, msg=node.msg), node))
            return
        failing, after = self.builder.new_block(), self.builder.new_block()
        self.builder.branch(test, after, failing)
        self.builder.start(failing)
        message = self.expr(node.msg) if node.msg is not None else None
        error = ast.Call(func=name("AssertionError"), args=[message] if message else [],
                         keywords=[])
        self.builder.terminate(ast.copy_location(ast.Raise(exc=error, cause=None), node))
        self.builder.start(after)

    def stmt_Delete(self, node: ast.Delete) -> None:
        # One by one, as Python deletes them: a failing one stops the rest.
        for target in node.targets:
            self.builder.emit(ast.copy_location(ast.Delete(targets=[self.target(target)]),
                                                node))

    def stmt_Pass(self, node: ast.Pass) -> None:
        return

    def stmt_FunctionDef(self, node: ast.FunctionDef) -> None:
        # Only a plain def whose defaults suspend gets here.
        count = len(node.args.defaults)
        evaluated = self.sequence([*node.args.defaults, *node.args.kw_defaults])
        defaults, kw_defaults = evaluated[:count], evaluated[count:]
        definition = ast.FunctionDef(
            name=node.name,
            args=ast.arguments(
                posonlyargs=node.args.posonlyargs, args=node.args.args, vararg=node.args.vararg,
                kwonlyargs=node.args.kwonlyargs, kw_defaults=kw_defaults, kwarg=node.args.kwarg,
                defaults=[d for d in defaults if d is not None],
            ),
            body=node.body, decorator_list=[], returns=None, type_comment=None,
        )
        self.builder.emit(ast.copy_location(definition, node))

    def stmt_If(self, node: ast.If) -> None:
        test = self.expr(node.test)
        then, otherwise, after = (self.builder.new_block() for _ in range(3))
        self.builder.branch(test, then, otherwise if node.orelse else after)
        self.builder.start(then)
        self.body(node.body)
        self.builder.jump(after)
        if node.orelse:
            self.builder.start(otherwise)
            self.body(node.orelse)
            self.builder.jump(after)
        self.builder.start(after)

    def stmt_While(self, node: ast.While) -> None:
        head, loop_body, otherwise, after = (self.builder.new_block() for _ in range(4))
        self.builder.jump(head)
        self.builder.start(head)
        test = self.expr(node.test)
        self.builder.branch(test, loop_body, otherwise)
        self.builder.start(loop_body)
        self.state.loops.append(_Loop(head, after, len(self.state.finallys)))
        self.body(node.body)
        self.state.loops.pop()
        self.builder.jump(head)
        self.builder.start(otherwise)
        self.body(node.orelse)
        self.builder.jump(after)
        self.builder.start(after)

    def stmt_For(self, node: ast.For) -> None:
        iterable = self.expr(node.iter)
        iterator = self.builder.temp("it")
        item = self.builder.temp("v")
        self.builder.emit(assign(iterator, call("_jv_iter", iterable)))
        head, loop_body, otherwise, after = (self.builder.new_block() for _ in range(4))
        self.builder.jump(head)
        self.builder.start(head)
        self.builder.emit(assign(item, call("_jv_next", name(iterator), name("_jv_END"))))
        done = ast.Compare(left=name(item), ops=[ast.Is()], comparators=[name("_jv_END")])
        self.builder.branch(done, otherwise, loop_body)
        self.builder.start(loop_body)
        self.store(node.target, name(item), node.target)
        self.state.loops.append(_Loop(head, after, len(self.state.finallys)))
        self.body(node.body)
        self.state.loops.pop()
        self.builder.jump(head)
        self.builder.start(otherwise)
        self.builder.emit(assign(iterator, const(None)), assign(item, const(None)))
        self.body(node.orelse)
        self.builder.jump(after)
        self.builder.start(after)
        # A `break` arrives here with the iterator still set: drop it from the frame.
        self.builder.emit(assign(iterator, const(None)), assign(item, const(None)))

    def stmt_Break(self, node: ast.Break) -> None:
        loop = self.state.loops[-1]
        self.jump_through_finallys(loop.after, loop.finally_depth)

    def stmt_Continue(self, node: ast.Continue) -> None:
        loop = self.state.loops[-1]
        self.jump_through_finallys(loop.head, loop.finally_depth)

    def jump_through_finallys(self, target: int, depth: int) -> None:
        crossing = self.state.finallys[depth:]
        if not crossing:
            self.builder.jump(target)
            return
        innermost = crossing[-1]
        record = ast.Tuple(elts=[const(JUMPING), const(target), const(len(crossing) - 1)],
                           ctx=ast.Load())
        self.builder.emit(assign(f"_jv_c{innermost.index}", record))
        self.builder.jump(innermost.start)

    def stmt_Try(self, node: ast.Try) -> None:
        b = self.builder
        outer = b.handler
        after = b.new_block()
        fin: _Finally | None = None
        fin_raise = -1
        if node.finalbody:
            self._finally_count += 1
            parent = self.state.finallys[-1] if self.state.finallys else None
            fin = _Finally(self._finally_count, b.new_block(), parent)
            fin_raise = b.new_block()
        dispatch = b.new_block() if node.handlers else -1
        body_start = b.new_block()
        b.jump(body_start)

        # The protected body.
        b.handler = dispatch if node.handlers else fin_raise if fin else outer
        if fin:
            self.state.finallys.append(fin)
        b.start(body_start)
        self.body(node.body)
        b.handler = fin_raise if fin else outer
        else_start = b.new_block()
        b.jump(else_start)

        # Handlers: match the exception in order, as Python does.
        if node.handlers:
            caught = f"_jv_x{body_start}"
            b.start(dispatch)
            b.emit(assign(caught, name("_jv_exc")))
            for handler in node.handlers:
                handler_start, next_test = b.new_block(), b.new_block()
                if handler.type is None:
                    b.jump(handler_start)
                else:
                    kind = self.expr(handler.type)
                    b.branch(call("_jv_exc_match", name(caught), kind), handler_start, next_test)
                b.start(handler_start)
                statements = handler.body
                if handler.name is not None:
                    b.emit(assign(handler.name, name(caught)))
                    if not handler.name.startswith("_jv_"):  # (a boxed one unbinds its cell)
                        statements = [_unbinding(handler.name, handler)]
                self.state.handling.append(("handler", caught))
                self.body(statements)
                self.state.handling.pop()
                if fin and b.current is not None:
                    b.emit(assign(f"_jv_c{fin.index}", const(None)))
                b.jump(fin.start if fin else after)
                b.start(next_test)
            b.terminate(ast.Raise(exc=name(caught), cause=None))

        # Else runs only when the body completed without an exception.
        b.start(else_start)
        self.body(node.orelse)
        if fin:
            b.emit(assign(f"_jv_c{fin.index}", const(None)))
        b.jump(fin.start if fin else after)

        b.handler = outer
        if fin:
            self.state.finallys.pop()
            # An exception anywhere in the protected part runs the finally, then re-raises.
            b.start(fin_raise)
            record = ast.Tuple(elts=[const(RAISING), name("_jv_exc")], ctx=ast.Load())
            b.emit(assign(f"_jv_c{fin.index}", record))
            b.jump(fin.start)
            self.finally_block(node.finalbody, fin, after)
        b.start(after)

    def finally_block(self, statements: list[ast.stmt], fin: _Finally, after: int) -> None:
        b = self.builder
        b.start(fin.start)
        completion = f"_jv_c{fin.index}"
        held = f"_jv_cc{fin.index}"
        # The body may run a nested try that overwrites nothing of ours, but a nested
        # finally of the same function has its own record; keep ours in a fresh name.
        b.emit(assign(held, name(completion)))
        self.state.handling.append(("finally", held))
        self.body(statements)
        self.state.handling.pop()
        if b.current is None:
            return
        record = name(held)
        b.emit(ast.If(
            test=ast.Compare(left=record, ops=[ast.Is()], comparators=[const(None)]),
            body=[assign("_jv_pc", const(after)), ast.Continue()],
            orelse=[],
        ))
        kind = ast.Subscript(value=record, slice=const(0), ctx=ast.Load())
        payload = ast.Subscript(value=record, slice=const(1), ctx=ast.Load())
        b.emit(ast.If(
            test=ast.Compare(left=kind, ops=[ast.Eq()], comparators=[const(RAISING)]),
            body=[ast.Raise(exc=payload, cause=None)],
            orelse=[],
        ))
        parent = fin.parent
        if parent is None:
            on_return: list[ast.stmt] = [ast.Return(value=ast.Tuple(
                elts=[const(RETURN), payload], ctx=ast.Load()))]
        else:
            on_return = [assign(f"_jv_c{parent.index}", record),
                         assign("_jv_pc", const(parent.start)), ast.Continue()]
        b.emit(ast.If(
            test=ast.Compare(left=kind, ops=[ast.Eq()], comparators=[const(RETURNING)]),
            body=on_return,
            orelse=[],
        ))
        remaining = ast.Subscript(value=record, slice=const(2), ctx=ast.Load())
        forward: list[ast.stmt]
        if parent is None:
            forward = [assign("_jv_pc", payload), ast.Continue()]
        else:
            forward = [
                assign(f"_jv_c{parent.index}", ast.Tuple(elts=[
                    const(JUMPING), payload,
                    ast.BinOp(left=remaining, op=ast.Sub(), right=const(1)),
                ], ctx=ast.Load())),
                assign("_jv_pc", const(parent.start)),
                ast.Continue(),
            ]
        b.terminate(ast.If(
            test=ast.Compare(left=remaining, ops=[ast.Eq()], comparators=[const(0)]),
            body=[assign("_jv_pc", payload), ast.Continue()],
            orelse=forward,
        ))

    # -- targets --------------------------------------------------------------------

    def target(self, node: ast.expr) -> ast.expr:
        """A store target whose parts (subscript containers and keys) are lowered."""
        if not self.has(node):
            return node
        if isinstance(node, ast.Subscript):
            container, key = self.sequence([node.value, node.slice])
            assert container is not None and key is not None
            return ast.Subscript(value=container, slice=key, ctx=node.ctx)
        if isinstance(node, (ast.Tuple, ast.List)):
            elements = [self.target(e) for e in node.elts]
            return type(node)(elts=elements, ctx=node.ctx)
        if isinstance(node, ast.Starred):
            return ast.Starred(value=self.target(node.value), ctx=node.ctx)
        if isinstance(node, ast.Attribute):
            return ast.Attribute(value=self.expr(node.value), attr=node.attr, ctx=node.ctx)
        return node

    # -- expressions ----------------------------------------------------------------

    def spill(self, value: ast.expr, force: bool = False) -> ast.expr:
        if _stable(value) and not force:
            if not isinstance(value, ast.Constant) and not _internal(value):
                # Its value cannot change, but reading it can fail (a name not bound
                # yet): read it now, so that it fails before what follows runs.
                self.builder.emit(ast.Expr(value=value))
            return value
        temp = self.builder.temp()
        self.builder.emit(assign(temp, value))
        return name(temp)

    def sequence(self, nodes: list[ast.expr | None],
                 packer: Callable[[], ast.expr] | None = None,
                 late_star: bool = False) -> list[ast.expr | None]:
        """Lower expressions evaluated left to right; keep earlier values in temporaries
        when a later one suspends.

        `*` and `**` operands are unpacked where they stand, as Python does, with two
        exceptions in a call's arguments: a `*` operand that is the only positional
        one (`late_star`) is iterated by the call itself, and `**` operands are merged
        by `packer()`, the call's `ArgumentPacker`, so that Python's errors name the
        callee as in the call.
        """
        last = max((i for i, n in enumerate(nodes) if self.has(n)), default=-1)
        out: list[ast.expr | None] = []
        for index, node in enumerate(nodes):
            if node is None:
                out.append(None)
                continue
            if isinstance(node, ast.Starred):
                value = self.expr(node.value)
                if index < last and late_star:
                    value = self.spill(value)
                elif index < last:
                    value = self.spill(ast.List(elts=[ast.Starred(value=value, ctx=ast.Load())],
                                                ctx=ast.Load()), force=True)
                out.append(ast.Starred(value=value, ctx=ast.Load()))
                continue
            if _is_merge(node):
                # A `**mapping` operand: Python merges it where it stands, so when a later
                # part suspends, keep a copy made now.
                merged: ast.expr = _merge(self.expr(node.values[0]))
                if index < last:
                    if packer is not None:
                        merged = ast.Subscript(
                            value=ast.Call(func=packer(), args=[], keywords=[
                                ast.keyword(arg=None, value=_merged(merged))]),
                            slice=const(1), ctx=ast.Load())
                    merged = self.spill(merged, force=True)
                out.append(merged)
                continue
            lowered = self.expr(node)
            if index < last:
                lowered = self.spill(lowered)
            out.append(lowered)
        return out

    def expr(self, node: ast.expr) -> ast.expr:
        if not self.has(node):
            return node
        method = getattr(self, f"expr_{type(node).__name__}", None)
        if method is None:
            raise NotImplementedError(f"cannot lower expression {type(node).__name__}")
        result: ast.expr = method(node)
        return result

    def arguments(
        self, node: ast.Call, callee: ast.expr | None, effect: bool = False,
    ) -> tuple[ast.expr | None, list[ast.expr], list[ast.keyword], ast.expr | None]:
        """Lower the callee, then the positional and keyword arguments, in order.

        Returns the callee, the arguments, and the call's `ArgumentPacker` if it has one:
        a call with `*` or `**` operands has one when an operand is unpacked before the
        call (a later argument suspends) or when the call is an `effect` (the engine
        makes the call, so the packer collects the arguments).
        """
        keyword_values: list[ast.expr | None] = [
            _merge(k.value) if k.arg is None else k.value for k in node.keywords
        ]
        parts = [*node.args, *keyword_values]
        packing = callee is not None and (
            any(isinstance(a, ast.Starred) for a in node.args)
            or any(k.arg is None for k in node.keywords))
        later = any(self.has(p) for p in parts)
        lowered_callee: ast.expr | None = None
        if isinstance(callee, ast.Attribute):
            # A method (or a Book's procedure): keep the receiver, and look the method
            # up now, so that a missing one fails here; the bound method is not kept.
            receiver = self.expr(callee.value)
            if later:
                receiver = self.spill(receiver)
            lowered_callee = ast.Attribute(value=receiver, attr=callee.attr, ctx=ast.Load())
            if later:
                self.builder.emit(ast.Expr(value=lowered_callee))
        elif callee is not None:
            lowered_callee = self.expr(callee)
            if later or (packing and effect):
                # (A callee used twice, by the call and by its packer, is evaluated once.)
                lowered_callee = self.spill(lowered_callee)
        made: list[ast.expr] = []

        def packer() -> ast.expr:
            if not made:
                assert lowered_callee is not None
                made.append(self.spill(call("_jv_pack", lowered_callee), force=True))
            return made[0]

        late_star = len(node.args) == 1 and isinstance(node.args[0], ast.Starred)
        lowered = self.sequence(parts, packer if packing else None, late_star)
        args_out = [e for e in lowered[: len(node.args)] if e is not None]
        keywords_out = [
            ast.keyword(arg=k.arg, value=_merged(v) if k.arg is None else v)
            for k, v in zip(node.keywords, lowered[len(node.args):], strict=True)
            if v is not None
        ]
        if packing and effect:
            packer()
        return lowered_callee, args_out, keywords_out, made[0] if made else None

    def expr_Call(self, node: ast.Call) -> ast.expr:
        if id(node) in self.context.sites:
            return self.suspending_call(node)
        # The callee first, a method included: Python looks a method up before it
        # evaluates the arguments, so a missing method fails before any Book is called.
        callee, args, keywords, _ = self.arguments(node, node.func)
        assert callee is not None
        return ast.Call(func=callee, args=args, keywords=keywords)

    def suspending_call(self, node: ast.Call) -> ast.expr:
        kind = self.context.kind_of(node)
        site = len(self.context.site_table)
        self.context.site_table.append(SuspensionSite(
            node.lineno, node.col_offset, node.end_lineno or node.lineno,
            node.end_col_offset or node.col_offset,
        ))
        # The callee is evaluated for a call the engine makes; for a Book, sleep() or
        # checkpoint() only to name it in errors of `*` and `**` operands.
        callee, args, keywords, packer = self.arguments(node, node.func, effect=True)
        target: ast.expr
        if kind == BOOK:
            assert isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
            target = const((self.context.book_names[node.func.value.id], node.func.attr))
        elif kind in (SLEEP, CHECKPOINT, ARTIFACT):
            target = const(None)
        else:
            assert callee is not None
            target = callee
        collected: list[ast.expr]
        if packer is not None:
            # `packer(...)` is the pair (args, kwargs), collected with Python's checks.
            collected = [ast.Starred(value=ast.Call(func=packer, args=args, keywords=keywords),
                                     ctx=ast.Load())]
        else:
            collected = [ast.Tuple(elts=args, ctx=ast.Load()), _keyword_dict(keywords)]
        effect = ast.Tuple(elts=[const(kind), target, *collected, const(site)], ctx=ast.Load())
        return self.builder.suspend(ast.copy_location(effect, node))

    def expr_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        result = self.builder.temp()
        after = self.builder.new_block()
        first = self.expr(node.values[0])
        self.builder.emit(assign(result, first))
        for value in node.values[1:]:
            following = self.builder.new_block()
            if isinstance(node.op, ast.And):
                self.builder.branch(name(result), following, after)
            else:
                self.builder.branch(name(result), after, following)
            self.builder.start(following)
            self.builder.emit(assign(result, self.expr(value)))
        self.builder.jump(after)
        self.builder.start(after)
        return name(result)

    def expr_IfExp(self, node: ast.IfExp) -> ast.expr:
        test = self.expr(node.test)
        if not self.has(node.body) and not self.has(node.orelse):
            return ast.IfExp(test=test, body=node.body, orelse=node.orelse)
        result = self.builder.temp()
        then, otherwise, after = (self.builder.new_block() for _ in range(3))
        self.builder.branch(test, then, otherwise)
        self.builder.start(then)
        self.builder.emit(assign(result, self.expr(node.body)))
        self.builder.jump(after)
        self.builder.start(otherwise)
        self.builder.emit(assign(result, self.expr(node.orelse)))
        self.builder.jump(after)
        self.builder.start(after)
        return name(result)

    def expr_Compare(self, node: ast.Compare) -> ast.expr:
        if not any(self.has(c) for c in node.comparators):
            return ast.Compare(left=self.expr(node.left), ops=node.ops,
                               comparators=node.comparators)
        result = self.builder.temp()
        after = self.builder.new_block()
        left = self.spill(self.expr(node.left), force=True)
        count = len(node.ops)
        for index, (op, comparator) in enumerate(zip(node.ops, node.comparators, strict=True)):
            right = self.expr(comparator)
            if index < count - 1:
                right = self.spill(right, force=True)
            self.builder.emit(assign(result, ast.Compare(left=left, ops=[op],
                                                         comparators=[right])))
            if index < count - 1:
                following = self.builder.new_block()
                self.builder.branch(name(result), following, after)
                self.builder.start(following)
                left = right
        self.builder.jump(after)
        self.builder.start(after)
        return name(result)

    def expr_BinOp(self, node: ast.BinOp) -> ast.expr:
        left, right = self.sequence([node.left, node.right])
        assert left is not None and right is not None
        return ast.BinOp(left=left, op=node.op, right=right)

    def expr_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        return ast.UnaryOp(op=node.op, operand=self.expr(node.operand))

    def expr_Attribute(self, node: ast.Attribute) -> ast.expr:
        return ast.Attribute(value=self.expr(node.value), attr=node.attr, ctx=node.ctx)

    def expr_Subscript(self, node: ast.Subscript) -> ast.expr:
        value, key = self.sequence([node.value, node.slice])
        assert value is not None and key is not None
        return ast.Subscript(value=value, slice=key, ctx=node.ctx)

    def expr_Slice(self, node: ast.Slice) -> ast.expr:
        lower, upper, step = self.sequence([node.lower, node.upper, node.step])
        return ast.Slice(lower=lower, upper=upper, step=step)

    def expr_Starred(self, node: ast.Starred) -> ast.expr:
        return ast.Starred(value=self.expr(node.value), ctx=node.ctx)

    def expr_List(self, node: ast.List) -> ast.expr:
        return ast.List(elts=[e for e in self.sequence(list(node.elts)) if e is not None],
                        ctx=node.ctx)

    def expr_Tuple(self, node: ast.Tuple) -> ast.expr:
        return ast.Tuple(elts=[e for e in self.sequence(list(node.elts)) if e is not None],
                         ctx=node.ctx)

    def expr_Set(self, node: ast.Set) -> ast.expr:
        return ast.Set(elts=[e for e in self.sequence(list(node.elts)) if e is not None])

    def expr_Dict(self, node: ast.Dict) -> ast.expr:
        flat: list[ast.expr | None] = []
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                flat.append(_merge(value))
            else:
                flat.extend([key, value])
        lowered = self.sequence(flat)
        keys: list[ast.expr | None] = []
        values: list[ast.expr] = []
        index = 0
        for key in node.keys:
            if key is None:
                merged = lowered[index]
                assert merged is not None
                keys.append(None)
                values.append(_merged(merged))
                index += 1
            else:
                lowered_key, lowered_value = lowered[index], lowered[index + 1]
                assert lowered_value is not None
                keys.append(lowered_key)
                values.append(lowered_value)
                index += 2
        return ast.Dict(keys=keys, values=values)

    def expr_JoinedStr(self, node: ast.JoinedStr) -> ast.expr:
        # Python formats each replacement field as soon as it is evaluated; when a later
        # field suspends, an earlier one is kept as the text it formatted to.
        last = max((i for i, part in enumerate(node.values) if self.has(part)), default=-1)
        parts: list[ast.expr] = []
        for index, part in enumerate(node.values):
            lowered = self.expr(part)
            if index < last and isinstance(part, ast.FormattedValue):
                text = self.spill(ast.JoinedStr(values=[lowered]), force=True)
                lowered = ast.FormattedValue(value=text, conversion=-1, format_spec=None)
            parts.append(lowered)
        return ast.JoinedStr(values=parts)

    def expr_FormattedValue(self, node: ast.FormattedValue) -> ast.expr:
        value, spec = self.sequence([node.value, node.format_spec])
        assert value is not None
        return ast.FormattedValue(value=value, conversion=node.conversion, format_spec=spec)

    def expr_Lambda(self, node: ast.Lambda) -> ast.expr:
        defaults = self.sequence([*node.args.defaults, *node.args.kw_defaults])
        count = len(node.args.defaults)
        arguments = ast.arguments(
            posonlyargs=node.args.posonlyargs, args=node.args.args, vararg=node.args.vararg,
            kwonlyargs=node.args.kwonlyargs, kw_defaults=defaults[count:],
            kwarg=node.args.kwarg, defaults=[d for d in defaults[:count] if d is not None],
        )
        return ast.Lambda(args=arguments, body=node.body)


def _internal(value: ast.expr) -> bool:
    """A name of the compiler's own (a temporary, a hook): always bound."""
    return isinstance(value, ast.Name) and value.id.startswith("_jv_")


def _unbinding(variable: str, handler: ast.ExceptHandler) -> ast.Try:
    """The body of `except E as variable:` as Python runs it: `variable` is unbound when
    the handler ends, however it ends (`try: body finally: variable = None; del variable`)."""
    statement = ast.Try(body=handler.body, handlers=[], orelse=[], finalbody=[
        assign(variable, const(None)),
        ast.Delete(targets=[ast.Name(id=variable, ctx=ast.Del())]),
    ])
    for node in (statement, *statement.finalbody):
        ast.copy_location(node, handler)
    return statement


def _merge(value: ast.expr) -> ast.Dict:
    """`{**value}`: how `sequence` is told that an operand is a `**` merge."""
    return ast.Dict(keys=[None], values=[value])


def _is_merge(node: ast.expr) -> TypeGuard[ast.Dict]:
    return isinstance(node, ast.Dict) and node.keys == [None]


def _merged(lowered: ast.expr) -> ast.expr:
    """The mapping to merge: the operand itself, or the temporary holding its copy."""
    return lowered.values[0] if isinstance(lowered, ast.Dict) and _is_merge(lowered) else lowered


def _escapes(node: ast.AST, in_loop: bool) -> bool:
    """Whether a `break` or `continue` below `node` leaves it for an enclosing loop."""
    if isinstance(node, (ast.Break, ast.Continue)):
        return not in_loop
    if isinstance(node, (ast.FunctionDef, ast.Lambda)):
        return False
    if isinstance(node, (ast.For, ast.While)):
        # Jumps in a loop's body are its own; those in its `else` clause are not.
        return any(_escapes(statement, in_loop) for statement in node.orelse)
    return any(_escapes(child, in_loop) for child in child_nodes(node))


def _escapes_statement(statement: ast.stmt) -> bool:
    if isinstance(statement, (ast.For, ast.While)):
        return any(_escapes(s, False) for s in statement.orelse)
    return _escapes(statement, False)


def _returns(node: ast.AST) -> bool:
    return any(isinstance(child, ast.Return) for child in walk(node))


class _BareRaises(FastTransformer):
    """Bare `raise` statements of native code in a lowered handler or finally body."""

    def __init__(self, reraise: Callable[[], list[ast.stmt]]) -> None:
        self.reraise = reraise

    def visit_block(self, statement: ast.stmt) -> list[ast.stmt]:
        result = self.visit(statement)
        return result if isinstance(result, list) else [result]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST:
        # A native handler (or a native finally running for an exception) re-raises
        # natively; its body and else still re-raise the lowered handler's exception.
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse)
        return node

    def _statements(self, statements: list[ast.stmt]) -> list[ast.stmt]:
        return [out for statement in statements for out in self.visit_block(statement)]

    def visit_Raise(self, node: ast.Raise) -> ast.AST | list[ast.stmt]:
        if node.exc is not None:
            return node
        return [ast.copy_location(statement, node) for statement in self.reraise()]


class _NativeReturns(FastTransformer):
    """`return v` in native code of a step function: `return (RETURN, v)`."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node

    def visit_Return(self, node: ast.Return) -> ast.AST:
        value = node.value if node.value is not None else const(None)
        return ast.copy_location(
            ast.Return(value=ast.Tuple(elts=[const(RETURN), value], ctx=ast.Load())), node)


def _native_returns(statement: ast.stmt) -> ast.stmt:
    if isinstance(statement, ast.FunctionDef):
        return statement
    if not _returns_here(statement):
        return statement
    result = _NativeReturns().visit(statement)
    assert isinstance(result, ast.stmt)
    return result


def _returns_here(statement: ast.stmt) -> bool:
    """Whether `statement` holds a `return` of its own function: a walk of statements
    only (no expression holds one), not entering nested `def`s."""
    stack: list[ast.AST] = [statement]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            return True
        if isinstance(node, ast.FunctionDef):
            continue
        for block in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(getattr(node, block, ()))
    return False


def _keyword_dict(keywords: list[ast.keyword]) -> ast.expr:
    """The dict of a suspending call's keyword arguments: a literal when they are all
    named (Python refuses a name given twice when it compiles the call), else
    `_jv_kw(...)`, which checks `**` operands as the call would."""
    if all(keyword.arg is not None for keyword in keywords):
        return ast.Dict(keys=[const(keyword.arg) for keyword in keywords],
                        values=[keyword.value for keyword in keywords])
    return ast.Call(func=name("_jv_kw"), args=[], keywords=keywords)

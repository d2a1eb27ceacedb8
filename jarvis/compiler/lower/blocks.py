"""Blocks of a resumable function: straight-line Python between suspension points.

A `BlockBuilder` collects the statements of one resumable function into numbered
blocks. Each block ends in a jump (`_jv_pc = N; continue`), a return of a step result,
or a raise. A block belongs to a try-region: the handler block that an exception raised
inside it goes to. `assemble` turns the blocks into one step function:

    def _jv_step_N(_jv_F, _jv_mode, _jv_V):
        _jv_D = _jv_F.locals             # restore the frame's locals
        if 'x' in _jv_D: x = _jv_D['x']
        _jv_pc = _jv_F.pc
        while True:
            try:
                if _jv_mode: _jv_mode = 0; raise _jv_V     # an effect failed
                while True:
                    if _jv_pc == 0: ...                  # dispatch on the program counter
            except Exception as _jv_e:
                _jv_h = _jv_H_N.get(_jv_pc)              # the block's try-region handler
                if _jv_h is None: raise
                _jv_exc = _jv_e; _jv_pc = _jv_h

A step returns `(0, value)` when the function returns, or an effect tuple
`(kind, target, args, kwargs, site)` when it suspends; it has saved its locals and the
pc to resume at into the frame first.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

# The step results and the step function's own names (defined with the rest of what
# the runtime shares with the generated code, and importable from here as before).
from jarvis.compiler.contract import ARTIFACT as ARTIFACT
from jarvis.compiler.contract import BOOK as BOOK
from jarvis.compiler.contract import CALL as CALL
from jarvis.compiler.contract import CHECKPOINT as CHECKPOINT
from jarvis.compiler.contract import RETURN as RETURN
from jarvis.compiler.contract import SLEEP as SLEEP
from jarvis.compiler.contract import STEP_INTERNALS as STEP_INTERNALS


def name(identifier: str, store: bool = False) -> ast.Name:
    return ast.Name(id=identifier, ctx=ast.Store() if store else ast.Load())


def const(value: Any) -> ast.Constant:
    return ast.Constant(value=value)


def assign(target: str, value: ast.expr) -> ast.Assign:
    return ast.Assign(targets=[name(target, store=True)], value=value)


def call(func: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=name(func), args=list(args), keywords=[])


def jump_statements(target: int | ast.expr) -> list[ast.stmt]:
    value = const(target) if isinstance(target, int) else target
    return [assign("_jv_pc", value), ast.Continue()]


class BlockBuilder:
    """Blocks under construction for one step function."""

    def __init__(self) -> None:
        self.blocks: dict[int, list[ast.stmt]] = {}
        self.handlers: dict[int, int] = {}
        self.handler: int | None = None
        self.current: list[ast.stmt] | None = None
        self.current_pc = -1
        self._next_pc = 0
        self._next_temp = 0

    # -- blocks ---------------------------------------------------------------------

    def new_block(self) -> int:
        pc = self._next_pc
        self._next_pc += 1
        return pc

    def start(self, pc: int) -> None:
        """Make `pc` the current block; it belongs to the current try-region."""
        if self.current is not None:
            self.jump(pc)
        statements: list[ast.stmt] = []
        self.blocks[pc] = statements
        if self.handler is not None:
            self.handlers[pc] = self.handler
        self.current = statements
        self.current_pc = pc

    def ensure_open(self) -> None:
        """Code after a jump or return is unreachable; give it a block of its own."""
        if self.current is None:
            self.start(self.new_block())

    def emit(self, *statements: ast.stmt) -> None:
        self.ensure_open()
        assert self.current is not None
        self.current.extend(statements)

    def jump(self, target: int | ast.expr) -> None:
        if self.current is None:
            return
        self.current.extend(jump_statements(target))
        self.current = None

    def branch(self, test: ast.expr, if_true: int, if_false: int) -> None:
        self.emit(ast.If(test=test, body=jump_statements(if_true),
                         orelse=jump_statements(if_false)))
        self.current = None

    def terminate(self, statement: ast.stmt) -> None:
        self.emit(statement)
        self.current = None

    def temp(self, prefix: str = "t") -> str:
        self._next_temp += 1
        return f"_jv_{prefix}{self._next_temp}"

    def suspend(self, effect: ast.expr) -> ast.Name:
        """Save the frame, return `effect` to the engine, resume here with its result."""
        resume = self.new_block()
        self.emit(
            ast.Assign(
                targets=[ast.Attribute(value=name("_jv_F"), attr="pc", ctx=ast.Store())],
                value=const(resume),
            ),
            ast.Assign(
                targets=[ast.Attribute(value=name("_jv_F"), attr="locals", ctx=ast.Store())],
                value=call("_jv_save", call("_jv_locals")),
            ),
        )
        self.terminate(ast.Return(value=effect))
        self.start(resume)
        result = self.temp("r")
        self.emit(assign(result, name("_jv_V")))
        return name(result)


def _dispatch(pcs: list[int], blocks: dict[int, list[ast.stmt]]) -> list[ast.stmt]:
    """A balanced tree of `if _jv_pc < k` tests down to the block bodies."""
    if len(pcs) == 1:
        return blocks[pcs[0]]
    middle = len(pcs) // 2
    return [
        ast.If(
            test=ast.Compare(left=name("_jv_pc"), ops=[ast.Lt()], comparators=[const(pcs[middle])]),
            body=_dispatch(pcs[:middle], blocks),
            orelse=_dispatch(pcs[middle:], blocks),
        )
    ]


def assemble(
    builder: BlockBuilder,
    function_name: str,
    handler_table: str,
    local_names: Iterable[str],
    global_names: Iterable[str],
) -> list[ast.stmt]:
    """The step function's definition and its handler table, as module statements."""
    builder.ensure_open()
    if builder.current is not None:
        builder.terminate(ast.Return(value=ast.Tuple(elts=[const(RETURN), const(None)],
                                                     ctx=ast.Load())))
    body: list[ast.stmt] = []
    globals_sorted = sorted(set(global_names))
    if globals_sorted:
        body.append(ast.Global(names=globals_sorted))
    body.append(assign("_jv_D", ast.Attribute(value=name("_jv_F"), attr="locals",
                                             ctx=ast.Load())))
    for local in sorted(set(local_names) - STEP_INTERNALS - set(globals_sorted)):
        body.append(ast.If(
            test=ast.Compare(left=const(local), ops=[ast.In()], comparators=[name("_jv_D")]),
            body=[assign(local, ast.Subscript(value=name("_jv_D"), slice=const(local),
                                              ctx=ast.Load()))],
            orelse=[],
        ))
    body.append(assign("_jv_pc", ast.Attribute(value=name("_jv_F"), attr="pc", ctx=ast.Load())))
    rethrow = ast.If(
        test=name("_jv_mode"),
        body=[assign("_jv_mode", const(0)), ast.Raise(exc=name("_jv_V"), cause=None)],
        orelse=[],
    )
    dispatch = ast.While(test=const(True), body=_dispatch(sorted(builder.blocks), builder.blocks),
                         orelse=[])
    handler = ast.ExceptHandler(
        type=name("Exception"),
        name="_jv_e",
        body=[
            assign("_jv_h", ast.Call(
                func=ast.Attribute(value=name(handler_table), attr="get", ctx=ast.Load()),
                args=[name("_jv_pc")], keywords=[])),
            ast.If(test=ast.Compare(left=name("_jv_h"), ops=[ast.Is()], comparators=[const(None)]),
                   body=[ast.Raise(exc=None, cause=None)], orelse=[]),
            assign("_jv_exc", name("_jv_e")),
            assign("_jv_pc", name("_jv_h")),
        ],
    )
    body.append(ast.While(
        test=const(True),
        body=[ast.Try(body=[rethrow, dispatch], handlers=[handler], orelse=[], finalbody=[])],
        orelse=[],
    ))
    arguments = ast.arguments(
        posonlyargs=[], args=[ast.arg(arg="_jv_F"), ast.arg(arg="_jv_mode"), ast.arg(arg="_jv_V")],
        vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[],
    )
    step = ast.FunctionDef(name=function_name, args=arguments, body=body, decorator_list=[],
                           returns=None, type_comment=None)
    table = ast.Assign(
        targets=[name(handler_table, store=True)],
        value=ast.Dict(keys=[const(pc) for pc in sorted(builder.handlers)],
                       values=[const(builder.handlers[pc]) for pc in sorted(builder.handlers)]),
    )
    return [table, step]

"""The namespace of one execution: the program's globals, builtins and internal helpers.

Each execution gets its own: the program's module code is executed into a fresh dict
to define its step functions and binders, with a fresh builtins table, so nothing one
execution changes is seen by another. `StatePickler` and `load_state` move the
execution's live state (frames, globals, outputs) in and out of bytes; functions of the
program travel by reference to their code (a code index), never as code.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import pickle
import types
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

import cloudpickle

from jarvis.compiler.compiled import CompiledProgram
from jarvis.compiler.contract import runtime_names
from jarvis.runtime import bounded
from jarvis.runtime.builtins import (
    BUILTINS_LAYOUT,
    EFFECT_FUNCTIONS,
    BookProxy,
    Effects,
    make_builtins,
    set_inputs,
)
from jarvis.runtime.frames import (
    END,
    ArgumentPacker,
    Cell,
    ResumableFunction,
    exception_matches,
    keywords,
    save_locals,
    with_defaults,
)
from jarvis.runtime.guards import guard_table
from jarvis.runtime.lazy import make_generator, read_variable
from jarvis.runtime.locate import locate, mark_origin

_STATIC_PREFIXES = ("_jv_step_", "_jv_bind_", "_jv_H_")
"""Globals the program module defines itself; rebuilt on load, never saved."""

_Named = tuple[
    tuple[tuple[int, str, types.CodeType], ...],
    tuple[tuple[int, str], ...],
    dict[int, int],
    dict[int, types.CodeType],
]

_NAMED: Final = "_jv_named"
"""Where a program keeps what its first Namespace worked out, for the later ones
(in its `__dict__`, a cache of the runtime's): its step functions (fid, name in the
module, code with the program's own names), its binders (fid, name), and the
`code_index` and `codes` tables that go with the renamed code. Shared read-only."""


_LAYOUT: Final[dict[str, Any]] = {
    **BUILTINS_LAYOUT,
    "_jv_books": None,  # per execution
    "_jv_save": save_locals,
    "_jv_locals": locals,
    "_jv_kw": keywords,
    "_jv_exc_match": exception_matches,
    "_jv_END": END,
    "_jv_iter": iter,
    "_jv_next": next,
    "_jv_Cell": Cell,
    "_jv_mkfn": None,  # per execution
    "_jv_defaults": with_defaults,
    "_jv_pack": ArgumentPacker,
    "_jv_genexp": make_generator,
    "_jv_genvar": read_variable,
    **bounded.helpers(),
    **runtime_names(),
    **guard_table(),
}
"""The builtins table of every execution, in its order, with None where each execution
puts its own: the effect functions (`make_builtins`), `_jv_books`, `_jv_mkfn`; the
tracer's hooks come last. Never handed to a program: each execution gets a copy."""

_Spare = tuple[dict[str, Any], tuple[types.CellType, ...]]


def _spare() -> dict[str, _Spare]:
    """A table laid out as `_LAYOUT` with its effect functions made (`make_builtins`)
    for no execution yet, and the closure cells through which they reach theirs (none
    if those functions hold anything else of an execution's)."""
    table = make_builtins(cast(Effects, None), [], dict(_LAYOUT))
    cells: dict[int, types.CellType] = {}
    for name in EFFECT_FUNCTIONS:
        function = table[name]
        if type(function) is not types.FunctionType or function.__closure__ is None or (
                function.__code__.co_freevars != ("effects",)):
            return {}
        cell = function.__closure__[0]
        cells[id(cell)] = cell
    return {"table": (table, tuple(cells.values()))}


_SPARE: Final = _spare()
"""A builtins table made at import, kept for the first execution of a forked process
(a zygote's child), which takes it and points its effect functions at itself. There,
that writes to a handful of the pages the table shares with the zygote, where a copy
of `_LAYOUT` adds a reference to each of its hundred-odd entries and making the effect
functions touches their code (a copied page per few objects touched). The importing
process never takes it, so it is unused in every process forked from it; `dict.pop`
hands it to one Namespace only."""

_SPARE_PID: Final = os.getpid()


def _fresh_table(effects: Effects) -> dict[str, Any]:
    """A builtins table no other execution has: `_LAYOUT`'s entries, in its order, with
    the effect functions of `effects` (`make_builtins`)."""
    if os.getpid() != _SPARE_PID:
        spare = _SPARE.pop("table", None)
        if spare is not None:
            table, cells = spare
            for cell in cells:
                cell.cell_contents = effects
            return table
    return make_builtins(effects, [], dict(_LAYOUT))


class Namespace:
    """Globals and builtins of one execution of a compiled program."""

    def __init__(
        self,
        program: CompiledProgram,
        effects: Effects,
        hooks: dict[str, Callable[..., Any]],
    ) -> None:
        self.program = program
        table = _fresh_table(effects)
        self.books: dict[str, BookProxy] = (
            {name: BookProxy(name, effects) for name in program.books} if program.books else {})
        table["_jv_books"] = self.books
        table["_jv_mkfn"] = self.make_function
        table.update(hooks)
        self.builtins = table
        self.globals: dict[str, Any] = {"__builtins__": table, "__name__": "__spy__"}
        exec(program.code, self.globals)
        self.steps: dict[int, Any] = {}
        self.code_index: dict[int, int]
        self.codes: dict[int, types.CodeType]
        """index -> the code with the program's own names (`name_local_functions`)"""
        named: _Named | None = program.__dict__.get(_NAMED)
        if named is None:
            named = self._name_program()
        else:
            # Renamed once per program, and shared: the executions of a program run the
            # same code objects, so CPython's specialisation of them carries over.
            self.code_index, self.codes = named[2], named[3]
            for fid, name, code in named[0]:
                step = self.globals[name]
                step.__code__ = code
                self.steps[fid] = step
        self.binders = {
            fid: self.globals[name].__code__ for fid, name in named[1]
        } if named[1] else {}
        self._builtin_names: dict[int, str] | None = None

    def _name_program(self) -> _Named:
        """The first Namespace of a program: rename the code of its step functions
        (unless its module code comes renamed: `LOCAL_NAMES_DONE`), and keep what the
        later Namespaces of the program reuse (`_NAMED`)."""
        program = self.program
        codes = program.codes
        self.code_index = dict(zip(map(id, codes), range(len(codes)), strict=True))
        self.codes = {}
        binders: list[tuple[int, str]] = []
        for fid in program.functions:
            self.steps[fid] = self.globals[f"_jv_step_{fid}"]
            if fid:
                binders.append((fid, f"_jv_bind_{fid}"))
        if not program.__dict__.get(LOCAL_NAMES_DONE, False):
            self.name_local_functions()
        steps = []
        for fid, step in self.steps.items():
            steps.append((fid, f"_jv_step_{fid}", step.__code__))
        named = program.__dict__[_NAMED] = (
            tuple(steps), tuple(binders), self.code_index, self.codes)
        return named

    @property
    def builtin_names(self) -> dict[int, str]:
        """id -> name of each builtin (to pickle them by name); made when first needed."""
        if self._builtin_names is None:
            self._builtin_names = {id(value): key for key, value in self.builtins.items()}
        return self._builtin_names

    def name_local_functions(self) -> None:
        """Functions and lambdas a step function creates get the qualified names Python
        gives them in the program (`f.<locals>.g`, `<lambda>`), not names under the step
        function's (`_jv_step_3.<locals>.g`): Python's errors about their arguments
        quote them."""
        for fid, step in self.steps.items():
            step.__code__ = self._renamed(step.__code__, *_step_names(self.program, fid))

    def _renamed(self, code: types.CodeType, prefix: str, owner: str) -> types.CodeType:
        return rename_locals(code, prefix, owner, self._record_renamed)

    def _record_renamed(self, code: types.CodeType, renamed: types.CodeType) -> None:
        index = self.code_index.get(id(code))
        if index is not None:
            self.code_index[id(renamed)] = index
            self.codes[index] = renamed

    def set_inputs(self, inputs: dict[str, Any]) -> None:
        set_inputs(self.builtins, inputs)

    def make_function(
        self, fid: int, cells: tuple[Cell, ...], defaults: tuple[Any, ...],
        kwdefaults: dict[str, Any],
    ) -> ResumableFunction:
        info = self.program.functions[fid]
        binder = types.FunctionType(self.binders[fid], self.globals, info.name,
                                    defaults or None, None)
        binder.__kwdefaults__ = kwdefaults or None
        binder.__qualname__ = info.qualname
        return ResumableFunction(fid, info.name, info.qualname, binder,
                                 dict(zip(info.cells, cells, strict=True)))

    # -- state in and out of bytes ---------------------------------------------------

    def user_globals(self) -> dict[str, Any]:
        return {
            key: value for key, value in self.globals.items()
            if key not in ("__builtins__", "__name__") and not key.startswith(_STATIC_PREFIXES)
        }

    def dumps(self, state: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        _StatePickler(buffer, self).dump(state)
        return buffer.getvalue()

    def loads(self, data: bytes) -> dict[str, Any]:
        """Unpickle verified state; functions are rebuilt against this namespace."""
        unpickler = _StateUnpickler(io.BytesIO(data), self)
        state: dict[str, Any] = unpickler.load()
        unpickler.fill_cells()
        return state


LOCAL_NAMES_DONE: Final = "_jv_local_names_done"
"""Set (to True) in the `__dict__` of a program whose module code comes with its local
functions named already (`named_module_code`): its Namespaces rename nothing."""


def _step_names(program: CompiledProgram, fid: int) -> tuple[str, str]:
    """The qualified-name prefix of what step function `fid` defines
    (`_jv_step_3.<locals>.`), and what it becomes: the prefix Python gives it in the
    program (`f.<locals>.`, nothing at the module's top level)."""
    owner = "" if fid == 0 else f"{program.functions[fid].qualname}.<locals>."
    return f"_jv_step_{fid}.<locals>.", owner


def rename_locals(code: types.CodeType, prefix: str, owner: str,
                  record: Callable[[types.CodeType, types.CodeType], None],
                  ) -> types.CodeType:
    """`code` with the qualified names under `prefix` (`_jv_step_3.<locals>.`) moved
    under `owner` (`f.<locals>.`), in it and in the code it holds; `record(old, new)`
    is told each code replaced."""
    constants = code.co_consts
    renamed_constants: list[Any] | None = None
    for position, constant in enumerate(constants):
        if type(constant) is types.CodeType:
            renamed_constant = rename_locals(constant, prefix, owner, record)
            if renamed_constant is not constant:
                if renamed_constants is None:
                    renamed_constants = list(constants)
                renamed_constants[position] = renamed_constant
    qualname = code.co_qualname
    if qualname.startswith(prefix):
        qualname = owner + qualname[len(prefix):]
    if qualname == code.co_qualname and renamed_constants is None:
        return code
    renamed = code.replace(
        co_consts=constants if renamed_constants is None else tuple(renamed_constants),
        co_qualname=qualname)
    record(code, renamed)
    return renamed


def named_module_code(program: CompiledProgram) -> types.CodeType | None:
    """The program's module code with the code of its step functions renamed as its
    Namespaces rename it (`Namespace.name_local_functions`); None if a step function
    is not defined at the module's top level (then the Namespaces do it)."""
    constants = list(program.code.co_consts)
    where = {constant.co_name: position for position, constant in enumerate(constants)
             if type(constant) is types.CodeType}
    for fid in program.functions:
        position = where.get(f"_jv_step_{fid}")
        if position is None:
            return None
        constants[position] = rename_locals(constants[position], *_step_names(program, fid),
                                            _ignore_renamed)
    return program.code.replace(co_consts=tuple(constants))


def _ignore_renamed(code: types.CodeType, renamed: types.CodeType) -> None:
    pass


class _CellBox:
    """A closure cell in transit. Python's cells cannot be pickled with their contents
    set afterwards, which closures that refer to themselves need."""

    __slots__ = ("value",)

    def __getstate__(self) -> tuple[Any, ...]:
        try:
            return (self.value,)
        except AttributeError:
            return ()

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if state:
            self.value = state[0]


class _StatePickler(cloudpickle.Pickler):  # type: ignore[misc]
    def __init__(self, file: io.BytesIO, namespace: Namespace) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.namespace = namespace
        # id(cell) -> (cell, its box): one box per cell keeps closures that share a
        # cell sharing it after the load; holding the cell keeps its id unique.
        self.boxes: dict[int, tuple[types.CellType, _CellBox]] = {}

    def box(self, cell: types.CellType) -> _CellBox:
        known = self.boxes.get(id(cell))
        if known is not None:
            return known[1]
        box = _CellBox()
        with contextlib.suppress(ValueError):  # an empty cell stays an empty box
            box.value = cell.cell_contents
        self.boxes[id(cell)] = (cell, box)
        return box

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException) and obj.__traceback__ is not None:
            # A traceback is not pickled: keep where the error was raised, so that an
            # error a frame holds across a snapshot (to re-raise from a `finally`) is
            # still reported at its origin after a resume.
            where = locate(obj, self.namespace.program.path)
            if where is not None:
                mark_origin(obj, where.line, where.col, where.end_line, where.end_col)
        kind = _DICT_VIEWS.get(type(obj))
        if kind is not None:
            # A dict view shows its dict as it is now: keep the dict itself, or the view
            # would show a copy taken at the snapshot after a resume.
            mapping = next(r for r in gc.get_referents(obj) if type(r) is dict)
            return _dict_view, (mapping, kind)
        view = _CONTAINER_ITERATORS.get(type(obj))
        if view is not None:
            # Python pickles an iterator over a dict or a set as a list of what it has
            # left, cut off from its container: after a resume the loop would miss the
            # dict's later changes. Keep the container and the position instead (an
            # exhausted iterator holds no container).
            container = next((r for r in gc.get_referents(obj)
                              if type(r) in (dict, set, frozenset)), None)
            if container is not None:
                try:
                    obj.__reduce__()  # fails, as the loop's next step will, if the
                except RuntimeError as exc:  # container changed size under it
                    return _ChangedContainerIterator, (str(exc),)
                position = len(container) - obj.__length_hint__()
                return _resume_iterator, (container, *view, position)
        return super().reducer_override(obj)

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.FunctionType:
            index = self.namespace.code_index.get(id(obj.__code__))
            if index is not None:
                closure = obj.__closure__
                boxes = tuple(self.box(c) for c in closure) if closure else None
                return ("fn", index, obj.__name__, obj.__qualname__, obj.__defaults__,
                        obj.__kwdefaults__, boxes)
        if kind is BookProxy:
            return ("book", obj._jv_name)
        if kind in (types.FunctionType, types.BuiltinFunctionType, type):
            name = self.namespace.builtin_names.get(id(obj))
            if name is not None and self.namespace.builtins.get(name) is obj:
                return ("builtin", name)
        return None


_CONTAINER_ITERATORS: dict[type, tuple[str, bool]] = {
    type(iter({}.keys())): ("keys", False),
    type(iter({}.values())): ("values", False),
    type(iter({}.items())): ("items", False),
    type(reversed({}.keys())): ("keys", True),
    type(reversed({}.values())): ("values", True),
    type(reversed({}.items())): ("items", True),
    type(iter(set())): ("", False),
}
"""The iterators over a dict (and its views) or a set, and what each iterates."""


_DICT_VIEWS: dict[type, str] = {
    type({}.keys()): "keys",
    type({}.values()): "values",
    type({}.items()): "items",
}
"""The views of a dict, and the method that makes each."""


def _dict_view(mapping: dict[Any, Any], kind: str) -> Any:
    return getattr(mapping, kind)()


def _resume_iterator(container: Any, view: str, backwards: bool,
                     position: int) -> Iterator[Any]:
    """An iterator over `container` (a dict's `view`) that has produced `position` items."""
    items = getattr(container, view)() if view else container
    iterator: Iterator[Any] = reversed(items) if backwards else iter(items)
    for _ in range(position):
        next(iterator, None)
    return iterator


class _ChangedContainerIterator:
    """A resumed iterator whose dict or set had changed size under it: it fails as the
    iterator would have ("dictionary changed size during iteration")."""

    # A program can hold this iterator: no attribute it may read (`message` is one).
    __slots__ = ("_message",)

    def __init__(self, message: str) -> None:
        self._message = message

    def __iter__(self) -> _ChangedContainerIterator:
        return self

    def __next__(self) -> Any:
        raise RuntimeError(self._message)


class _StateUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, namespace: Namespace) -> None:
        super().__init__(file)
        self.namespace = namespace
        self.cells: dict[int, tuple[_CellBox, types.CellType]] = {}

    def cell(self, box: _CellBox) -> types.CellType:
        known = self.cells.get(id(box))
        if known is None:
            known = (box, types.CellType())
            self.cells[id(box)] = known
        return known[1]

    def fill_cells(self) -> None:
        """Boxes of self-referring closures get their contents only after the functions
        that hold them were built; fill the real cells now."""
        for box, cell in self.cells.values():
            with contextlib.suppress(AttributeError):  # an empty box stays an empty cell
                cell.cell_contents = box.value

    def persistent_load(self, pid: Any) -> Any:
        tag = pid[0]
        if tag == "fn":
            _, index, name, qualname, defaults, kwdefaults, boxes = pid
            closure = tuple(self.cell(box) for box in boxes) if boxes else None
            code = self.namespace.codes.get(index, self.namespace.program.codes[index])
            function = types.FunctionType(code, self.namespace.globals, name, defaults, closure)
            function.__kwdefaults__ = kwdefaults
            function.__qualname__ = qualname
            return function
        if tag == "book":
            return self.namespace.books[pid[1]]
        if tag == "builtin":
            return self.namespace.builtins[pid[1]]
        raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")

"""Generators of generator expressions that can be pickled into a snapshot.

CPython cannot pickle a generator, so a generator expression whose object may live
across a suspension point (kept in a variable, returned, handed to `zip`, ...) is
compiled into a call of `make_generator` instead (see `jarvis.compiler.lower.genexp`).
The object it returns is a `LazyGenerator`: the iterators of the `for` clauses, a dict
holding the expression's own variables, and the compiled parts of the expression as
small functions that take that dict. Every part is plain data or a function of the
program, so the state pickler saves it like any other value, and after a resume the
generator continues with the item it would have produced next.

It behaves as CPython's generator of the same expression does:

- the first iterable is evaluated, and `iter()` called on it, where the expression
  stands (by the caller, before `make_generator` runs); everything else runs lazily,
  in order, as items are asked for: the conditions of each clause, then the next
  clause's iterable, then the element;
- an exception raised while producing an item propagates to the caller and finishes
  the generator, as does running out of items: a finished generator stays finished;
- a `StopIteration` raised by the expression's own code becomes
  `RuntimeError("generator raised StopIteration")` (PEP 479), while one raised by a
  clause's iterator just ends that clause's loop;
- asking a generator for an item while it produces one fails with
  `ValueError("generator already executing")`;
- its type is named `generator`, so Python's messages about it (`object of type
  'generator' has no len()`) read as they do for a native one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Env = dict[str, Any]
"""The generator expression's own variables, by name."""

Target = str | tuple[tuple[str, ...], Callable[[Env, Any], tuple[Any, ...]]]
"""How an item is bound: a variable's name, or (the names a tuple target binds, a
function that unpacks the item with Python's own rules and returns their values)."""

Clause = tuple[Callable[[Env], Any] | None, Target, tuple[Callable[[Env], Any], ...]]
"""One `for` clause: its iterable (None for the first, evaluated at creation), its
target and its conditions."""

_FINISHED = -1
_RUNNING = 1
_READY = 0


class LazyGenerator:
    """A generator expression's generator, as picklable data (see the module doc)."""

    __slots__ = ("_clauses", "_element", "_env", "_iterators", "_state")

    def __init__(self, iterator: Iterator[Any], clauses: tuple[Clause, ...],
                 element: Callable[[Env], Any]) -> None:
        self._iterators: list[Iterator[Any]] = [iterator]
        self._clauses = clauses
        self._element = element
        self._env: Env = {}
        self._state = _READY

    def __iter__(self) -> LazyGenerator:
        return self

    def __next__(self) -> Any:
        state = self._state
        if state:
            if state == _RUNNING:
                raise ValueError("generator already executing")
            raise StopIteration
        self._state = _RUNNING
        try:
            clauses = self._clauses
            if len(clauses) == 1 and type(clauses[0][1]) is str:
                # The common case inline: one clause with one variable.
                _, name, conditions = clauses[0]
                env = self._env
                found = False
                for item in self._iterators[0]:
                    env[name] = item  # type: ignore[index]
                    for condition in conditions:
                        if not condition(env):
                            break
                    else:
                        value = self._element(env)
                        found = True
                        break
            else:
                found, value = self._advance()
        except StopIteration as exc:
            self._finish()
            raise RuntimeError("generator raised StopIteration") from exc
        except BaseException:
            self._finish()
            raise
        if not found:
            self._finish()
            raise StopIteration
        self._state = _READY
        return value

    def _advance(self) -> tuple[bool, Any]:
        """The next item: (True, item), or (False, None) when the first clause's
        iterator is exhausted. A StopIteration raised out of here came from the
        expression's own code."""
        iterators = self._iterators
        clauses = self._clauses
        env = self._env
        last = len(clauses) - 1
        level = len(iterators) - 1
        while True:
            try:
                item = next(iterators[level])
            except StopIteration:
                if not level:
                    return False, None
                iterators.pop()
                level -= 1
                continue
            _, target, conditions = clauses[level]
            if isinstance(target, str):
                env[target] = item
            else:
                names, unpack = target
                env.update(zip(names, unpack(env, item), strict=True))
            for condition in conditions:
                if not condition(env):
                    break
            else:
                if level == last:
                    return True, self._element(env)
                level += 1
                iterable = clauses[level][0]
                assert iterable is not None
                iterators.append(iter(iterable(env)))

    def _finish(self) -> None:
        self._state = _FINISHED
        self._iterators = []
        self._env = {}

    def __repr__(self) -> str:
        return f"<generator object <genexpr> at {id(self):#x}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self._iterators, self._clauses, self._element, self._env,
                           self._state))


def _restore(iterators: list[Iterator[Any]], clauses: tuple[Clause, ...],
             element: Callable[[Env], Any], env: Env, state: int) -> LazyGenerator:
    generator = LazyGenerator.__new__(LazyGenerator)
    generator._iterators = iterators
    generator._clauses = clauses
    generator._element = element
    generator._env = env
    # A snapshot is taken between statements, never while an item is produced.
    generator._state = _READY if state == _RUNNING else state
    return generator


# Python names a type by `__name__` in its messages ("'generator' object is not
# subscriptable"), and `repr(type(g))` by module and qualified name.
LazyGenerator.__name__ = "generator"
LazyGenerator.__qualname__ = "generator"
LazyGenerator.__module__ = "builtins"


def make_generator(iterable: Any, clauses: tuple[Clause, ...],
                   element: Callable[[Env], Any]) -> LazyGenerator:
    """`(element for ... in iterable ...)`: `iter()` of the first iterable now, as
    Python does where the expression stands; the rest when items are asked for."""
    return LazyGenerator(iter(iterable), clauses, element)


def read_variable(env: Env, name: str) -> Any:
    """A variable of the expression read before the clause that binds it has run (it
    may have, for an earlier item): Python's error when it has not."""
    try:
        return env[name]
    except KeyError:
        raise UnboundLocalError(
            f"cannot access local variable {name!r} where it is not associated with a value"
        ) from None

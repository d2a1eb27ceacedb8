"""Hand-written cases for the lowering: each runs as CPython runs it, under the Machine.

Every program here runs three ways: under the reference interpreter, under the Machine,
and under Machines stopped after every effect and restored from the pickled state.
The three must agree (outputs, printed text, Book calls, uncaught error), and the
printed text is spelled out, so that a case also says what Python does.

The first group are regressions: each failed before the fix it names. The rest pin
the constructs the lowering takes apart (evaluation order around suspensions, closures,
loops with `else`, `finally`, exceptions across frames, recursion, argument binding).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from spygen import write_book_registry
from test_lowering_differential import (
    Run,
    assert_same,
    run_on_machine,
    run_on_reference,
    run_with_restarts,
)

from jarvis.compiler import Compilation


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_book_registry(tmp_path_factory.mktemp("books"))


def check(registry: Path, program: str) -> Run:
    """Run `program` the three ways; they must agree. Returns the reference run."""
    source = "from books import svc\n" + textwrap.dedent(program)
    expected = run_on_reference(source, registry)
    assert_same(expected, run_on_machine(source, registry), source)
    assert_same(expected, run_with_restarts(source, registry), source)
    return expected


def printed(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines)


def diagnostics(program: str) -> list[str]:
    source = "from books import svc\n" + textwrap.dedent(program)
    return [d.code for d in Compilation.of(source).diagnostics]


# -- regressions ----------------------------------------------------------------------


def test_a_mapping_merged_into_a_display_is_copied_where_it_stands(registry: Path) -> None:
    # Lowering `{**m, ...}` with a Book call in it recursed until the stack overflowed.
    run = check(registry, """
        d = {"a": 1}
        def grow(v):
            d["a"] = 100
            return v
        print({**d, "b": grow(svc.inc(1))})
        print({**svc.echo({"x": 1}), "y": svc.inc(1), **svc.echo({"z": 3})})
        def keys(**kw):
            return sorted(kw)
        print(keys(**svc.echo({"p": 1}), q=svc.inc(1)))
        print(keys(**d, r=grow(svc.inc(2))), d)
    """)
    assert run.printed == printed(
        "{'a': 1, 'b': 2}", "{'x': 1, 'y': 2, 'z': 3}", "['p', 'q']",
        "['a', 'r'] {'a': 100}",
    )


def test_an_fstring_formats_each_field_before_the_next_one_runs(registry: Path) -> None:
    # The lowered f-string kept a field as a bare name among its parts: invalid code.
    run = check(registry, """
        xs = [1]
        def push(v):
            xs.append(v)
            return v
        print(f"{xs}-{push(svc.inc(1))}-{xs!r:>10}|{svc.inc(2):03d}")
    """)
    assert run.printed == printed("[1]-2-    [1, 2]|003")


def test_a_bare_raise_in_a_handler_that_suspends_re_raises_the_handled_error(
    registry: Path,
) -> None:
    # A lowered handler is not a Python `except` block: `raise` found no active exception.
    run = check(registry, """
        def inner(flag):
            try:
                svc.fail("ValueError")
            except BookError as e:
                svc.mark("handling")
                if flag:
                    raise
                for i in range(2):
                    if i == 1:
                        raise
            return 0
        for flag in [True, False]:
            try:
                inner(flag)
            except BookError as e:
                print(e.error_type, e.message)
        def in_finally():
            try:
                raise KeyError("k")
            finally:
                svc.mark("finally")
                raise
        try:
            in_finally()
        except KeyError as e:
            print(repr(e))
        def nested():
            try:
                raise ValueError("outer")
            except ValueError:
                try:
                    svc.fail("KeyError")
                except BookError:
                    svc.mark("inner")
                raise
        try:
            nested()
        except ValueError as e:
            print(repr(e))
    """)
    assert run.printed == printed(
        "ValueError svc refused call 1", "ValueError svc refused call 3",
        "KeyError('k')", "ValueError('outer')",
    )


def test_a_variable_shared_with_a_closure_and_read_unbound_fails_as_python_does(
    registry: Path,
) -> None:
    # The shared cell raised AttributeError("value") instead of Python's errors.
    run = check(registry, """
        def f():
            def g():
                return x
            try:
                g()
            except Exception as e:
                print(repr(e))
            try:
                print(x)
            except Exception as e:
                print(repr(e))
            x = svc.inc(1)
            return g()
        print(f())
    """)
    assert run.printed == printed(
        "NameError(\"cannot access free variable 'x' where it is not associated with a value"
        " in enclosing scope\")",
        "UnboundLocalError(\"cannot access local variable 'x' where it is not associated with"
        " a value\")",
        "2",
    )


def test_a_missing_method_fails_before_its_arguments_call_books(registry: Path) -> None:
    # The method was looked up after the arguments: a Book was called that Python never calls.
    run = check(registry, """
        x = 5
        try:
            x.append(svc.mark("never"))
        except AttributeError as e:
            print(e)
        print(svc.mark("calls so far"))
    """)
    assert run.printed == printed("'int' object has no attribute 'append'", "1")
    assert [call[2] for call in run.book_calls] == [["calls so far"]]


def test_an_unbound_name_fails_before_later_parts_call_books(registry: Path) -> None:
    # Names were read after the Book calls that follow them in the expression.
    run = check(registry, """
        def f():
            try:
                print(later(svc.mark("a")))
            except Exception as e:
                print(repr(e))
            try:
                print(y, svc.mark("b"))
            except Exception as e:
                print(repr(e))
            try:
                y += svc.mark("c")
            except Exception as e:
                print(repr(e))
            y = 1
            return y
        f()
        def later(v):
            return v
        print(svc.mark("d"))
    """)
    assert run.printed == printed(
        "NameError(\"name 'later' is not defined\")",
        "UnboundLocalError(\"cannot access local variable 'y' where it is not associated with"
        " a value\")",
        "UnboundLocalError(\"cannot access local variable 'y' where it is not associated with"
        " a value\")",
        "1",
    )


def test_a_handler_variable_captured_by_a_closure(registry: Path) -> None:
    # `except E as e` bound a plain local while the closure read the (empty) shared cell.
    run = check(registry, """
        def f():
            try:
                svc.fail("ValueError")
            except BookError as e:
                g = lambda: e.error_type
                return g()
        print(f())
        def h():
            keep = []
            x = svc.inc(1)
            try:
                raise ValueError(x)
            except ValueError as e:
                keep.append(lambda: e.args)
                print(keep[0]())
            try:
                keep[0]()
            except Exception as err:
                print(repr(err))
            return 0
        h()
    """)
    assert run.printed == printed(
        "ValueError", "(2,)",
        "NameError(\"cannot access free variable 'e' where it is not associated with a value"
        " in enclosing scope\")",
    )


def test_a_handler_variable_is_unbound_however_the_handler_ends(registry: Path) -> None:
    # `break` (or an exception) out of a lowered handler left its variable bound.
    run = check(registry, """
        def f():
            for i in range(3):
                try:
                    raise KeyError(i)
                except KeyError as e:
                    svc.mark("in handler")
                    if i == 1:
                        break
            try:
                print(e)
            except Exception as err:
                print(repr(err))
            try:
                try:
                    svc.fail("KeyError")
                except BookError as e2:
                    svc.mark("again")
                    raise ValueError("from the handler")
            except ValueError:
                pass
            try:
                print(e2)
            except Exception as err:
                print(repr(err))
            return 0
        f()
    """)
    assert run.printed == printed(
        "UnboundLocalError(\"cannot access local variable 'e' where it is not associated with"
        " a value\")",
        "UnboundLocalError(\"cannot access local variable 'e2' where it is not associated with"
        " a value\")",
    )


def test_assignment_targets_are_stored_one_by_one_left_to_right(registry: Path) -> None:
    # All targets' Book calls ran before the first store (or deletion), and before the
    # unpacking.
    run = check(registry, """
        a = {}
        b = {}
        a[svc.inc(0)] = b[svc.echo(len(a))] = 5
        print(a, b)
        xs = [0, 0, 0]
        try:
            xs[svc.mark("never")], y = [1, 2, 3]
        except ValueError as e:
            print(e)
        xs[svc.inc(0)], *rest, xs[svc.inc(1)] = [7, 8, 9, 10]
        print(xs, rest)
        for xs[svc.inc(-1)], z in [(1, 2), (3, 4)]:
            print(xs, z)
        try:
            del a["zz"], xs[svc.mark("never")]
        except KeyError as e:
            print(repr(e))
        del xs[svc.inc(-1)], a[svc.echo(1)]
        print(a, xs)
    """)
    assert run.printed == printed(
        "{1: 5} {1: 5}", "too many values to unpack (expected 2)", "[0, 7, 10] [8, 9]",
        "[1, 7, 10] 2", "[3, 7, 10] 4", "KeyError('zz')", "{} [7, 10]",
    )
    assert "never" not in str(run.book_calls)


def test_defaults_are_evaluated_where_python_evaluates_them(registry: Path) -> None:
    # A hoisted lambda's defaults ran before the statement it stands in; a def's
    # keyword-only defaults could run before its positional ones.
    run = check(registry, """
        print(svc.mark("a"), (lambda b=svc.mark("b"): svc.inc(b))())
        def side(v):
            print("side", v)
            return v
        def g(a=side(1), *, b=svc.inc(1), c=side(3)):
            return [a, b, c]
        print(g())
        def f(x):
            h = lambda a=svc.inc(x), *r, k=svc.inc(x + 10), **kw: svc.add(a, k) + len(r) + len(kw)
            return [h(), h(1), h(1, 2, k=3, z=4)]
        print(f(1))
    """)
    assert run.printed == printed("1 3", "side 1", "side 3", "[1, 2, 3]", "[14, 13, 6]")


def test_a_dict_comprehension_evaluates_each_key_before_its_value(registry: Path) -> None:
    # The hoisted comprehension stored `acc[key] = value`, which evaluates the value first.
    run = check(registry, """
        print({svc.echo("k" + str(x)): svc.inc(x) for x in range(2)})
    """)
    assert run.printed == printed("{'k0': 1, 'k1': 2}")
    assert [call[1] for call in run.book_calls] == ["echo", "inc", "echo", "inc"]


def test_functions_created_by_lowered_code_have_their_python_names(registry: Path) -> None:
    # Defs and lambdas made inside a step function were named `_jv_step_N.<locals>...`,
    # and Python quotes that name in its errors about their arguments.
    run = check(registry, """
        def f(a):
            def g(x, y):
                def h(z):
                    return z
                return h
            k = lambda q: q
            svc.inc(1)
            for attempt in [lambda: g(1), lambda: k(), lambda: g(1, 2)()]:
                try:
                    attempt()
                except TypeError as e:
                    print(e)
            return g
        made = f(1)
        svc.inc(2)
        try:
            made(1, 2)()
        except TypeError as e:
            print(e)
        try:
            (lambda: 0)(svc.inc(0))
        except TypeError as e:
            print(e)
    """)
    assert run.printed == printed(
        "f.<locals>.g() missing 1 required positional argument: 'y'",
        "f.<locals>.<lambda>() missing 1 required positional argument: 'q'",
        "f.<locals>.g.<locals>.h() missing 1 required positional argument: 'z'",
        "f.<locals>.g.<locals>.h() missing 1 required positional argument: 'z'",
        "<lambda>() takes 0 positional arguments but 1 was given",
    )


def test_a_resumable_function_as_a_value_in_a_traced_comprehension(registry: Path) -> None:
    # At trace level "full" the hook around `f` in `[f for ...]` was taken for a builtin
    # given a function that calls Books (SPY401), and the program compiled to nothing.
    source = "from books import svc\n" + textwrap.dedent("""
        def f(x):
            return svc.inc(x)
        fs = [f for u in range(2)]
        g = lambda: f
        print(fs[0](1), g()(2))
    """)
    expected = run_on_reference(source, registry)
    assert expected.printed == "2 3\n"
    for trace in ("off", "statements", "full"):
        assert_same(expected, run_on_machine(source, registry, trace=trace), source)


# -- evaluation order -------------------------------------------------------------------


def test_book_calls_inside_expressions_run_in_python_order(registry: Path) -> None:
    run = check(registry, """
        def show(label, value):
            print(label, value)
            return value
        xs = [10, 20, 30]
        d = {"a": 1}
        total = show("left", 1) + svc.add(show("x", 2), svc.inc(show("y", 3))) * show("r", 1)
        print(total)
        print(show("p", 0) or svc.inc(show("q", 0)) and show("r", 9) or show("never", 5))
        print(show("c1", 1) < svc.inc(show("c2", 1)) < show("c3", 0) < show("never", 9))
        print(show("never", 1) if svc.inc(show("u", -1)) else show("t", 9))
        print(xs[show("i", 0) + svc.inc(0)], d[svc.echo(show("k", "a"))])
        print([show("e1", 1), *svc.pair(show("e2", 2), 3), show("e3", 4)])
        print([svc.inc(show("v", v)) for v in xs if svc.inc(v) > show("lim", 11)])
        print(svc.mark(show("m", "last")))
    """)
    assert run.printed == printed(
        "left 1", "x 2", "y 3", "r 1", "7",
        "p 0", "q 0", "r 9", "9",
        "c1 1", "c2 1", "c3 0", "False",
        "u -1", "t 9", "9",
        "i 0", "k a", "20 1",
        "e1 1", "e2 2", "e3 4", "[1, 2, 3, 4]",
        "lim 11", "lim 11", "v 20", "lim 11", "v 30", "[21, 31]",
        "m last", "14",
    )


def test_closures_share_variables_with_their_frame_across_suspensions(
    registry: Path,
) -> None:
    run = check(registry, """
        def outer():
            count = svc.inc(0)
            seen = []
            def peek():
                return [count, len(seen)]
            def bump():
                seen.append(svc.inc(count))
                return peek()
            print(peek())
            count = svc.add(count, 10)
            print(peek(), bump())
            count = 100
            checkpoint()
            print(bump(), peek())
            return [peek, bump]
        peek, bump = outer()
        print(peek(), bump(), peek())
    """)
    assert run.printed == printed(
        "[1, 0]", "[11, 0] [11, 1]", "[100, 2] [100, 2]", "[100, 2] [100, 3] [100, 3]",
    )


def test_loop_else_clauses_with_a_break_after_a_suspension(registry: Path) -> None:
    run = check(registry, """
        for i in range(3):
            if svc.inc(i) == 2:
                break
        else:
            print("no break")
        print("for", i)
        for i in range(3):
            svc.inc(i)
        else:
            print("for else", i)
        n = 0
        while n < 5:
            n = svc.inc(n)
            if n == 3:
                break
        else:
            print("no break")
        print("while", n)
        while n < 5:
            n = svc.inc(n)
            sleep(0)
        else:
            print("while else", n)
    """)
    assert run.printed == printed("for 1", "for else 2", "while 3", "while else 5")


def test_finally_overrides_a_return_and_an_exception(registry: Path) -> None:
    run = check(registry, """
        def returns():
            try:
                return svc.inc(1)
            finally:
                print("finally sees", svc.mark("f1"))
                return "overridden"
        def swallows():
            try:
                svc.fail("KeyError")
            finally:
                return svc.inc(41)
        def replaces():
            try:
                raise ValueError("first")
            finally:
                raise KeyError(svc.mark("second"))
        def keeps():
            try:
                return svc.inc(0)
            finally:
                svc.mark("cleanup")
        print(returns(), swallows(), keeps())
        try:
            replaces()
        except KeyError as e:
            print(repr(e))
    """)
    assert run.printed == printed("finally sees 2", "overridden 42 1", "KeyError(7)")


def test_break_and_continue_through_finally(registry: Path) -> None:
    run = check(registry, """
        log = []
        for i in range(4):
            try:
                try:
                    if i == 0:
                        continue
                    if i == 2:
                        break
                    log.append(svc.inc(i))
                finally:
                    log.append(["inner", i, svc.mark("f")])
            finally:
                log.append(["outer", i])
        print(log)
        def jumps():
            out = []
            for i in range(3):
                try:
                    svc.fail("ValueError")
                finally:
                    out.append(i)
                    if i < 2:
                        continue
                    break
            return out
        print(jumps())
        w = 0
        while True:
            w += 1
            try:
                if w > 2:
                    break
            finally:
                svc.mark("while")
        print(w)
    """)
    assert run.printed == printed(
        "[['inner', 0, 1], ['outer', 0], 2, ['inner', 1, 3], ['outer', 1], "
        "['inner', 2, 4], ['outer', 2]]",
        "[0, 1, 2]", "3",
    )


def test_a_book_error_crosses_nested_resumable_calls(registry: Path) -> None:
    run = check(registry, """
        def deepest(kind):
            svc.mark("deepest")
            return svc.fail(kind)
        def middle(kind):
            try:
                return deepest(kind) + 1
            finally:
                print("middle unwinds")
        def top(kind):
            try:
                return middle(kind)
            except BookError as e:
                print("top caught", e.error_type, e.book, e.procedure)
                return -1
        print(top("KeyError"))
        print(middle("RuntimeError"))
    """)
    assert run.printed == printed(
        "middle unwinds", "top caught KeyError svc fail", "-1", "middle unwinds",
    )
    assert run.error == ("BookError", "svc.fail: RuntimeError: svc refused call 4")


def test_recursion_in_resumable_functions(registry: Path) -> None:
    run = check(registry, """
        def fib(n):
            if n < 2:
                return svc.echo(n)
            return fib(n - 1) + fib(n - 2)
        def depth(n):
            try:
                return depth(n - 1) + 1 if n else svc.fail("ValueError")
            except BookError:
                return svc.inc(0)
        print(fib(6), depth(3))
    """)
    assert run.printed == printed("8 4")


def test_default_arguments_of_resumable_functions(registry: Path) -> None:
    run = check(registry, """
        def make(start):
            def counter(step=svc.inc(start), *, scale=svc.scale(start, by=10), items=[]):
                items.append(svc.add(step, scale))
                return items
            return counter
        c = make(1)
        print(c(), c(0), c(scale=0), c(step=5, scale=5))
        print(make(2)())
    """)
    assert run.printed == printed(
        "[12, 10, 2, 10] [12, 10, 2, 10] [12, 10, 2, 10] [12, 10, 2, 10]", "[23]",
    )


def test_star_arguments_and_binding_errors(registry: Path) -> None:
    run = check(registry, """
        def h(*args, **kwargs):
            return svc.echo([list(args), kwargs])
        def k(a, b=svc.inc(10), *rest, c, d=4, **more):
            return svc.echo([a, b, list(rest), c, d, more])
        def one(a):
            return svc.inc(a)
        print(h(1, *[2, 3], x=4, **{"y": 5}))
        print(k(1, c=3), k(1, 2, 3, 4, c=5, e=6))
        for attempt in [
            lambda: k(1),
            lambda: k(1, 2, c=3, a=4),
            lambda: k(),
            lambda: one(1, 2),
            lambda: one(b=2),
            lambda: one(),
            lambda: k(1, c=2, **{"c": 3}),
        ]:
            try:
                attempt()
            except TypeError as e:
                print(e)
    """)
    assert run.printed == printed(
        "[[1, 2, 3], {'x': 4, 'y': 5}]",
        "[1, 11, [], 3, 4, {}] [1, 2, [3, 4], 5, 4, {'e': 6}]",
        "k() missing 1 required keyword-only argument: 'c'",
        "k() got multiple values for argument 'a'",
        "k() missing 1 required positional argument: 'a'",
        "one() takes 1 positional argument but 2 were given",
        "one() got an unexpected keyword argument 'b'",
        "one() missing 1 required positional argument: 'a'",
        "__spy__.k() got multiple values for keyword argument 'c'",
    )


def test_except_as_unbinds_its_name(registry: Path) -> None:
    run = check(registry, """
        e = "module value"
        try:
            svc.fail("ValueError")
        except BookError as e:
            print(e.error_type)
        try:
            print(e)
        except Exception as missing:
            print(missing)
        def f():
            try:
                raise KeyError(svc.inc(0))
            except KeyError as err:
                svc.mark("handled")
            return err
        f()
    """)
    assert run.printed == printed("ValueError", "name 'e' is not defined")
    assert run.error == (
        "UnboundLocalError",
        "cannot access local variable 'err' where it is not associated with a value",
    )


# -- what the lowering refuses, and what it cannot do -----------------------------------


def test_a_resumable_function_given_to_a_builtin_is_refused_at_compile_time() -> None:
    assert diagnostics("""
        def key(x):
            return svc.inc(x)
        print(sorted([3, 1, 2], key=key))
    """) == ["SPY401"]
    assert diagnostics("""
        print(list(map(lambda x: svc.inc(x), [1, 2])))
    """) == ["SPY401"]


def test_a_generator_expression_cannot_call_books() -> None:
    assert diagnostics("""
        print(sum(svc.inc(x) for x in [1, 2]))
    """) == ["SPY402"]


def test_a_resumable_function_reached_by_a_builtin_at_run_time_fails_clearly(
    registry: Path,
) -> None:
    """Deliberate deviation: CPython would call the function; the Machine cannot suspend
    inside `sorted()`, so the call fails with SuspendingCallError (a TypeError)."""
    source = "from books import svc\n" + textwrap.dedent("""
        def key(x):
            return svc.inc(x)
        keys = [key]
        print(sorted([3, 1, 2], key=keys[0]))
    """)
    expected = run_on_reference(source, registry)
    assert expected.printed == "[1, 2, 3]\n"
    actual = run_on_machine(source, registry)
    assert actual.error == (
        "SuspendingCallError",
        "key() calls Books or sleeps, so it cannot be called from inside a builtin (such as "
        "a sorted() key or map()); call it directly instead",
    )
    assert actual.book_calls == []

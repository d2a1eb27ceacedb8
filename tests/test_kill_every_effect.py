"""Kill and resume at every effect, in real processes, for spec and generated programs.

Each program first runs uninterrupted: its outputs, printed text, uncaught error and
Book calls are the reference. Then, for every effect k of that run, a fresh execution
of the program runs in a driver process that is SIGKILLed at effect k, and a new
driver resumes it from the same state directory to its end (tests/kill_driver.py).
The kill comes at one of four points:

- in flight: effect k is a Book call, which the Book performs and logs; then it
  kills the driver, before the answer reaches the program or the journal;
- torn: halfway through writing journal record k (any kind of effect), which leaves
  a torn record at the journal's end, to be cut off on resume;
- journaled: right after the journal append of effect k (any kind: a Book call,
  now(), sleep, checkpoint, artifact), before the program sees the result;
- snapshot: when the snapshot taken after effect k is about to be stored, the trace
  up to there delivered, so the resume, from an older snapshot, regenerates trace
  events the sink has had already (and must drop).

The resumed execution must end like the reference: same outputs, same uncaught error,
the same printed text, with no trace event delivered twice, and the same Book calls in
the same order with the same arguments, each made once, except one whose result was
not journaled at the kill (in flight, torn), which is made again, once, right after
the resume, with the same Idempotency-Key (`execution_id:call_seq`). The Books log
their calls (tests/logged_books.py) to a file every process appends to; a Book that
gets a key again answers from that log, as the Idempotency-Key contract asks
(docs/books.md).

How the drivers run the program:

- The spec programs' killed runs are isolated, as production runs them: the driver
  is the host and the program runs in its child process (jarvis/runtime/isolation.py);
  the test also checks that the child dies with its killed host. The child is forked
  from the driver, the way the zygote forks one (jarvis/runtime/zygote.py): a fresh
  interpreter would cost a fraction of a second per run, for hundreds of runs.
  `runtime.spy` is the exception: it sleeps for 60 seconds, which an isolated child
  waits out on the real clock, so it runs in the driver process itself, on a clock
  that a sleep moves forward at once. The reference runs in its driver.
- A generated program (tests/spygen.py) runs isolated or in the driver itself, as
  hypothesis draws.

Snapshot policies: with a snapshot after every effect (or every second one, for
generated programs) a resume restores a snapshot and replays a short journal tail;
with snapshots every 1000 effects it replays the journal from its start (or from a
checkpoint()). A spec program is killed at every effect under both policies; a
generated program under the one hypothesis draws. Each run kills each effect at one
point, taken in rotation (a Book call: in flight, torn, journaled; another effect:
journaled, torn; either, when a snapshot follows it, also snapshot), so the two
policies kill a spec program's effects at different points, and hypothesis draws
where a generated program's rotation starts.

All of it takes 20 to 25 s of CPU; the wall-clock time depends on what else runs.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kill_driver import (
    IN_FLIGHT,
    JOURNALED,
    SNAPSHOT,
    TORN,
    Ending,
    Kill,
    Setup,
    effect_kinds,
    run_killed,
)
from spygen import spy_programs, write_book_registry

from jarvis.compiler import Compilation
from jarvis.runtime.statedir import ExecutionDir

ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = ROOT / "tests" / "spec"
SPEC_REGISTRY = SPEC_DIR / "books.toml"
SPECS = sorted(SPEC_DIR.glob("*.spy"))

# Programs that sleep for long: an isolated child would wait on the real clock.
SLEEPS_FOR_REAL = {"runtime"}
# Spec programs known to have effects (more may have): a run of each must journal some.
EFFECTFUL = {"books", "runtime"}

DENSE, RARE = 1, 1000


BOOK_POINTS: tuple[str, ...] = (IN_FLIGHT, TORN, JOURNALED)
OTHER_POINTS: tuple[str, ...] = (JOURNALED, TORN)


def kills(kinds: list[str], snapshots: list[int], turn: int) -> Iterator[Kill]:
    """A kill at every effect of a run whose effects were `kinds`, and which stored a
    snapshot after the effects `snapshots`: at one point per effect, the points taken
    in rotation from `turn` on (a run with another turn kills an effect elsewhere)."""
    seen = {"book": 0, "other": 0}
    for k, kind in enumerate(kinds, start=1):
        group = "book" if kind == "book" else "other"
        points = BOOK_POINTS if group == "book" else OTHER_POINTS
        if k in snapshots:
            points += (SNAPSHOT,)
        yield Kill(points[(seen[group] + turn) % len(points)], k)
        seen[group] += 1


def assert_resumed_like(reference: Ending, resumed: Ending, kill: Kill | None,
                        execution_id: str, where: str) -> None:
    """`resumed` (killed at `kill`, or not killed) ended as `reference` did."""
    __tracebackhide__ = True
    where = f"{kill}\n--- program ---\n{where}"
    assert resumed.status == reference.status, where
    assert resumed.error == reference.error, where
    assert resumed.outputs == reference.outputs, where
    assert resumed.printed == reference.printed, where
    assert all(call.execution_id == execution_id for call in resumed.calls), where
    expected = [(call.what(), False) for call in reference.calls]
    if kill is None:
        assert [(call.what(), call.resent) for call in resumed.calls] == expected, where
        return
    # A driver killed before the first record was journaled leaves nothing to resume.
    journaled_before = kill.effect - (kill.point in (IN_FLIGHT, TORN))
    assert resumed.report["resumed"] == (journaled_before > 0), where
    # A torn record is cut off the journal's end; nothing else is.
    assert (resumed.report["dropped_journal_bytes"] > 0) == (kill.point == TORN), where
    if kill.point in (IN_FLIGHT, TORN) and kill.effect in [w[-1] for w, _ in expected]:
        # A call whose result was not journaled is made again, right after the resume,
        # with its key.
        at = next(i for i, (what, _) in enumerate(expected) if what[-1] == kill.effect)
        expected.insert(at + 1, (expected[at][0], True))
    assert [(call.what(), call.resent) for call in resumed.calls] == expected, where


def reference_run(setup: Setup) -> tuple[Ending, list[str]]:
    """The uninterrupted run, and the kinds of the effects it journaled."""
    reference = run_killed(setup, "reference", None)
    kinds = effect_kinds(setup, "reference")
    assert not any(call.resent for call in reference.calls)
    # One Book call per `book` record, keyed by the record's position in the journal.
    assert [call.seq for call in reference.calls] == [
        k for k, kind in enumerate(kinds, start=1) if kind == "book"]
    return reference, kinds


def kill_at_every_effect(setup: Setup, reference: Ending, kinds: list[str], where: str,
                         turn: int) -> list[dict[str, Any]]:
    """A killed and resumed execution per kill point; their resume reports. The
    reference ran under the same snapshot policy as `setup`."""
    reports = []
    for kill in kills(kinds, reference.snapshots, turn):
        execution_id = f"killed-{kill.point}-{kill.effect}"
        resumed = run_killed(setup, execution_id, kill)
        assert_resumed_like(reference, resumed, kill, execution_id, where)
        reports.append(resumed.report)
    return reports


@contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder, in memory when the system has /dev/shm: the runs' small
    writes, fsyncs and renames cost less there than on a busy disk, and a killed
    process loses nothing that reached the kernel either way (fsync is for power loss)."""
    memory = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="jarvis-kill-",
                                     dir=memory if memory.is_dir() else None) as folder:
        yield Path(folder)


@pytest.fixture
def scratch() -> Iterator[Path]:
    with scratch_folder() as folder:
        yield folder


def assert_resumes_went_through(reports: list[dict[str, Any]], every: int) -> None:
    """Dense snapshots: some resume restored one and replayed a tail after it. Rare
    snapshots: some resume replayed a longer part of the journal."""
    if every == DENSE:
        assert any(r["snapshot"] is not None and r["replayed_effects"] >= 1 for r in reports)
    else:
        assert any(r["replayed_effects"] >= 2 for r in reports)


# -- the spec programs ------------------------------------------------------------------


def spec_inputs(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".inputs.json")
    if not sidecar.exists():
        return {}
    inputs: dict[str, Any] = json.loads(sidecar.read_text(encoding="utf-8"))
    return inputs


def spec_setup(path: Path, workdir: Path, every: int) -> Setup:
    source = path.read_text(encoding="utf-8")
    compilation = Compilation.of(source, str(path))
    assert compilation.ok
    return Setup(
        program=compilation.program("statements"), registry=SPEC_REGISTRY,
        workdir=workdir, inputs=spec_inputs(path),
        isolated=path.stem not in SLEEPS_FOR_REAL, snapshot_every_effects=every,
    )


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
def test_spec_program_killed_at_every_effect_resumes_as_if_never_killed(
    path: Path, scratch: Path
) -> None:
    source = path.read_text(encoding="utf-8")
    setup = spec_setup(path, scratch / "reference", DENSE)
    # The reference runs in its driver: the killed runs, isolated, must also agree with
    # a run that was not.
    reference, kinds = reference_run(replace(setup, isolated=False))
    assert reference.status == "completed", reference.error
    if not kinds:
        assert path.stem not in EFFECTFUL, f"{path.name} journaled no effect"
        return  # nowhere to kill it
    # Under each snapshot policy, one kill per effect, at another point under each
    # (every point at every effect would take three times as long).
    for turn, every in enumerate((DENSE, RARE)):
        killed = replace(setup, workdir=scratch / f"every-{every}",
                         snapshot_every_effects=every)
        if every != DENSE:  # where this policy takes snapshots
            again, _ = reference_run(replace(killed, isolated=False))
            assert_resumed_like(reference, again, None, "reference", source)
            reference = again
        reports = kill_at_every_effect(killed, reference, kinds, source, turn)
        assert_resumes_went_through(reports, every)


# -- what the kills found ----------------------------------------------------------------


def test_a_resumed_execution_sees_its_inputs_in_the_order_it_started_with(
    scratch: Path
) -> None:
    # A resume reads the inputs back from status.json, which once sorted its keys: a
    # program that iterated its inputs saw another order after a kill than before.
    source = 'started = now()\noutput("keys", list(inputs))\noutput("inner", list(inputs["z"]))\n'
    compilation = Compilation.of(source, "<spy>")
    assert compilation.ok
    inputs = {"z": {"y": 1, "x": 2}, "a": 0}
    setup = Setup(program=compilation.program("off"), registry=SPEC_REGISTRY,
                  workdir=scratch, inputs=inputs, isolated=False,
                  snapshot_every_effects=RARE)
    resumed = run_killed(setup, "ordered", Kill(JOURNALED, 1))
    assert resumed.report["replayed_effects"] == 1
    assert resumed.outputs == {"keys": ["z", "a"], "inner": ["y", "x"]}
    status = ExecutionDir(setup.settings().state_dir, "ordered").read_status()
    assert status is not None
    assert list(status["inputs"]) == ["z", "a"]


# -- generated programs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_book_registry(tmp_path_factory.mktemp("books"))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(source=spy_programs(statements=15), every=st.sampled_from([DENSE, 2, RARE]),
       trace=st.sampled_from(["off", "statements"]), isolated=st.booleans(),
       turn=st.integers(0, 11))
def test_generated_program_killed_at_every_effect_resumes_as_if_never_killed(
    registry: Path, source: str, every: int, trace: str, isolated: bool, turn: int
) -> None:
    compilation = Compilation.of(source, "<spy>")
    assert compilation.ok
    with scratch_folder() as folder:
        setup = Setup(
            program=compilation.program(trace), registry=registry,  # type: ignore[arg-type]
            workdir=folder, inputs={}, isolated=isolated, snapshot_every_effects=every,
        )
        reference, kinds = reference_run(setup)
        assume(kinds)  # a program without effects has nowhere to be killed
        kill_at_every_effect(setup, reference, kinds, source, turn)

"""The durability rows: snapshots as live state grows, resume, journal appends.

- Snapshot size and time at 1 KB, 100 KB, 1 MB and 10 MB of live data (`live_state.spy`
  stopped at its first Book call): Jarvis's `Machine.state_bytes()` (serialise),
  `SnapshotStore.write` (sign, write, fsync) and `Machine.restore` into a fresh
  Machine; the baseline is `pickle.dumps` of the program's live variables; Monty's
  `dump()` of the suspended worker, and its `load_snapshot` plus one `resume` on a
  fresh session.
- Resume from a snapshot with 100 KB of live state, and after 1k, 10k and 100k Book
  calls, through `bench.resume.measure`; Monty's load-and-resume after as many calls.
- Journal append cost per effect (`Journal.append` of a Book record) with and without
  fsync.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import resume
from bench.baselines import MontyPool
from bench.config import Config
from bench.engine import book_registry, compiled
from bench.timing import Stats, batch, repeat
from bench.workloads import BOOK_LOOP, LIVE_STATE, inc
from jarvis.compiler.phases import COMPILER_VERSION
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.builtins import BookProxy
from jarvis.runtime.effects_log import MemoryEffects, book_record, encode
from jarvis.runtime.journal import Journal
from jarvis.runtime.machine import Machine
from jarvis.runtime.sinks import NullSink
from jarvis.runtime.snapshots import SnapshotHeader, SnapshotStore
from jarvis.runtime.trace import Tracer
from jarvis.settings import load_settings

SIZES = (("1 KB", 1 << 10), ("100 KB", 100 << 10), ("1 MB", 1 << 20), ("10 MB", 10 << 20))
RESUME_COUNTS = (1_000, 10_000, 100_000)
BOOKS = {"counter": {"inc": inc}}


def _live_variables(machine: Machine) -> dict[str, Any]:
    """The program's own variables: its globals minus imported Books (not values)."""
    return {name: value for name, value in machine.namespace.user_globals().items()
            if not isinstance(value, BookProxy)}


def _records(count: int) -> list[dict[str, Any]]:
    """The records live_state.spy builds (the same expression, in Python)."""
    return [{"id": i, "name": f"customer {i}", "amount": i * 1.5, "open": i % 3 == 0}
            for i in range(count)]


def records_for(target_bytes: int) -> int:
    """How many records of live_state.spy pickle to about `target_bytes`."""
    small, large = (len(pickle.dumps(_records(count), pickle.HIGHEST_PROTOCOL))
                    for count in (1000, 2000))
    return max(1, round(target_bytes / ((large - small) / 1000)))


def _suspended_machine(program: Any, registry: BookRegistry, records: int) -> Machine:
    """live_state.spy with `records` records, stopped right after its first Book call."""
    tracer = Tracer("bench", program.trace_sites, NullSink())
    machine = Machine(program, execution_id="bench", inputs={"records": records, "count": 3},
                      books=registry, effects=MemoryEffects(), tracer=tracer,
                      stop_requested=lambda: True)
    outcome = machine.run()
    if outcome.status != "suspended":
        raise RuntimeError(f"live_state.spy did not suspend: {outcome.status} {outcome.error}")
    return machine


def snapshot_sizes(config: Config, monty: MontyPool | None, base: Path) -> list[dict[str, Any]]:
    registry = book_registry(base, "def inc(n):\n    return n + 1\n")
    program = compiled(LIVE_STATE.source, LIVE_STATE.file, "off")
    rows = []
    for label, full_bytes in SIZES:
        records = records_for(max(256, round(full_bytes * min(config.scale, 1.0))))
        config.say(f"snapshot of {label} live state ({records} records)")
        row = _snapshot_row(config, program, registry, base / label.replace(" ", ""), records)
        row["label"] = label
        if monty is not None:
            row["monty"] = _monty_snapshot(config, monty, records)
        rows.append(row)
    return rows


def _snapshot_row(config: Config, program: Any, registry: BookRegistry, directory: Path,
                  records: int) -> dict[str, Any]:
    machine = _suspended_machine(program, registry, records)
    live = _live_variables(machine)
    pickled = pickle.dumps(live, pickle.HIGHEST_PROTOCOL)
    payload = machine.state_bytes()
    store = SnapshotStore(directory, load_settings().hmac_key_bytes)
    header = SnapshotHeader(program_hash=program.digest, compiler_version=COMPILER_VERSION,
                            execution_id="bench", journal_index=machine.effect_count)
    written: list[Path] = []

    def pickle_live() -> float:
        started = time.perf_counter()
        pickle.dumps(live, pickle.HIGHEST_PROTOCOL)
        return time.perf_counter() - started

    def serialise() -> float:
        started = time.perf_counter()
        machine.state_bytes()
        return time.perf_counter() - started

    def write() -> float:
        started = time.perf_counter()
        written.append(store.write(payload, header))
        return time.perf_counter() - started

    def restore() -> float:
        fresh = Machine(program, execution_id="bench", inputs={}, books=registry,
                        effects=MemoryEffects(),
                        tracer=Tracer("bench", program.trace_sites, NullSink()))
        started = time.perf_counter()
        fresh.restore(payload)
        return time.perf_counter() - started

    row: dict[str, Any] = {
        "records": records,
        "pickled_bytes": len(pickled),
        "payload_bytes": len(payload),
        "pickle_seconds": repeat(pickle_live, config.repeats, config.warmup).to_json(),
        "serialise_seconds": repeat(serialise, config.repeats, config.warmup).to_json(),
        "write_seconds": repeat(write, config.repeats, config.warmup).to_json(),
        "restore_seconds": repeat(restore, config.repeats, config.warmup).to_json(),
    }
    row["snapshot_bytes"] = written[-1].stat().st_size
    row["snapshot_vs_pickled"] = round(row["snapshot_bytes"] / len(pickled), 4)
    return row


def _monty_snapshot(config: Config, monty: MontyPool, records: int) -> dict[str, Any]:
    """Monty suspended at the first Book call of live_state.spy: dump, load + resume."""
    with monty.session(BOOKS) as session:
        snapshot = monty.drive(
            monty.start(session, LIVE_STATE.source, {"records": records, "count": 3}),
            BOOKS, {}, stop_after_calls=0)
        dumped = snapshot.dump()

        def dump() -> float:
            started = time.perf_counter()
            snapshot.dump()
            return time.perf_counter() - started

        dump_stats = repeat(dump, config.repeats, config.warmup)
    return {"dump_bytes": len(dumped), "dump_seconds": dump_stats.to_json(),
            "load_and_resume_seconds": _monty_resume(config, monty, dumped, 1,
                                                     config.repeats).to_json()}


def _monty_resume(config: Config, monty: MontyPool, dumped: bytes, answer: int,
                  repeats: int) -> Stats:
    """Fresh session, `load_snapshot`, answer the pending call, up to the next one."""

    def cell() -> float:
        with monty.session(BOOKS) as session:
            started = time.perf_counter()
            restored = session.load_snapshot(dumped)
            following = restored.resume({"return_value": answer})
            seconds = time.perf_counter() - started
        if not isinstance(following, monty.pm.FunctionSnapshot):
            raise RuntimeError(f"Monty did not reach the next Book call: {following!r}")
        return seconds

    return repeat(cell, repeats, config.warmup)


def resume_rows(config: Config, monty: MontyPool | None) -> dict[str, Any]:
    live_records = records_for(max(256, round((100 << 10) * min(config.scale, 1.0))))
    config.say(f"resume from 100 KB of live state ({live_records} records)")
    live = resume.measure(config.size(1000), config.cheap_repeats, config.warmup,
                          LIVE_STATE.source, {"records": live_records})
    live["records"] = live_records
    scaled = [config.size(count) for count in RESUME_COUNTS]
    config.say(f"resume after {', '.join(map(str, scaled))} Book calls, in interleaved "
               "rounds (bench/resume.py)")
    counts = resume.measure_interleaved(scaled, config.cheap_repeats, config.warmup)
    for count, row in zip(RESUME_COUNTS, counts, strict=True):
        row["label"] = f"{count:,}"
        if monty is not None:
            row["monty"] = _monty_after_calls(config, monty, row["book_calls"])
    first, last = counts[0], counts[-1]
    return {
        "live_100kb": live,
        "after_calls": counts,
        "ratio_last_vs_first": {
            "resumed": round(last["resumed_ms_median"] / first["resumed_ms_median"], 4),
            "resume_and_snapshot": round(last["resume_ms_median"] / first["resume_ms_median"],
                                         4),
        },
    }


def _monty_after_calls(config: Config, monty: MontyPool, count: int) -> dict[str, Any]:
    config.say(f"  monty: {count} Book calls, then dump and load-and-resume")
    with monty.session(BOOKS) as session:
        started = time.perf_counter()
        snapshot = monty.drive(monty.start(session, BOOK_LOOP.source, {"n": count + 10}),
                               BOOKS, {}, stop_after_calls=count)
        run_seconds = time.perf_counter() - started
        dumped = snapshot.dump()
    return {"first_run_seconds": round(run_seconds, 3), "dump_bytes": len(dumped),
            "load_and_resume_seconds": _monty_resume(config, monty, dumped, count + 1,
                                                     config.cheap_repeats).to_json()}


def journal_appends(config: Config, base: Path) -> dict[str, Any]:
    """Seconds per `Journal.append` of a typical Book record, fsync off and on."""
    payload = encode(book_record("counter", "inc", 42, None, 0.012))
    rows: dict[str, Any] = {"payload_bytes": len(payload)}
    for fsync, full_count in ((False, 10_000), (True, 100)):
        count = config.size(full_count)
        config.say(f"journal appends, fsync {'on' if fsync else 'off'} ({count} a run)")
        rows["fsync_on" if fsync else "fsync_off"] = {
            "appends": count,
            "seconds_per_append": _appends(config, base, payload, fsync, count).to_json(),
        }
    return rows


def _appends(config: Config, base: Path, payload: bytes, fsync: bool, count: int) -> Stats:
    keys = load_settings().hmac_key_bytes
    path = base / "journal.jrnl"

    def cell() -> tuple[float, float]:
        with Journal.open(path, keys, "bench", fsync=fsync) as journal:
            per_append = batch(lambda: journal.append(payload), count)()
        os.unlink(path)
        return per_append

    return repeat(cell, config.cheap_repeats, config.warmup)


def measure(config: Config, monty: MontyPool | None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="jarvis-bench-durability-"))
    try:
        return {
            "snapshots": snapshot_sizes(config, monty, base),
            "resume": resume_rows(config, monty),
            "journal": journal_appends(config, base),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)

"""Children forked by the zygote keep every property of a spawned child.

A clean environment and a private, empty directory; nothing of the zygote's left open;
a stop (SIGTERM) suspends the execution; a child that fails leaves its log's tail as
the cause; children die with the zygote, the zygote with the host; a dead zygote is
replaced. And the program a child runs is the one the host compiled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jarvis.compiler import Compilation
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.children import CHILD_ENVIRONMENT
from jarvis.runtime.execution import Execution
from jarvis.runtime.forks import ForkServer
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.program_bytes import decode_program, encode_program
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import load_settings


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def forks() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


def run(tmp_path: Path, source: str, pool: ChildPool, execution_id: str = "z",
        stop_requested: Callable[[], bool] = lambda: False) -> Any:
    program = Compilation.of(source, "prog.spy").program("statements")
    settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False)
    return Execution(program, execution_id=execution_id, inputs={}, books=BookRegistry(),
                     settings=settings, sink=MemorySink(), isolation=pool,
                     stop_requested=stop_requested).run()


def test_a_forked_child_has_a_scrubbed_environment_a_private_directory_and_no_leaks(
    forks: ForkServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JARVIS_HMAC_KEYS", "a-secret-the-child-must-not-see")
    child = forks.fork()
    try:
        pid = child.pid
        environ = [i for i in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if i]
        assert {item.split(b"=", 1)[0].decode() for item in environ} == set(CHILD_ENVIRONMENT)
        eventually(lambda: os.readlink(f"/proc/{pid}/cwd") == child.workdir,
                   "the child moved into its directory")
        assert os.listdir(child.workdir) == []
        # stdin, the log as stdout and stderr, the channel: nothing of the zygote's.
        eventually(lambda: len(os.listdir(f"/proc/{pid}/fd")) == 4, "the child closed fds")
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.path.samestat(os.stat(f"/proc/{pid}/fd/1"), os.fstat(child.log.fileno()))
        assert os.getppid() != forks.pid and _parent_of(pid) == forks.pid
    finally:
        child.close()


def record_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """From now on, every Machine run's trace level and outcome, in order."""
    from jarvis.runtime.machine import Machine

    outcomes: list[tuple[str, Any]] = []
    run = Machine.run

    def recording(machine: Machine) -> Any:
        outcome = run(machine)
        outcomes.append((machine.program.trace_level, outcome))
        return outcome

    monkeypatch.setattr(Machine, "run", recording)
    return outcomes


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_forked_children_run_executions_and_a_stop_suspends_one(tmp_path: Path) -> None:
    pool = ChildPool(size=1)
    try:
        assert pool.forks is not None
        outcome = run(tmp_path, "output('x', [1, 2])\n", pool, "first")
        assert (outcome.status, outcome.outputs) == ("completed", {"x": [1, 2]})
        asked = time.monotonic() + 0.5
        outcome = run(tmp_path, "for i in range(200):\n    sleep(0.05)\noutput('done', 1)\n",
                      pool, "stopped", stop_requested=lambda: time.monotonic() > asked)
        assert outcome.status == "suspended"
        assert outcome.counters["snapshots"] >= 1
    finally:
        pool.close()


def test_a_failing_child_reports_the_tail_of_its_log(forks: ForkServer) -> None:
    child = forks.fork()
    try:
        child.channel.send({"op": "start"})  # no program: the child fails with KeyError
        cause = child.cause_of_death()
        assert cause.startswith("the execution's process exited with status 1:"), cause
        assert "KeyError: 'program_length'" in cause
        assert "Traceback" in child.log_tail()
    finally:
        child.close()


def test_children_die_with_their_zygote_and_a_new_zygote_takes_over(
    forks: ForkServer, tmp_path: Path,
) -> None:
    child = forks.fork()
    pid, zygote = child.pid, forks.pid
    assert zygote is not None
    os.kill(zygote, signal.SIGKILL)
    eventually(lambda: not alive(pid), "the child died with its zygote")
    assert "died with the zygote" in child.cause_of_death()
    child.close()
    eventually(lambda: forks.pid not in (None, zygote), "a new zygote started", 20)
    again = forks.fork()
    try:
        assert _parent_of(again.pid) == forks.pid
    finally:
        again.close()


def test_the_zygote_and_its_children_die_with_the_host() -> None:
    script = (
        "import time\n"
        "from jarvis.runtime.forks import ForkServer\n"
        "forks = ForkServer()\n"
        "child = forks.fork()\n"
        "print(child.pid, forks.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    child_pid, zygote_pid = (int(word) for word in host.stdout.readline().split())
    host.send_signal(signal.SIGKILL)
    host.wait(timeout=10)
    try:
        eventually(lambda: not alive(zygote_pid) and not alive(child_pid),
                   "the zygote and its child died with the host")
    finally:
        for pid in (child_pid, zygote_pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_child_runs_the_program_the_host_compiled() -> None:
    program = Compilation.of("def f(x):\n    return x + 1\noutput('y', f(1))\n",
                             "p.spy").program("full")
    copy = decode_program(encode_program(program))
    assert copy.digest == program.digest
    assert copy.code == program.code
    assert len(copy.codes) == len(program.codes)
    assert copy.functions == program.functions
    assert copy.trace_sites == program.trace_sites
    assert copy.source.text == program.source.text and copy.books == program.books


def test_the_zygote_warms_up_on_a_program_of_its_own_and_stays_single_threaded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before it forks, the zygote runs its own program through what a child runs (the
    child's `serve` itself), at trace off and full, to completion, without confining
    itself; it starts no thread (a fork must copy none) and what the runs made is
    collected."""
    import resource
    import threading

    from jarvis.runtime import child, tracebatch, zygote

    outcomes = record_runs(monkeypatch)
    served: list[int] = []
    serve = child.serve

    def counting(*args: Any, **kwargs: Any) -> int:
        served.append(serve(*args, **kwargs))
        return served[-1]

    monkeypatch.setattr(child, "serve", counting)
    threads = threading.active_count()
    memory = resource.getrlimit(resource.RLIMIT_AS)
    zygote.warm_up(rounds=4)
    assert threading.active_count() == threads
    assert [level for level, _ in outcomes] == ["off", "full", "off", "full"]
    assert all(o.status == "completed" for _, o in outcomes), outcomes
    assert [o.outputs["ok"]["n"] for _, o in outcomes] == [6, 7, 8, 9]
    assert capsys.readouterr().err == ""  # no failure was logged
    # Each round rehearsed the child's own path, to its end, and confined nothing here:
    # no filter, the limits as they were, and the time limit's timer disarmed.
    assert served == [0, 0, 0, 0]
    status = Path("/proc/self/status").read_text()
    assert "Seccomp:\t0" in status
    assert resource.getrlimit(resource.RLIMIT_AS) == memory
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    # Nothing of the warm-up program's is kept for a child to free (and so copy).
    assert tracebatch._expr_sites == []


def test_the_zygote_warms_up_on_the_programs_the_host_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host compiles the warm-up program and builds the children's filter, and
    sends both as the zygote's first message; what arrives is what was sent (with a
    filter or without), and the zygote runs the programs to completion."""

    from jarvis.runtime import confine, zygote

    programs = zygote.warm_up_programs()
    template = confine.filter_template()
    assert template is not None
    host, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with host, other:
        host.send(zygote.warm_up_message(programs, template))
        assert zygote.receive_warm_up(other) == (programs, template)
        host.send(zygote.warm_up_message(programs))
        assert zygote.receive_warm_up(other) == (programs, None)
        host.send(zygote.warm_up_message([], template))
        assert zygote.receive_warm_up(other) == ([], template)
        host.send(zygote.warm_up_message(programs, template)[:-1])  # a byte short
        with pytest.raises(ValueError, match="counts"):
            zygote.receive_warm_up(other)
        host.close()
        assert zygote.receive_warm_up(other) is None  # the host went away first

    outcomes = record_runs(monkeypatch)
    zygote.warm_up(rounds=2, programs=programs)
    assert [(level, o.status) for level, o in outcomes] == [("off", "completed"),
                                                            ("full", "completed")]


def test_a_filter_template_is_whole_instructions_with_its_slots_among_them() -> None:
    """What the zygote makes of the host's message is checked before a child loads it."""
    from jarvis.runtime.confine import FilterTemplate

    instruction = b"\x15\x00\x01\x00\xf1\xff\xff\x3f"
    assert FilterTemplate(instruction * 2, (1,), True).for_pid(7)[8:12] == b"\x15\x00\x01\x00"
    for program, slots in ((instruction[:-1], (0,)), (b"", (0,)), (instruction, (1,)),
                           (instruction, ()), (instruction, (-1,))):
        with pytest.raises(ValueError):
            FilterTemplate(program, slots, True)


NEVER_IMPORTED = {
    # The compiler's pipeline: the host compiles the warm-up programs.
    "RestrictedPython", "jarvis.compiler.phases", "jarvis.compiler.syntax",
    "jarvis.compiler.validate", "jarvis.compiler.resolve", "jarvis.compiler.emit",
    "jarvis.compiler.restrict", "jarvis.compiler.lower",
    # libseccomp's binding and what it imports: the host builds the filter's template.
    "pyseccomp", "ctypes", "ctypes.util", "subprocess", "shutil", "tempfile", "bz2",
    "lzma", "zlib", "random",
    # OpenSSL (an artifact's digest is CPython's own SHA-256) and what only a Book
    # registry's loading needs.
    "hashlib", "_hashlib", "tomllib", "difflib",
}
"""Modules the zygote must not import: their memory (objects, shared libraries) would
be in every fork, making each fork and each exit slower."""

NEVER_MAPPED = ("libseccomp.so", "libffi.so", "libcrypto.so", "libbz2.so", "liblzma.so",
                "libz.so")
"""Shared libraries the zygote must not load (those of `NEVER_IMPORTED`)."""


def test_the_zygote_imports_no_compiler_pipeline_nor_libseccomp() -> None:
    """What the zygote loads, as its `main` does (the host's first message, `prepare`
    with the host's filter template, the warm-up on the host's programs), is what its
    children need: none of `NEVER_IMPORTED`. (Without the C extension it would import
    ctypes: the fallback's.)"""

    from jarvis.runtime import confine, zygote

    assert confine.native() is not None, "the C extension _process is not built"
    host, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    script = (
        "import json, socket, sys\n"
        "from jarvis.runtime import confine, zygote\n"
        f"first = zygote.receive_warm_up(socket.socket(fileno={other.fileno()}))\n"
        "assert first.template is not None and len(first.programs) == 2, first\n"
        "zygote.prepare(first.template)\n"
        "assert confine._PREPARED and confine._PREPARED[0].template == first.template\n"
        "zygote.warm_up(programs=first.programs)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    with host:
        host.send(zygote.warm_up_message(zygote.warm_up_programs(),
                                         confine.filter_template()))
        done = subprocess.run([sys.executable, "-c", script], pass_fds=(other.fileno(),),
                              capture_output=True, text=True, timeout=120, check=True)
        other.close()
    import json

    modules = set(json.loads(done.stdout))
    assert "jarvis.runtime.machine" in modules and "jarvis.runtime.child" in modules
    assert "cloudpickle" in modules  # a snapshot needs it, and a child imports nothing
    assert modules & NEVER_IMPORTED == set(), done.stderr


def test_a_running_zygote_maps_none_of_the_libraries_it_need_not(tmp_path: Path) -> None:
    """The zygote a pool starts, once it serves (a child it forked ran an execution),
    has not loaded libseccomp, libffi, OpenSSL nor the compression libraries."""
    pool = ChildPool(size=1)
    try:
        assert pool.forks is not None
        outcome = run(tmp_path, "output('x', 1)\n", pool)
        assert (outcome.status, outcome.outputs) == ("completed", {"x": 1})
        zygote = pool.forks.pid
        assert zygote is not None
        maps = Path(f"/proc/{zygote}/maps").read_text()
    finally:
        pool.close()
    assert "/python" in maps
    assert [name for name in NEVER_MAPPED if name in maps] == []


def test_a_forked_child_starts_no_thread_for_its_time_limits(forks: ForkServer) -> None:
    """Its deadlines and stop grace come from SIGALRM (the alarm clock), caught from the
    start: the child waits for its start message with one thread, its main one."""
    child = forks.fork()
    try:
        pid = child.pid
        eventually(lambda: os.readlink(f"/proc/{pid}/cwd") == child.workdir,
                   "the child moved into its directory")
        time.sleep(0.3)  # into serve(), where the watchdog thread used to start
        assert len(os.listdir(f"/proc/{pid}/task")) == 1
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line for line in status.splitlines()
                          if line.startswith("SigCgt:")).split()[1], 16)
        assert caught & (1 << (signal.SIGALRM - 1)), "SIGALRM is not caught"
        assert caught & (1 << (signal.SIGTERM - 1)), "SIGTERM is not caught"
    finally:
        child.close()


def start_c_loop(script: str) -> tuple[socket.socket, subprocess.Popen[str]]:
    """`script` (which serves its first argument, a descriptor, with the C loop) in a
    process of its own; the host's end of its SEQPACKET socket, and the process."""
    host, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = subprocess.Popen([sys.executable, "-c", script, str(zygote_end.fileno())],
                               pass_fds=(zygote_end.fileno(),), stdout=subprocess.PIPE,
                               text=True)
    zygote_end.close()
    host.settimeout(30)
    return host, process


def ask_fork(host: socket.socket, request_id: int, workdir: str,
             log_path: Path) -> tuple[socket.socket, int]:
    """Ask the loop for a child (with a channel and a log at `log_path`): our end of
    its channel, and its pid."""
    ours, theirs = socket.socketpair()
    with open(log_path, "wb") as log:
        socket.send_fds(host, [f"fork {request_id} {workdir}".encode()],
                        [theirs.fileno(), log.fileno()])
    theirs.close()
    op, word, pid = host.recv(100).decode().split(" ")
    assert (op, word) == ("forked", str(request_id))
    return ours, int(pid)


def test_the_zygote_forks_alone_where_the_c_extension_is_built(tmp_path: Path) -> None:
    """With `_process` built, the zygote's C loop forks with fork(2) alone: the child
    skips the at-fork functions modules registered (threading's among them), and still
    has a sound interpreter: its one thread is the main thread, locks and events work,
    and it exits with the code it chose. A process with a second thread is refused."""
    import json

    script = (
        "import json, os, sys, threading\n"
        "from jarvis.runtime import _process, zygote\n"
        "hooks = []\n"
        "os.register_at_fork(after_in_child=lambda: hooks.append('child'))\n"
        "zygote.check_alone()\n"
        "forked = _process.serve_zygote(int(sys.argv[1]), lambda: None, 60.0)\n"
        "if forked is None:\n"
        "    threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()\n"
        "    try:\n"
        "        zygote.check_alone()\n"
        "        print('')\n"
        "    except RuntimeError as exc:\n"
        "        print(exc)\n"
        "    sys.exit(0)\n"
        "channel = forked[2]\n"
        "event = threading.Event()\n"
        "event.set()\n"
        "with threading.Lock():\n"
        "    main = threading.current_thread() is threading.main_thread()\n"
        "os.write(channel, json.dumps([hooks, main, event.is_set(), os.getpid()]).encode())\n"
        "os._exit(7)\n"
    )
    host, process = start_c_loop(script)
    try:
        ours, pid = ask_fork(host, 1, str(tmp_path), tmp_path / "log")
        with ours:
            hooks, main, is_set, child_pid = json.loads(ours.recv(4096))
        code = int(host.recv(100).decode().split(" ")[2])
    finally:
        host.close()
    refused, _ = process.communicate(timeout=30)
    assert hooks == [], "an at-fork function ran in the child"
    assert main and is_set and child_pid == pid and code == 7
    assert refused.strip() == "a zygote has one thread, not 2"


def test_without_the_c_extension_forked_children_run_confined_and_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where `_process` is not built, the zygote falls back on ctypes (loaded once, in
    the zygote) and its children on a watchdog thread: an execution still completes
    confined, and a time limit still stops a loop."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\nsys.modules['jarvis.runtime._process'] = None  # as if not built\n")
    monkeypatch.setitem(CHILD_ENVIRONMENT, "PYTHONPATH", str(hook))
    pool = ChildPool(size=1)
    try:
        assert pool.forks is not None
        source = ("output('x', 1)\n"
                  "while True:\n"
                  "    pass\n")
        program = Compilation.of(source, "prog.spy").program("off")
        settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False,
                                 limits={"max_seconds": 1.0})
        pid = pool.next_ready().pid  # the child the execution gets
        seen: list[str] = []

        def look() -> None:  # while the loop runs: is the child's filter on?
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and alive(pid) and "2" not in seen:
                status = Path(f"/proc/{pid}/status").read_text()
                seen[:] = [line.split()[1] for line in status.splitlines()
                           if line.startswith("Seccomp:")]
                time.sleep(0.02)

        import threading

        looker = threading.Thread(target=look)
        looker.start()
        outcome = Execution(program, execution_id="fallback", inputs={},
                            books=BookRegistry(), settings=settings, sink=MemorySink(),
                            isolation=pool).run()
        looker.join()
        zygote = pool.forks.pid
        assert zygote is not None
        maps = Path(f"/proc/{zygote}/maps").read_text()
        outcome_again = run(tmp_path / "again", "output('y', 2)\n", pool, "again")
    finally:
        pool.close()
    assert outcome.status == "failed" and outcome.outputs == {"x": 1}, outcome
    assert getattr(outcome.error, "limit", None) == "seconds", outcome.error
    assert seen == ["2"], seen
    assert "libffi.so" in maps and "_process" not in maps  # ctypes, the fallback's
    assert (outcome_again.status, outcome_again.outputs) == ("completed", {"y": 2})


def test_a_forked_childs_first_steps_are_taken_in_c(tmp_path: Path) -> None:
    """`_process.enter_child`, what a child of the C loop does before any Python of its
    own: it dies with its parent (PDEATHSIG, and exits at once if the parent it was
    given is gone already), has its log as stdout and stderr and its channel as
    descriptor 3, nothing else of its parent's open, its directory as working
    directory, and SIGTERM unblocked."""
    script = (
        "import ctypes, json, os, signal, sys\n"
        "from jarvis.runtime import _process\n"
        "workdir = sys.argv[1]\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
        "os.open(os.devnull, os.O_RDONLY)  # on 3 (the channel's number in the child)\n"
        "log = os.open(os.path.join(workdir, 'log'), os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "extra = os.open(os.devnull, os.O_RDONLY)\n"
        "read_end, channel = os.pipe()\n"
        "results = []\n"
        "for parent in (os.getpid(), 1):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        _process.enter_child(parent, workdir, channel, log)\n"
        "        death = ctypes.c_int()\n"
        "        ctypes.CDLL(None).prctl(2, ctypes.byref(death), 0, 0, 0)\n"
        "        closed = []\n"
        "        for fd in (extra, channel, read_end, log):\n"
        "            try:\n"
        "                os.fstat(fd)\n"
        "            except OSError:\n"
        "                closed.append(fd)\n"
        "        blocked = int(next(line for line in open('/proc/self/status')\n"
        "                           if line.startswith('SigBlk:')).split()[1], 16)\n"
        "        print('on the log', flush=True)\n"
        "        os.write(3, json.dumps([os.getcwd(), death.value, closed,\n"
        "                               bool(blocked & (1 << (signal.SIGTERM - 1)))]).encode())\n"
        "        os._exit(0)\n"
        "    results.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
        "os.close(channel)\n"
        "print(json.dumps([results, json.loads(os.read(read_end, 4096))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    import json

    codes, (cwd, death, closed, blocked) = json.loads(out)
    assert codes == [0, 1]  # the second child's "parent" (pid 1) is not its parent
    assert cwd == str(tmp_path) and death == signal.SIGKILL and not blocked
    assert len(closed) == 4  # every descriptor the parent opened, at its own number
    assert (tmp_path / "log").read_text() == "on the log\n"


def test_the_c_loop_speaks_the_zygote_protocol(tmp_path: Path) -> None:
    """`_process.serve_zygote`, the zygote's loop in C, against this test as the host:
    it forks on request, returns in the child (and only there) with the request's id,
    directory and descriptors, calls its before-fork function at most once an
    interval, reports each fork and each exit, passes signals on, ignores what it
    cannot parse, and returns None once the host has gone."""
    import json

    from jarvis.runtime import confine

    assert confine.native() is not None, "the C extension _process is not built"
    script = (
        "import json, os, sys\n"
        "from jarvis.runtime import _process\n"
        "calls = []\n"
        "forked = _process.serve_zygote(int(sys.argv[1]), lambda: calls.append(1), 60.0)\n"
        "if forked is None:\n"
        "    print('host gone', len(calls), flush=True)\n"
        "    sys.exit(0)\n"
        "request_id, workdir, channel, log = forked\n"
        "os.write(channel, json.dumps([request_id, workdir, len(calls)]).encode())\n"
        "if request_id == 2:\n"
        "    os.read(channel, 1)  # until killed\n"
        "os._exit(5)\n"
    )
    host, process = start_c_loop(script)

    def fork(request_id: int, workdir: str) -> tuple[socket.socket, int]:
        return ask_fork(host, request_id, workdir, tmp_path / f"log{request_id}")

    try:
        first, _ = fork(1, "/a dir/with spaces")
        assert json.loads(first.recv(1000)) == [1, "/a dir/with spaces", 1]
        assert host.recv(100).decode() == "exited 1 5"
        host.send(b"nonsense")
        host.send(b"signal 1 9")  # reaped already: no such child any more
        second, pid = fork(2, str(tmp_path))
        assert json.loads(second.recv(1000)) == [2, str(tmp_path), 1]  # no call: 60 s
        host.send(b"signal 2 9")
        assert host.recv(100).decode() == "exited 2 -9"
        assert not alive(pid)  # killed, and reaped
        first.close()
        second.close()
    finally:
        host.close()
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and out == "host gone 1\n"


def test_the_zygote_writes_few_of_its_pages_a_fork(tmp_path: Path) -> None:
    """With the C loop, the zygote runs no Python between two forks: it writes (and so
    copies, the fork having shared its memory with the child) a handful of its pages
    a fork, not the hundred and more its Python loop did."""
    pool = ChildPool(size=1)
    try:
        assert pool.forks is not None
        run(tmp_path / "warm", "output('x', 0)\n", pool, "warm")
        zygote = pool.forks.pid
        assert zygote is not None

        def faults() -> int:
            return int(Path(f"/proc/{zygote}/stat").read_text().rsplit(")", 1)[1].split()[7])

        before = faults()
        for n in range(20):
            outcome = run(tmp_path / str(n), f"output('x', {n})\n", pool, f"e{n}")
            assert outcome.status == "completed"
        per_fork = (faults() - before) / 20
    finally:
        pool.close()
    # About 8 a fork, plus the Python of the task count every quarter second; the
    # Python loop made 120-130.
    assert per_fork < 60, per_fork

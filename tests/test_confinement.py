"""The OS layer under the language: a confined child cannot reach the system.

The probes are Python, not SPy: a test hook (a `sitecustomize` module put on the
children's PYTHONPATH) replaces `Machine.run` in the child, so that a program whose
source starts with `# probe` runs the attempts below from inside a real child, started
by the pool the way `jarvis run` and the worker start them, after `confine()` and
exactly where the program's code would run. Every attempt must be refused.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jarvis.compiler import Compilation
from jarvis.runtime import confine
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.children import CHILD_ENVIRONMENT
from jarvis.runtime.execution import Execution, error_type_name
from jarvis.runtime.isolation import ChildPool
from jarvis.runtime.machine import Outcome
from jarvis.runtime.sinks import MemorySink
from jarvis.settings import load_settings

HOOK = '''
"""Test hook for tests/test_confinement.py: probes in place of a `# probe` program."""
import ctypes
import errno
import os
import resource
import socket
import subprocess
import threading

import jarvis.runtime.machine as machine

_run = machine.Machine.run
LIMITS = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE",
          "RLIMIT_NPROC")


def attempt(action):
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)
    return "allowed"


def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def thread():
    worker = threading.Thread(target=lambda: None)
    worker.start()
    worker.join()


def raise_memory_limit():
    unlimited = resource.RLIM_INFINITY
    resource.setrlimit(resource.RLIMIT_AS, (unlimited, unlimited))


PROBES = {
    "read_file": lambda: os.close(os.open("/etc/hostname", os.O_RDONLY)),
    "write_file": lambda: open("written.txt", "w").close(),
    "mkdir": lambda: os.mkdir("made"),
    "unlink": lambda: os.unlink("not-there"),
    "fork": fork,
    "subprocess": lambda: subprocess.run(["/bin/true"], check=False),
    "execv": lambda: os.execv("/bin/true", ["true"]),
    "socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
    "unix_socket": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close(),
    "socketpair": lambda: [s.close() for s in socket.socketpair()],
    "signal_parent": lambda: os.kill(os.getppid(), 0),
    "raise_memory_limit": raise_memory_limit,
    "signal_self": lambda: os.kill(os.getpid(), 0),
    "thread": thread,
}


def run(self):
    source = self.program.source.text
    if not source.startswith("# probe"):
        return _run(self)
    libc = ctypes.CDLL(None, use_errno=True)
    results = {name: attempt(probe) for name, probe in PROBES.items()}
    results["rlimits"] = {name: list(resource.getrlimit(getattr(resource, name)))
                          for name in LIMITS}
    results["seccomp_mode"] = libc.prctl(21, 0, 0, 0, 0)  # PR_GET_SECCOMP
    results["no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
    self.outputs.update(results)
    if "then the program" in source:
        return _run(self)
    return machine.Outcome("completed", self.outputs, counters=self.counters())


machine.Machine.run = run
'''

REFUSED = {
    "read_file", "write_file", "mkdir", "unlink", "fork", "subprocess", "execv", "socket",
    "unix_socket", "socketpair", "signal_parent",
}
"""Probes the filter answers with EPERM."""

MEMORY_BOMB = "blocks = []\nwhile True:\n    blocks.append('x' * 1000000)\n"


@pytest.fixture
def hooked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Children started from now on import the probe hook."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    monkeypatch.setitem(CHILD_ENVIRONMENT, "PYTHONPATH", str(hook_dir))
    return hook_dir


@pytest.fixture(params=["forked", "spawned"])
def pool(request: pytest.FixtureRequest, hooked: Path) -> Iterator[ChildPool]:
    """Both ways a child starts: forked by the zygote, or a fresh interpreter."""
    children = ChildPool(size=2, fork=request.param == "forked")
    yield children
    children.close()


def execute(tmp_path: Path, pool: ChildPool, source: str, execution_id: str,
            limits: dict[str, Any] | None = None) -> Outcome:
    program = Compilation.of(source, "prog.spy").program("statements")
    settings = load_settings(state_dir=tmp_path / "state", journal_fsync=False,
                             limits=limits or {})
    execution = Execution(program, execution_id=execution_id, inputs={},
                          books=BookRegistry(), settings=settings, sink=MemorySink(),
                          isolation=pool)
    return execution.run()


def test_seccomp_is_available_here() -> None:
    # This machine has libseccomp and a kernel with seccomp: the tests below must see
    # the filter on, not pass for want of it.
    assert confine.seccomp_unavailable() is None


def test_a_confined_child_cannot_reach_the_system(tmp_path: Path, pool: ChildPool) -> None:
    outcome = execute(tmp_path, pool, "# probe\noutput('unused', 1)\n", "probe",
                      {"max_memory_bytes": 512 << 20, "max_seconds": 100.0})
    assert outcome.status == "completed", outcome
    results = outcome.outputs
    assert {name: results[name] for name in REFUSED} == dict.fromkeys(REFUSED, "EPERM")
    # Limits can be read, not raised (even by root); threads and signals to itself work.
    assert results["raise_memory_limit"] == "ValueError: not allowed to raise maximum limit"
    assert results["signal_self"] == "allowed"
    assert results["thread"] == "allowed"
    assert results["seccomp_mode"] == 2  # SECCOMP_MODE_FILTER
    assert results["no_new_privs"] == 1
    rlimits = results["rlimits"]
    assert rlimits["RLIMIT_AS"] == [512 << 20, 512 << 20]
    assert rlimits["RLIMIT_CPU"] == [110, 110 + confine.CPU_HARD_MARGIN]
    assert rlimits["RLIMIT_NOFILE"] == [confine.OPEN_FILES] * 2
    assert rlimits["RLIMIT_FSIZE"] == [confine.LOG_BYTES] * 2
    assert rlimits["RLIMIT_CORE"] == [0, 0]
    soft, hard = rlimits["RLIMIT_NPROC"]
    assert soft == hard and confine.PROCESS_HEADROOM < soft != resource.RLIM_INFINITY


def test_the_host_sees_the_filter_on(tmp_path: Path, pool: ChildPool) -> None:
    """What docs/security.md tells an operator to check: `Seccomp: 2` in the status."""
    pid = pool.next_ready().pid
    seen: dict[str, str] = {}

    def look() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and seen.get("Seccomp") != "2":
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            seen.update(line.split(":\t", 1) for line in lines if ":\t" in line)
            time.sleep(0.05)

    looker = threading.Thread(target=look)
    looker.start()
    outcome = execute(tmp_path, pool, "sleep(1.0)\noutput('slept', True)\n", "sleeper")
    looker.join()
    assert outcome.status == "completed" and outcome.outputs == {"slept": True}
    assert seen["Seccomp"] == "2"
    assert seen["NoNewPrivs"] == "1"


def test_a_bomb_and_a_fork_leave_the_neighbour_alone(tmp_path: Path, pool: ChildPool) -> None:
    """Two executions at once on one pool, as a worker runs them: one tries to fork and
    then exhausts its memory; the other completes with the right result."""
    neighbour_source = (
        "total = 0\n"
        "for i in range(200000):\n"
        "    total += i\n"
        "sleep(1.0)\n"
        "output('total', total)\n"
    )
    outcomes: dict[str, Outcome] = {}

    def neighbour() -> None:
        outcomes["neighbour"] = execute(tmp_path / "n", pool, neighbour_source, "neighbour")

    thread = threading.Thread(target=neighbour)
    thread.start()
    bomb = "# probe, then the program\n" + MEMORY_BOMB
    outcomes["bomb"] = execute(tmp_path / "b", pool, bomb, "bomb",
                               {"max_memory_bytes": 256 << 20})
    thread.join(timeout=120)
    bombed = outcomes["bomb"]
    assert bombed.status == "failed"
    assert error_type_name(bombed.error) == "LimitExceeded"  # type: ignore[arg-type]
    assert getattr(bombed.error, "limit", None) == "memory"
    assert bombed.outputs["fork"] == "EPERM"
    assert bombed.outputs["subprocess"] == "EPERM"
    assert outcomes["neighbour"].status == "completed", outcomes["neighbour"]
    assert outcomes["neighbour"].outputs == {"total": sum(range(200000))}


def test_without_seccomp_a_child_keeps_its_rlimits_and_says_why(tmp_path: Path) -> None:
    """Where libseccomp is missing, `confine()` applies the resource limits, reports why
    there is no filter and lets the child go on (in a separate interpreter: confining
    the test process itself would end the test run)."""
    script = textwrap.dedent("""
        import json, resource, sys
        sys.modules["pyseccomp"] = None  # as on a machine without it
        from jarvis.runtime.confine import ProcessLimits, confine
        result = confine(ProcessLimits(memory_bytes=300 << 20, cpu_seconds=30))
        print(json.dumps({"seccomp": result.seccomp, "reason": result.reason,
                          "as": resource.getrlimit(resource.RLIMIT_AS)}))
        open(sys.argv[1], "w").close()  # files can still be written: no filter
    """)
    marker = tmp_path / "written"
    done = subprocess.run([sys.executable, "-c", script, str(marker)], capture_output=True,
                          text=True, timeout=60, check=True)
    report = json.loads(done.stdout)
    assert report["seccomp"] is False
    assert "pyseccomp cannot be loaded" in report["reason"]
    assert report["as"] == [300 << 20, 300 << 20]
    assert "jarvis: no seccomp filter in this child" in done.stderr
    assert marker.exists()


def test_the_host_warns_once_when_children_would_run_without_seccomp(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(confine, "seccomp_unavailable", lambda: "no libseccomp here")
    confine.warn_if_unavailable.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="jarvis.runtime.confine"):
            assert confine.warn_if_unavailable() == "no libseccomp here"
            assert confine.warn_if_unavailable() == "no libseccomp here"
        warnings = [r.getMessage() for r in caplog.records]
        assert warnings == ["executions run without their seccomp filter (resource limits "
                            "only): no libseccomp here"]
    finally:
        confine.warn_if_unavailable.cache_clear()


def test_a_death_names_the_limit_it_shows() -> None:
    xcpu = confine.limit_of_death(-int(confine.signal.SIGXCPU), "")
    assert xcpu is not None and xcpu.limit == "cpu_seconds"
    memory = confine.limit_of_death(1, "Traceback (most recent call last):\n  ...\nMemoryError\n")
    assert memory is not None and memory.limit == "memory"
    assert confine.limit_of_death(-9, "") is None  # SIGKILL: OOM killer or hard CPU limit
    assert confine.limit_of_death(1, "ValueError: x\n") is None


def test_the_filter_refuses_what_it_lists() -> None:
    """The deny list covers each way out the issue names (checked on the built filter
    in a separate interpreter, which then tries each call)."""
    for name in ("execve", "execveat", "fork", "vfork", "open", "openat", "creat",
                 "socket", "socketpair", "connect", "bind", "setrlimit", "io_uring_setup"):
        assert name in confine.DENIED
    script = textwrap.dedent("""
        import errno, os
        from jarvis.runtime.confine import install_filter
        assert install_filter() is None
        try:
            os.open("/dev/null", os.O_RDONLY)
        except PermissionError as exc:
            print(exc.errno)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == str(errno.EPERM)


def test_the_filter_is_a_binary_tree_of_call_numbers() -> None:
    """Loading a filter, the kernel runs it for every call number to cache which are
    always allowed: a tree of the numbers costs that a few comparisons each, where a
    chain of the rules cost each allowed number every rule (0.12 ms a child)."""
    import pyseccomp as seccomp

    assert confine.build_filter().get_attr(seccomp.Attr.CTL_OPTIMIZE) == 2


def test_a_forked_child_loads_the_filter_its_zygote_was_sent() -> None:
    """The host builds the filter once, as BPF for a placeholder pid, and sends it to
    the zygote, which loads neither libseccomp nor pyseccomp; each child it forks
    writes its own pid into the template and loads it. The program a child loads is
    byte for byte what libseccomp builds for that child's pid; signals to itself pass,
    to its parent (another pid) are refused, and the zygote's template is unchanged."""
    import socket

    from jarvis.runtime import zygote

    script = textwrap.dedent("""
        import os, socket, sys
        from jarvis.runtime import confine, zygote
        first = zygote.receive_warm_up(socket.socket(fileno=int(sys.argv[1])))
        zygote.prepare(first.template)
        assert "pyseccomp" not in sys.modules and "ctypes" not in sys.modules
        template = confine._TEMPLATE[0]
        kept = template.program
        assert template == first.template and template.slots and template.no_new_privs
        for _ in range(2):  # each child of the same parent gets its own pid
            pid = os.fork()
            if pid == 0:
                mine = os.getpid()
                loaded = confine._PREPARED[0].program_for(mine)
                built = confine._export(confine.build_filter(mine))  # imports pyseccomp
                if loaded != built or template.program != kept:
                    os._exit(3)
                if confine.install_filter() is not None:
                    os._exit(4)
                os.kill(os.getpid(), 0)
                try:
                    os.kill(os.getppid(), 0)
                except PermissionError:
                    try:
                        os.open("/dev/null", os.O_RDONLY)
                    except PermissionError:
                        os._exit(7)
                os._exit(1)
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status))
        assert confine._TEMPLATE == [template] and template.program == kept
        with open("/proc/self/status") as status:  # the zygote itself is not confined
            assert "Seccomp:\t0" in status.read()
    """)
    host, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with host, other:
        host.send(zygote.warm_up_message([], confine.filter_template()))
        done = subprocess.run([sys.executable, "-c", script, str(other.fileno())],
                              pass_fds=(other.fileno(),), capture_output=True, text=True,
                              timeout=60, check=True)
    assert done.stdout.split() == ["7", "7"], done.stderr


def confined_child_exit(prelude: str, checks: str) -> int:
    """Run `prelude` in a fresh interpreter, fork, and in the child run `checks` (an
    `os._exit(3)` there is a failed check), load the filter and try to open a file:
    the child's exit code, 7 when open() was refused (4: the filter did not load)."""
    child = checks + textwrap.dedent("""
        if confine.install_filter() is not None:
            os._exit(4)
        try:
            os.open("/dev/null", os.O_RDONLY)
        except PermissionError:
            os._exit(7)
        os._exit(1)
    """)
    script = (prelude + "pid = os.fork()\nif pid == 0:\n"
              + textwrap.indent(child, "    ")
              + "_, status = os.waitpid(pid, 0)\nprint(os.waitstatus_to_exitcode(status))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    code = done.stdout.strip()
    if not code.lstrip("-").isdigit():
        pytest.fail(f"the script printed no exit code: {done.stdout!r} {done.stderr}")
    return int(code)


def test_a_zygote_sent_no_template_builds_it_itself() -> None:
    """Where the host could not build the template, the zygote builds it (loading
    libseccomp): its children still load the same filter for their pid."""
    prelude = textwrap.dedent("""
        import os, sys
        from jarvis.runtime import confine, zygote
        zygote.prepare(None)
        assert "pyseccomp" in sys.modules and confine._TEMPLATE
    """)
    checks = textwrap.dedent("""
        mine = os.getpid()
        built = confine._export(confine.build_filter(mine))
        if confine._PREPARED[0].program_for(mine) != built:
            os._exit(3)
    """)
    assert confined_child_exit(prelude, checks) == 7


def test_a_template_is_refused_when_the_pid_is_not_all_that_varies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The template is checked against libseccomp's own program for a third pid: when
    they differ, no template is made and each child builds its filter itself."""
    exports = iter([b"\x15\x00\x01\x00\xf1\xff\xff\x3f", b"\x15\x00\x01\x00\xe2\xff\xff\x3f",
                    b"\x15\x00\x01\x00\x00\x00\x00\x00"])
    monkeypatch.setattr(confine, "_export", lambda _filter: next(exports))
    assert confine.filter_template() is None
    agreeing = iter([b"\x15\x00\x01\x00\xf1\xff\xff\x3f", b"\x15\x00\x01\x00\xe2\xff\xff\x3f",
                     b"\x15\x00\x01\x00\xd3\xff\xff\x3f"])
    monkeypatch.setattr(confine, "_export", lambda _filter: next(agreeing))
    template = confine.filter_template()
    assert template is not None and template.slots == (0,)
    assert template.for_pid(4242) == b"\x15\x00\x01\x00" + (4242).to_bytes(4, sys.byteorder)


def test_the_task_count_reads_threads_from_the_link_count() -> None:
    """`_user_tasks` takes a process's threads from the link count of /proc/PID/task
    (one stat, rather than listing it): it must agree with the listing here."""
    release = threading.Event()
    threads = [threading.Thread(target=release.wait) for _ in range(5)]
    for thread in threads:
        thread.start()
    try:
        task = Path(f"/proc/{os.getpid()}/task")
        listed = len(list(task.iterdir()))
        assert listed >= 6
        assert task.stat().st_nlink - 2 == listed
        assert confine._user_tasks() >= listed
    finally:
        release.set()
        for thread in threads:
            thread.join()


@pytest.mark.parametrize("native", [True, False], ids=["c-extension", "ctypes"])
def test_a_prepared_load_writes_the_pid_where_the_template_does(
    native: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The zygote keeps the template ready to load (`PreparedLoad`, with or without the
    C extension); what a child loads is the template's program for its pid."""
    if not native:
        monkeypatch.setattr(confine, "_NATIVE", [None])
    else:
        assert confine.native() is not None, "the C extension _process is not built"
    template = confine.filter_template()
    assert template is not None
    prepared = confine.PreparedLoad(template)
    for pid in (4242, 77, 4_000_000):
        assert prepared.program_for(pid) == template.for_pid(pid)
    assert template.program == confine._export(confine.build_filter(confine._PLACEHOLDERS[0]))


@pytest.mark.parametrize("native", [True, False], ids=["c-extension", "ctypes"])
def test_a_forked_child_sets_its_death_signal_and_filter_either_way(native: bool) -> None:
    """With the C extension (`_process`) or through ctypes, a forked child sets the
    parent-death signal it asks for and loads its filter: open() is refused after."""
    prelude = textwrap.dedent(f"""
        import ctypes, os, signal
        from jarvis.runtime import confine
        if not {native}:
            confine._NATIVE[:] = [None]
        assert (confine.native() is not None) == {native}
        confine.prepare_filter()
    """)
    checks = textwrap.dedent("""
        confine.set_death_signal(signal.SIGUSR1)
        got = ctypes.c_int()
        confine.libc().prctl(2, ctypes.byref(got), 0, 0, 0)  # PR_GET_PDEATHSIG
        if got.value != signal.SIGUSR1:
            os._exit(3)
    """)
    assert confined_child_exit(prelude, checks) == 7


def test_the_c_extension_refuses_a_program_that_is_not_whole_instructions() -> None:
    process = confine.native()
    assert process is not None, "the C extension _process is not built"
    with pytest.raises(ValueError):
        process.load_filter(b"\x00" * 12, True)
    with pytest.raises(ValueError):
        process.load_filter(b"", True)

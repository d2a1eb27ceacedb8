"""Installs the real servers that the integration tests start: Kafka, Redis, S3, Telegraf.

    python scripts/services.py install [kafka|redis|s3|telegraf|all]
    python scripts/services.py where            # what is installed, and where

Everything but Redis lands in one cache folder outside the checkout,
`$JARVIS_CACHE_DIR` or else `$XDG_CACHE_HOME/jarvis` or `~/.cache/jarvis`:

    kafka-<version>/libs/    Apache Kafka's jars, from Maven Central (mvn)
    s3proxy-<version>/libs/  S3Proxy's jars, from Maven Central (mvn)
    bin/telegraf             Telegraf built with `go install` and only the plugins used
    m2/  go/                 Maven's and Go's download and build caches for the above

Redis is Debian's `redis-server`, installed with apt-get when it is not on PATH.

Each step is idempotent: a finished install leaves a stamp naming what was built, and
a later run that finds the same stamp does nothing. A failing step raises
`InstallError` naming the command that failed and the end of its output.

The test harness (`tests/services/`) imports this file to find, and if need be
install, what it starts; `make test` runs `install all` before pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.2"
# The SLF4J binding Kafka's own distribution ships: without it the broker logs nothing.
LOG4J_VERSION = "2.25.3"
S3PROXY_VERSION = "4.1.0"
# S3Proxy builds against this Jackson BOM; Maven's nearest-wins would otherwise pick an
# older jackson-annotations than its Jackson 3 jars need and S3Proxy fails to start.
S3PROXY_JACKSON_BOM = "3.2.2"
TELEGRAF_VERSION = "v1.37.2"
TELEGRAF_MODULE = "github.com/influxdata/telegraf"
# Telegraf's custom build: only these plugins are compiled in (docs/CUSTOMIZATION.md in
# Telegraf's repository). serializers.influx backs outputs.file's default data format.
TELEGRAF_PLUGINS = (
    "inputs.kafka_consumer",
    "outputs.file",
    "parsers.influx",
    "serializers.influx",
    "serializers.json",
)
MIN_JAVA = 17
SERVICES = ("kafka", "redis", "s3", "telegraf")


class InstallError(Exception):
    """An install step failed; the message says which command and how to retry."""


def cache_dir() -> Path:
    explicit = os.environ.get("JARVIS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "jarvis"


def progress(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


# -- what an install provides ----------------------------------------------------------


@dataclass(frozen=True)
class JavaService:
    """A Java server: the `java` to run it with and the folder of jars on its classpath."""

    java: str
    libs: Path

    @property
    def classpath(self) -> str:
        # The JVM expands a trailing `*` itself: no shell involved.
        return str(self.libs / "*")


@dataclass(frozen=True)
class Executable:
    path: Path


# -- running commands ------------------------------------------------------------------


def _run(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    retry_hint: str,
) -> None:
    """Runs `argv` with its output in `log`; on failure raises with the command and tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(_quote(a) for a in argv)
    with log.open("ab") as out:
        out.write(f"\n$ {command}\n".encode())
        out.flush()
        try:
            code = subprocess.run(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None, cwd=cwd, check=False,
            ).returncode
        except FileNotFoundError as exc:
            raise InstallError(f"cannot run `{command}`: {exc}. {retry_hint}") from exc
    if code != 0:
        raise InstallError(
            f"`{command}` failed with exit code {code}.\n"
            f"Last lines of its output (all of it is in {log}):\n{_tail(log, 25)}\n"
            f"{retry_hint}"
        )


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./*-]+", arg) else repr(arg)


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One installer at a time per service (say, `make services` and a pytest run)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stamp_matches(stamp: Path, expected: str) -> bool:
    return stamp.is_file() and stamp.read_text() == expected


# -- system tools ----------------------------------------------------------------------


def _apt_install(package: str, why: str) -> None:
    """Installs a Debian package; only root can, so others are told the command."""
    command = f"apt-get update && apt-get install -y {package}"
    if shutil.which("apt-get") is None:
        raise InstallError(f"{why} is missing and this system has no apt-get: install {package}.")
    if os.geteuid() != 0:
        raise InstallError(f"{why} is missing: install it with `sudo sh -c '{command}'`.")
    progress(f"installing Debian package {package} ({why}) with apt-get")
    log = cache_dir() / "logs" / f"apt-{package}.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    hint = f"Retry with `{command}`."
    _run(["apt-get", "update", "-q"], log=log, env=env, retry_hint=hint)
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
         log=log, env=env, retry_hint=hint)


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None or not Path(java).exists():
        _apt_install("openjdk-17-jre-headless", f"Java {MIN_JAVA}+")
        java = shutil.which("java")
        if java is None:
            raise InstallError("`java` is still not on PATH after installing openjdk-17.")
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    found = re.search(r'version "(\d+)', result.stderr)
    if found is None or int(found.group(1)) < MIN_JAVA:
        raise InstallError(
            f"{java} is not Java {MIN_JAVA} or newer ({result.stderr.strip()!r}): "
            f"point JAVA_HOME at a JDK {MIN_JAVA}+."
        )
    return java


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        _apt_install("maven", "Maven (mvn)")
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InstallError("`mvn` is still not on PATH after installing maven.")
    return mvn


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise InstallError(
            "Go is not on PATH: Telegraf is built from source with `go install` and needs "
            "Go 1.25.5 or newer (see Telegraf's go.mod)."
        )
    return go


# -- Maven-resolved Java servers -------------------------------------------------------


def _pom(artifact: str, dependencies: Sequence[tuple[str, str, str]],
         imports: Sequence[tuple[str, str, str]] = ()) -> str:
    def dep(group: str, name: str, version: str, extra: str = "") -> str:
        return (f"<dependency><groupId>{group}</groupId><artifactId>{name}</artifactId>"
                f"<version>{version}</version>{extra}</dependency>")

    managed = "".join(dep(*bom, extra="<type>pom</type><scope>import</scope>") for bom in imports)
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>jarvis.test-services</groupId><artifactId>{artifact}</artifactId>\n"
        "  <version>0</version><packaging>pom</packaging>\n"
        f"  <dependencyManagement><dependencies>{managed}</dependencies></dependencyManagement>\n"
        f"  <dependencies>{''.join(dep(*d) for d in dependencies)}</dependencies>\n"
        "</project>\n"
    )


def _install_jars(name: str, folder: Path, pom: str, what: str) -> JavaService:
    """Copies the runtime jars that `pom` depends on into `folder/libs`, once."""
    java = _java()
    stamp = folder / ".installed"
    with _locked(name):
        if _stamp_matches(stamp, pom):
            return JavaService(java, folder / "libs")
        mvn = _mvn()
        started = time.monotonic()
        progress(f"{name}: downloading {what} and its dependencies with Maven into {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pom.xml").write_text(pom)
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=folder))
        log = cache_dir() / "logs" / f"{name}-install.log"
        try:
            _run(
                [mvn, "-B", "-q", "-Dstyle.color=never",
                 f"-Dmaven.repo.local={cache_dir() / 'm2'}",
                 "dependency:copy-dependencies", "-DincludeScope=runtime",
                 f"-DoutputDirectory={staging}"],
                log=log, cwd=folder,
                retry_hint=f"Retry with `python scripts/services.py install {name}`.",
            )
            libs = folder / "libs"
            if libs.exists():
                shutil.rmtree(libs)
            staging.rename(libs)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        stamp.write_text(pom)
        progress(f"{name}: installed in {time.monotonic() - started:.1f}s")
        return JavaService(java, folder / "libs")


def install_kafka() -> JavaService:
    pom = _pom("kafka-server", [
        ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ])
    return _install_jars("kafka", cache_dir() / f"kafka-{KAFKA_VERSION}", pom,
                         f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}")


def install_s3() -> JavaService:
    pom = _pom(
        "s3proxy",
        [("org.gaul", "s3proxy", S3PROXY_VERSION)],
        imports=[("tools.jackson", "jackson-bom", S3PROXY_JACKSON_BOM)],
    )
    return _install_jars("s3", cache_dir() / f"s3proxy-{S3PROXY_VERSION}", pom,
                         f"org.gaul:s3proxy:{S3PROXY_VERSION}")


# -- Redis (Debian) --------------------------------------------------------------------


def install_redis() -> Executable:
    with _locked("redis"):
        found = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
        if found is None:
            started = time.monotonic()
            _apt_install("redis-server", "redis-server")
            found = shutil.which("redis-server") or "/usr/bin/redis-server"
            if not Path(found).exists():
                raise InstallError("apt-get installed redis-server but it is not on PATH.")
            progress(f"redis: installed in {time.monotonic() - started:.1f}s")
        return Executable(Path(found))


# -- Telegraf (go install) -------------------------------------------------------------


def install_telegraf() -> Executable:
    cache = cache_dir()
    binary = cache / "bin" / "telegraf"
    tags = ",".join(("custom", *TELEGRAF_PLUGINS))
    expected = f"{TELEGRAF_MODULE}@{TELEGRAF_VERSION} -tags {tags}\n"
    stamp = cache / "bin" / ".telegraf.installed"
    with _locked("telegraf"):
        if binary.is_file() and _stamp_matches(stamp, expected):
            return Executable(binary)
        go = _go()
        started = time.monotonic()
        progress(f"telegraf: building {TELEGRAF_MODULE}@{TELEGRAF_VERSION} with go install "
                 f"(plugins: {', '.join(TELEGRAF_PLUGINS)}) into {binary.parent}; "
                 "a first build downloads and compiles for a few minutes")
        env = {
            **os.environ,
            "GOBIN": str(binary.parent),
            "GOMODCACHE": str(cache / "go" / "mod"),
            "GOCACHE": str(cache / "go" / "build"),
            # Writable module cache, so that deleting the cache folder just works.
            "GOFLAGS": (os.environ.get("GOFLAGS", "") + " -modcacherw").strip(),
            "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local"),
        }
        version = TELEGRAF_VERSION.removeprefix("v")
        _run(
            [go, "install", "-tags", tags,
             "-ldflags", f"-X {TELEGRAF_MODULE}/internal.Version={version}",
             f"{TELEGRAF_MODULE}/cmd/telegraf@{TELEGRAF_VERSION}"],
            log=cache / "logs" / "telegraf-install.log", env=env,
            retry_hint="Retry with `python scripts/services.py install telegraf`.",
        )
        stamp.write_text(expected)
        progress(f"telegraf: installed in {time.monotonic() - started:.1f}s")
        return Executable(binary)


INSTALLERS: dict[str, Callable[[], JavaService | Executable]] = {
    "kafka": install_kafka,
    "redis": install_redis,
    "s3": install_s3,
    "telegraf": install_telegraf,
}


def install(names: Sequence[str]) -> dict[str, float]:
    """Installs each named service; returns the seconds each took (near 0 when cached)."""
    took: dict[str, float] = {}
    for name in names:
        started = time.monotonic()
        INSTALLERS[name]()
        took[name] = time.monotonic() - started
    return took


def _describe(name: str) -> str:
    cache = cache_dir()
    if name == "kafka":
        where = cache / f"kafka-{KAFKA_VERSION}"
        return f"Kafka {KAFKA_VERSION}: {where / 'libs'}" + (
            "" if (where / ".installed").exists() else " (not installed)")
    if name == "s3":
        where = cache / f"s3proxy-{S3PROXY_VERSION}"
        return f"S3Proxy {S3PROXY_VERSION}: {where / 'libs'}" + (
            "" if (where / ".installed").exists() else " (not installed)")
    if name == "telegraf":
        where = cache / "bin" / "telegraf"
        return f"Telegraf {TELEGRAF_VERSION}: {where}" + (
            "" if (cache / "bin" / ".telegraf.installed").exists() else " (not installed)")
    return f"Redis: {shutil.which('redis-server') or 'redis-server not on PATH (not installed)'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install_cmd = commands.add_parser("install", help="install and cache test services")
    install_cmd.add_argument("service", nargs="?", default="all", choices=(*SERVICES, "all"))
    commands.add_parser("where", help="show where each service is installed")
    args = parser.parse_args(argv)

    if args.command == "where":
        print(f"cache: {cache_dir()}")
        for name in SERVICES:
            print(_describe(name))
        return 0

    names = list(SERVICES) if args.service == "all" else [args.service]
    try:
        took = install(names)
    except InstallError as exc:
        print(f"[services] install failed: {exc}", file=sys.stderr)
        return 1
    progress("ready: " + ", ".join(f"{name} ({seconds:.1f}s)" for name, seconds in took.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

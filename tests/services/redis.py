"""A real Redis server on loopback, Debian's `redis-server`, started by the harness.

    with RedisServer() as server:
        client = server.client()
        server.restart()          # same port; the data is gone (see below)
        server.restart(hard=True) # SIGKILL first, as in a crash

By default nothing is persisted (`--save "" --appendonly no`), so a restart is a
Redis that lost everything, as after a failover to an empty replica. With
`durable=True` every write is appended and fsynced, so a restart keeps the data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import redis

from .ports import LOOPBACK, free_port
from .process import Service, ServiceProcess, installed

START_TIMEOUT = 30.0


class RedisServer(Service):
    """One redis-server process on 127.0.0.1 and a random port."""

    def __init__(self, *, durable: bool = False, workdir: Path | None = None) -> None:
        self.durable = durable
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="jarvis-redis-"))
        self.host = LOOPBACK
        self.port = free_port()
        self._process: ServiceProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        """A new client of this server; keyword arguments go to `redis.Redis`."""
        return redis.Redis(host=self.host, port=self.port, **options)

    def start(self) -> RedisServer:
        if self._process is None:
            binary = installed("redis").path
            persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.durable
                           else ["--appendonly", "no"])
            self._process = ServiceProcess(
                "redis",
                [str(binary), "--port", str(self.port), "--bind", self.host,
                 "--save", "", *persistence, "--dir", str(self.workdir),
                 "--daemonize", "no", "--logfile", "", "--loglevel", "notice"],
                log_path=self.workdir / "redis.log",
            )
        self._process.start()
        self._process.wait_until(self._answers_ping, timeout=START_TIMEOUT,
                                 what=f"PING on {self.host}:{self.port} answered")
        return self

    def _answers_ping(self) -> bool:
        with redis.Redis(host=self.host, port=self.port, socket_timeout=1,
                         socket_connect_timeout=1) as probe:
            return bool(probe.ping())

"""Fixtures that start real servers on loopback for the integration tests.

    kafka             session: a KafkaBroker (KRaft, one node); topics are not auto-created
    redis_server      session: a RedisServer (nothing persisted across restarts)
    s3                session: an S3Server (S3Proxy) with the bucket `s3.bucket` made
    telegraf_factory  per test: starts Telegraf agents on `kafka`; all stopped after the test

A service that cannot be installed or started fails the tests that use it, with the
reason and the command that installs it by hand; none is ever skipped. When a test
fails, the last lines of the logs of the services it used are added to its report.
Tests that restart a session service leave it running.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

# tests/ on sys.path, as for the other tests' helpers (bookserver.py): `services` lives there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services import (
    KafkaBroker,
    RedisServer,
    S3Server,
    ServiceError,
    Telegraf,
)


class _Service(Protocol):
    def start(self) -> Any: ...
    def close(self) -> None: ...
    def log_tail(self, lines: int = 60) -> str: ...


S = TypeVar("S", bound=_Service)


def _started(service: S) -> S:
    try:
        service.start()
    except ServiceError as exc:
        problem = str(exc)  # it carries the log's tail; the folder goes with close()
    except BaseException:
        service.close()
        raise
    else:
        return service
    service.close()
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    broker = _started(KafkaBroker())
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _started(RedisServer())
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = _started(S3Server())
    yield server
    server.close()


class TelegrafFactory:
    """Starts Telegraf agents reading topics of one broker; `close()` stops them all."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker
        self.agents: list[Telegraf] = []

    def __call__(self, topics: str | Sequence[str], **options: Any) -> Telegraf:
        """A started agent; `options` are Telegraf's (output_format, parser_type, ...)."""
        names = [topics] if isinstance(topics, str) else list(topics)
        agent = Telegraf(self.broker.bootstrap_servers, names, **options)
        self.agents.append(agent)
        return _started(agent)

    def close(self) -> None:
        for agent in reversed(self.agents):
            agent.close()


@pytest.fixture
def telegraf_factory(kafka: KafkaBroker) -> Iterator[TelegrafFactory]:
    factory = TelegrafFactory(kafka)
    yield factory
    factory.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        services: list[tuple[str, Any]] = [
            (name, funcargs[name]) for name in ("kafka", "redis_server", "s3") if name in funcargs
        ]
        factory = funcargs.get("telegraf_factory")
        if isinstance(factory, TelegrafFactory):
            services += [(f"telegraf {i + 1}", agent) for i, agent in enumerate(factory.agents)]
        for name, service in services:
            tail = service.log_tail()
            if tail:
                report.sections.append((f"{name} log (last lines)", tail))
    return report

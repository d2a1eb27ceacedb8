"""A real Apache Kafka broker on loopback: one KRaft node that is broker and controller.

    with KafkaBroker() as kafka:
        kafka.create_topic("spy_control", partitions=3)
        Producer(kafka.client_config()).produce("spy_control", b"...")
        kafka.restart()            # same ports, same log dir, same cluster
        kafka.restart(hard=True)   # SIGKILL first, as in a crash

The jars come from `scripts/services.py install kafka`. The first start formats a
fresh log dir in a temp folder (the `kafka-storage format` step); restarts reuse it,
so topics, messages and committed offsets survive. Topics are never auto-created.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .ports import LOOPBACK, accepts_connections, free_ports
from .process import Service, ServiceError, ServiceProcess, installed

NODE_ID = 1
START_TIMEOUT = 90.0
_client_log = logging.getLogger("tests.services.kafka.client")
# confluent_kafka's own config keys (callbacks and the like), spelled with underscores.
_PYTHON_KEYS = frozenset({
    "error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_delivery", "on_commit", "logger",
})


def _random_cluster_id() -> str:
    """A Kafka Uuid in its text form: 16 random bytes, base64url without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka refuses ids that look like an option
            return text


class KafkaBroker(Service):
    """A single-node Kafka cluster started by the test harness."""

    def __init__(self, *, heap: str = "512m", workdir: Path | None = None) -> None:
        self.heap = heap
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="jarvis-kafka-"))
        self.port, self.controller_port = free_ports(2)
        self.log_dir = self.workdir / "data"
        self.cluster_id = _random_cluster_id()
        self._install: Any = None
        self._process: ServiceProcess | None = None
        self._formatted = False

    # -- connection details ------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def client_config(self, settings: Mapping[str, Any] | None = None, /,
                      **options: Any) -> dict[str, Any]:
        """A confluent_kafka config for this broker, plus `settings` and `options`.

        In `options`, `_` stands for `.` (`group_id="g"` is `group.id`), except in the
        Python-only keys such as `on_delivery`, `error_cb` and `logger`.
        """
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(settings or {})
        for key, value in options.items():
            config[key if key in _PYTHON_KEYS else key.replace("_", ".")] = value
        return config

    def admin(self) -> AdminClient:
        return AdminClient(self.client_config(logger=_client_log))

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> KafkaBroker:
        if self._install is None:
            self._install = installed("kafka")
        if not self._formatted:
            self._write_config()
            self._format_storage()
            self._formatted = True
        if self._process is None:
            self._process = ServiceProcess(
                "kafka",
                [self._install.java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseSerialGC",
                 # C1 only: starts faster on two cores; the tests put little load on it.
                 "-XX:TieredStopAtLevel=1",
                 "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                 "-cp", self._install.classpath, "kafka.Kafka",
                 str(self.workdir / "server.properties")],
                log_path=self.workdir / "kafka.log",
            )
        self._process.start()
        self._process.wait_until(self._answers_metadata, timeout=START_TIMEOUT,
                                 what=f"a metadata request on {self.bootstrap_servers} worked")
        return self

    # -- topics ------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1,
                     config: Mapping[str, str] | None = None, timeout: float = 30.0) -> None:
        """Creates a topic and waits until every partition has a leader."""
        admin = self.admin()
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1,
                         config=dict(config or {}))
        admin.create_topics([topic], operation_timeout=timeout)[name].result(timeout)
        deadline = time.monotonic() + timeout
        while True:
            described = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if (described is not None and described.error is None
                    and len(described.partitions) == partitions
                    and all(p.leader >= 0 for p in described.partitions.values())):
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"topic {name} has no leader after {timeout:.0f}s")
            time.sleep(0.1)

    # -- internals ---------------------------------------------------------------------

    def _answers_metadata(self) -> bool:
        if not accepts_connections(self.port):
            return False
        try:
            metadata = self.admin().list_topics(timeout=2)
        except KafkaException:
            return False
        return NODE_ID in metadata.brokers

    def _write_config(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{LOOPBACK}:{self.controller_port}",
            "listeners": (f"PLAINTEXT://{LOOPBACK}:{self.port},"
                          f"CONTROLLER://{LOOPBACK}:{self.controller_port}"),
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # A broker restarted after a crash registers again only once the controller
            # has expired its old session: keep that wait short.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            # Two cores shared with the clients under test: one network thread and two
            # request handlers (Kafka's defaults, 3 and 8, hand each request between
            # more threads than there are cores, each hand-off a wake-up).
            "num.network.threads": "1",
            "num.io.threads": "2",
        }
        (self.workdir / "server.properties").write_text(
            "".join(f"{key}={value}\n" for key, value in settings.items()))
        (self.workdir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = out\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = %d{HH:mm:ss.SSS} %-5p [%c{1}] %m%n\n"
            "rootLogger.level = info\n"
            "rootLogger.appenderRef.out.ref = out\n"
        )

    def _format_storage(self) -> None:
        """What `kafka-storage.sh format` does: writes meta.properties for this cluster."""
        formatter = ServiceProcess(
            "kafka-storage format",
            [self._install.java, "-Xmx256m", "-XX:TieredStopAtLevel=1",
             "-cp", self._install.classpath,
             "kafka.tools.StorageTool", "format", "--cluster-id", self.cluster_id,
             "--config", str(self.workdir / "server.properties")],
            log_path=self.workdir / "kafka.log",
        )
        formatter.start()
        code = formatter.wait_for_exit(timeout=START_TIMEOUT)
        if code != 0:
            raise formatter.failure(f"exited with code {code}")

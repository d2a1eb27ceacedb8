"""A real Telegraf reading Kafka topics, as the deployed one will, into a file to inspect.

    with Telegraf(kafka.bootstrap_servers, ["spy_logs"], output_format="json") as agent:
        ...produce line protocol to spy_logs...
        metrics = agent.wait_for_metrics(2)

Telegraf is the custom build from `scripts/services.py install telegraf` (only
kafka_consumer, file output, the influx parser and the influx and JSON serializers).
Its `[[inputs.kafka_consumer]]` parses messages with `data_format = "influx"` in a
consumer group of its own, from the oldest offset, so messages produced before it
joined are read too; `start()` returns once that group has Telegraf as a member.
`[[outputs.file]]` writes the metrics in line protocol (`output_format="influx"`) or
as JSON, one object a line (`"json"`).

The influx parser is Telegraf's "upstream" one (InfluxData's line-protocol library,
as InfluxDB uses) unless `parser_type="internal"`: the internal parser, Telegraf's
default, refuses a message whose string field holds the escape `\\n`, and drops the
whole message, while the upstream parser reads it as a newline.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from .process import Service, ServiceError, ServiceProcess, installed

START_TIMEOUT = 30.0
# The Kafka protocol version Telegraf's client (sarama) assumes. Its default, 2.1, is the
# oldest that Kafka 4 still speaks; pinned here so a new sarama default changes nothing.
KAFKA_PROTOCOL_VERSION = "3.9.0"
_client_log = logging.getLogger("tests.services.telegraf.client")


def _toml(value: Any) -> str:
    """A TOML value; JSON's string escapes are valid in TOML basic strings."""
    return json.dumps(value)


class Telegraf(Service):
    """One Telegraf agent started by the harness."""

    def __init__(
        self,
        brokers: str,
        topics: Sequence[str],
        *,
        output_format: str = "influx",
        consumer_group: str | None = None,
        offset: str = "oldest",
        parser_type: str = "upstream",
        extra_input_config: str = "",
        workdir: Path | None = None,
    ) -> None:
        if output_format not in ("influx", "json"):
            raise ValueError(f"output_format must be influx or json, not {output_format!r}")
        self.brokers = brokers
        self.topics = list(topics)
        self.output_format = output_format
        self.consumer_group = consumer_group or f"telegraf-{uuid.uuid4().hex[:12]}"
        self.offset = offset
        self.parser_type = parser_type
        self.extra_input_config = extra_input_config
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="jarvis-telegraf-"))
        self.config_path = self.workdir / "telegraf.conf"
        self.output_path = self.workdir / f"metrics.{'json' if output_format == 'json' else 'lp'}"
        self._process: ServiceProcess | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Telegraf:
        if self._process is None:
            binary = installed("telegraf").path
            self.config_path.write_text(self.config())
            self._process = ServiceProcess(
                "telegraf", [str(binary), "--config", str(self.config_path)],
                log_path=self.workdir / "telegraf.log",
            )
        self._process.start()
        self._process.wait_until(
            self._joined_group, timeout=START_TIMEOUT,
            what=f"its Kafka consumer joined the group {self.consumer_group}")
        return self

    def stop(self) -> None:
        """Ends Telegraf with SIGTERM, which flushes what it has buffered."""
        if self._process is not None:
            self._process.stop()

    # -- output ------------------------------------------------------------------------

    def output_lines(self) -> list[str]:
        """The complete lines written to the output file so far."""
        try:
            text = self.output_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return text.splitlines()[: text.count("\n")]

    def wait_for_lines(self, count: int, timeout: float = 30.0) -> list[str]:
        """Waits until the output has at least `count` lines; returns all of them.

        These are lines of the file, not metrics: in line protocol output Telegraf
        writes a newline inside a string field raw, so that metric takes two lines.
        JSON output (`wait_for_metrics`) has exactly one line per metric.
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = self.output_lines()
            if len(lines) >= count:
                return lines
            if self._process is not None and not self._process.running:
                raise self._process.failure("exited while its output was awaited")
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"telegraf wrote {len(lines)} of {count} expected lines to "
                    f"{self.output_path} in {timeout:.0f}s: {lines!r}\n"
                    f"--- last lines of its log ---\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def wait_for_metrics(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """With JSON output: the first `count` metrics, each as Telegraf's JSON object."""
        if self.output_format != "json":
            raise ValueError("wait_for_metrics needs output_format='json'")
        return [json.loads(line) for line in self.wait_for_lines(count, timeout)]

    # -- configuration -----------------------------------------------------------------

    def config(self) -> str:
        return "\n".join([
            "[agent]",
            '  interval = "1s"',
            '  flush_interval = "100ms"',
            '  flush_jitter = "0s"',
            "  omit_hostname = true",
            '  logfile = ""',
            "",
            "[[inputs.kafka_consumer]]",
            f"  brokers = {_toml([self.brokers])}",
            f"  topics = {_toml(self.topics)}",
            f"  consumer_group = {_toml(self.consumer_group)}",
            f"  offset = {_toml(self.offset)}",
            f"  kafka_version = {_toml(KAFKA_PROTOCOL_VERSION)}",
            '  data_format = "influx"',
            f"  influx_parser_type = {_toml(self.parser_type)}",
            self.extra_input_config,
            "",
            "[[outputs.file]]",
            f"  files = {_toml([str(self.output_path)])}",
            f"  data_format = {_toml(self.output_format)}",
            '  json_timestamp_units = "1ns"' if self.output_format == "json" else "",
            "",
        ])

    def _joined_group(self) -> bool:
        config: dict[str, Any] = {"bootstrap.servers": self.brokers, "logger": _client_log}
        admin = AdminClient(config)
        future = admin.describe_consumer_groups([self.consumer_group])[self.consumer_group]
        group = future.result(timeout=5)
        return group.state == ConsumerGroupState.STABLE and len(group.members) > 0

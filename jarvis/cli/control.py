"""`jarvis control start|stop`: send commands to the workers, optionally wait for the end.

    jarvis control start PROGRAM.spy [--execution-id ID] [--input NAME=JSON]... [--wait]
    jarvis control stop ID [--mode suspend|cancel] [--reason TEXT] [--wait]

With --wait the command follows `spy_status` and prints the execution's events until it
ends (exit 0 completed, 1 failed, 3 suspended, 4 cancelled, 5 rejected/duplicate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jarvis.cli.inputs import InputError, parse_inputs
from jarvis.settings import WorkerSettings, load_worker_settings
from jarvis.worker import messages

ENDINGS = {"completed": 0, "failed": 1, "suspended": 3, "cancelled": 4, "rejected": 5,
           "duplicate": 5}


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start (or resume) an execution")
    start.add_argument("program", help="a .spy file, or s3:// key with --uri")
    start.add_argument("--uri", action="store_true", help="PROGRAM is an object-store key")
    start.add_argument("--execution-id", help="the id (default: a new one)")
    start.add_argument("--input", action="append", default=[], metavar="NAME=JSON")
    start.add_argument("--inputs", metavar="FILE", help="a JSON object of inputs")
    start.add_argument("--trace", choices=["full", "statements", "off"])
    start.add_argument("--wait", action="store_true", help="follow spy_status to the end")
    start.add_argument("--timeout", type=float, default=300.0)
    stop = sub.add_parser("stop", help="suspend or cancel an execution")
    stop.add_argument("execution_id")
    stop.add_argument("--mode", choices=["suspend", "cancel"], default="suspend")
    stop.add_argument("--reason", default="")
    stop.add_argument("--wait", action="store_true")
    stop.add_argument("--timeout", type=float, default=300.0)
    return parser


def send(settings: WorkerSettings, execution_id: str, payload: bytes) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         **settings.kafka.extra})
    producer.produce(settings.kafka.control_topic, value=payload,
                     key=execution_id.encode("utf-8"))
    if producer.flush(30) != 0:
        raise RuntimeError("the command was not delivered to Kafka within 30 s")


def follow(settings: WorkerSettings, execution_id: str, timeout: float,
           since: float) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": settings.kafka.bootstrap_servers, **settings.kafka.extra,
        "group.id": f"jarvis-control-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    consumer.subscribe([settings.kafka.status_topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            if (message.key() or b"").decode("utf-8", "replace") != execution_id:
                continue
            event = json.loads(message.value() or b"{}")
            stamp = datetime.fromisoformat(str(event.get("ts", "1970-01-01T00:00:00+00:00")))
            if stamp.timestamp() < since:
                continue
            print(json.dumps(event, ensure_ascii=False))
            if event["status"] in ENDINGS:
                return ENDINGS[event["status"]]
    finally:
        consumer.close()
    print(f"no end of execution {execution_id} within {timeout:.0f}s", file=sys.stderr)
    return 6


def main(argv: Sequence[str] | None = None, prog: str = "jarvis control") -> int:
    args = _parser(prog).parse_args(argv)
    settings = load_worker_settings()
    since = time.time() - 1.0
    if args.action == "start":
        execution_id = args.execution_id or uuid.uuid4().hex[:12]
        program: dict[str, str]
        if args.uri:
            program = {"uri": args.program}
        else:
            program = {"source": Path(args.program).read_text(encoding="utf-8")}
        try:
            inputs = parse_inputs(args.inputs, args.input)
        except InputError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        command: dict[str, Any] = {"v": 1, "type": "start", "execution_id": execution_id,
                                   "program": program, "inputs": inputs}
        if args.trace:
            command["trace"] = args.trace
    else:
        execution_id = args.execution_id
        command = {"v": 1, "type": "stop", "execution_id": execution_id, "mode": args.mode,
                   "reason": args.reason}
    parsed = messages.parse_command(json.dumps(command).encode("utf-8"),
                                    settings.kafka.max_command_bytes)
    if isinstance(parsed, messages.Rejection):
        print(f"{prog}: invalid command: {parsed.reason}", file=sys.stderr)
        return 2
    send(settings, execution_id, json.dumps(command).encode("utf-8"))
    print(f"sent {args.action} for execution {execution_id}", file=sys.stderr)
    if args.wait:
        return follow(settings, execution_id, args.timeout, since)
    return 0

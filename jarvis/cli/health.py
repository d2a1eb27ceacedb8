"""`jarvis health`: exit 0 if the worker's heartbeat is fresh and healthy, else 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from jarvis.settings import load_worker_settings
from jarvis.worker.health import check


def main(argv: Sequence[str] | None = None, prog: str = "jarvis health") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--file", help="the heartbeat file (default: JARVIS_HEARTBEAT_FILE)")
    parser.add_argument("--max-age", type=float, default=None,
                        help="seconds after which a heartbeat is stale (default: 3 beats)")
    args = parser.parse_args(argv)
    settings = load_worker_settings()
    path = Path(args.file) if args.file else Path(settings.heartbeat_file)
    max_age = args.max_age if args.max_age is not None else 3 * settings.heartbeat_seconds
    healthy, reason = check(path, max_age)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1

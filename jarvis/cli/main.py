"""`jarvis`: one command with a subcommand per task (compile, run, ...)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "compile": ("jarvis.cli.compile", "check SPy programs (same as jarvis-compile)"),
    "run": ("jarvis.cli.run", "run a SPy program locally as a durable execution"),
    "worker": ("jarvis.cli.worker", "consume spy_control and run executions"),
    "health": ("jarvis.cli.health", "exit 0 if the local worker is healthy"),
    "control": ("jarvis.cli.control", "send start/stop commands, follow their status"),
}


def _usage() -> str:
    lines = ["usage: jarvis COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {about}" for name, (_, about) in _SUBCOMMANDS.items()]
    lines += ["", "`jarvis COMMAND --help` describes a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from jarvis import __version__

        print(f"jarvis {__version__}")
        return 0
    entry = _SUBCOMMANDS.get(args[0])
    if entry is None:
        print(f"jarvis: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    result: int = module.main(args[1:], prog=f"jarvis {args[0]}")
    return result


if __name__ == "__main__":
    raise SystemExit(main())

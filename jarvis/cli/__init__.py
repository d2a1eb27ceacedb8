"""Command-line entry points: `jarvis` and `jarvis-compile`."""

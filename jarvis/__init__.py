"""Jarvis: durable, traced, sandboxed execution of SPy programs."""

__version__ = "0.1.0"

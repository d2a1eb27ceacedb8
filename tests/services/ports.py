"""Free TCP ports on loopback for the test servers, and a check that one is listening.

The OS picks each port (bind to port 0), so parallel runs on one machine do not
collide. A port handed out once is never handed out again by this process: a stopped
server keeps its ports for its restart, and nobody else may take them meanwhile.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)  # kept open until all are chosen, so none repeats
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            if port not in _handed_out:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    _handed_out.update(ports)
    return ports


def free_port() -> int:
    return free_ports(1)[0]


def accepts_connections(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

"""An HTTP Book on 127.0.0.1 for the HTTP row: protocol v1, keep-alive, nothing else.

    with LoopbackBook() as server:
        registry = http_registry(base, server.url)

The server runs in a child process (`python -m bench.loopback_book`), as a Book service
would, so it does not share the measuring process's GIL. It answers
`POST /procedures/inc` with `{"result": n + 1}` and anything else with 404; the port
is the OS's pick, printed by the child on its first line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.workloads import inc

PROCEDURES = {"inc": inc}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One buffered write per response, flushed by the base class after each request,
    # and no Nagle: headers and body sent apart would meet the client's delayed ACK
    # and cost 40 ms a call.
    wbufsize = -1
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        procedure = PROCEDURES.get(self.path.removeprefix("/procedures/"))
        if procedure is None:
            self._send(404, {"error": {"type": "UnknownProcedure", "message": self.path}})
            return
        self._send(200, {"result": procedure(*body.get("args", []), **body.get("kwargs", {}))})

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def serve() -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class LoopbackBook:
    """The Book server in a child process; a context manager that stops it on exit."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> LoopbackBook:
        self._process = subprocess.Popen([sys.executable, "-m", "bench.loopback_book"],
                                         stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        port = self._process.stdout.readline().strip()
        if not port.isdigit():
            self._process.kill()
            raise RuntimeError("the loopback Book server did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)


if __name__ == "__main__":
    serve()

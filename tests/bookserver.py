"""A real HTTP Book for tests: a threaded server on 127.0.0.1 that speaks protocol v1.

    with BookServer() as server:
        server.procedure("add", lambda a, b: a + b)
        server.script("flaky", Reply(503), Reply(503), Reply.ok("done"))
        ... HttpBook("b", server.url) ...
        assert [r.procedure for r in server.requests] == [...]

A procedure is answered by a callable (its return value is the result; raising
`HttpFailure` sends that status, any other exception a 500) or by a script of steps,
one step per request, the last one repeated. A step is a `Reply` (status, body,
headers, a delay, or a dropped connection) or a callable. Every request is recorded.
The server listens on loopback only and on a port the OS picks.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
_NO_JSON = object()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int

    @property
    def procedure(self) -> str:
        return self.path.removeprefix("/procedures/")

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `body` is sent as is; otherwise `json` is encoded."""

    status: int = 200
    json: Any = _NO_JSON
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering

    @classmethod
    def ok(cls, value: Any, delay_s: float = 0.0) -> Reply:
        return cls(200, json={"result": value}, delay_s=delay_s)

    @classmethod
    def error(
        cls, status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Reply:
        body = {"error": {"type": error_type, "message": message}}
        return cls(status, json=body, headers=dict(headers or {}))

    def encoded(self) -> bytes:
        if self.body is not None:
            return self.body
        if self.json is _NO_JSON:
            return b""
        return json.dumps(self.json).encode("utf-8")


class HttpFailure(Exception):
    """Raised by a procedure to answer with an error status and a protocol error body."""

    def __init__(
        self,
        status: int,
        error_type: str = "Failure",
        message: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.reply = Reply.error(status, error_type, message, headers)


Step = Reply | Callable[..., Any]


class _Script:
    def __init__(self, steps: tuple[Step, ...]) -> None:
        if not steps:
            raise ValueError("a script needs at least one step")
        self._steps = list(steps)
        self._lock = threading.Lock()

    def next_step(self) -> Step:
        with self._lock:
            return self._steps.pop(0) if len(self._steps) > 1 else self._steps[0]


class BookServer:
    """A protocol v1 Book server in a background thread; a context manager."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, _Script] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def procedure(self, name: str, func: Callable[..., Any]) -> None:
        """Answer every call of `name` with `func(*args, **kwargs)`."""
        self._scripts[name] = _Script((func,))

    def script(self, name: str, *steps: Step) -> None:
        """Answer successive calls of `name` with `steps`, repeating the last."""
        self._scripts[name] = _Script(steps)

    def requests_for(self, name: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.procedure == name]

    def start(self) -> BookServer:
        handler = type("BookHandler", (_Handler,), {"book_server": self})
        self._httpd = _QuietServer((LOOPBACK, 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that are delaying
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> BookServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _answer(self, request: RecordedRequest) -> Reply:
        if request.method != "POST":
            return Reply.error(405, "MethodNotAllowed", "protocol v1 uses POST")
        if not request.path.startswith("/procedures/"):
            return Reply.error(404, "NotFound", f"no route {request.path}")
        script = self._scripts.get(request.procedure)
        if script is None:
            return Reply.error(404, "UnknownProcedure", f"no procedure {request.procedure!r}")
        step = script.next_step()
        if isinstance(step, Reply):
            return step
        try:
            call = request.json
        except ValueError:
            return Reply.error(400, "InvalidRequest", "the body is not JSON")
        try:
            return Reply.ok(step(*call.get("args", []), **call.get("kwargs", {})))
        except HttpFailure as failure:
            return failure.reply
        except Exception as exc:
            return Reply.error(500, type(exc).__name__, str(exc))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is expected here; anything else is a bug.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so tests can see connection reuse
    book_server: BookServer

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            client_port=int(self.client_address[1]),
        )
        server = self.book_server
        server._record(request)
        reply = server._answer(request)
        if reply.delay_s and server._stopping.wait(reply.delay_s):
            self.close_connection = True
            return
        if reply.drop:
            self.close_connection = True
            return
        payload = reply.encoded()
        try:
            self.send_response(reply.status)
            if reply.body is None and reply.json is not _NO_JSON:
                self.send_header("Content-Type", "application/json")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            # The client gave up (a timeout test): nothing to answer to.
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def running_book_server() -> Iterator[BookServer]:
    """A started BookServer, stopped on exit: the body of a pytest fixture."""
    with BookServer() as server:
        yield server


def closed_port_url() -> str:
    """An http:// URL on loopback where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    return f"http://{LOOPBACK}:{port}"

"""The channel between a host and the child process that runs a program.

The child runs untrusted code, so nothing it sends is unpickled by the host: a frame is
a JSON header and an optional binary blob (journal payloads and snapshots travel as
bytes, trace events as JSON). Frames are length-prefixed:

    u32 header length | u32 blob length | header (UTF-8 JSON) | blob

Requests from the child carry `op`; the host answers each with `ok` (and a result) or
`error`, in order, so the child needs no thread to read its answers. Trace events are
delivered in the Tracer's batches, so a traced program costs one request per batch, not
per event, and a batch is sent ahead (`send_ahead`): the child goes on running (and
fills the next batch) while the host delivers this one, and reads the answer before it
sends anything else (`settle`), so an error still reaches it, one batch later at most.
A journal record is sent ahead too, and a Book call that follows it is sent right
behind it (`send_behind`): the host appends the record, then performs the call, and the
child reads both answers, so a call costs one round trip, not two.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from typing import Any

from jarvis.runtime.effects_log import encode_value

_LENGTHS = struct.Struct(">II")
"""A frame's first bytes: its header's length and its blob's."""
MAX_HEADER_BYTES = 64 << 20
MAX_BLOB_BYTES = 256 << 20


def _frame(header: dict[str, Any], blob: bytes) -> bytes:
    """One frame: the lengths, the header as UTF-8 JSON, the blob. The header goes through
    the journal's encoder (the same options), whose C encoder is made once, where
    `json.dumps` or `JSONEncoder.encode` would make one (and run more Python) for every
    frame (in a forked child, every object made or touched is a page of the zygote's
    copied)."""
    data = encode_value(header)
    return _LENGTHS.pack(len(data), len(blob)) + data + blob


class ChannelClosed(EOFError):
    """The other side went away (exited, was killed, or closed the channel)."""


class ChannelError(RuntimeError):
    """A malformed frame: the other side does not speak this protocol (or lies)."""


class Channel:
    """One end of a connected stream socket, speaking frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = sock.makefile("rb", buffering=1 << 16)
        self._unanswered = 0  # requests sent ahead whose answers are not read yet

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        """Send one frame; the answers of requests sent ahead are read first (`settle`),
        so that what follows a request is sent only once it succeeded."""
        if self._unanswered:
            self.settle()
        self.send_behind(header, blob)

    def receive(self) -> tuple[dict[str, Any], bytes]:
        prefix = self._read(_LENGTHS.size)
        header_length, blob_length = _LENGTHS.unpack(prefix)
        if header_length > MAX_HEADER_BYTES or blob_length > MAX_BLOB_BYTES:
            raise ChannelError(f"frame too large ({header_length} + {blob_length} bytes)")
        try:
            header = _decode_header(self._read(header_length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ChannelError(f"malformed frame header: {exc}") from exc
        if not isinstance(header, dict):
            raise ChannelError("a frame header must be a JSON object")
        blob = self._read(blob_length) if blob_length else b""
        return header, blob

    def send_ahead(self, header: dict[str, Any], blob: bytes = b"") -> None:
        """Send a request without waiting for its answer, which `settle` (or the next
        `send`) reads; at most one is outstanding."""
        self.send(header, blob)
        self._unanswered += 1

    def send_behind(self, header: dict[str, Any], blob: bytes = b"") -> None:
        """Send a request right behind the requests sent ahead, without reading their
        answers first; the caller reads them (`settle`) before the answer to this one.

        Only for a request the host may perform once those are done: the host performs
        requests in order, and ends the run (killing the child) at a refused journal
        append, so a Book call sent behind the journal record of the effect before it
        is never performed unless that record was written."""
        self._write(_frame(header, blob))

    def _write(self, frame: bytes) -> None:
        try:
            self.sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed(str(exc)) from exc

    def settle(self) -> None:
        """Read the answers of the requests sent ahead; an `error` answer raises."""
        while self._unanswered:
            self._unanswered -= 1
            answer, _ = self.receive()
            if "error" in answer:
                raise RemoteError(str(answer.get("type", "Error")), str(answer["error"]))

    def request(self, header: dict[str, Any], blob: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send a request and wait for its answer; an `error` answer raises."""
        self.send(header, blob)
        answer, data = self.receive()
        if "error" in answer:
            raise RemoteError(str(answer.get("type", "Error")), str(answer["error"]))
        return answer, data

    def _read(self, count: int) -> bytes:
        try:
            data = self._reader.read(count)
        except (ConnectionResetError, OSError) as exc:
            raise ChannelClosed(str(exc)) from exc
        if data is None or len(data) < count:
            raise ChannelClosed("the channel closed mid-frame" if data else "the channel closed")
        return bytes(data)

    def close(self) -> None:
        self._reader.close()
        self.sock.close()


_SCAN: Callable[[str, int], tuple[Any, int]] = (
    json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # (untyped in typeshed)
)


def _decode_header(text: str) -> Any:
    """`json.loads(text)`, by its scanner alone when the text is one JSON value with no
    whitespace around it (as `send_behind` writes them): the same value, without the
    Python code around the scanner (which a forked child pays for in copied pages).
    Anything else, an error included, is left to `json.loads`."""
    try:
        value, end = _SCAN(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


class RemoteError(Exception):
    """An error the other side reported, by its type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        # The message is `args[0]`: no `message` field, since that name is an attribute
        # programs may read (BookError's), and this error can reach a program.
        self.type_name = type_name

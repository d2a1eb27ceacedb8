"""HTTP Books, protocol v1: a Book that is a web service (docs/books.md).

A call is `POST {url}/procedures/{procedure}` with `{"args": [...], "kwargs": {...}}`
and an `Idempotency-Key`; the answer is `{"result": VALUE}` or, for a refusal, a 4xx
with `{"error": {"type": ..., "message": ...}}`. Failures that say nothing about the
request itself (5xx, 429, timeouts, refused or lost connections) are retried with
capped exponential backoff and full jitter, within a time budget and a number of
attempts, always with the same key: the Book de-duplicates on it.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx

from jarvis import __version__
from jarvis.runtime.books import check_json_value
from jarvis.runtime.errors import BookError, RuntimeSetupError

PROCEDURE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# A Book answering more than this is refused rather than held in a worker's memory.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

# Statuses whose Retry-After header is honoured (RFC 9110 defines it for these).
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_RETRY_AFTER_SECONDS = re.compile(r"\d+(\.\d+)?")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


def check_base_url(url: str) -> str:
    """The Book's base URL without a trailing slash; ValueError says what is wrong."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"url {url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"url {url!r} must start with http:// or https://")
    if not parsed.host:
        raise ValueError(f"url {url!r} has no host")
    if parsed.userinfo:
        # Not echoed: the URL holds a secret.
        raise ValueError(
            "the url must not carry credentials; give a token with `token_env` instead"
        )
    if parsed.query or parsed.fragment:
        raise ValueError(f"url {url!r} must not have a query or a fragment")
    return url.rstrip("/")


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a call again: at most `max_attempts` tries within `budget_s` seconds.

    The wait before retry n (1, 2, ...) is uniform in [0, min(cap_s, base_s * 2**(n-1))]
    ("full jitter"), unless the Book sent a Retry-After, which is waited instead.
    """

    budget_s: float = 30.0
    max_attempts: int = 5
    base_s: float = 0.1
    cap_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.budget_s < 0 or self.base_s < 0 or self.cap_s < 0:
            raise ValueError("retry times must not be negative")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number `retry` (1-based)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(retry - 1, 64))

    def backoff(self, retry: int, uniform: Callable[[], float]) -> float:
        """The wait before retry number `retry`; `uniform` returns a float in [0, 1)."""
        return uniform() * self.ceiling(retry)


class _Transient(Exception):
    """One attempt failed in a way that another attempt may not."""

    def __init__(self, description: str, status: int | None, retry_after: float | None) -> None:
        super().__init__(description)
        self.description = description
        self.status = status
        self.retry_after = retry_after


class HttpBook:
    """A Book reached over HTTP (protocol v1), with one pooled client, made on first use."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        timeout_s: float = 10.0,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        uniform: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            self.url = check_base_url(url)
        except ValueError as exc:
            raise RuntimeSetupError(f"Book {name!r}: {exc}") from None
        if not timeout_s > 0:
            raise RuntimeSetupError(f"Book {name!r}: timeout_s must be positive")
        if token is not None and not _HEADER_SAFE.fullmatch(token):
            raise RuntimeSetupError(
                f"Book {name!r}: the token is empty or has spaces or control characters"
            )
        self.name = name
        self.timeout_s = float(timeout_s)
        self.retry = retry or RetryPolicy()
        self._token = token
        self._sleep = sleep
        self._uniform = uniform
        self._clock = clock
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def __repr__(self) -> str:
        # Never the token: reprs end up in logs.
        return f"HttpBook({self.name!r}, {self.url!r})"

    def endpoint(self, procedure: str) -> str:
        return f"{self.url}/procedures/{procedure}"

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                headers = {
                    "User-Agent": f"jarvis/{__version__}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                }
                if self._token is not None:
                    headers["Authorization"] = f"Bearer {self._token}"
                self._http = httpx.Client(
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout_s),
                    follow_redirects=False,
                )
            return self._http

    def close(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def __enter__(self) -> HttpBook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(
        self, procedure: str, args: list[Any], kwargs: dict[str, Any], idempotency_key: str
    ) -> Any:
        if not PROCEDURE_NAME.fullmatch(procedure):
            raise BookError(
                self.name, procedure, "UnknownProcedure",
                "not a valid procedure name (letters, digits and _, starting with a letter)",
            )
        if not _HEADER_SAFE.fullmatch(idempotency_key):
            raise ValueError(f"invalid idempotency key {idempotency_key!r}")
        check_json_value(list(args), "the arguments")
        check_json_value(kwargs, "the keyword arguments")
        body = json.dumps(
            {"args": list(args), "kwargs": kwargs},
            ensure_ascii=False, allow_nan=False, separators=(",", ":"),
        ).encode("utf-8")
        headers = {"Idempotency-Key": idempotency_key}
        url = self.endpoint(procedure)
        started = self._clock()
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._attempt(procedure, url, body, headers)
            except _Transient as failure:
                if attempts >= self.retry.max_attempts:
                    self._give_up(
                        procedure, failure, attempts, f"max_attempts is {self.retry.max_attempts}"
                    )
                if failure.retry_after is not None:
                    wait, why = failure.retry_after, f"Retry-After {failure.retry_after:g} s"
                else:
                    wait = self.retry.backoff(attempts, self._uniform)
                    why = f"the next wait of {wait:.3g} s"
                if self._clock() - started + wait > self.retry.budget_s:
                    self._give_up(
                        procedure, failure, attempts,
                        f"{why} would pass the {self.retry.budget_s:g} s retry budget",
                    )
                self._sleep(wait)

    def _give_up(self, procedure: str, failure: _Transient, attempts: int, why: str) -> NoReturn:
        plural = "" if attempts == 1 else "s"
        raise BookError(
            self.name, procedure, "Unavailable",
            f"{failure.description} (gave up after {attempts} attempt{plural}: {why})",
            failure.status,
        )

    def _attempt(self, procedure: str, url: str, body: bytes, headers: dict[str, str]) -> Any:
        """One request: the result, a final BookError, or _Transient to try again."""
        status: int | None = None
        try:
            with self._client().stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
                try:
                    content = _read_capped(response)
                except _TooLarge:
                    raise BookError(
                        self.name, procedure, "InvalidResponse",
                        f"the response is larger than {MAX_RESPONSE_BYTES} bytes", status,
                    ) from None
        except httpx.TimeoutException as exc:
            phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting"
            raise _Transient(
                f"timed out {phase} (timeout_s is {self.timeout_s:g})", None, None
            ) from None
        except httpx.ConnectError as exc:
            raise _Transient(f"cannot connect: {exc}", None, None) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            detail = str(exc) or type(exc).__name__
            raise _Transient(f"connection lost: {detail}", None, None) from None
        except httpx.DecodingError as exc:
            raise BookError(
                self.name, procedure, "InvalidResponse", f"undecodable body: {exc}", status
            ) from None
        except httpx.HTTPError as exc:
            raise BookError(
                self.name, procedure, "Unavailable", f"{type(exc).__name__}: {exc}", None
            ) from None

        if status == 200:
            return self._result(procedure, content)
        error = _error_body(content)
        if status == 429 or 500 <= status <= 599:
            description = _status_text(status)
            if error is not None:
                description += f": {error[0]}: {error[1]}"
            retry_after = None
            if status in _RETRY_AFTER_STATUSES:
                retry_after = _retry_after(response.headers.get("Retry-After"))
            raise _Transient(description, status, retry_after)
        if 400 <= status <= 499:
            if error is not None:
                raise BookError(self.name, procedure, error[0], error[1], status)
            raise BookError(
                self.name, procedure, f"HTTP{status}",
                f"{_status_text(status)} without a protocol error body",
                status,
            )
        raise BookError(
            self.name, procedure, "InvalidResponse",
            f"unexpected {_status_text(status)}", status,
        )

    def _result(self, procedure: str, content: bytes) -> Any:
        def invalid(why: str) -> BookError:
            return BookError(self.name, procedure, "InvalidResponse", why, 200)

        try:
            document = json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise invalid("the 200 response is not JSON") from None
        if not isinstance(document, dict) or "result" not in document:
            raise invalid('the 200 response is not an object with a "result" key')
        try:
            check_json_value(document["result"], "the result")
        except TypeError as exc:
            raise invalid(str(exc)) from None
        return document["result"]


class _TooLarge(Exception):
    pass


def _read_capped(response: httpx.Response) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error_body(content: bytes) -> tuple[str, str] | None:
    """(type, message) from a protocol error body, or None if the body is not one."""
    try:
        document = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if not isinstance(error, dict):
        return None
    error_type, message = error.get("type"), error.get("message", "")
    if not isinstance(error_type, str) or not error_type or not isinstance(message, str):
        return None
    return error_type, message


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; None when absent or not a number of seconds."""
    if value is None or not _RETRY_AFTER_SECONDS.fullmatch(value.strip()):
        return None
    return float(value)


def _status_text(status: int) -> str:
    """`HTTP 503 Service Unavailable`, or `HTTP 599` for a status without a phrase."""
    return f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".rstrip()

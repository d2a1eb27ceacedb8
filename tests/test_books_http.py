"""HTTP Books (protocol v1) against a real HTTP server on loopback.

Waits between attempts go to a fake clock, so retry schedules are checked exactly
and the tests do not sleep; only timeouts spend real (short) time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bookserver import BookServer, HttpFailure, Reply, closed_port_url, running_book_server
from hypothesis import given
from hypothesis import strategies as st

import jarvis
from jarvis.runtime import http_book
from jarvis.runtime.books import BookRegistry
from jarvis.runtime.errors import BookError, RuntimeSetupError
from jarvis.runtime.http_book import HttpBook, RetryPolicy
from jarvis.runtime.reference import run_reference


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[BookServer]:
    with running_book_server() as running:
        yield running


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_book(fake_time: FakeTime) -> Iterator[Callable[..., HttpBook]]:
    made: list[HttpBook] = []

    def make(
        url: str,
        *,
        timeout_s: float = 2.0,
        budget_s: float = 30.0,
        max_attempts: int = 5,
        uniform: Callable[[], float] = lambda: 0.5,
        token: str | None = None,
    ) -> HttpBook:
        book = HttpBook(
            "erp", url, timeout_s=timeout_s, token=token,
            retry=RetryPolicy(budget_s=budget_s, max_attempts=max_attempts),
            sleep=fake_time.sleep, uniform=uniform, clock=fake_time.clock,
        )
        made.append(book)
        return book

    yield make
    for book in made:
        book.close()


def failure(call: Callable[[], Any]) -> BookError:
    with pytest.raises(BookError) as info:
        call()
    return info.value


def test_a_call_round_trips_args_kwargs_and_headers(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    server.procedure("create_lead", lambda name, score=0: {"name": name, "score": score, "id": 7})
    book = make_book(server.url + "/")
    result = book.call("create_lead", ["Ada"], {"score": 3}, "ex1:4")
    assert result == {"name": "Ada", "score": 3, "id": 7}
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/procedures/create_lead")
    assert request.json == {"args": ["Ada"], "kwargs": {"score": 3}}
    assert request.headers["idempotency-key"] == "ex1:4"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"jarvis/{jarvis.__version__}"
    assert "authorization" not in request.headers


def test_json_values_travel_unchanged(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    server.procedure("echo", lambda value: value)
    value: dict[str, Any] = {
        "s": "é ☃ \u0000", "n": None, "b": True, "f": 1.5, "big": 2**70, "l": [[], {}]
    }
    assert make_book(server.url).call("echo", [value], {}, "k:1") == value


def test_connections_are_kept_alive_and_reopened_after_close(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    server.procedure("ping", lambda: "pong")
    book = make_book(server.url)
    for seq in range(3):
        assert book.call("ping", [], {}, f"k:{seq}") == "pong"
    assert len({r.client_port for r in server.requests}) == 1
    book.close()
    assert book.call("ping", [], {}, "k:9") == "pong"
    assert len({r.client_port for r in server.requests}) == 2


def test_503_is_retried_with_the_same_idempotency_key(
    server: BookServer, make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    server.script("charge", Reply(503), Reply.error(503, "Overloaded", "busy"), Reply.ok("paid"))
    assert make_book(server.url).call("charge", [10], {"currency": "EUR"}, "ex2:1") == "paid"
    requests = server.requests_for("charge")
    assert len(requests) == 3
    assert {r.headers["idempotency-key"] for r in requests} == {"ex2:1"}
    assert {r.body for r in requests} == {requests[0].body}
    assert fake_time.sleeps == [0.05, 0.1]  # uniform() = 0.5 of 0.1 s, 0.2 s


def test_other_5xx_and_429_are_retried(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    server.script("x", Reply(500), Reply(502), Reply(504), Reply(429), Reply.ok(1))
    assert make_book(server.url, max_attempts=5).call("x", [], {}, "k:1") == 1
    assert len(server.requests) == 5


def test_retry_after_is_honoured(
    server: BookServer, make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    server.script(
        "x",
        Reply(503, headers={"Retry-After": "2"}),
        Reply(429, headers={"Retry-After": "0.5"}),
        Reply(500, headers={"Retry-After": "9"}),  # not a status Retry-After applies to
        Reply.ok("ok"),
    )
    assert make_book(server.url).call("x", [], {}, "k:1") == "ok"
    assert fake_time.sleeps == [2.0, 0.5, 0.2]


def test_a_retry_after_past_the_budget_ends_the_call_at_once(
    server: BookServer, make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    server.script("x", Reply(503, headers={"Retry-After": "60"}), Reply.ok("late"))
    error = failure(lambda: make_book(server.url, budget_s=30).call("x", [], {}, "k:1"))
    assert (error.error_type, error.status) == ("Unavailable", 503)
    assert "Retry-After 60 s" in error.message
    assert "1 attempt:" in error.message
    assert fake_time.sleeps == []
    assert len(server.requests) == 1


def test_an_exhausted_budget_is_unavailable_with_the_last_status(
    server: BookServer, make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    server.script("x", Reply.error(503, "Overloaded", "try later"))
    book = make_book(server.url, budget_s=1.0, max_attempts=10, uniform=lambda: 1.0)
    error = failure(lambda: book.call("x", [], {}, "k:1"))
    # Waits 0.1, 0.2, 0.4 fit in 1 s; the next (0.8) would end past it.
    assert fake_time.sleeps == [0.1, 0.2, 0.4]
    assert len(server.requests) == 4
    assert (error.book, error.procedure, error.error_type, error.status) == (
        "erp", "x", "Unavailable", 503
    )
    assert "HTTP 503 Service Unavailable: Overloaded: try later" in error.message
    assert "4 attempts" in error.message
    assert "retry budget" in error.message


def test_max_attempts_bounds_the_retries(
    server: BookServer, make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    server.script("x", Reply(502, body=b"<html>bad gateway</html>"))
    error = failure(lambda: make_book(server.url, max_attempts=3).call("x", [], {}, "k:1"))
    assert (error.error_type, error.status) == ("Unavailable", 502)
    assert error.message.startswith("HTTP 502 Bad Gateway (gave up after 3 attempts")
    assert len(server.requests) == 3
    assert len(fake_time.sleeps) == 2


def test_a_4xx_with_an_error_body_is_a_book_error_and_not_retried(
    server: BookServer, make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    server.script("find", Reply.error(404, "NoSuchLead", "lead 9 does not exist"))
    error = failure(lambda: make_book(server.url).call("find", [9], {}, "k:1"))
    assert (error.book, error.procedure, error.error_type, error.message, error.status) == (
        "erp", "find", "NoSuchLead", "lead 9 does not exist", 404
    )
    assert len(server.requests) == 1
    assert fake_time.sleeps == []


def test_a_procedure_can_refuse_with_any_4xx(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    def approve(amount: int) -> str:
        raise HttpFailure(422, "OverLimit", f"{amount} is over the limit")

    server.procedure("approve", approve)
    error = failure(lambda: make_book(server.url).call("approve", [10**6], {}, "k:1"))
    assert (error.error_type, error.message, error.status) == (
        "OverLimit", "1000000 is over the limit", 422
    )
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply(403, body=b"<html>forbidden</html>"),
        Reply(400),
        Reply(409, json={"error": "just a string"}),
        Reply(410, json={"error": {"message": "no type"}}),
    ],
)
def test_a_4xx_without_an_error_body_is_named_by_its_status(
    server: BookServer, make_book: Callable[..., HttpBook], reply: Reply
) -> None:
    server.script("x", reply)
    error = failure(lambda: make_book(server.url).call("x", [], {}, "k:1"))
    assert (error.error_type, error.status) == (f"HTTP{reply.status}", reply.status)
    assert error.message.startswith(f"HTTP {reply.status} ")
    assert len(server.requests) == 1


def test_an_unknown_procedure_on_the_server_is_its_404(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    error = failure(lambda: make_book(server.url).call("missing", [], {}, "k:1"))
    assert (error.error_type, error.status) == ("UnknownProcedure", 404)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, body=b"not json"),
        Reply(200, body=b"\xff\xfe"),
        Reply(200, body=b""),
        Reply(200, json={"value": 1}),
        Reply(200, json=[1, 2]),
        Reply(200, body=b'{"result": NaN}'),
        Reply(200, body=b'{"result": 1e999}'),
        Reply(201, json={"result": 1}),
        Reply(200, body=b"not gzip", headers={"Content-Encoding": "gzip"}),
        Reply(302, headers={"Location": "http://127.0.0.1:1/"}),
    ],
)
def test_invalid_responses_are_refused_without_retrying(
    server: BookServer, make_book: Callable[..., HttpBook], reply: Reply
) -> None:
    server.script("x", reply)
    error = failure(lambda: make_book(server.url).call("x", [], {}, "k:1"))
    assert (error.error_type, error.status) == ("InvalidResponse", reply.status)
    assert len(server.requests) == 1


def test_a_null_result_is_a_result(server: BookServer, make_book: Callable[..., HttpBook]) -> None:
    server.script("x", Reply.ok(None))
    assert make_book(server.url).call("x", [], {}, "k:1") is None


def test_an_oversized_response_is_refused(
    server: BookServer, make_book: Callable[..., HttpBook], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_book, "MAX_RESPONSE_BYTES", 100)
    server.script("x", Reply.ok("y" * 200))
    error = failure(lambda: make_book(server.url).call("x", [], {}, "k:1"))
    assert error.error_type == "InvalidResponse"
    assert "larger than 100 bytes" in error.message


def test_timeouts_are_retried_then_fail(
    server: BookServer, make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    server.script("slow", Reply.ok("late", delay_s=5.0))
    book = make_book(server.url, timeout_s=0.2, max_attempts=2)
    started = time.monotonic()
    error = failure(lambda: book.call("slow", [], {}, "k:1"))
    assert time.monotonic() - started < 2.0
    assert (error.error_type, error.status) == ("Unavailable", None)
    assert "timed out waiting (timeout_s is 0.2)" in error.message
    assert "2 attempts" in error.message
    assert len(server.requests) == 2
    assert len(fake_time.sleeps) == 1


def test_a_timeout_then_an_answer_succeeds(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    server.script("slow", Reply.ok("late", delay_s=5.0), Reply.ok("now"))
    assert make_book(server.url, timeout_s=0.2).call("slow", [], {}, "k:1") == "now"
    assert {r.headers["idempotency-key"] for r in server.requests} == {"k:1"}


def test_a_refused_connection_is_retried_then_fails(
    make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    error = failure(lambda: make_book(closed_port_url(), max_attempts=3).call("x", [], {}, "k:1"))
    assert (error.error_type, error.status) == ("Unavailable", None)
    assert error.message.startswith("cannot connect")
    assert "3 attempts" in error.message
    assert len(fake_time.sleeps) == 2


def test_a_dropped_connection_is_retried(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    server.script("x", Reply(drop=True), Reply.ok("again"))
    assert make_book(server.url).call("x", [], {}, "k:1") == "again"
    assert len(server.requests) == 2


def test_the_last_failure_decides_the_status(
    make_book: Callable[..., HttpBook], server: BookServer
) -> None:
    server.script("x", Reply(503), Reply(drop=True))
    error = failure(lambda: make_book(server.url, max_attempts=2).call("x", [], {}, "k:1"))
    assert error.status is None
    assert error.message.startswith("connection lost")


def test_the_bearer_token_is_sent_and_kept_out_of_repr(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    server.procedure("x", lambda: 1)
    book = make_book(server.url, token="s3cret-token")
    book.call("x", [], {}, "k:1")
    assert server.requests[0].headers["authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in repr(book)


def test_a_registry_book_reads_its_token_from_the_environment(
    server: BookServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.procedure("whoami", lambda: "erp")
    monkeypatch.setenv("JARVIS_TEST_ERP_TOKEN", "from-env")
    path = tmp_path / "books.toml"
    path.write_text(f'[books.erp]\nurl = "{server.url}"\ntoken_env = "JARVIS_TEST_ERP_TOKEN"\n')
    with BookRegistry.load(path) as registry:
        assert registry.get("erp").call("whoami", [], {}, "k:1") == "erp"
    assert server.requests[0].headers["authorization"] == "Bearer from-env"


@pytest.mark.parametrize(
    "name", ["", "_private", "1st", "a-b", "a/b", "../admin", "a b", "é", "x\n", "x?y=1"]
)
def test_invalid_procedure_names_are_refused_without_a_request(
    server: BookServer, make_book: Callable[..., HttpBook], name: str
) -> None:
    error = failure(lambda: make_book(server.url).call(name, [], {}, "k:1"))
    assert (error.error_type, error.status) == ("UnknownProcedure", None)
    assert server.requests == []


def test_non_json_arguments_are_refused_without_a_request(
    server: BookServer, make_book: Callable[..., HttpBook]
) -> None:
    with pytest.raises(TypeError, match="not a JSON value"):
        make_book(server.url).call("x", [{1, 2}], {}, "k:1")
    with pytest.raises(TypeError, match="inf"):
        make_book(server.url).call("x", [], {"f": float("inf")}, "k:1")
    assert server.requests == []


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap(
    server: BookServer, make_book: Callable[..., HttpBook], fake_time: FakeTime
) -> None:
    source = random.Random(7)
    draws: list[float] = []

    def uniform() -> float:
        draws.append(source.random())
        return draws[-1]

    server.script("x", Reply(503))
    book = make_book(server.url, budget_s=1000, max_attempts=10, uniform=uniform)
    failure(lambda: book.call("x", [], {}, "k:1"))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert fake_time.sleeps == pytest.approx([d * c for d, c in zip(draws, ceilings, strict=True)])
    assert len(server.requests) == 10


def test_retry_ceilings() -> None:
    policy = RetryPolicy()
    assert [policy.ceiling(n) for n in range(1, 10)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    )
    assert policy.ceiling(10_000) == 5.0


@given(
    retry=st.integers(min_value=1, max_value=10_000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_every_wait_is_within_the_jitter_window(retry: int, draw: float) -> None:
    policy = RetryPolicy()
    wait = policy.backoff(retry, lambda: draw)
    assert 0.0 <= wait <= min(policy.cap_s, policy.base_s * 2.0 ** min(retry - 1, 64))
    assert wait == pytest.approx(draw * policy.ceiling(retry))


@pytest.mark.parametrize(
    "url", ["ftp://host", "host:8080", "http://", "http://u:p@host", "http://h/?q=1", "http://h/#f"]
)
def test_bad_urls_are_setup_errors(url: str) -> None:
    with pytest.raises(RuntimeSetupError, match="Book 'erp'"):
        HttpBook("erp", url)


def test_spy_programs_see_http_book_errors_and_results(
    server: BookServer, tmp_path: Path
) -> None:
    server.procedure("create_lead", lambda name: {"id": 1, "name": name})
    server.script("approve", Reply.error(403, "NotAllowed", "over budget"))
    path = tmp_path / "books.toml"
    path.write_text(f'[books.erp]\nurl = "{server.url}"\ntimeout_s = 2\n')
    with BookRegistry.load(path) as registry:
        result = run_reference(
            "from books import erp\n"
            "lead = erp.create_lead(name='Ada')\n"
            "try:\n"
            "    erp.approve(lead['id'])\n"
            "except BookError as e:\n"
            "    output('e', [e.book, e.procedure, e.error_type, e.message, e.status])\n"
            "output('lead', lead)\n",
            books=registry,
            execution_id="ex7",
        )
    assert result.error is None, result.error
    assert result.outputs == {
        "lead": {"id": 1, "name": "Ada"},
        "e": ["erp", "approve", "NotAllowed", "over budget", 403],
    }
    assert [r.headers["idempotency-key"] for r in server.requests] == ["ex7:1", "ex7:2"]

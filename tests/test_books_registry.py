"""The Book registry file: what it accepts, and the clear errors for what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from bookserver import closed_port_url

from jarvis.runtime.books import BookRegistry, PythonBook
from jarvis.runtime.errors import BookError, RuntimeSetupError
from jarvis.runtime.http_book import HttpBook


def write(tmp_path: Path, text: str, name: str = "books.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(RuntimeSetupError) as info:
        BookRegistry.load(path, environ={} if environ is None else environ)
    return str(info.value)


def test_both_kinds_load_with_their_settings(tmp_path: Path) -> None:
    (tmp_path / "crm.py").write_text("def ping():\n    return 'pong'\n")
    path = write(
        tmp_path,
        '[books.crm]\npython = "crm.py"\n'
        '[books.erp]\nurl = "https://erp.internal:8443/jarvis/"\ntimeout_s = 2.5\n'
        'token_env = "ERP_TOKEN"\nretry_budget_s = 12\nmax_attempts = 3\n'
        '[books.mailer]\nurl = "http://127.0.0.1:9000"\n',
    )
    registry = BookRegistry.load(path, environ={"ERP_TOKEN": "t0ken"})
    assert registry.names() == ["crm", "erp", "mailer"]
    crm, erp, mailer = (registry.get(name) for name in registry.names())
    assert isinstance(crm, PythonBook)
    assert crm.call("ping", [], {}, "k:1") == "pong"
    assert isinstance(erp, HttpBook)
    assert erp.url == "https://erp.internal:8443/jarvis"
    assert erp.endpoint("post_invoice") == "https://erp.internal:8443/jarvis/procedures/post_invoice"
    assert (erp.timeout_s, erp.retry.budget_s, erp.retry.max_attempts) == (2.5, 12.0, 3)
    assert isinstance(mailer, HttpBook)
    assert (mailer.timeout_s, mailer.retry.budget_s, mailer.retry.max_attempts) == (10.0, 30.0, 5)
    registry.close()


def test_the_token_comes_from_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[books.erp]\nurl = "http://h"\ntoken_env = "JARVIS_TEST_TOKEN"\n')
    monkeypatch.delenv("JARVIS_TEST_TOKEN", raising=False)
    with pytest.raises(RuntimeSetupError, match="JARVIS_TEST_TOKEN"):
        BookRegistry.load(path)
    monkeypatch.setenv("JARVIS_TEST_TOKEN", "abc")
    assert "erp" in BookRegistry.load(path)


def test_a_missing_token_variable_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[books.erp]\nurl = "http://h"\ntoken_env = "ERP_TOKEN"\n')
    message = load_error(path)
    assert "[books.erp]" in message
    assert "ERP_TOKEN" in message
    assert "not set" in message
    assert "is empty" in load_error(path, {"ERP_TOKEN": " "})
    message = load_error(path, {"ERP_TOKEN": "a b"})
    assert "[books.erp]" in message
    assert "control characters" in message


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('url = "http://h"\ntimeout = 5\n', "unknown key `timeout`; did you mean `timeout_s`?"),
        ('url = "http://h"\nmax_attempt = 2\n', "did you mean `max_attempts`?"),
        ('url = "http://h"\nheaders = {}\n', "unknown key `headers` (known keys:"),
        ('python = "crm.py"\ntimeout_s = 5\n', "unknown key `timeout_s`"),
        ('python = "crm.py"\nurl = "http://h"\n', "both `python` and `url`"),
        ("nothing = 1\n", "needs `python"),
        ("urll = 'http://h'\n", "unknown key(s): `urll`"),
    ],
)
def test_unknown_keys_are_refused(tmp_path: Path, entry: str, expected: str) -> None:
    (tmp_path / "crm.py").write_text("")
    message = load_error(write(tmp_path, "[books.crm]\n" + entry))
    assert expected in message
    assert "[books.crm]" in message


def test_unknown_top_level_keys_are_refused(tmp_path: Path) -> None:
    assert "unknown top-level key(s) `book`" in load_error(
        write(tmp_path, '[book.crm]\npython = "crm.py"\n')
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/",
        "file:///etc/passwd",
        "h:8080",
        "127.0.0.1",
        "http://",
        "http://user:pw@h",
        "http://h/?key=1",
        "http://h/#part",
        "http://[::1",
        "",
    ],
)
def test_bad_urls_are_refused(tmp_path: Path, url: str) -> None:
    message = load_error(write(tmp_path, f'[books.erp]\nurl = "{url}"\n'))
    assert "[books.erp]" in message


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("url = 8080", "`url` must be a non-empty string"),
        ("timeout_s = 0", "`timeout_s` must be positive"),
        ("timeout_s = -1", "`timeout_s` must be positive"),
        ('timeout_s = "10"', "`timeout_s` must be a number of seconds"),
        ("timeout_s = true", "`timeout_s` must be a number of seconds"),
        ("timeout_s = inf", "`timeout_s` must be a number of seconds"),
        ("retry_budget_s = -0.5", "`retry_budget_s` must be zero or more"),
        ("max_attempts = 0", "max_attempts must be an integer of at least 1"),
        ("max_attempts = 2.5", "max_attempts must be an integer of at least 1"),
        ('token_env = ""', "`token_env` must be a non-empty string"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, setting: str, expected: str) -> None:
    text = "[books.erp]\n" + ("" if setting.startswith("url") else 'url = "http://h"\n') + setting
    assert expected in load_error(write(tmp_path, text + "\n"))


def test_zero_retry_budget_means_one_attempt(tmp_path: Path) -> None:
    text = f'[books.erp]\nurl = "{closed_port_url()}"\nretry_budget_s = 0\n'
    with (
        BookRegistry.load(write(tmp_path, text)) as registry,
        pytest.raises(BookError, match="gave up after 1 attempt:") as info,
    ):
        registry.get("erp").call("x", [], {}, "k:1")
    assert info.value.error_type == "Unavailable"


@pytest.mark.parametrize("name", ['"my-book"', '"_hidden"', '"2fa"', '"a.b"'])
def test_book_names_must_be_importable(tmp_path: Path, name: str) -> None:
    message = load_error(write(tmp_path, f'[books.{name}]\nurl = "http://h"\n'))
    assert "a Book name is letters, digits and _" in message


def test_relative_python_paths_are_relative_to_the_registry_file(tmp_path: Path) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "crm.py").write_text("def ping():\n    return 1\n")
    path = write(tmp_path, '[books.crm]\npython = "../books/crm.py"\n', "conf/books.toml")
    book = BookRegistry.load(path).get("crm")
    assert isinstance(book, PythonBook)
    assert book.path == (tmp_path / "books" / "crm.py").resolve()
    assert book.call("ping", [], {}, "k:1") == 1


def test_absolute_python_paths_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "erp.py"
    target.parent.mkdir()
    target.write_text("")
    path = write(tmp_path, f'[books.erp]\npython = "{target.as_posix()}"\n', "conf/books.toml")
    book = BookRegistry.load(path).get("erp")
    assert isinstance(book, PythonBook)
    assert book.path == target.resolve()


def test_a_missing_python_file_is_refused_at_load(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, '[books.crm]\npython = "nowhere.py"\n'))
    assert "nowhere.py does not exist" in message


def test_a_python_book_that_fails_to_load_is_a_setup_error(tmp_path: Path) -> None:
    (tmp_path / "crm.py").write_text("def broken(:\n")
    registry = BookRegistry.load(write(tmp_path, '[books.crm]\npython = "crm.py"\n'))
    with pytest.raises(RuntimeSetupError, match=r"loading .*crm\.py failed: SyntaxError"):
        registry.get("crm").call("broken", [], {}, "k:1")


def test_an_empty_registry_has_no_books(tmp_path: Path) -> None:
    assert BookRegistry.load(write(tmp_path, "")).names() == []


def test_close_releases_http_books_and_skips_python_books(tmp_path: Path) -> None:
    (tmp_path / "crm.py").write_text("")
    path = write(tmp_path, '[books.crm]\npython = "crm.py"\n[books.erp]\nurl = "http://h"\n')
    closed: list[str] = []
    with BookRegistry.load(path) as registry:
        erp = registry.get("erp")
        assert isinstance(erp, HttpBook)
        erp.close = lambda: closed.append("erp")  # type: ignore[method-assign]
    assert closed == ["erp"]

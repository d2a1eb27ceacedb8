"""Artifacts: files a program stores with `artifact(...)`, and outputs too large to inline.

The engine sees object storage through `ArtifactStore` (put, get, url). Two stores live
here: `LocalArtifactStore`, a directory with `file://` URLs (the embedded default, under
`<state_dir>/artifacts/`), and `MemoryArtifactStore` (tests, the reference interpreter,
a Machine built without a store). The S3 store is the worker's (jarvis/worker/artifacts.py).

`ExecutionArtifacts` is what a Machine uploads through: it checks the name, the content
type and the size, and derives the key from the execution and the effect's position in
the journal, so an upload retried after a crash writes the same object again.

`offload_outputs` replaces outputs whose JSON is larger than a threshold by a reference
`{"artifact": {"key", "url", "bytes", "sha256"}}` to a copy in the store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

try:
    # CPython's own SHA-256 (a small extension module), rather than hashlib, which loads
    # OpenSSL's libcrypto and more: a zygote imports this module, and what it loads is
    # in every child it forks (where an artifact's digest must be at hand: a confined
    # child can import nothing).
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]
except ImportError:  # a Python built without it
    from hashlib import sha256 as _sha256

_SHA256: Callable[[bytes], Any] = _sha256

MAX_NAME_CHARS: Final = 100
"""The longest artifact name."""

MAX_CONTENT_TYPE_CHARS: Final = 255
"""The longest content type."""

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTENT_TYPE = re.compile(r"[!-~][ -~]*")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ArtifactStore(Protocol):
    """Object storage: `put` writes `content` under `key`, `url` is where it is read."""

    def put(self, key: str, content: bytes, content_type: str) -> str: ...

    def get(self, key: str) -> bytes: ...

    def url(self, key: str) -> str: ...


class StoredArtifact(NamedTuple):
    """One stored object: its key, its URL, its size and its SHA-256 (hex)."""

    key: str
    url: str
    size: int
    sha256: str

    def reference(self) -> dict[str, Any]:
        """The form that stands in for a large value: `{"artifact": {...}}`."""
        return {"artifact": {"key": self.key, "url": self.url, "bytes": self.size,
                             "sha256": self.sha256}}


class ArtifactUploads(Protocol):
    """What a Machine uploads through (`ExecutionArtifacts`, or the channel to a host)."""

    def upload(self, index: int, name: str, content: bytes, content_type: str) -> StoredArtifact:
        ...


class ArtifactTooLarge(ValueError):
    """The content of an artifact is larger than the execution may store at once."""


def artifact_key(execution_id: str, index: int, name: str) -> str:
    """The key of the artifact `name` stored by the `index`-th effect (1-based).

    A name outside `A-Z a-z 0-9 . _ -` is cleaned (the builtin refuses such names, so
    this only matters for callers that pass free text)."""
    cleaned = _SAFE_NAME.sub("_", name).strip("._") or "artifact"
    return f"executions/{execution_id}/{index:06d}-{cleaned[:MAX_NAME_CHARS]}"


def output_key(execution_id: str, name: str, digest: str) -> str:
    """The key of the stored copy of output `name` whose JSON has SHA-256 `digest`."""
    cleaned = _SAFE_NAME.sub("_", name).strip("._")[:60] or "output"
    return f"executions/{execution_id}/outputs/{cleaned}-{digest[:16]}.json"


def check_name(name: object) -> str:
    """The artifact name, or TypeError/ValueError saying what is wrong with it."""
    if not isinstance(name, str):
        raise TypeError(f"artifact(): the name must be a str, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise ValueError(f"artifact(): the name must have 1 to {MAX_NAME_CHARS} characters")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"artifact(): invalid name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no '/', no '..' paths)")
    return name


def check_content_type(content_type: object) -> str:
    if not isinstance(content_type, str):
        raise TypeError("artifact(): the content type must be a str, not "
                        f"{type(content_type).__name__}")
    if len(content_type) > MAX_CONTENT_TYPE_CHARS or not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError(
            f"artifact(): invalid content type {content_type[:40]!r}: printable ASCII, "
            f"at most {MAX_CONTENT_TYPE_CHARS} characters")
    return content_type


def content_bytes(content: object) -> bytes:
    """The bytes stored for `content`: a str, UTF-8 encoded."""
    if not isinstance(content, str):
        raise TypeError(f"artifact(): the content must be a str, not {type(content).__name__}")
    try:
        return content.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise ValueError(f"artifact(): the content is not valid text: {exc.reason}") from None


def sha256_hex(content: bytes) -> str:
    return str(_SHA256(content).hexdigest())


class ExecutionArtifacts:
    """The artifacts of one execution in `store`: checked, keyed by effect, counted."""

    def __init__(self, store: ArtifactStore, execution_id: str, max_bytes: int) -> None:
        self.store = store
        self.execution_id = execution_id
        self.max_bytes = max_bytes

    def upload(self, index: int, name: str, content: bytes, content_type: str) -> StoredArtifact:
        check_name(name)
        check_content_type(content_type)
        if len(content) > self.max_bytes:
            raise ArtifactTooLarge(f"artifact {name!r} has {len(content)} bytes; the limit "
                                   f"is {self.max_bytes}")
        key = artifact_key(self.execution_id, index, name)
        self.store.put(key, content, content_type)
        return StoredArtifact(key, self.store.url(key), len(content), sha256_hex(content))


class LocalArtifactStore:
    """Artifacts as files under a directory (the embedded default); URLs are `file://`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key {key!r} leaves the artifact directory")
        return path

    def put(self, key: str, content: bytes, content_type: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed: a reader never sees half an artifact, and a
        # retried upload replaces the object whole.
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(content)
        partial.replace(path)
        return key

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def url(self, key: str) -> str:
        return self._path(key).as_uri()


class MemoryArtifactStore:
    """Artifacts in a dict; URLs are `memory://KEY` (tests, the reference interpreter)."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.puts = 0

    def put(self, key: str, content: bytes, content_type: str) -> str:
        self.objects[key] = (bytes(content), content_type)
        self.puts += 1
        return key

    def get(self, key: str) -> bytes:
        return self.objects[key][0]

    def url(self, key: str) -> str:
        return f"memory://{key}"


def offload_outputs(outputs: dict[str, Any], store: ArtifactStore, execution_id: str,
                    inline_bytes: int) -> dict[str, Any]:
    """`outputs` with every value whose JSON takes more than `inline_bytes` bytes
    (UTF-8) replaced by a reference to a copy in `store` (content type
    `application/json`). The key depends on the value, so storing the same outputs
    again writes the same objects."""
    result: dict[str, Any] = {}
    for name, value in outputs.items():
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                             allow_nan=False).encode("utf-8")
        if len(encoded) <= inline_bytes:
            result[name] = value
            continue
        digest = sha256_hex(encoded)
        key = output_key(execution_id, name, digest)
        store.put(key, encoded, "application/json")
        result[name] = StoredArtifact(key, store.url(key), len(encoded), digest).reference()
    return result


def artifact(name: Any, content: Any,
             content_type: Any = DEFAULT_CONTENT_TYPE) -> tuple[Any, Any, Any]:
    """The builtin's signature: binds a call's arguments as Python would (its errors say
    `artifact()`), wherever the call is made."""
    return name, content, content_type


def artifact_arguments(args: tuple[Any, ...] | list[Any],
                       kwargs: dict[str, Any]) -> tuple[str, bytes, str]:
    """A call's (name, content bytes, content type), each checked in this order."""
    name, content, content_type = artifact(*args, **kwargs)
    return check_name(name), content_bytes(content), check_content_type(content_type)

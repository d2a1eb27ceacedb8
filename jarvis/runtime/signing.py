"""HMAC-SHA256 with the key prepared once, for the journal and the snapshots.

`hmac.digest(key, message, "sha256")` looks the digest up by name and hashes the key's
padded blocks again on every call: for a journal record of a few dozen bytes that is
most of the cost, and for a snapshot, taken with cold caches every hundred effects, a
good part of signing it. `PreparedHmac` hashes the pads (and a fixed message prefix)
once; a message then costs two copies of those hash states and its own bytes. The
digests are RFC 2104's, the same as `hmac.digest` gives.
"""

from __future__ import annotations

from hashlib import sha256

_BLOCK = 64  # SHA-256's block size, which HMAC pads its key to
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


class PreparedHmac:
    """HMAC-SHA256 under `key` of messages that all start with `prefix`."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, prefix: bytes = b"") -> None:
        if len(key) > _BLOCK:
            key = sha256(key).digest()
        padded = key.ljust(_BLOCK, b"\0")
        self._inner = sha256(padded.translate(_IPAD))
        self._inner.update(prefix)
        self._outer = sha256(padded.translate(_OPAD))

    def digest(self, message: bytes | memoryview) -> bytes:
        """The HMAC of `prefix + message`."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

"""`PreparedHmac`: HMAC-SHA256 with its key prepared once, as RFC 2104 defines it."""

from __future__ import annotations

import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from jarvis.runtime.signing import PreparedHmac


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=1, max_size=200), prefix=st.binary(max_size=100),
       message=st.binary(max_size=3000))
def test_the_digest_is_the_standard_librarys(key: bytes, prefix: bytes,
                                             message: bytes) -> None:
    prepared = PreparedHmac(key, prefix)
    expected = hmac.digest(key, prefix + message, "sha256")
    assert prepared.digest(message) == expected
    # The prepared state is copied, never used up: the same message signs the same.
    assert prepared.digest(memoryview(message)) == expected


def test_keys_around_the_block_size() -> None:
    for length in (1, 63, 64, 65, 128):
        key = bytes(range(length))
        assert PreparedHmac(key).digest(b"snapshot body") == hmac.digest(
            key, b"snapshot body", "sha256")

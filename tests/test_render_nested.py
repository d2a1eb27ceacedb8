"""The renderer's one-go path for containers of small flat containers (a Book call's
`{'args': [...], 'kwargs': {...}}`) writes exactly what rendering item by item does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jarvis.runtime.trace import Renderer

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**17),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.text(min_size=290, max_size=320),
    st.text(alphabet="\n\t'\"\\é\x00", max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=8),
                            st.dictionaries(st.text(max_size=8), inner, max_size=8)),
    max_leaves=30,
)


class _ItemByItem(Renderer):
    """The renderer without the one-go path: every container item by item."""

    def _nested_flat(self, items: Any, room: int, depth: int) -> bool:
        return False


@settings(max_examples=400, deadline=None)
@given(value=VALUES, max_chars=st.sampled_from([16, 40, 80, 300]),
       max_items=st.sampled_from([4, 12]), max_depth=st.sampled_from([1, 2, 4]))
def test_one_go_rendering_matches_item_by_item(value: Any, max_chars: int, max_items: int,
                                               max_depth: int) -> None:
    fast = Renderer(max_chars, max_items, max_depth)
    slow = _ItemByItem(max_chars, max_items, max_depth)
    assert fast.render(value) == slow.render(value)
    assert fast.render({"args": [value], "kwargs": {"k": value}}) == slow.render(
        {"args": [value], "kwargs": {"k": value}})


@pytest.mark.parametrize("value", [
    {"args": [5], "kwargs": {}},
    {"args": ["Ada", 3.5, None], "kwargs": {"limit": 10, "strict": True}},
    [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
])
def test_book_arguments_render_as_their_repr(value: Any) -> None:
    renderer = Renderer()
    assert renderer.render(value) == (repr(value), type(value).__name__)
    assert renderer._nested_flat(value.values() if isinstance(value, dict) else value,
                                 renderer.max_chars, 0)

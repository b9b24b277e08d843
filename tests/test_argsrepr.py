"""The bridge's fast argsrepr is Celery's saferepr, character for character, on JSON data."""

from __future__ import annotations

from typing import Any

from celery.utils.saferepr import saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from taskhub.argsrepr import argsrepr

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=1_000, deadline=None, database=None)
@given(args=st.lists(json_values, max_size=3).map(tuple), maxsize=st.sampled_from([40, 256, 1024]))
def test_argsrepr_equals_saferepr(args: tuple[Any, ...], maxsize: int) -> None:
    assert argsrepr(args, maxsize) == saferepr(args, maxsize)


def test_values_that_are_not_json_still_get_saferepr() -> None:
    odd = ({1, 2}, b"\xff", {3: "x"})
    assert argsrepr(odd, 1024) == saferepr(odd, 1024)

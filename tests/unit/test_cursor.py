"""Cursors come back from clients: whatever one holds, decoding gives its values or InvalidInput."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.storage.cursor import decode_cursor, encode_cursor
from app.storage.errors import InvalidInput

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def raw_cursor(text: str) -> str:
    """A cursor holding exactly this JSON text, encoded as Ferry encodes its own."""
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def bindable(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    return False


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(json.dumps([2**63]), id="int64-max-plus-one"),
        pytest.param(json.dumps([-(2**63) - 1]), id="int64-min-minus-one"),
        pytest.param(json.dumps([10**300]), id="huge-int"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deeply-nested-list"),
        pytest.param('{"a":' * 5000 + "1" + "}" * 5000, id="deeply-nested-object"),
        pytest.param('["\\ud800"]', id="lone-surrogate"),
        pytest.param("[1" + "0" * 5000 + "]", id="more-digits-than-python-converts"),
    ],
)
def test_hostile_cursors_are_bad_requests(text: str) -> None:
    with pytest.raises(InvalidInput):
        decode_cursor(raw_cursor(text), (int,))
    with pytest.raises(InvalidInput):
        decode_cursor(raw_cursor(text), (str,))


def test_a_cursor_longer_than_any_genuine_one_is_refused_before_decoding() -> None:
    assert decode_cursor(encode_cursor(["n" * 255]), (str,)) == ["n" * 255]
    with pytest.raises(InvalidInput):
        decode_cursor(encode_cursor(["n" * 100_000]), (str,))


@pytest.mark.parametrize("value", [INT64_MIN, -1, 0, INT64_MAX])
def test_64_bit_integers_round_trip(value: int) -> None:
    assert decode_cursor(encode_cursor([value]), (int,)) == [value]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(st.integers() | st.text(), max_size=3),
    types=st.lists(st.sampled_from([int, str]), max_size=3),
)
def test_decoded_values_are_of_the_asked_types_and_bindable(values: list[object], types: list[type]) -> None:
    try:
        decoded = decode_cursor(encode_cursor(values), tuple(types))
    except InvalidInput:
        assert len(values) != len(types) or not all(
            isinstance(v, t) and bindable(v) for v, t in zip(values, types, strict=True)
        )
        return
    assert decoded == values
    assert all(isinstance(v, t) and bindable(v) for v, t in zip(decoded, types, strict=True))


@settings(max_examples=400, deadline=None)
@given(document=_JSON | st.binary(max_size=64).map(lambda b: b.decode("latin-1")), depth=st.integers(0, 3000))
def test_any_cursor_decodes_or_is_a_bad_request(document: object, depth: int) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    for candidate in (text, "[" * depth + text + "]" * depth):
        try:
            decoded = decode_cursor(raw_cursor(candidate), (int,))
        except InvalidInput:
            continue
        assert len(decoded) == 1 and bindable(decoded[0])

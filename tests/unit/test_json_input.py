"""Reading request bodies: strictly, integers exactly (beyond 64 bits too), depth measured."""

from __future__ import annotations

import orjson
import pytest

from contacts_ingest.model.json_input import (
    DEPTH_MESSAGE,
    INTEGER_MESSAGE,
    INVALID_JSON_MESSAGE,
    MAX_INTEGER_DIGITS,
    JsonRefused,
    nests_deeper_than,
    read_body,
)


def arrays(levels: int) -> str:
    return "[" * levels + "]" * levels


def refusal(raw: bytes) -> str:
    with pytest.raises(JsonRefused) as caught:
        read_body(raw)
    return caught.value.message


def test_bodies_nested_past_orjsons_1024_levels_are_refused_with_the_limit() -> None:
    # Shallower ones are read: the gateway refuses them past 64 levels once their own
    # rules were checked (tests/unit/test_gateway.py).
    assert nests_deeper_than(read_body(arrays(1024).encode()), 1023)
    for levels in (1025, 100_000):
        assert refusal(arrays(levels).encode()) == DEPTH_MESSAGE
        assert refusal(('{"a": ' * levels + "1" + "}" * levels).encode()) == DEPTH_MESSAGE
    assert DEPTH_MESSAGE == "Request body must not nest more than 64 levels deep"


def test_depth_counts_arrays_and_objects_not_the_scalars_inside() -> None:
    assert not nests_deeper_than({"a": [1, {"b": "c"}]}, 3)
    assert nests_deeper_than({"a": [1, {"b": {}}]}, 3)
    assert not nests_deeper_than("scalar", 0)
    # Wide is not deep, and walking it needs no recursion.
    assert not nests_deeper_than([[[]]] * 100_000, 3)
    assert nests_deeper_than(orjson.loads(arrays(900)), 899)


def test_invalid_json_is_still_invalid_json() -> None:
    for raw in (b"{", b'{"a": NaN}', b'{"a": "\\ud800"}', b"\xff", b'{"a": 1e999}'):
        assert refusal(raw) == INVALID_JSON_MESSAGE


@pytest.mark.parametrize(
    "number",
    [
        18446744073709551616,  # one past the largest unsigned 64-bit integer
        -9223372036854775809,  # one below the smallest signed one
        10**30,
        -(10**400),  # too large for a float: orjson refuses it outright
        10 ** (MAX_INTEGER_DIGITS - 1),  # the most digits Python converts
    ],
)
def test_integers_beyond_64_bits_are_read_exactly_wherever_they_are(number: int) -> None:
    text = str(number).encode()
    for raw, value in [
        (text, number),
        (b'{"customFields": {"n": [' + text + b', "x"]}}', {"customFields": {"n": [number, "x"]}}),
        (b'{"a": ' + text + b', "b": {"c": ' + text + b"}}", {"a": number, "b": {"c": number}}),
    ]:
        assert read_body(raw) == value


def test_integers_longer_than_python_converts_are_refused() -> None:
    assert INTEGER_MESSAGE == "Request body must not contain integers of more than 4300 digits"
    assert refusal(b'{"n": 1' + b"0" * MAX_INTEGER_DIGITS + b"}") == INTEGER_MESSAGE
    assert refusal(b"9" * 60_000) == INTEGER_MESSAGE


@pytest.mark.parametrize(
    "raw",
    [
        b"18446744073709551615",  # the largest unsigned 64-bit integer
        b"-9223372036854775808",  # the smallest signed one
        b'"123456789012345678901234567890"',  # digits in a string
        b'["\\"123456789012345678901234567890"]',  # after an escaped quote, still a string
        b"1.0000000000000000000000001",  # a decimal
        b"12345678901234567890e3",  # an exponent makes it a float
    ],
)
def test_what_orjson_reads_alone_is_read_as_orjson_reads_it(raw: bytes) -> None:
    assert read_body(raw) == orjson.loads(raw)
    assert type(read_body(raw)) is type(orjson.loads(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b"{123456789012345678901234567890: 1}",  # a number where a key belongs
        b"[0123456789012345678901234567890]",  # a leading zero
        b'{"a": "unterminated 123456789012345678901234567890}',
        b"[123456789012345678901234567890 123456789012345678901234567890]",
    ],
)
def test_invalid_json_with_long_integers_in_it_is_still_invalid(raw: bytes) -> None:
    assert refusal(raw) == INVALID_JSON_MESSAGE

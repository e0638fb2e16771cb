"""JSON as clients and producers send it: read strictly, integers exactly, nesting bounded.

Everything that touches a decoded body after its rules were checked recurses once per
level: encoding it again for Redis or PostgreSQL (the standard library's encoder;
orjson's gives up past 254 levels), pickling it for a worker's pool process. Python
allows about 1,000 levels of recursion, so both edges refuse a body nested deeper than
``MAX_DEPTH`` before that, checking it with a walk that does not recurse. 64 levels
hold any valid contact (customFields may nest 32 levels; a batch adds three above).

orjson reads an integer beyond 64 bits as a float (``1e30``), or refuses one too large
for a float. Such integers are read exactly instead, up to the 4,300 digits Python
converts (and PostgreSQL's JSON, psycopg and the worker's decoder keep): a body with a
longer one is refused.
"""

from __future__ import annotations

import re
import secrets
import sys
from typing import Any

import orjson

MAX_DEPTH = 64
# Python's own limit on converting between integers and text (sys.int_info).
MAX_INTEGER_DIGITS = sys.int_info.default_max_str_digits
SMALLEST_64_BIT = -(2**63)
LARGEST_64_BIT = 2**64 - 1

INVALID_JSON_MESSAGE = "Request body must be valid JSON"
DEPTH_MESSAGE = f"Request body must not nest more than {MAX_DEPTH} levels deep"
INTEGER_MESSAGE = f"Request body must not contain integers of more than {MAX_INTEGER_DIGITS} digits"

_CONTAINERS = (dict, list)
# What orjson says of arrays and objects nested past its own limit (1,024 levels); a
# unit test pins the wording.
_ORJSON_TOO_DEEP = "depth limit exceeded"
# Any integer beyond 64 bits has at least 19 digits (-9223372036854775809): looked for
# as 19 zeros once every digit reads as a zero (a tenth of a regular expression's time).
_DIGITS_AS_ZEROS = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGIT_RUN = b"0" * 19
# A string (taken whole, so digits inside it are not numbers) or a whole number.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?', re.S)


class JsonRefused(ValueError):
    """The text is not JSON the service reads; ``message`` says why, as the API words it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def read_body(raw: bytes) -> object:
    """The JSON value of a request body.

    Strict (RFC 8259: no ``NaN``, valid UTF-8, no lone surrogates; of duplicate keys
    the last wins); integers exact, beyond 64 bits too. Raises :class:`JsonRefused`
    for invalid JSON, for nesting past orjson's 1,024 levels and for integers of more
    than ``MAX_INTEGER_DIGITS`` digits. Callers bound the depth (``nests_deeper_than``)
    once the body's own rules were checked.
    """
    # Bodies without a run of 19 digits (nearly all) are spared the tokenizing.
    integers: dict[str, int] = {}
    if raw.translate(_DIGITS_AS_ZEROS).find(_LONG_DIGIT_RUN) != -1:
        raw = _set_aside_long_integers(raw, integers)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        too_deep = exc.msg.startswith(_ORJSON_TOO_DEEP)
        raise JsonRefused(DEPTH_MESSAGE if too_deep else INVALID_JSON_MESSAGE) from None
    return _put_back(value, integers) if integers else value


def _set_aside_long_integers(raw: bytes, integers: dict[str, int]) -> bytes:
    """``raw`` with each integer beyond 64 bits replaced by a string naming it in
    ``integers`` (under a random prefix no client can know), for orjson to read."""
    prefix = secrets.token_hex(16)

    def set_aside(match: re.Match[bytes]) -> bytes:
        token = match.group()
        if token[:1] == b'"' or any(mark in token for mark in (b".", b"e", b"E")):
            return token
        digits = len(token) - token.startswith(b"-")
        if digits > 1 and token.lstrip(b"-")[:1] == b"0":
            return token  # a leading zero is invalid JSON: orjson says so
        if digits > MAX_INTEGER_DIGITS:
            raise JsonRefused(INTEGER_MESSAGE)
        number = int(token)
        if SMALLEST_64_BIT <= number <= LARGEST_64_BIT:
            return token
        name = f"{prefix}:{len(integers)}"
        integers[name] = number
        return b'"' + name.encode() + b'"'

    return _TOKEN.sub(set_aside, raw)


def _put_back(value: Any, integers: dict[str, int]) -> Any:
    """``value`` with the strings ``_set_aside_long_integers`` left replaced by their
    integers. Walks without recursion."""
    if type(value) is str:
        return integers.get(value, value)
    containers: list[Any] = [value] if type(value) in _CONTAINERS else []
    while containers:
        container = containers.pop()
        if type(container) is dict and not integers.keys().isdisjoint(container):
            raise JsonRefused(INVALID_JSON_MESSAGE)  # a number where a key belongs
        for key, child in container.items() if type(container) is dict else enumerate(container):
            if type(child) is str:
                if child in integers:
                    container[key] = integers[child]  # a value, not a key: iteration is safe
            elif type(child) in _CONTAINERS:
                containers.append(child)
    return value


def could_nest_deeper_than(text: str | bytes, levels: int) -> bool:
    """False when ``text`` has too few brackets to nest past ``levels``: a cheap first look
    that spares most bodies the walk of :func:`nests_deeper_than`."""
    if isinstance(text, str):
        return text.count("[") + text.count("{") > levels
    return text.count(b"[") + text.count(b"{") > levels


def nests_deeper_than(value: object, levels: int) -> bool:
    """Whether decoded JSON holds arrays or objects more than ``levels`` deep (the
    outermost one is level 1). Walks one level at a time, without recursion."""
    containers: list[Any] = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while containers:
        depth += 1
        if depth > levels:
            return True
        containers = [
            child
            for container in containers
            for child in (container.values() if type(container) is dict else container)
            if type(child) in _CONTAINERS  # decoded JSON: exactly these types
        ]
    return False

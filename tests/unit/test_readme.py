"""The README's list of 400 messages is the list the model and the gateway give."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contacts_ingest.model.contact import (
    ContactInvalid,
    ContactRequest,
    SocialProfiles,
    parse_batch,
    parse_contact,
)
from contacts_ingest.model.json_input import MAX_INTEGER_DIGITS, JsonRefused, read_body
from tests.unit.harness import ALICE, JSON, WEBHOOK_ENDPOINT, make_harness, signed

README = Path(__file__).resolve().parents[2] / "README.md"
# Placeholders the README writes in a message, and what each stands for.
PLACEHOLDERS = {"<field>": r"[A-Za-z]+(\.[a-z]+)?", "<key>": r"[a-z]+", "<n>": r"\d+"}


def documented_400_messages() -> dict[str, re.Pattern[str]]:
    """Each message in the 400 row of the README's table of answers, as a pattern."""
    [row] = [line for line in README.read_text().splitlines() if line.startswith("| 400 |")]
    messages = [text for text in re.findall(r"`([^`]+)`", row) if " " in text]
    patterns = {}
    for message in messages:
        pattern = re.escape(message)
        for placeholder, meaning in PLACEHOLDERS.items():
            pattern = pattern.replace(re.escape(placeholder), meaning)
        patterns[message] = re.compile(pattern)
    return patterns


def _model_refusals(body: Any) -> Iterator[str]:
    try:
        parse_contact(body)
    except ContactInvalid as invalid:
        yield from (error["message"] for error in invalid.errors)


def model_messages() -> Iterator[str]:
    """What the model answers for each way of breaking each of its fields."""
    email = {"email": "a@example.com"}
    bad_values: list[Any] = [7, True, "x" * 1000, "nul \x00", {}, [], {"a": 1}, "nope"]
    for name, spec in ContactRequest.model_fields.items():
        for value in bad_values:
            yield from _model_refusals({**email, (spec.alias or name): value})
    for network in SocialProfiles.model_fields:
        for value in bad_values:
            yield from _model_refusals({**email, "socialProfiles": {network: value}})
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"k": deep}
    for fields in (
        {str(i): i for i in range(21)},
        {"big": "x" * 9000},
        deep,
        {"a\x00": 1},
        {"nan": float("nan")},  # only an internal producer can send one
    ):
        yield from _model_refusals({**email, "customFields": fields})
    yield from _model_refusals({})
    yield from _model_refusals(["not", "an", "object"])
    batches: list[object] = [[], {"contacts": []}, {"contacts": [email] * 1001}, {"contacts": "x"}]
    for batch in batches:
        try:
            parse_batch(batch)
        except ContactInvalid as invalid:
            yield invalid.message


def json_messages() -> Iterator[str]:
    for raw in (b"{", b'{"a": NaN}', b"[" * 2000 + b"]" * 2000, b"9" * (MAX_INTEGER_DIGITS + 1)):
        with pytest.raises(JsonRefused) as refused:
            read_body(raw)
        yield refused.value.message


def gateway_messages() -> Iterator[str]:
    """What the gateway itself answers 400 with, beyond the model's rules."""
    gw = make_harness()
    body = json.dumps({"email": "a@example.com"}).encode()
    too_deep = json.dumps({"email": "a@example.com", "x": json.loads("[" * 70 + "]" * 70)})
    answers = [
        gw.post({"email": "a@example.com"}, headers={"Idempotency-Key": "x" * 300}),
        gw.post({"email": "a@example.com"}, params={"upsert": "maybe"}),
        gw.client.simulate_post("/io/contacts/contacts", body=too_deep, headers={**ALICE, **JSON}),
        gw.client.simulate_post(
            "/io/contacts/contacts/batch", json={"contacts": []}, headers=ALICE
        ),
        gw.client.simulate_post(
            f"/io/contacts/webhooks/{WEBHOOK_ENDPOINT}",
            body=body,
            headers=signed(body, msg_id="m" * 300),
        ),
        gw.client.simulate_post(
            f"/io/contacts/webhooks/{WEBHOOK_ENDPOINT}",
            body=body,
            headers=signed(body),
            params={"upsert": "1"},
        ),
    ]
    for answer in answers:
        assert answer.status_code == 400, answer.json
        yield answer.json["error"]
        yield from (error["message"] for error in answer.json.get("errors", []))


def every_400_message() -> set[str]:
    return {*model_messages(), *json_messages(), *gateway_messages()}


def test_every_400_message_the_model_and_the_gateway_give_is_in_the_readme() -> None:
    documented = documented_400_messages()
    undocumented = {
        message
        for message in every_400_message()
        if not any(pattern.fullmatch(message) for pattern in documented.values())
    }
    assert undocumented == set()


def test_every_400_message_in_the_readme_is_one_they_give() -> None:
    given = every_400_message()
    stale = {
        message
        for message, pattern in documented_400_messages().items()
        if not any(pattern.fullmatch(text) for text in given)
    }
    assert stale == set()


def test_readme_examples_quote_urls_with_a_query() -> None:
    # zsh reads an unquoted ? as a file pattern ("no matches found").
    for line in README.read_text().splitlines():
        for url in re.findall(r"(?<!['\"/])\bhttp://\S+\?\S*", line):
            pytest.fail(f"unquoted URL with a query: {url} in {line!r}")

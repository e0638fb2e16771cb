"""The fast email check against its oracle, email-validator on the whole address.

Every address gets exactly ``validate_email``'s verdict, message and normalized form,
and ``parse_contact`` answers every body as it did when it called ``validate_email``
directly; the remembered domain verdicts stay within their bound and cannot be steered
by what a client sends. bench/validation.py runs the same comparison on 100,000+
addresses.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable
from typing import Any
from unittest import mock

from email_validator.syntax import validate_email_domain_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contacts_ingest.model import email_syntax
from contacts_ingest.model.email_syntax import DomainVerdicts, decide_domain, normalize_email
from tests.conftest import REQUEST_FIELDS
from tests.email_grammar import (
    addresses,
    corpus,
    domains,
    email_validator_directly,
    email_validator_verdict,
    local_parts,
    outcome,
    parse_outcome,
)

CORPUS = corpus()
GENERATED = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fast(domains: DomainVerdicts | None = None) -> Callable[[str], str]:
    """The fast path as contact.py calls it (one cache per process), or on ``domains``."""
    if domains is None:
        return normalize_email
    return lambda address: normalize_email(address, domains)


def disagreements(addresses: list[str], domains: DomainVerdicts | None = None) -> list[Any]:
    """The addresses the fast path answers differently from email-validator, with both."""
    found = []
    for address in addresses:
        expected = outcome(email_validator_verdict, address)
        got = outcome(fast(domains), address)
        if got != expected:
            found.append((address, expected, got))
    return found


def test_the_corpus_gets_email_validators_verdict_message_and_normalized_form() -> None:
    assert len(CORPUS) > 5000
    assert disagreements(CORPUS) == []


def test_verdicts_stay_exact_while_a_tiny_cache_evicts_at_every_address() -> None:
    assert disagreements(CORPUS[::3], DomainVerdicts(max_entries=2)) == []


@GENERATED
@given(
    st.lists(local_parts, min_size=20, max_size=20),
    st.lists(domains, min_size=20, max_size=20),
    st.lists(addresses, max_size=40),
)
def test_generated_addresses_get_email_validators_verdict(
    locals_: list[str], domains_: list[str], others: list[str]
) -> None:
    # Every local part at every domain: each domain verdict is reused with 20 local parts.
    crossed = [local + "@" + domain for local in locals_ for domain in domains_]
    assert disagreements(crossed + others) == []


def test_parse_contact_answers_each_corpus_address_as_before() -> None:
    bodies = [{"email": address, "firstName": "Bob"} for address in CORPUS[::2]]
    now = [parse_outcome(body) for body in bodies]
    with email_validator_directly():
        before = [parse_outcome(body) for body in bodies]
    assert now == before


emails = addresses | st.none() | st.integers() | st.lists(st.text(max_size=5), max_size=2)
field_values = st.none() | st.text(max_size=30) | st.integers() | st.just({"twitter": "@b"})
bodies = st.builds(
    lambda email, rest: {**rest, "email": email} if email is not None else rest,
    emails,
    st.dictionaries(st.sampled_from(REQUEST_FIELDS), field_values, max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_parse_contact_answers_any_body_as_before(body: dict[str, Any]) -> None:
    now = parse_outcome(body)
    with email_validator_directly():
        assert now == parse_outcome(body)


def test_a_domain_is_decided_once_while_remembered() -> None:
    cache = DomainVerdicts()
    with mock.patch.object(
        email_syntax,
        "validate_email_domain_name",
        wraps=validate_email_domain_name,
    ) as decide:
        for local in ("ann", "bob", "Carol.Smith", "info"):
            normalize_email(f"{local}@acme-widgets.co.uk", cache)
        assert normalize_email("dan@Acme-Widgets.co.uk", cache) == "dan@acme-widgets.co.uk"
    assert decide.call_count == 2  # the domain as sent is the key: two spellings, two
    assert len(cache) == 2


def test_the_cache_holds_at_most_its_entries() -> None:
    cache = DomainVerdicts(max_entries=100)
    for i in range(1000):
        assert normalize_email(f"bob@company{i}.com", cache) == f"bob@company{i}.com"
    assert len(cache) == 100
    assert normalize_email("bob@company0.com", cache) == "bob@company0.com"


def test_the_cache_holds_at_most_its_bytes_measured_by_tracemalloc() -> None:
    limit = 64 * 1024
    # Short and long names, internationalised ones, and refusals with long messages.
    private_use = "".join(chr(0xE000 + k) for k in range(120))  # each named in the message
    shapes = ["c{}.com", "{}" + "é" * 200 + ".de", "x{}.\U0001f600.io", "{}" + private_use]
    decide_domain("warm.up.example.com")  # the library's own lazy imports and tables
    cache = DomainVerdicts(max_entries=10**6, max_bytes=limit)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(800):
            # The key is built here so that tracemalloc sees it; only the cache keeps it.
            cache.verdict(shapes[i % len(shapes)].format(f"n{i:05}"))
            if i % 100 == 99:
                held = tracemalloc.get_traced_memory()[0] - before
                assert held <= cache.bytes <= limit
    finally:
        tracemalloc.stop()
    assert cache.bytes > 0.9 * limit  # it did fill up


def test_what_one_client_sends_cannot_change_what_another_is_told() -> None:
    cache = DomainVerdicts(max_entries=64)
    victims = ["bob@example.com", "info@example.com", "bob@münchen.de", "bob@xn--mnchen-3ya.de"]
    lookalikes = [
        *(
            "EXAMPLE.com",
            "example.com.",
            "ex\u0430mple.com",
            "example\u3002com",
            "\uff45xample.com",
        ),
        *("xn--exmple-cua.com", "example..com", "example.com\u0301", "MÜNCHEN.DE", "münchen.de."),
        *("xn--mnchen-3ya.de.", "xn--mnchen-3yb.de", "münchen\uff0ede", "example.localhost"),
    ]
    told = [outcome(email_validator_verdict, victim) for victim in victims]
    floods = []
    for round_ in range(3):
        for lookalike in lookalikes:
            sent = "x@" + lookalike
            assert outcome(fast(cache), sent) == outcome(email_validator_verdict, sent)
        assert [outcome(fast(cache), victim) for victim in victims] == told
        floods += [f"flood{round_}-{i}.com" for i in range(100 * round_)]
        for domain in floods[-100 * round_ :]:  # new domains evict everyone's verdicts
            normalize_email("x@" + domain, cache)
        assert [outcome(fast(cache), victim) for victim in victims] == told
    # Whatever came in, each verdict the cache gives is the library's on its own key.
    for key in [*lookalikes, *floods, "example.com", "münchen.de"]:
        assert cache.verdict(key) == decide_domain(key)


def test_threads_checking_at_once_get_exact_verdicts_within_the_bound() -> None:
    cache = DomainVerdicts(max_entries=50)
    sample = [f"u{i}@shared{i % 80}.com" for i in range(400)] + CORPUS[:400]
    expected = [outcome(email_validator_verdict, address) for address in sample]
    failures: list[Any] = []

    def check() -> None:
        got = [outcome(fast(cache), address) for address in sample]
        if got != expected:
            failures.append(got)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(cache) <= 50

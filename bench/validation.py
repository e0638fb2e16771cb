"""Validation cost: ``parse_contact`` with email-validator on every address (as before)
against the fast path that decides each domain once, on the same bodies in one run;
and the differential check of the fast path on 100,000+ generated addresses.

    python bench/validation.py [--quick]     (also part of bench/run.py)
    python bench/validation.py --pipeline [--tree PATH]


Corpora (fixed seeds): *realistic*, 60 % of addresses at ten large mailbox providers and
the rest at 20,000 distinct company domains (2 % internationalised); *adversarial*,
every address at a domain never seen before. The fast path starts each round with an
empty cache: its first pass over the realistic corpus meets every domain for the first
time, its second pass is the steady state of a long-running process. Figures are CPU
µs per contact of this process, the least of three rounds.

``--pipeline`` measures what validation moves downstream, for the code of the checkout
at PATH (default this one; run it on two checkouts in turn to compare them): the CPU
of ``contacts-ingest worker --concurrency 2`` per bulk contact, and of ``serve --workers
2`` per request under ``wrk -t2 -c32``, both process trees as psutil counts them. CPU
per unit varies far less than throughput on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from contacts_ingest.model import contact  # noqa: E402
from contacts_ingest.model.contact import parse_contact  # noqa: E402
from contacts_ingest.model.email_syntax import (  # noqa: E402
    DOMAIN_CACHE_MAX_BYTES,
    DOMAIN_CACHE_MAX_ENTRIES,
    DomainVerdicts,
    normalize_email,
)
from contacts_ingest.producer import ContactProducer  # noqa: E402
from tests.email_grammar import (  # noqa: E402
    addresses,
    corpus,
    domains,
    email_validator_directly,
    email_validator_verdict,
    local_parts,
    outcome,
    parse_outcome,
)

PROVIDERS = {  # share of the provider addresses
    "gmail.com": 40, "yahoo.com": 14, "outlook.com": 10, "hotmail.com": 9, "icloud.com": 8,
    "aol.com": 5, "gmx.de": 4, "yahoo.co.uk": 4, "proton.me": 3, "mail.ru": 3,
}  # fmt: skip
FIRST = ["anna", "bob", "carla", "dmitri", "emma", "farid", "grace", "hugo", "ines",
         "jonas", "kim", "lena", "marco", "nora"]  # fmt: skip
LAST = ["smith", "garcia", "muller", "rossi", "kowalski", "nguyen", "okafor", "tanaka",
        "dubois", "silva", "jensen"]  # fmt: skip
WORDS = ["acme", "north", "blue", "river", "stone", "bright", "global", "metro", "alpha",
         "green", "urban", "prime", "summit"]  # fmt: skip
INTL_WORDS = ["müller", "café", "bäckerei", "señor", "zürich", "łódź", "straße", "ñandú"]
TLDS = ["com", "com", "com", "net", "org", "io", "de", "co.uk", "fr", "nl", "com.au"]


def _contact(rng: random.Random, domain: str) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randrange(100)}",
         f"{first}.{last}+news", f"{first}{rng.randrange(1000)}"]
    )  # fmt: skip
    if rng.random() < 0.1:
        local = local.capitalize()
    return {"email": f"{local}@{domain}", "firstName": first.title(), "lastName": last.title()}


def company_domain(rng: random.Random, n: int) -> str:
    words = INTL_WORDS if n % 50 == 0 else WORDS  # 2 % internationalised
    return f"{rng.choice(words)}-{rng.choice(WORDS)}{n}.{rng.choice(TLDS)}"


def realistic(size: int, seed: int = 15) -> list[dict[str, Any]]:
    """60 % at ten providers, the rest spread evenly over 20,000 company domains."""
    rng = random.Random(seed)
    companies = [company_domain(rng, n) for n in range(20_000)]
    providers, weights = list(PROVIDERS), list(PROVIDERS.values())
    bodies = []
    for _ in range(size):
        at_provider = rng.random() < 0.6
        domain = rng.choices(providers, weights)[0] if at_provider else rng.choice(companies)
        bodies.append(_contact(rng, domain))
    return bodies


def adversarial(size: int, seed: int = 16) -> list[dict[str, Any]]:
    """Every address at a domain of its own."""
    rng = random.Random(seed)
    return [_contact(rng, f"x{rng.getrandbits(40):x}-{n}.{rng.choice(TLDS)}") for n in range(size)]


def _seconds(bodies: list[dict[str, Any]], outcomes: list[Any] | None = None) -> float:
    # CPU time of this process: other work on a shared machine inflates it far less
    # than it does the wall clock.
    started = time.process_time()
    for body in bodies:  # every body here is valid
        parse_contact(body)
    elapsed = time.process_time() - started
    if outcomes is not None:
        outcomes.extend(parse_outcome(body) for body in bodies)
    return elapsed


def _with_fresh_cache() -> tuple[Any, DomainVerdicts]:
    cache = DomainVerdicts()
    fast = functools.partial(normalize_email, domains=cache)
    return mock.patch.object(contact, "normalize_email", fast), cache


def time_corpus(bodies: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """µs per contact: before; the fast path's first pass (empty cache) and second."""
    before, cold, warm = [], [], []
    before_outcomes: list[Any] = []
    after_outcomes: list[Any] = []
    for round_ in range(rounds):
        keep = round_ == 0  # the answers of one round, compared below
        with email_validator_directly():
            before.append(_seconds(bodies, before_outcomes if keep else None))
        patch, cache = _with_fresh_cache()
        with patch:
            cold.append(_seconds(bodies, after_outcomes if keep else None))
            warm.append(_seconds(bodies))
    if before_outcomes != after_outcomes:
        raise SystemExit("parse_contact answered some body differently from before")

    def per_contact(samples: list[float]) -> float:
        return round(min(samples) / len(bodies) * 1e6, 2)  # the least disturbed round

    result = {
        "contacts": len(bodies),
        "domains": len({str(body["email"]).rpartition("@")[2] for body in bodies}),
        "before_us": per_contact(before),
        "after_first_pass_us": per_contact(cold),
        "after_steady_us": per_contact(warm),
        "cache_entries": len(cache),
        "cache_mib": round(cache.bytes / 2**20, 2),
    }
    result["speedup_first_pass"] = round(result["before_us"] / result["after_first_pass_us"], 2)
    result["speedup_steady"] = round(result["before_us"] / result["after_steady_us"], 2)
    return result


def differential(examples: int) -> dict[str, int]:
    """The fast path against email-validator on generated addresses and the corpus."""
    checked = 0
    wrong: list[Any] = []

    def compare(batch: list[str], check: Callable[[str], str] = normalize_email) -> None:
        nonlocal checked
        for address in batch:
            expected = outcome(email_validator_verdict, address)
            if outcome(check, address) != expected:
                wrong.append((address, expected, outcome(check, address)))
        checked += len(batch)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(local_parts, min_size=20, max_size=20),
        st.lists(domains, min_size=20, max_size=20),
        st.lists(addresses, min_size=20, max_size=40),
    )
    def generated(locals_: list[str], domains_: list[str], others: list[str]) -> None:
        compare([local + "@" + domain for local in locals_ for domain in domains_] + others)

    generated()
    fixed = corpus()
    compare(fixed)
    tiny = DomainVerdicts(max_entries=2)
    compare(fixed, functools.partial(normalize_email, domains=tiny))
    if wrong:
        raise SystemExit(f"{len(wrong)} addresses answered differently, e.g. {wrong[:3]!r}")
    return {"addresses": checked, "disagreements": 0}


def measure(quick: bool = False) -> dict[str, Any]:
    """Every figure of this benchmark; raises SystemExit on any disagreement."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "cache_bound": {"entries": DOMAIN_CACHE_MAX_ENTRIES, "bytes": DOMAIN_CACHE_MAX_BYTES},
        "differential": differential(80 if quick else 250),
        "realistic": time_corpus(realistic(100_000 if quick else 200_000), 3),
        "adversarial": time_corpus(adversarial(20_000 if quick else 50_000), 3),
    }
    adversarial_ = results["adversarial"]
    adversarial_["ratio"] = round(
        adversarial_["after_first_pass_us"] / adversarial_["before_us"], 2
    )
    results["seconds"] = round(time.monotonic() - started)
    return results


def rows(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The benchmark table's rows for these figures."""
    real, adv, diff = figures["realistic"], figures["adversarial"], figures["differential"]
    return [
        (
            f"parse_contact µs per contact, realistic corpus ({real['contacts']:,} contacts,"
            f" {real['domains']:,} domains)",
            f"{real['after_steady_us']} steady, {real['after_first_pass_us']} first pass",
            f"email-validator on every address: {real['before_us']};"
            f" {real['speedup_steady']}x / {real['speedup_first_pass']}x",
            "≥ 5x (about 10 µs)",
        ),
        (
            f"parse_contact µs per contact, every address at a new domain ({adv['contacts']:,})",
            f"{adv['after_first_pass_us']}",
            f"email-validator on every address: {adv['before_us']}; ratio {adv['ratio']}",
            "no slower",
        ),
        (
            "fast email check against email-validator",
            f"{diff['disagreements']} disagreements",
            f"{diff['addresses']:,} generated and corpus addresses",
            "0",
        ),
    ]


def pipeline(tree: Path, bulk_jobs: int = 30) -> dict[str, Any]:
    """CPU of the worker per bulk contact and of the gateway per request, code of ``tree``."""
    # The benchmark's stack: its own database, prefix and queues.
    from bench.load import cpu_seconds, wrk
    from bench.stack import RssSampler, Stack, gateway
    from bench.worker import drain_rate

    os.environ["PYTHONPATH"] = str(tree)  # the processes below run that checkout's code
    stack = Stack()
    sampler = RssSampler()
    try:
        worker = stack.worker()
        time.sleep(8)  # started and idle
        before = cpu_seconds(worker.pid)
        producer = ContactProducer(stack.settings())
        for b in range(bulk_jobs):
            producer.enqueue_batch(
                "bench-batch",
                [{"email": f"b{b}-{i}@example.com", "firstName": "Batch"} for i in range(1000)],
            )
        jobs_per_s, finished = drain_rate(stack, "bench-batch", bulk_jobs, 600)
        worker_cpu = cpu_seconds(worker.pid) - before
        stack.stop(worker)
        key = stack.key("bench-gateway")
        with gateway(stack, sampler) as served:
            wrk(served.url, key, 2, 16)  # warm-up
            before = cpu_seconds(served.pid)
            load = wrk(served.url, key, 15, 32)
            gateway_cpu = cpu_seconds(served.pid) - before
    finally:
        sampler.close()
        stack.close()
    return {
        "tree": str(tree),
        "worker_cpu_us_per_bulk_contact": round(worker_cpu / (finished * 1000) * 1e6, 1),
        "worker_bulk_contacts_per_s": round(jobs_per_s * 1000),
        "gateway_cpu_us_per_request": round(gateway_cpu / load["requests"] * 1e6, 1),
        "gateway_requests_per_s": load["rps"],
        "gateway_non_2xx": load["non_2xx"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="validation cost, before and after")
    parser.add_argument("--quick", action="store_true", help="smaller corpora")
    parser.add_argument(
        "--pipeline", action="store_true", help="worker and gateway CPU per contact instead"
    )
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout --pipeline runs")
    args = parser.parse_args()
    figures = pipeline(args.tree.resolve()) if args.pipeline else measure(args.quick)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

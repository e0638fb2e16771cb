"""Many clients racing to create the same contact: one contact, and codes that say who won."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.e2e.conftest import create_key, wait_final
from tests.faults.conftest import Scenario

pytestmark = pytest.mark.faults


def race(scenario: Scenario, email: str, upserts: list[bool]) -> dict[str, int]:
    """Post one create or upsert per entry of ``upserts`` at once; job id -> final code."""
    scenario.worker("a")
    scenario.worker("b")
    _, base = scenario.gateway()
    headers = {"Authorization": f"Bearer {create_key(scenario.env, scenario.user)}"}

    def post(upsert: bool) -> str:
        answer = requests.post(
            f"{base}/io/contacts/contacts",
            json={"email": email, "firstName": "Racer"},
            params={"upsert": "true"} if upsert else None,
            headers=headers,
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["data"]["job_id"])

    with ThreadPoolExecutor(max_workers=len(upserts)) as pool:
        job_ids = list(pool.map(post, upserts))
    finals = [wait_final(base, headers, job_id) for job_id in job_ids]
    return {
        job_id: int((final["result"] or final["error"])["code"])
        for job_id, final in zip(job_ids, finals, strict=True)
    }


def test_racing_creates_make_one_contact_and_every_other_create_gets_409(
    scenario: Scenario,
) -> None:
    codes = race(scenario, "race@example.com", [False] * 24)
    assert sorted(codes.values()) == [201] + [409] * 23
    scenario.audit(codes, {"race@example.com": 1})


def test_racing_creates_and_upserts_make_one_contact(scenario: Scenario) -> None:
    upserts = [False, True] * 12
    codes = race(scenario, "mixed@example.com", upserts)
    in_order = list(codes.values())
    assert in_order.count(201) == 1
    assert {c for c, up in zip(in_order, upserts, strict=True) if not up} <= {201, 409}
    assert {c for c, up in zip(in_order, upserts, strict=True) if up} <= {201, 200}
    # An upsert accepted after the newest applied one writes (version + 1); one accepted
    # earlier but delivered later is superseded and writes nothing.
    [contact] = scenario.contacts().values()
    assert 1 <= contact["version"] <= 1 + in_order.count(200)
    scenario.audit(codes, {"mixed@example.com": contact["version"]})

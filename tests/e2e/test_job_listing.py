"""Finding one's jobs through the real gateway and worker: the listing and its cursors,
and a job read that waits for the outcome."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import unique
from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e


def test_a_user_finds_every_job_of_theirs_and_the_failed_ones(service: Service) -> None:
    _, auth = service.new_user()
    _, other = service.new_user()
    service.post(other, {"email": "someone-elses@example.com"})
    emails = [f"{unique('l')}@example.com" for _ in range(7)]
    posted = [service.post(auth, {"email": e}).json()["data"]["job_id"] for e in emails]
    failed = service.post(auth, {"email": emails[0]}).json()["data"]["job_id"]  # a 409
    for job_id in [*posted, failed]:
        service.wait_final(auth, job_id)

    seen: list[str] = []
    params: dict[str, str] = {"limit": "3"}
    while True:
        page = requests.get(
            f"{service.base}/io/contacts/jobs", params=params, headers=auth, timeout=10
        ).json()
        seen += [job["job_id"] for job in page["data"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [failed, *posted[::-1]]

    failures = requests.get(
        f"{service.base}/io/contacts/jobs", params={"status": "failed"}, headers=auth, timeout=10
    ).json()
    assert [job["job_id"] for job in failures["data"]] == [failed]
    assert failures["data"][0]["error"]["code"] == 409


def test_a_bad_listing_parameter_is_a_400_naming_it(service: Service) -> None:
    _, auth = service.new_user()
    answer = requests.get(
        f"{service.base}/io/contacts/jobs", params={"since": "last week"}, headers=auth, timeout=10
    )
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["field"] == "since"


def test_a_job_read_with_prefer_wait_answers_with_the_outcome(service: Service) -> None:
    _, auth = service.new_user()
    job_id = service.post(auth, {"email": f"{unique('w')}@example.com"}).json()["data"]["job_id"]
    answer = requests.get(
        f"{service.base}/io/contacts/jobs/{job_id}",
        headers={**auth, "Prefer": "wait=10"},
        timeout=20,
    )
    assert answer.json()["data"]["status"] == "succeeded"
    assert answer.headers["Preference-Applied"] == "wait=10"

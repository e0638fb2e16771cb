"""PostgreSQL and Redis go down under load: no job that got a 202 is lost or doubled."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import requests

from tests.e2e.conftest import create_key
from tests.faults.conftest import Scenario, wait_until

pytestmark = pytest.mark.faults


@dataclass
class Answer:
    started: float
    ended: float
    code: int | None  # None: no HTTP answer at all
    job_id: str | None
    email: str


@dataclass
class SteadyLoad:
    """Posts distinct contacts at a steady pace from one thread, recording every answer."""

    base: str
    headers: dict[str, str]
    interval: float = 0.02
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        session = requests.Session()
        i = 0
        while not self._stop.is_set():
            i += 1
            email = f"load{i}@example.com"
            started = time.monotonic()
            try:
                answer = session.post(
                    f"{self.base}/io/contacts/contacts",
                    json={"email": email, "firstName": "Load"},
                    headers=self.headers,
                    timeout=10,
                )
                code = answer.status_code
                job_id = answer.json()["data"]["job_id"] if code == 202 else None
            except requests.RequestException:
                code, job_id = None, None
            self.answers.append(Answer(started, time.monotonic(), code, job_id, email))
            time.sleep(self.interval)

    @contextmanager
    def running(self) -> Iterator[SteadyLoad]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)

    def accepted(self) -> dict[str, str]:
        """job id -> email, for every 202."""
        return {a.job_id: a.email for a in self.answers if a.code == 202 and a.job_id}


def loaded_service(scenario: Scenario) -> SteadyLoad:
    scenario.worker("w")
    _, base = scenario.gateway()
    headers = {"Authorization": f"Bearer {create_key(scenario.env, scenario.user)}"}
    return SteadyLoad(base, headers)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgresql_restarts_under_load_lose_nothing_and_fail_nothing(
    scenario: Scenario, mode: str
) -> None:
    load = loaded_service(scenario)
    with load.running():
        time.sleep(1.5)
        scenario.servers.postgres.restart(mode)
        time.sleep(1.5)
    # The gateway never writes PostgreSQL: it kept accepting throughout.
    assert {a.code for a in load.answers} == {202}
    accepted = load.accepted()
    assert len(accepted) > 50
    scenario.wait_drained(list(accepted), timeout=90)
    scenario.audit(dict.fromkeys(accepted, 201), {email: 1 for email in accepted.values()})


def test_redis_killed_and_restarted_from_its_append_only_file_loses_no_accepted_job(
    scenario: Scenario,
) -> None:
    load = loaded_service(scenario)
    private_redis = scenario.servers.redis
    with load.running():
        time.sleep(1.5)
        private_redis.kill()
        down_since = time.monotonic()
        time.sleep(2)
        back_at = time.monotonic()
        private_redis.start()
        wait_until(
            lambda: any(a.code == 202 and a.started > back_at for a in load.answers),
            "the gateway did not recover after Redis came back",
        )
        time.sleep(1)
    while_down = [a for a in load.answers if a.started > down_since and a.ended < back_at]
    assert while_down, "no request was made while Redis was down"
    assert {a.code for a in while_down} == {503}
    accepted = load.accepted()
    scenario.wait_drained(list(accepted), timeout=90)
    scenario.audit(dict.fromkeys(accepted, 201), {email: 1 for email in accepted.values()})

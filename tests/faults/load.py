"""A steady stream of creates against a real gateway, and the audit of what it got."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import requests

from tests.e2e.conftest import create_key
from tests.faults.conftest import Scenario


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


def audit_allowing_unanswered(
    scenario: Scenario,
    load: SteadyLoad,
    accepted: dict[str, str],
    may_have_queued: Callable[[Answer], bool],
) -> None:
    """The suite's audit of the ``accepted`` jobs (job id -> email), except that a
    request refused for which ``may_have_queued`` holds may have been queued all the
    same (Redis took it, then its answer was lost with the server or not confirmed by
    a replica in time): its contact may exist, written once. No other may."""
    uncertain = {a.email for a in load.answers if a.code != 202 and may_have_queued(a)}
    extra = {
        email: row["version"]
        for email, row in scenario.contacts().items()
        if email not in accepted.values()
    }
    assert set(extra) <= uncertain, set(extra) - uncertain
    scenario.audit(
        dict.fromkeys(accepted, 201), {**{email: 1 for email in accepted.values()}, **extra}
    )
    assert set(extra.values()) <= {1}, extra

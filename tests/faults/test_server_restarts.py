"""PostgreSQL and Redis go down under load: no job that got a 202 is lost or doubled."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI
from tests.faults.conftest import Scenario, wait_until
from tests.faults.load import audit_allowing_unanswered, loaded_service

pytestmark = pytest.mark.faults


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
    # A request in flight at the kill may have reached the append-only file before
    # Redis died with its answer unsent: the client saw a 503 for a job that runs after
    # the restart (a retry with the same Idempotency-Key answers that job). Nothing
    # started after the kill may exist.
    audit_allowing_unanswered(scenario, load, accepted, lambda a: a.started < down_since)


def test_an_import_rides_out_redis_killed_and_restarted_and_writes_each_row_once(
    scenario: Scenario, tmp_path: Path
) -> None:
    rows = 50_000
    path = tmp_path / "contacts.jsonl"
    path.write_text("".join(f'{{"email": "row{i}@example.com"}}\n' for i in range(rows)))
    scenario.worker("w")
    importer = subprocess.Popen(
        [CLI, "import", str(path), "--user", scenario.user],
        env=scenario.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(scenario.contacts()) > 0, "the import wrote nothing")
        scenario.servers.redis.kill()
        assert importer.poll() is None, "the import ended before Redis was killed"
        time.sleep(2)
        scenario.servers.redis.start()
        out, err = importer.communicate(timeout=300)
    finally:
        importer.kill()
    assert importer.returncode == 0, err
    assert out.splitlines() == [
        f"accepted {rows:>12,}",
        f"created  {rows:>12,}",
        "updated             0",
        "failed              0",
    ]
    stored = scenario.contacts()
    assert {email: row["version"] for email, row in stored.items()} == {
        f"row{i}@example.com": 1 for i in range(rows)
    }
    wait_until(lambda: scenario.in_flight() == 0, "messages still in flight after the import")

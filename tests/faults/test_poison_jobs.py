"""Poison jobs: one whose processing fails unexpectedly, one that kills its pool process.

Each is tried on its own, never again beside others, and after JOB_MAX_ATTEMPTS (5)
deliveries ends failed with 500 and is dead-lettered; the jobs queued beside it are
applied once, as usual. An operator's retry queues it again under its own id, and a
success then replaces the 500.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
from sqlalchemy import Engine, text

from tests.e2e.conftest import CLI, Process
from tests.faults.conftest import Scenario, jobs_held, wait_until

pytestmark = pytest.mark.faults

DEAD = {"code": 500, "message": "The job could not be processed"}


def cli(scenario: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "jobs", *args], env=scenario.env, capture_output=True, text=True, timeout=60
    )


def dead_list(scenario: Scenario) -> list[list[str]]:
    listed = cli(scenario, "dead", "--user", scenario.user)
    assert listed.returncode == 0, listed.stderr
    return [line.split("\t") for line in listed.stdout.splitlines()]


def enqueue(scenario: Scenario, emails: list[str]) -> dict[str, str]:
    """email -> job id, queued in this order before any worker runs."""
    return {email: scenario.producer.enqueue(scenario.user, {"email": email}) for email in emails}


@contextmanager
def refusing(engine: Engine, email: str) -> Iterator[None]:
    """PostgreSQL fails any insert of ``email`` with an error that is neither a broken
    rule nor transient (as a bug would)."""
    tag = email.split("@")[0].replace("-", "_")
    with engine.begin() as conn:
        conn.execute(text(f"""
            CREATE FUNCTION refuse_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'no'; END $$;
            CREATE TRIGGER refuse_{tag} BEFORE INSERT ON contacts FOR EACH ROW
              WHEN (NEW.email = '{email}') EXECUTE FUNCTION refuse_{tag}();
        """))  # fmt: skip
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER refuse_{tag} ON contacts"))
            conn.execute(text(f"DROP FUNCTION refuse_{tag}()"))


def test_a_job_failing_unexpectedly_is_dead_lettered_after_5_tries_and_retried_by_hand(
    scenario: Scenario,
) -> None:
    emails = [f"{name}-{scenario.user}@example.com" for name in ("a", "b", "bug", "c", "d")]
    poison_email = emails[2]
    with refusing(scenario.engine, poison_email):
        jobs = enqueue(scenario, emails)
        worker = scenario.worker("w", concurrency=1)  # one process: "a", then the rest together
        poison = jobs[poison_email]
        scenario.wait_drained(list(jobs.values()), timeout=90)
        rows = scenario.final_rows(list(jobs.values()))
        assert (rows[poison]["status"], rows[poison]["code"], rows[poison]["error"]) == (
            "failed", 500, DEAD,
        )  # fmt: skip
        neighbours = {jobs[e]: 201 for e in emails if e != poison_email}
        scenario.audit({**neighbours, poison: 500}, {e: 1 for e in emails if e != poison_email})

        [[job_id, user, attempts, error, failed_at]] = dead_list(scenario)
        assert (job_id, user, attempts, error) == (poison, scenario.user, "5", "ProgrammingError")
        assert failed_at
        log = worker.output()
        assert log.count("it is tried again alone") == 5
        assert "job dead-lettered" in log
        # Retried while the bug is still there: tried 5 times again, dead again.
        assert cli(scenario, "retry", poison).returncode == 0
        wait_until(
            lambda: worker.output().count("job dead-lettered") == 2,
            "the retried job was not dead-lettered again",
            timeout=60,
        )
        assert scenario.final_rows([poison])[poison]["error"] == DEAD
        assert [row[:3] for row in dead_list(scenario)] == [[poison, scenario.user, "5"]]

    # Fixed: the operator retries it, and its success replaces the 500.
    retried = cli(scenario, "retry", "--all")
    assert (retried.returncode, retried.stdout.split()) == (0, [poison]), retried.stderr
    wait_until(
        lambda: scenario.final_rows([poison]).get(poison, {}).get("code") == 201,
        "the retried job did not succeed",
    )
    assert dead_list(scenario) == []
    scenario.audit({**neighbours, poison: 201}, dict.fromkeys(emails, 1))
    again = cli(scenario, "retry", poison)
    assert again.returncode == 1
    assert "not a dead-lettered job" in again.stderr


def waiting_on(engine: Engine, job_id: str) -> dict[int, int]:
    """Client port -> backend pid of the sessions waiting for ``job_id``'s advisory lock."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a.client_port, a.pid FROM pg_locks l JOIN pg_stat_activity a"
                " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND NOT l.granted"
                " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(:j, 0)"
            ),
            {"j": job_id},
        )
        return {int(port): int(pid) for port, pid in rows}


def kill_the_process_applying(scenario: Scenario, worker: Process, job_id: str) -> bool:
    """SIGKILL the pool process whose session waits for ``job_id``'s lock, and end that
    session too (PostgreSQL would notice only once the lock came: meanwhile it would
    hold the locks of the job's neighbours). False if no pool process waits for it."""
    sessions = waiting_on(scenario.engine, job_id)
    for child in psutil.Process(worker.popen.pid).children():
        try:
            ports = {c.laddr.port for c in child.net_connections(kind="tcp")}
        except psutil.NoSuchProcess:
            continue
        for port in ports & set(sessions):
            os.kill(child.pid, signal.SIGKILL)
            with scenario.engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": sessions[port]})
            psutil.wait_procs([child], timeout=10)
            return True
    return False


def test_a_job_that_kills_its_pool_process_is_found_and_dead_lettered_alone(
    scenario: Scenario,
) -> None:
    emails = [f"{name}-{scenario.user}@example.com" for name in ("a", "b", "killer", "c", "d")]
    jobs = enqueue(scenario, emails)
    killer = jobs[emails[2]]
    kills = 0
    with jobs_held(scenario.engine, [killer]):
        # No redelivery while its message is in hand (the suite's visibility timeout is 3 s).
        worker = scenario.worker("w", concurrency=1, CELERY_VISIBILITY_TIMEOUT="600")
        # Each delivery of the killer waits on its lock: kill the process that applies
        # it, until the worker gives up on it and only records its failure.
        while "recording it as failed" not in worker.output():
            wait_until(
                lambda: (
                    bool(waiting_on(scenario.engine, killer))
                    or "recording it as failed" in worker.output()
                ),
                "the killer was not delivered again",
            )
            if "recording it as failed" not in worker.output():
                kills += kill_the_process_applying(scenario, worker, killer)
    assert kills == 5  # its first delivery (with its neighbours) and four alone
    scenario.wait_drained(list(jobs.values()), timeout=60)
    rows = scenario.final_rows(list(jobs.values()))
    assert rows[killer]["error"] == DEAD, (killer, {j: r["code"] for j, r in rows.items()})
    neighbours = {jobs[e]: 201 for e in emails if e != emails[2]}
    scenario.audit({**neighbours, killer: 500}, {e: 1 for e in emails if e != emails[2]})
    [[job_id, _, attempts, error, _]] = dead_list(scenario)
    assert (job_id, attempts, error) == (killer, "5", "WorkerLostError")
    assert worker.popen.poll() is None  # the worker lives on

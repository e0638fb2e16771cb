"""Workers killed, stopped or outrun at the worst moments: every job ends once, applied once."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.faults.conftest import (
    VISIBILITY_TIMEOUT,
    Scenario,
    family,
    jobs_held,
    sessions_waiting_on_a_job,
    sigkill,
    wait_until,
)

pytestmark = pytest.mark.faults


def past_the_visibility_timeout() -> None:
    time.sleep(VISIBILITY_TIMEOUT + 0.2)


def creates(scenario: Scenario, count: int, tag: str) -> tuple[list[str], dict[str, int]]:
    """Enqueue ``count`` creates of distinct contacts; return job ids and expected versions."""
    emails = [f"{tag}{i}@example.com" for i in range(count)]
    return [scenario.producer.enqueue(scenario.user, {"email": e}) for e in emails], {
        e: 1 for e in emails
    }


def test_a_pool_process_killed_mid_task_leaves_its_job_to_be_applied_once(
    scenario: Scenario,
) -> None:
    [job_id], versions = creates(scenario, 1, "child")
    worker = scenario.worker("w")
    with jobs_held(scenario.engine, [job_id]):
        wait_until(lambda: bool(sessions_waiting_on_a_job(scenario.engine)), "job not started")
        [port] = sessions_waiting_on_a_job(scenario.engine)
        [victim] = [
            child
            for child in psutil.Process(worker.popen.pid).children()
            if any(c.laddr.port == port for c in child.net_connections(kind="tcp"))
        ]
        os.kill(victim.pid, signal.SIGKILL)
    scenario.wait_drained([job_id])
    scenario.audit({job_id: 201}, versions)


def test_a_worker_killed_before_its_commit_has_its_jobs_redelivered_and_applied_once(
    scenario: Scenario,
) -> None:
    # Fewer jobs than the worker prefetches (2 processes x 4): all of them are in hand.
    job_ids, versions = creates(scenario, 6, "k")
    with jobs_held(scenario.engine, job_ids):
        doomed = scenario.worker("doomed")
        wait_until(lambda: len(sessions_waiting_on_a_job(scenario.engine)) == 2, "not started")
        wait_until(lambda: scenario.in_flight() == 6, "jobs not all taken")
        sigkill(doomed)
    assert scenario.finished(job_ids) == 0

    past_the_visibility_timeout()
    scenario.worker("rescue")
    scenario.wait_drained(job_ids)
    scenario.audit(dict.fromkeys(job_ids, 201), versions)


def test_a_worker_killed_after_its_commit_but_before_its_ack_changes_nothing_on_redelivery(
    scenario: Scenario,
) -> None:
    [job_id], versions = creates(scenario, 1, "acked")
    doomed = scenario.worker("doomed", concurrency=1)
    with jobs_held(scenario.engine, [job_id]):
        wait_until(lambda: bool(sessions_waiting_on_a_job(scenario.engine)), "job not started")
        # Writes to Redis now block, so after its commit the worker cannot clear the job's
        # record nor acknowledge the message: it is stuck exactly between the two.
        scenario.redis.client_pause(60_000, all=False)
    try:
        wait_until(lambda: scenario.finished([job_id]) == 1, "the job never committed")
        time.sleep(0.3)
        sigkill(doomed)
    finally:
        scenario.redis.client_unpause()
    before = scenario.final_rows([job_id])[job_id]
    assert scenario.in_flight() == 1  # committed, never acknowledged

    past_the_visibility_timeout()
    rescue = scenario.worker("rescue")
    wait_until(
        lambda: job_id in rescue.output() and "job already recorded" in rescue.output(),
        lambda: f"the job was not delivered again; {scenario.broker_state()}",
    )
    assert scenario.final_rows([job_id])[job_id] == before  # recognised as done: same outcome
    scenario.audit({job_id: 201}, versions)


def test_a_worker_killed_with_many_messages_prefetched_loses_none(scenario: Scenario) -> None:
    job_ids, versions = creates(scenario, 3000, "busy")
    doomed = scenario.worker("busy-doomed")
    wait_until(lambda: scenario.finished(job_ids) >= 40, "the worker never got going")
    sigkill(doomed)
    assert scenario.finished(job_ids) < len(job_ids)

    past_the_visibility_timeout()
    scenario.worker("busy-rescue")
    scenario.wait_drained(job_ids, timeout=90)
    scenario.audit(dict.fromkeys(job_ids, 201), versions)


def test_a_warm_shutdown_under_load_loses_nothing_and_doubles_nothing(
    scenario: Scenario,
) -> None:
    job_ids, versions = creates(scenario, 3000, "warm")
    worker = scenario.worker("warm")
    wait_until(lambda: scenario.finished(job_ids) >= 40, "the worker never got going")
    worker.popen.send_signal(signal.SIGTERM)  # Celery's warm shutdown
    # Usually a second; at worst billiard's pool processes wait 30 s for the parent
    # to read their last "done" notice before they exit.
    assert worker.popen.wait(timeout=60) == 0
    assert scenario.finished(job_ids) < len(job_ids)

    # No visibility timeout to wait for: a warm shutdown hands unstarted work back.
    scenario.worker("after-warm")
    scenario.wait_drained(job_ids, timeout=90)
    scenario.audit(dict.fromkeys(job_ids, 201), versions)


def test_a_job_outliving_the_visibility_timeout_runs_twice_at_once_with_one_effect(
    scenario: Scenario,
) -> None:
    [job_id], versions = creates(scenario, 1, "slow")
    with jobs_held(scenario.engine, [job_id]):
        workers = [scenario.worker(name, concurrency=1) for name in ("first", "second")]
        # The job outlives the visibility timeout inside its transaction; the message
        # is restored and the other worker takes it too: two deliveries in flight.
        wait_until(
            lambda: len(sessions_waiting_on_a_job(scenario.engine)) == 2,
            lambda: f"the job was not delivered a second time; {scenario.broker_state()}",
            timeout=VISIBILITY_TIMEOUT * 5,
        )
    scenario.wait_drained([job_id])
    wait_until(
        lambda: any("job already recorded" in worker.output() for worker in workers),
        "the second delivery did not find the first one's outcome",
    )
    scenario.audit({job_id: 201}, versions)


def test_an_older_upsert_redelivered_after_a_newer_one_keeps_the_newer_data(
    scenario: Scenario,
) -> None:
    email = "order@example.com"
    worker = scenario.worker("first")
    create = scenario.producer.enqueue(scenario.user, {"email": email, "firstName": "Ada"})
    scenario.wait_drained([create])
    older = scenario.producer.enqueue(
        scenario.user, {"email": email, "firstName": "Old", "company": "Old Co"}, upsert=True
    )
    with jobs_held(scenario.engine, [older]):
        wait_until(lambda: bool(sessions_waiting_on_a_job(scenario.engine)), "older not taken")
        newer = scenario.producer.enqueue(
            scenario.user, {"email": email, "firstName": "New"}, upsert=True
        )
        scenario.wait_drained([newer])  # the other pool process applies the newer upsert
        sigkill(worker)  # the older one dies in hand, to be delivered again

    past_the_visibility_timeout()
    scenario.worker("rescue")
    scenario.wait_drained([older])
    contact = scenario.contacts()[email]
    assert (contact["first_name"], contact["company"]) == ("New", "Old Co")
    scenario.audit({create: 201, newer: 200, older: 200}, {email: 3})


def test_poison_payloads_from_a_producer_fail_once_with_400_and_are_acknowledged(
    scenario: Scenario,
) -> None:
    poison = [
        "not an object",
        {"email": 42},
        {"email": "a@example.com", "customFields": {"x": "\u0000"}},
        {"email": "b@example.com", "status": "bogus"},
    ]
    job_ids = [scenario.producer.enqueue(scenario.user, body) for body in poison]
    scenario.worker("w")
    scenario.wait_drained(job_ids)
    time.sleep(VISIBILITY_TIMEOUT + 1.5)  # no redelivery, no retry loop
    rows = scenario.final_rows(job_ids)
    assert [rows[j]["attempts"] for j in job_ids] == [1] * len(job_ids)
    assert all(rows[j]["error"]["message"] for j in job_ids)
    scenario.audit(dict.fromkeys(job_ids, 400), {})


def test_pool_processes_survive_a_kill_of_their_parent_worker(scenario: Scenario) -> None:
    # A SIGKILLed Celery parent leaves no pool process running jobs unsupervised.
    worker = scenario.worker("orphaning")
    time.sleep(1)
    children = family(worker)[1:]
    sigkill(worker)
    psutil.wait_procs(children, timeout=5)
    assert not [child for child in children if child.is_running()]

"""The worker draining a backlog, against its baselines: single-contact jobs and batch
jobs of 1,000 queued before the worker starts, then drained to final status; a naive
Celery task with an ORM insert per contact (``naive.py``); and the persistence floor,
psycopg multi-row INSERTs into the same table."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench.report import Row, ratio
from bench.stack import CELERY, ROOT, Profile, RssSampler, Stack
from contacts_ingest.producer import ContactProducer


def drain_rate(stack: Stack, user: str, expected: int, timeout: float) -> tuple[float, int]:
    """Jobs of ``user`` per second from first start to last finish; and how many finished."""
    deadline = time.monotonic() + timeout
    while True:
        finished = stack.scalar("SELECT count(*) FROM contact_jobs WHERE user_id = %s", user)
        if finished >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    span = stack.scalar(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM contact_jobs"
        " WHERE user_id = %s",
        user,
    )
    return (round(finished / float(span), 1) if span else 0.0), int(finished)


def measure(stack: Stack, profile: Profile, sampler: RssSampler) -> dict[str, Any]:
    """Single and batch jobs drained per second, and Redis bytes per queued job."""
    producer = ContactProducer(stack.settings())
    used_before = int(stack.redis.info("memory")["used_memory"])
    for i in range(profile.single_jobs):
        producer.enqueue("bench-single", {"email": f"s{i}@example.com", "firstName": "Single"})
    used_after = int(stack.redis.info("memory")["used_memory"])
    for b in range(profile.batches):
        producer.enqueue_batch(
            "bench-batch",
            [{"email": f"b{b}-{i}@example.com", "firstName": "Batch"} for i in range(1000)],
        )
    worker = stack.worker(sampler)
    single, single_done = drain_rate(stack, "bench-single", profile.single_jobs, 600)
    batch_jobs, _ = drain_rate(stack, "bench-batch", profile.batches, 600)
    stack.stop(worker)
    return {
        "single_jobs_per_s": single,
        "single_jobs_finished": single_done,
        "batch_contacts_per_s": round(batch_jobs * 1000, 1),
        "redis_bytes_per_queued_job": round((used_after - used_before) / profile.single_jobs),
    }


def naive_baseline(stack: Stack, profile: Profile) -> dict[str, Any]:
    """Contacts per second of a naive Celery task, one ORM insert per contact."""
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        {k: stack.env[k] for k in ("DATABASE_URL", "REDIS_KEY_PREFIX", "NAIVE_QUEUE")}
    )
    from bench.naive import add_contact, app

    app.conf.broker_transport_options = {"global_keyprefix": stack.prefix}
    for i in range(profile.naive_jobs):
        add_contact.apply_async(("bench-naive", f"n{i}@example.com", "Naive"))
    worker = stack.start(
        [CELERY, "-A", "bench.naive", "worker", "--concurrency", "2", "--queues",
         stack.env["NAIVE_QUEUE"], "--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while (
        stack.scalar("SELECT count(*) FROM contacts WHERE user_id = 'bench-naive'")
        < profile.naive_jobs
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    span = stack.scalar(
        "SELECT extract(epoch FROM max(created_at) - min(created_at)), count(*) FROM contacts"
        " WHERE user_id = 'bench-naive'"
    )
    count = stack.scalar("SELECT count(*) FROM contacts WHERE user_id = 'bench-naive'")
    stack.stop(worker)
    return {"jobs_per_s": round(count / float(span), 1) if span else 0.0, "finished": count}


def persistence_floor(stack: Stack, profile: Profile) -> dict[str, Any]:
    """Rows per second of psycopg multi-row INSERTs, 500 per statement and transaction."""
    now = datetime.now(UTC)
    columns = "(id, user_id, email, email_key, first_name, created_at, updated_at)"
    started = time.perf_counter()
    for start in range(0, profile.floor_rows, 500):
        rows = [
            (
                f"cnt_f{i}",
                "bench-floor",
                f"f{i}@example.com",
                f"f{i}@example.com",
                "Floor",
                now,
                now,
            )
            for i in range(start, min(start + 500, profile.floor_rows))
        ]
        values = ",".join(["(%s,%s,%s,%s,%s,%s,%s)"] * len(rows))
        with stack.pg.transaction():
            stack.pg.execute(
                f"INSERT INTO contacts {columns} VALUES {values}"  # noqa: S608 (placeholders)
                " ON CONFLICT (user_id, email_key) DO NOTHING",
                [value for row in rows for value in row],
            )
    elapsed = time.perf_counter() - started
    return {"rows_per_s": round(profile.floor_rows / elapsed, 1)}


def rows(results: dict[str, Any]) -> list[Row]:
    w = results["worker"]
    naive, persistence = results["naive"]["jobs_per_s"], results["persistence_floor"]["rows_per_s"]
    return [
        (
            "worker: single-contact jobs/s to final status",
            f"{w['single_jobs_per_s']:,.0f}",
            f"naive ORM task per contact: {naive:,.0f};"
            f" ratio {ratio(w['single_jobs_per_s'], naive)}",
            "≥ 5,000; ≥ 5x naive",
        ),
        (
            "worker: contacts/s in batch jobs",
            f"{w['batch_contacts_per_s']:,.0f}",
            f"persistence floor (multi-row INSERT, 500 per statement): {persistence:,.0f};"
            f" ratio {ratio(w['batch_contacts_per_s'], persistence)}",
            "≥ 25,000; ≥ 0.6 of floor",
        ),
    ]


def memory_rows(results: dict[str, Any]) -> list[Row]:
    w = results["worker"]
    return [("Redis bytes per queued job", f"{w['redis_bytes_per_queued_job']:,}", "", "≤ 2 KiB")]

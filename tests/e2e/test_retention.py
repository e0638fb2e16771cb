"""Retention through the real processes: a worker prunes by itself; a pruned job reads 404.

On a database of the test's own: pruning drops whole partitions.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine, insert, text

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.schema import contact_jobs
from contacts_ingest.infrastructure.scratch import scratch_database
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.retention import ensure_partitions, prune
from tests.conftest import unique
from tests.e2e.conftest import (
    CLI,
    Service,
    service_env,
    start_gateway,
    start_worker,
    wait_final,
)
from tests.faults.conftest import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_database(admin_database_url: str) -> Iterator[str]:
    name = unique("contacts_retention").replace("-", "_")
    with scratch_database(admin_database_url, name) as url:
        yield url


def partitions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'contact_jobs'::regclass"
                )
            ).scalars()
        )


def test_a_worker_prunes_old_days_itself_and_a_pruned_job_reads_404(
    own_database: str, settings: Settings, log_dir: Path
) -> None:
    engine = make_engine(own_database)
    prune(engine, timedelta(0))  # no partition from before partitioning: old days can be made
    old = datetime.now(UTC) - timedelta(days=40)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
        ensure_partitions(conn, old.date())
        conn.execute(
            insert(contact_jobs),
            [{"job_id": "job_ancient", "user_id": "u", "operation": "create",
              "status": "succeeded", "code": 201, "attempts": 1, "accepted_at": old,
              "started_at": old, "finished_at": old}],
        )  # fmt: skip
    ancient = f"contact_jobs_p{old:%Y%m%d}"
    assert ancient in partitions(engine)

    env = service_env(
        settings.model_copy(update={"database_url": own_database}),
        CELERY_QUEUE=unique("retention"),
        JOB_RETENTION_DAYS="30",
    )
    worker = start_worker(env, log_dir, unique("retention-worker"))
    gateway, base = start_gateway(env, log_dir)
    try:
        wait_until(lambda: ancient not in partitions(engine), "the worker pruned nothing")
        service = Service(base, env)
        _, auth = service.new_user()
        job_id = service.post(auth, {"email": "kept@example.com"}).json()["data"]["job_id"]
        assert wait_final(base, auth, job_id)["result"]["code"] == 201

        subprocess.run(
            [CLI, "jobs", "prune", "--older-than", "0s"], env=env, check=True, capture_output=True
        )
        gone = service.job(auth, job_id)
        assert (gone.status_code, gone.json()) == (404, {"error": "Job not found"})
        # The contact itself stays: creating it again is a duplicate.
        again = service.post(auth, {"email": "kept@example.com"}).json()["data"]["job_id"]
        final = wait_final(base, auth, again)
        assert final["error"]["code"] == 409
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
    finally:
        gateway.stop()
        worker.stop()
        engine.dispose()
    assert "pruned final jobs accepted before" in worker.output()

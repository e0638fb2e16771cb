"""What a worker does besides jobs: keep the status table's partitions ahead of need, and
prune final jobs older than ``JOB_RETENTION_DAYS``.

It runs in the worker's main process, on a thread of its own, when the worker is ready
and then every ``UPKEEP_INTERVAL_SECONDS``; several workers may run it at once (it
serialises itself in PostgreSQL). A failure is logged and tried again next time.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.logs import describe_exception
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.retention import prune

log = logging.getLogger(__name__)

UPKEEP_INTERVAL_SECONDS = 3600

_stop = threading.Event()


def upkeep(settings: Settings) -> None:
    """One round: prune what is older than the retention period, make partitions ahead."""
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        pruned = prune(engine, timedelta(days=settings.job_retention_days))
    finally:
        # No connection is kept between rounds, so none is inherited by the pool
        # processes the worker forks later.
        engine.dispose()
    if pruned.partitions or pruned.stragglers:
        log.info(
            "pruned final jobs accepted before %s: %d partition(s), %d other row(s)",
            pruned.cutoff.isoformat(),
            len(pruned.partitions),
            pruned.stragglers,
        )


def _run(settings: Settings) -> None:
    while True:
        try:
            upkeep(settings)
        except Exception as exc:
            log.warning("upkeep failed (%s); trying again later", describe_exception(exc))
        if _stop.wait(UPKEEP_INTERVAL_SECONDS):
            return


@worker_ready.connect
def _start(**_: Any) -> None:
    _stop.clear()
    threading.Thread(target=_run, args=(Settings(),), name="upkeep", daemon=True).start()


@worker_shutdown.connect
def _shut(**_: Any) -> None:
    _stop.set()

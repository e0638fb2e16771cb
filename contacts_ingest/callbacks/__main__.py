"""``python -m contacts_ingest.callbacks``: the callback sender a worker runs beside it.

Stops on SIGTERM or SIGINT (attempts in progress finish), and by itself when the
process that started it is gone.
"""

from __future__ import annotations

import os
import signal
import threading

from contacts_ingest.access.callback_targets import CallbackTargets
from contacts_ingest.callbacks.sender import CallbackSender
from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.logs import configure_logging
from contacts_ingest.infrastructure.redis_clients import redis_client
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.callbacks import CallbackQueue
from contacts_ingest.jobs.status import final_job_document, read_final_job
from contacts_ingest.model.documents import Job


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    client = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
    engine = make_engine(
        settings.database_url, read_only=True, pool_size=min(4, settings.callback_concurrency)
    )
    targets = CallbackTargets(engine, ttl=settings.key_cache_ttl_seconds)

    def document(job_id: str) -> Job | None:
        row = read_final_job(engine, job_id)
        return final_job_document(row) if row is not None else None

    sender = CallbackSender(
        CallbackQueue(client, key_prefix=settings.redis_key_prefix), targets.get, document, settings
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()

    def orphaned() -> None:
        while not stop.wait(1):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()
    sender.run(stop)


if __name__ == "__main__":
    main()

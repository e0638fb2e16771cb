"""The naive baseline a team would write first: one Celery task per contact that opens
an ORM session, adds the contact and commits.

    celery -A bench.naive worker --concurrency 2 --queues <queue>

It validates nothing, records no job status and guarantees nothing beyond the unique
index; it only shows what a straightforward worker drains per second here.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from functools import cache

from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from contacts_ingest.infrastructure.settings import Settings, sqlalchemy_url

settings = Settings()
app = Celery("naive", broker=settings.broker_url)
app.conf.update(
    broker_transport_options={"global_keyprefix": settings.redis_key_prefix},
    task_default_queue=os.environ.get("NAIVE_QUEUE", "naive"),
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    worker_hijack_root_logger=False,
)


class Base(DeclarativeBase):
    pass


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[str] = mapped_column(primary_key=True)
    user_id: Mapped[str]
    email: Mapped[str]
    email_key: Mapped[str]
    first_name: Mapped[str | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


@cache
def engine() -> object:
    return create_engine(sqlalchemy_url(settings.database_url))


@app.task(name="naive.add_contact")
def add_contact(user_id: str, email: str, first_name: str) -> None:
    now = datetime.now(UTC)
    with Session(engine()) as session:  # type: ignore[arg-type]
        session.add(
            Contact(
                id="cnt_" + secrets.token_hex(12), user_id=user_id, email=email,
                email_key=email.lower(), first_name=first_name, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        session.commit()

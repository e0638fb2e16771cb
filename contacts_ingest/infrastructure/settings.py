"""One settings object, read from the environment and validated once.

Every default here is written in the README's configuration table.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def sqlalchemy_url(url: str) -> str:
    """Return ``url`` with the psycopg 3 driver named, as SQLAlchemy needs it.

    Operators write plain ``postgresql://`` URLs (the form psql and libpq use).
    """
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


class Settings(BaseSettings):
    """Configuration shared by the gateway, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/contacts"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Celery's broker defaults to REDIS_URL; set CELERY_BROKER_URL to split them.
    celery_broker_url: str | None = None
    # Prefix of every Redis key this service writes, kombu's included.
    redis_key_prefix: str = "contacts-ingest:"
    celery_queue: str = "contacts"
    # Seconds before a message a worker took but never acknowledged is delivered again.
    celery_visibility_timeout: int = Field(default=3600, ge=1)
    rate_limit_writes: int = Field(default=200, ge=1)
    rate_limit_window_seconds: int = Field(default=60, ge=1)
    # Batch requests (up to 1,000 contacts each) have a quota of their own.
    batch_rate_limit_requests: int = Field(default=10, ge=1)
    batch_rate_limit_window_seconds: int = Field(default=60, ge=1)
    # How long the gateway trusts a cached API-key lookup; revocation takes effect within it.
    key_cache_ttl_seconds: float = Field(default=10.0, ge=0)
    # Failed authentications per client address per window and gateway process; past
    # them, 429 before any lookup (keys this process has seen live still pass).
    auth_failure_limit: int = Field(default=60, ge=1)
    auth_failure_window_seconds: int = Field(default=60, ge=1)
    # Requests that wait (Prefer: wait) at once per user, and in all, per gateway
    # process; past either, the 202 at once.
    wait_max_per_user: int = Field(default=10, ge=0)
    wait_max_per_process: int = Field(default=100, ge=0)
    # Seconds a client has to send a request's head (line and headers); then it is closed.
    gateway_header_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # Days a final job (its status row, its dead letter) is kept; a pending job's Redis
    # record lives at most as long. Older ones are pruned (contacts never are).
    job_retention_days: int = Field(default=30, ge=1)
    # Jobs the queue may hold before the gateway sheds new ones with 503; 0: no limit.
    max_queued_jobs: int = Field(default=1_000_000, ge=0)
    # Deliveries a job may fail unexpectedly (or kill its pool process on), each but the
    # first on its own; then it ends failed with 500 and is dead-lettered.
    job_max_attempts: int = Field(default=5, ge=1)
    # The most jobs a worker process applies in one transaction (see worker/batching.py).
    worker_batch_size: int = Field(default=200, ge=1, le=5000)
    # Base and cap, in seconds, of the exponential backoff for transient database errors.
    retry_backoff_seconds: int = Field(default=1, ge=1)
    retry_backoff_max_seconds: int = Field(default=60, ge=1)
    # Workers send Celery task events (for Flower); off by default: a publish per event.
    worker_send_events: bool = False
    # Port of a worker's GET /metrics (Prometheus); 0 turns it off.
    worker_metrics_port: int = Field(default=9808, ge=0, le=65535)
    # Address it listens on: loopback unless a scraper elsewhere needs it (0.0.0.0 in compose).
    worker_metrics_host: str = Field(default="127.0.0.1", min_length=1)
    # Requests a gateway process works on at once, once their bodies are read.
    gateway_active_requests: int = Field(default=os.cpu_count() or 1, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json (one object per line) or text.
    log_format: Literal["json", "text"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgres(cls, value: str) -> str:
        if not sqlalchemy_url(value).startswith("postgresql+psycopg://"):
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return value

    @cached_property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @cached_property
    def batch_rate_limit_message(self) -> str:
        return (
            f"Too many requests \N{EM DASH} {self.batch_rate_limit_requests} batches per user "
            f"per {self.batch_rate_limit_window_seconds} seconds"
        )

    @cached_property
    def rate_limit_message(self) -> str:
        return (
            f"Too many requests \N{EM DASH} {self.rate_limit_writes} writes per user "
            f"per {self.rate_limit_window_seconds} seconds"
        )

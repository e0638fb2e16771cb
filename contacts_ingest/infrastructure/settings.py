"""One settings object, read from the environment and validated once.

Every default here is written in the README's configuration table.
"""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contacts_ingest.infrastructure.origins import parse_origins

# The longest a request may be held for its job's outcome (Prefer: wait=N, a key's mode).
MAX_WAIT_SECONDS = 10
# What ``wait`` alone means, for a key's mode.
DEFAULT_WAIT_SECONDS = 5
_RESPOND_MODE = re.compile(r"^(async|wait(?:=(\d{1,2}))?)$")


def parse_respond_mode(mode: str) -> int:
    """``async``, ``wait`` or ``wait=N`` (N from 1 to 10) as seconds to wait: 0 for async.

    ValueError names what is accepted.
    """
    match = _RESPOND_MODE.match(mode.strip().lower())
    if match is not None and match.group(1) == "async":
        return 0
    seconds = int(match.group(2) or DEFAULT_WAIT_SECONDS) if match else 0
    if not 1 <= seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"must be async, wait or wait=N with N from 1 to {MAX_WAIT_SECONDS}")
    return seconds


def respond_mode_text(seconds: int) -> str:
    """The mode ``parse_respond_mode`` reads as ``seconds``."""
    return f"wait={seconds}" if seconds else "async"


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port,...`` as (host, port) pairs (empty text: none).

    ValueError names the entry that is not host:port.
    """
    addresses = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"REDIS_SENTINELS entry {entry!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


def sqlalchemy_url(url: str) -> str:
    """Return ``url`` with the psycopg 3 driver named, as SQLAlchemy needs it.

    Operators write plain ``postgresql://`` URLs (the form psql and libpq use), with
    several hosts if they like (``postgres@db-a:5432,db-b:5432/contacts?
    target_session_attrs=read-write``, libpq's multi-host form): SQLAlchemy reads
    those as ``host`` parameters, which it hands to libpq as they were.
    """
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain) :]
            break
    scheme, _, rest = url.partition("://")
    authority, _, path = rest.partition("/")
    user, at, hosts = authority.rpartition("@")
    if "," not in hosts:
        return url
    database, _, query = path.partition("?")
    given = "".join(f"host={quote(host, safe='[]:')}&" for host in hosts.split(",") if host)
    return f"{scheme}://{user}{at}/{database}?{given}{query}".rstrip("&")


class Settings(BaseSettings):
    """Configuration shared by the gateway, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/contacts"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Celery's broker defaults to REDIS_URL; set CELERY_BROKER_URL to split them.
    celery_broker_url: str | None = None
    # Sentinels (host:port,host:port,...) that name the Redis master: then every Redis
    # client (the broker's included) asks them for the master named
    # REDIS_SENTINEL_MASTER, and the URLs' host and port are not used (their
    # credentials and database still are).
    redis_sentinels: str = ""
    redis_sentinel_master: str = ""
    # The sentinels' own credentials (their requirepass, or an ACL user), if they ask
    # for any; the master's come from the URL.
    redis_sentinel_username: str = ""
    redis_sentinel_password: str = ""
    # Replicas an admission must reach (Redis WAIT) before its 202; 0: do not wait.
    redis_min_replicas_ack: int = Field(default=0, ge=0, le=16)
    # How long the gateway waits for them, in milliseconds; then 503.
    redis_replicas_ack_timeout_ms: int = Field(default=1000, ge=1, le=10_000)
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
    # How writes with a key that has no mode of its own are answered: async (202 at
    # once), or wait / wait=N (as if the client had sent Prefer: wait=N).
    respond_default: str = "async"
    # Origins (scheme://host[:port]) completion callbacks may be sent to; empty: none.
    callback_allowed_hosts: str = ""
    # Callbacks a worker sends at once, and at most to one receiver (origin).
    callback_concurrency: int = Field(default=8, ge=1, le=256)
    callback_max_per_receiver: int = Field(default=2, ge=1, le=256)
    # Seconds a receiver has to connect, and then for each read of its answer.
    callback_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # How long a callback is retried before it is abandoned.
    callback_retry_window_seconds: int = Field(default=24 * 3600, ge=1, le=7 * 24 * 3600)
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

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        parse_sentinels(value)
        return value

    @model_validator(mode="after")
    def _sentinel_master_named(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_master.strip():
            raise ValueError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER (the master's name)")
        return self

    @field_validator("respond_default")
    @classmethod
    def _respond_mode(cls, value: str) -> str:
        try:
            parse_respond_mode(value)
        except ValueError as exc:
            raise ValueError(f"RESPOND_DEFAULT {exc}") from None
        return value

    @field_validator("callback_allowed_hosts")
    @classmethod
    def _origins(cls, value: str) -> str:
        parse_origins(value)
        return value

    @property
    def respond_default_wait(self) -> int:
        """Seconds a write waits for its outcome when its key has no mode (0: async)."""
        return parse_respond_mode(self.respond_default)

    @property
    def callback_origins(self) -> frozenset[str]:
        """The origins callbacks may go to (empty: callbacks are off)."""
        return parse_origins(self.callback_allowed_hosts)

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """The sentinels as (host, port) pairs; empty without REDIS_SENTINELS."""
        return parse_sentinels(self.redis_sentinels)

    @property
    def sentinel_auth(self) -> dict[str, str]:
        """What to log in to the sentinels with: redis-py's ``username``/``password``."""
        auth = {"username": self.redis_sentinel_username, "password": self.redis_sentinel_password}
        return {name: value for name, value in auth.items() if value}

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def batch_rate_limit_message(self) -> str:
        return (
            f"Too many requests \N{EM DASH} {self.batch_rate_limit_requests} batches per user "
            f"per {self.batch_rate_limit_window_seconds} seconds"
        )

    @property
    def rate_limit_message(self) -> str:
        return (
            f"Too many requests \N{EM DASH} {self.rate_limit_writes} writes per user "
            f"per {self.rate_limit_window_seconds} seconds"
        )

"""API keys: random secrets with a recognisable prefix, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, insert, or_, select, update

from contacts_ingest.access.callback_targets import CallbackTarget, route_to
from contacts_ingest.access.lookup_cache import LookupCache
from contacts_ingest.infrastructure.schema import api_keys
from contacts_ingest.infrastructure.settings import MAX_WAIT_SECONDS
from contacts_ingest.jobs.callbacks import CallbackRoute
from contacts_ingest.jobs.job import MAX_USER_ID_CHARS

KEY_PREFIX = "cik_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    user_id: str
    created_at: datetime
    revoked_at: datetime | None
    # Seconds its writes wait for their outcome (0: async); None: RESPOND_DEFAULT's.
    respond_wait_seconds: int | None = None
    callback_url: str | None = None


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """What a live key stands for: its user, how its writes are answered, and where
    its jobs' outcomes go."""

    key_id: str
    user_id: str
    # Seconds a write waits for its outcome (0: async); None: the deployment's default.
    respond_wait_seconds: int | None = None
    callback: CallbackRoute | None = None


def create_key(
    engine: Engine,
    user_id: str,
    *,
    respond_wait_seconds: int | None = None,
    callback: CallbackTarget | None = None,
) -> tuple[str, str]:
    """Create a key for ``user_id``; return (key_id, key). The key is shown only here.

    ``respond_wait_seconds`` (0 to 10) is how its writes are answered (None: as the
    deployment's RESPOND_DEFAULT says); with ``callback`` its jobs' outcomes are POSTed
    there.
    """
    if not user_id or len(user_id) > MAX_USER_ID_CHARS:
        raise ValueError(f"user id must be 1 to {MAX_USER_ID_CHARS} characters")
    if respond_wait_seconds is not None and not 0 <= respond_wait_seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"a key waits 0 to {MAX_WAIT_SECONDS} seconds")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(6)
    with engine.begin() as conn:
        conn.execute(
            insert(api_keys).values(
                key_id=key_id,
                user_id=user_id,
                key_hash=hash_key(key),
                respond_wait_seconds=respond_wait_seconds,
                callback_url=callback.url if callback else None,
                callback_secret=callback.secret if callback else None,
            )
        )
    return key_id, key


def revoke_key(engine: Engine, key_or_id: str) -> bool:
    """Revoke a key named by its id or by the key itself; False if no live key matched."""
    with engine.begin() as conn:
        revoked = conn.execute(
            update(api_keys)
            .where(
                or_(api_keys.c.key_id == key_or_id, api_keys.c.key_hash == hash_key(key_or_id)),
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=func.now())
        )
    return revoked.rowcount > 0


def list_keys(engine: Engine, user_id: str | None = None) -> list[KeyInfo]:
    query = select(
        api_keys.c.key_id,
        api_keys.c.user_id,
        api_keys.c.created_at,
        api_keys.c.revoked_at,
        api_keys.c.respond_wait_seconds,
        api_keys.c.callback_url,
    ).order_by(api_keys.c.created_at)
    if user_id is not None:
        query = query.where(api_keys.c.user_id == user_id)
    with engine.connect() as conn:
        return [KeyInfo(**row) for row in conn.execute(query).mappings()]


class KeyResolver:
    """Maps a presented key to its holder (user, mode, callback), caching answers for
    ``ttl`` seconds.

    A revoked key stops working within ``ttl`` seconds in every gateway process.
    While PostgreSQL is unreachable, a key keeps the last answer PostgreSQL gave for
    it, so clients whose keys this process has seen keep being served: nobody can
    revoke a key while PostgreSQL is down, so that answer is still the newest one.
    Unknown keys are remembered apart from live ones: however many are presented,
    they never push a live key out (``contacts_ingest.access.lookup_cache``).
    """

    def __init__(self, engine: Engine, *, ttl: float, max_entries: int = 10_000) -> None:
        self._engine = engine
        self._answers: LookupCache[str, KeyHolder] = LookupCache(
            self._lookup, ttl=ttl, max_entries=max_entries
        )

    def holder_for(self, key: str) -> KeyHolder | None:
        """What a live ``key`` stands for, or None.

        Raises OperationalError only when PostgreSQL is unreachable and this process
        has never looked the key up before.
        """
        if not _well_formed(key):
            return None
        return self._answers.get(hash_key(key))

    def user_for(self, key: str) -> str | None:
        """The user id owning a live ``key``, or None (as ``holder_for``)."""
        holder = self.holder_for(key)
        return holder.user_id if holder else None

    def seen_live(self, key: str) -> bool:
        """Whether this process last saw ``key`` live (PostgreSQL is not asked)."""
        return _well_formed(key) and self._answers.found_before(hash_key(key))

    def _lookup(self, digest: str) -> KeyHolder | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    api_keys.c.key_id,
                    api_keys.c.user_id,
                    api_keys.c.key_hash,
                    api_keys.c.respond_wait_seconds,
                    api_keys.c.callback_url,
                ).where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
            ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return KeyHolder(
            key_id=str(row.key_id),
            user_id=str(row.user_id),
            respond_wait_seconds=row.respond_wait_seconds,
            callback=route_to(str(row.key_id), row.callback_url),
        )


def _well_formed(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and len(key) <= 200

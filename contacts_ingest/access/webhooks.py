"""Webhook endpoints: per-user URLs that sources call with Standard Webhooks signatures.

A source that cannot send a bearer key signs each delivery instead (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``: HMAC-SHA256 over ``id.timestamp.body``
with a ``whsec_`` secret). Verification is the ``standardwebhooks`` package's,
tolerance 5 minutes. Rotating a secret keeps the old one verifying for a grace
period, so a source can switch over (or sign with both) without losing deliveries.

What a delivery does (create or upsert) is the endpoint's, fixed when it is created: the
signature covers the body, not the URL, so nothing in the URL may choose it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, func, insert, or_, select, update
from standardwebhooks import Webhook, WebhookVerificationError

from contacts_ingest.access.callback_targets import CallbackTarget, route_to
from contacts_ingest.access.lookup_cache import LookupCache
from contacts_ingest.infrastructure.schema import webhook_endpoints, webhook_secrets
from contacts_ingest.jobs.callbacks import CallbackRoute
from contacts_ingest.jobs.job import MAX_USER_ID_CHARS, OPERATIONS, Operation

ENDPOINT_PREFIX = "whk_"
SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
DEFAULT_ROTATION_GRACE = timedelta(hours=24)


class WebhookRejected(Exception):
    """A delivery whose endpoint is unknown or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """What a verified delivery acts as: the endpoint's user and its fixed operation,
    and where its jobs' outcomes go."""

    user_id: str
    operation: Operation
    callback: CallbackRoute | None = None


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    endpoint_id: str
    user_id: str
    operation: Operation
    created_at: datetime
    revoked_at: datetime | None
    live_secrets: int


def _new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _add_secret(conn: Connection, endpoint_id: str) -> str:
    secret = _new_secret()
    conn.execute(
        insert(webhook_secrets).values(
            secret_id="whs_" + secrets.token_hex(8), endpoint_id=endpoint_id, secret=secret
        )
    )
    return secret


def create_endpoint(
    engine: Engine,
    user_id: str,
    operation: Operation = "create",
    *,
    callback: CallbackTarget | None = None,
) -> tuple[str, str]:
    """Create an endpoint for ``user_id`` whose every delivery is ``operation``; return
    (endpoint_id, secret). With ``callback`` its jobs' outcomes are POSTed there."""
    if not user_id or len(user_id) > MAX_USER_ID_CHARS:
        raise ValueError(f"user id must be 1 to {MAX_USER_ID_CHARS} characters")
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}")
    endpoint_id = ENDPOINT_PREFIX + secrets.token_hex(12)
    with engine.begin() as conn:
        conn.execute(
            insert(webhook_endpoints).values(
                endpoint_id=endpoint_id,
                user_id=user_id,
                operation=operation,
                callback_url=callback.url if callback else None,
                callback_secret=callback.secret if callback else None,
            )
        )
        secret = _add_secret(conn, endpoint_id)
    return endpoint_id, secret


def rotate_secret(
    engine: Engine, endpoint_id: str, grace: timedelta = DEFAULT_ROTATION_GRACE
) -> str | None:
    """Add a new secret; older live ones keep verifying for ``grace``. None if no live endpoint."""
    with engine.begin() as conn:
        live = conn.execute(
            select(webhook_endpoints.c.endpoint_id)
            .where(
                webhook_endpoints.c.endpoint_id == endpoint_id,
                webhook_endpoints.c.revoked_at.is_(None),
            )
            .with_for_update()
        ).first()
        if live is None:
            return None
        conn.execute(
            update(webhook_secrets)
            .where(
                webhook_secrets.c.endpoint_id == endpoint_id,
                or_(
                    webhook_secrets.c.expires_at.is_(None),
                    webhook_secrets.c.expires_at > func.now() + grace,
                ),
            )
            .values(expires_at=func.now() + grace)
        )
        return _add_secret(conn, endpoint_id)


def revoke_endpoint(engine: Engine, endpoint_id: str) -> bool:
    with engine.begin() as conn:
        done = conn.execute(
            update(webhook_endpoints)
            .where(
                webhook_endpoints.c.endpoint_id == endpoint_id,
                webhook_endpoints.c.revoked_at.is_(None),
            )
            .values(revoked_at=func.now())
        )
    return done.rowcount > 0


def list_endpoints(engine: Engine, user_id: str | None = None) -> list[EndpointInfo]:
    live_secrets = (
        select(func.count())
        .where(
            webhook_secrets.c.endpoint_id == webhook_endpoints.c.endpoint_id,
            # A revoked endpoint's secrets verify nothing any more.
            webhook_endpoints.c.revoked_at.is_(None),
            or_(webhook_secrets.c.expires_at.is_(None), webhook_secrets.c.expires_at > func.now()),
        )
        .scalar_subquery()
    )
    query = select(
        webhook_endpoints.c.endpoint_id,
        webhook_endpoints.c.user_id,
        webhook_endpoints.c.operation,
        webhook_endpoints.c.created_at,
        webhook_endpoints.c.revoked_at,
        live_secrets.label("live_secrets"),
    ).order_by(webhook_endpoints.c.created_at)
    if user_id is not None:
        query = query.where(webhook_endpoints.c.user_id == user_id)
    with engine.connect() as conn:
        return [EndpointInfo(**row) for row in conn.execute(query).mappings()]


# A live endpoint and a verifier per live secret, newest first.
_Known = tuple[WebhookEndpoint, list[Webhook]]
# How old a cached endpoint must be before a failed signature reads it again: bad
# signatures cost at most ten lookups a second per endpoint and process.
REREAD_AFTER_SECONDS = 0.1


class WebhookVerifier:
    """Verifies a delivery against its endpoint's live secrets; returns the endpoint.

    Endpoints and secrets are cached for ``ttl`` seconds (rotation and revocation take
    effect within it) and, like API keys, keep their last known state while
    PostgreSQL is unreachable; unknown endpoint ids never push a live one out.
    """

    def __init__(self, engine: Engine, *, ttl: float, max_entries: int = 10_000) -> None:
        self._engine = engine
        self._endpoints: LookupCache[str, _Known] = LookupCache(
            self._lookup, ttl=ttl, max_entries=max_entries
        )

    def endpoint_for(
        self, endpoint_id: str, headers: dict[str, str], read_body: Callable[[], bytes]
    ) -> WebhookEndpoint:
        """The endpoint (its user, its operation) if the body and ``headers`` carry a
        valid, fresh signature.

        ``read_body`` is called only once the endpoint is known to be live, so a
        delivery to an unknown or revoked endpoint is refused before its body is read.
        """
        known = self._endpoint(endpoint_id)
        if known is None:
            raise WebhookRejected("unknown endpoint")
        body = read_body()
        if _verified(known, body, headers):
            return known[0]
        # A source may sign with a secret rotated in since the cache was filled: read
        # the secrets again before refusing (unless they were read a moment ago).
        again = self._endpoint(endpoint_id, max_age=REREAD_AFTER_SECONDS)
        if again is not None and again is not known and _verified(again, body, headers):
            return again[0]
        raise WebhookRejected("no valid signature")

    def seen_live(self, endpoint_id: str) -> bool:
        """Whether this process last saw ``endpoint_id`` live (PostgreSQL is not asked)."""
        return _well_formed(endpoint_id) and self._endpoints.found_before(endpoint_id)

    def _endpoint(self, endpoint_id: str, max_age: float | None = None) -> _Known | None:
        if not _well_formed(endpoint_id):
            return None
        return self._endpoints.get(endpoint_id, max_age=max_age)

    def _lookup(self, endpoint_id: str) -> _Known | None:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    webhook_endpoints.c.user_id,
                    webhook_endpoints.c.operation,
                    webhook_endpoints.c.callback_url,
                    webhook_secrets.c.secret,
                )
                .join(webhook_secrets)
                .where(
                    webhook_endpoints.c.endpoint_id == endpoint_id,
                    webhook_endpoints.c.revoked_at.is_(None),
                    or_(
                        webhook_secrets.c.expires_at.is_(None),
                        webhook_secrets.c.expires_at > func.now(),
                    ),
                )
                .order_by(webhook_secrets.c.created_at.desc())
            ).all()
        if not rows:
            return None
        operation: Operation = "upsert" if rows[0].operation == "upsert" else "create"
        endpoint = WebhookEndpoint(
            str(rows[0].user_id), operation, route_to(endpoint_id, rows[0].callback_url)
        )
        return endpoint, [Webhook(row.secret) for row in rows]


def _verified(known: _Known, body: bytes, headers: dict[str, str]) -> bool:
    for verifier in known[1]:
        try:
            verifier.verify(body, headers, json_parse=False)
            return True
        except (WebhookVerificationError, ValueError, binascii.Error, UnicodeDecodeError):
            continue
    return False


def _well_formed(endpoint_id: str) -> bool:
    return endpoint_id.startswith(ENDPOINT_PREFIX) and len(endpoint_id) <= 40

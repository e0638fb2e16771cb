"""Where a key's or a webhook endpoint's job outcomes are POSTed: URL and signing secret.

Only an operator sets a callback URL (``keys create`` / ``webhooks create
--callback-url``), and only to an origin ``CALLBACK_ALLOWED_HOSTS`` lists; the sender
checks it again before every delivery. The secret signs deliveries as Standard Webhooks
says; HMAC needs it, so it is stored as is, like webhook secrets.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine, select

from contacts_ingest.access.lookup_cache import LookupCache
from contacts_ingest.infrastructure.origins import origin_of
from contacts_ingest.infrastructure.schema import api_keys, webhook_endpoints
from contacts_ingest.jobs.callbacks import CallbackRoute

CALLBACK_SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)


class CallbackRefused(ValueError):
    """A callback URL that may not be used: its message says why."""


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    url: str
    secret: str


def new_callback_target(url: str, allowed: frozenset[str]) -> CallbackTarget:
    """A target for ``url`` with a fresh secret, if ``url``'s origin is ``allowed``."""
    if not allowed:
        raise CallbackRefused(
            "callbacks are off: CALLBACK_ALLOWED_HOSTS lists no origin they may go to"
        )
    try:
        origin = origin_of(url)
    except ValueError as exc:
        raise CallbackRefused(str(exc)) from None
    if origin not in allowed:
        raise CallbackRefused(
            f"{origin} is not in CALLBACK_ALLOWED_HOSTS ({', '.join(sorted(allowed))})"
        )
    secret = CALLBACK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    return CallbackTarget(url.strip(), secret)


def route_to(owner: str, url: str | None) -> CallbackRoute | None:
    """The route a job of ``owner`` (a key or endpoint id) takes to ``url``, if any."""
    if not url:
        return None
    try:
        return CallbackRoute(owner, origin_of(url))
    except ValueError:  # checked when it was set; an older check let it through
        return None


class CallbackTargets:
    """An owner's (a key's or an endpoint's) target, looked up by id and cached for
    ``ttl`` seconds; None if it has none or does not exist."""

    def __init__(self, engine: Engine, *, ttl: float = 10.0) -> None:
        self._engine = engine
        self._cache: LookupCache[str, CallbackTarget] = LookupCache(self._lookup, ttl=ttl)

    def get(self, owner: str) -> CallbackTarget | None:
        return self._cache.get(owner)

    def _lookup(self, owner: str) -> CallbackTarget | None:
        table, column = (
            (api_keys, api_keys.c.key_id)
            if owner.startswith("key_")
            else (webhook_endpoints, webhook_endpoints.c.endpoint_id)
        )
        with self._engine.connect() as conn:
            row = conn.execute(
                select(table.c.callback_url, table.c.callback_secret).where(column == owner)
            ).first()
        if row is None or not row.callback_url or not row.callback_secret:
            return None
        return CallbackTarget(row.callback_url, row.callback_secret)
